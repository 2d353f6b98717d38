"""Compose each Hydra job's config cheaply: from a template where that is exact.

A full compose (defaults list, YAML, merges) costs ~0.1 s per job. Jobs of one sweep
mostly differ in plain values (`lr=0.1` vs `lr=0.01`). Jobs with the same *shape* (the
same keys in the same order, the same config-group choices and `+`/`~` lines, only plain
values differing) share one template: a full compose of the first such job, to which a
job's own differing values are applied exactly as Hydra applies command-line values after
composing. A job of a new shape gets its own template (up to MAX_TEMPLATES; the fork
server composes it once, before forking the job); anything else takes a full compose.

Not plain (part of the shape): a config group choice, `+`/`++`/`~`, a dict or list value,
a `hydra.*` key, a package. The template path uses two private Hydra helpers; without
them every job takes the full compose.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger("hsm.hydra")

MAX_TEMPLATES = 16

_apply: Any = None
get_overrides_dirname: Any = None
try:  # private Hydra API: feature-detected, never required
    from hydra._internal import config_loader_impl as _impl

    _apply = _impl.ConfigLoaderImpl._apply_overrides_to_config
    get_overrides_dirname = _impl.get_overrides_dirname
except (ImportError, AttributeError):  # pragma: no cover - other Hydra versions
    pass

Shape = tuple[tuple[str, str | None], ...]


def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


class JobComposer:
    """Composes job configs for one launch; forked children inherit it (and its templates)."""

    def __init__(self, config_loader: Any, master: DictConfig) -> None:
        self.loader = config_loader
        self.master = master
        self.enabled = _apply is not None and get_overrides_dirname is not None
        self.templates: dict[Shape, tuple[list[Any], DictConfig]] = {}
        self._groups: dict[str, bool] = {}
        self._parsed: dict[tuple[str, ...], list[Any]] = {}
        self._shapes: dict[tuple[str, ...], Shape] = {}
        self.template_hits = 0

    def full(self, overrides: Sequence[str]) -> DictConfig:
        cfg: DictConfig = self.loader.load_sweep_config(self.master, list(overrides))
        return cfg

    def set_template(self, overrides: Sequence[str], composed: DictConfig) -> None:
        """`composed` is the full compose of `overrides` (it also validated them)."""
        parsed = self._parse(overrides)
        if self.enabled and parsed is not None:
            self.templates.setdefault(self._shape(overrides, parsed), (parsed, composed))

    def prepare(self, jobs: Sequence[Sequence[str]]) -> None:
        """Do once, in the parent, what every forked child would otherwise redo: parse each
        job's overrides (Hydra's parser learns as it goes, and a child's learning is lost
        when it exits) and answer the config-group questions for their keys."""
        if not self.enabled:
            return
        for overrides in jobs:
            parsed = self._parse(overrides)
            if parsed is not None:
                self._shape(overrides, parsed)  # also answers the config-group questions

    def ensure_template(self, overrides: Sequence[str]) -> None:
        """Compose a template for this job's shape if there is none yet (the fork server
        does this before forking, so that later jobs of the shape start from it)."""
        parsed = self._parse(overrides)
        if parsed is None or len(self.templates) >= MAX_TEMPLATES:
            return
        shape = self._shape(overrides, parsed)
        if shape in self.templates:
            return
        try:
            self.templates[shape] = (parsed, self.full(overrides))
        except Exception:
            log.debug("no template for %s: it does not compose", overrides)

    def compose(self, overrides: Sequence[str], *, inplace: bool = False) -> DictConfig:
        """The job's config; `inplace` may consume a template (a forked child's own copy)."""
        parsed = self._parse(overrides)
        if parsed is not None:
            try:
                cfg = self._from_template(overrides, parsed, inplace)
            except Exception:
                log.debug("template compose failed for %s; full compose", overrides)
                cfg = None
            if cfg is not None:
                self.template_hits += 1
                return cfg
        return self.full(overrides)

    # ---------------------------------------------------------------- internal
    def _parse(self, overrides: Sequence[str]) -> list[Any] | None:
        if not self.enabled:
            return None
        key = tuple(overrides)
        parsed = self._parsed.get(key)
        if parsed is None:
            try:
                parsed = parse_overrides(overrides)
            except Exception:
                return None  # the full compose reports it
            self._parsed[key] = parsed
        return parsed

    def _is_group(self, key: str) -> bool:
        hit = self._groups.get(key)
        if hit is None:
            hit = "/" in key or "@" in key
            if not hit and "." not in key:
                hit = any(key in cfg.hydra.runtime.choices for _, cfg in self.templates.values())
                hit = hit or bool(self.loader.repository.group_exists(key))
            self._groups[key] = hit
        return hit

    def _plain(self, o: Any) -> bool:
        from hydra.core.override_parser.types import OverrideType, ValueType

        return (
            o.type is OverrideType.CHANGE
            and o.package is None
            and o.value_type is ValueType.ELEMENT
            and not o.is_hydra_override()
            and not isinstance(o.value(), dict | list)
            and not self._is_group(o.key_or_group)
        )

    def _shape(self, overrides: Sequence[str], parsed: list[Any]) -> Shape:
        key = tuple(overrides)
        shape = self._shapes.get(key)
        if shape is None:
            shape = tuple(
                (o.key_or_group, None if self._plain(o) else o.input_line) for o in parsed
            )
            self._shapes[key] = shape
        return shape

    def _from_template(
        self, overrides: Sequence[str], parsed: list[Any], inplace: bool
    ) -> DictConfig | None:
        shape = self._shape(overrides, parsed)
        found = self.templates.get(shape)
        if found is None:
            return None
        base, cfg = found
        if inplace:
            del self.templates[shape]  # consumed: a second compose must not see these values
        else:
            cfg = copy.deepcopy(cfg)
        changes = [o for o, t in zip(parsed, base, strict=True) if o.input_line != t.input_line]
        _apply(changes, cfg)
        task = [o for o in parsed if not o.is_hydra_override()]
        od = cfg.hydra.job.config.override_dirname
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in task]
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=task,
                kv_sep=od.kv_sep,
                item_sep=od.item_sep,
                exclude_keys=list(od.exclude_keys),
            )
        return cfg
