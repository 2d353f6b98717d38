"""Compose each Hydra job's config cheaply: from a template where that is exact.

A full compose (defaults list, YAML, merges) costs ~0.1 s per job. Jobs of one sweep
usually differ from the first only in plain values (`lr=0.1` vs `lr=0.01`). For those,
the first job's composed config serves as a template and the job's differing overrides
are applied to (a copy of) it, exactly as Hydra applies command-line values after
composing. Anything else (a config group choice, `+`/`++`/`~`, a dict or list value, a
`hydra.*` key, a package) takes the full compose. The template path uses two private
Hydra helpers; without them every job takes the full compose.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger("hsm.hydra")

_apply: Any = None
get_overrides_dirname: Any = None
try:  # private Hydra API: feature-detected, never required
    from hydra._internal import config_loader_impl as _impl

    _apply = _impl.ConfigLoaderImpl._apply_overrides_to_config
    get_overrides_dirname = _impl.get_overrides_dirname
except (ImportError, AttributeError):  # pragma: no cover - other Hydra versions
    pass


def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


class JobComposer:
    """Composes job configs for one launch; picklable, so forked children inherit it."""

    def __init__(self, config_loader: Any, master: DictConfig) -> None:
        self.loader = config_loader
        self.master = master
        self.template: DictConfig | None = None
        self._template_parsed: list[Any] = []
        self._groups: dict[str, bool] = {}
        self._parsed: dict[tuple[str, ...], list[Any]] = {}
        self.template_hits = 0

    def full(self, overrides: Sequence[str]) -> DictConfig:
        return self.loader.load_sweep_config(self.master, list(overrides))

    def set_template(self, first_overrides: Sequence[str], composed: DictConfig) -> None:
        """`composed` is the full compose of `first_overrides` (it also validated them)."""
        if _apply is None or get_overrides_dirname is None:
            return
        try:
            self._template_parsed = parse_overrides(first_overrides)
        except Exception:
            return
        self.template = composed

    def prepare(self, jobs: Sequence[Sequence[str]]) -> None:
        """Do once, in the parent, what every forked child would otherwise redo: parse each
        job's overrides (Hydra's parser learns as it goes, and a child's learning is lost
        when it exits) and answer the config-group questions for their keys."""
        if self.template is None:
            return
        for overrides in jobs:
            try:
                parsed = parse_overrides(overrides)
            except Exception:
                continue  # the job's own compose reports it
            self._parsed[tuple(overrides)] = parsed
            for o in parsed:
                self._is_group(o.key_or_group)

    def compose(self, overrides: Sequence[str], *, inplace: bool = False) -> DictConfig:
        """The job's config; `inplace` may consume the template (a forked child's own copy)."""
        if self.template is not None:
            try:
                cfg = self._from_template(overrides, inplace)
            except Exception:
                log.debug("template compose failed for %s; full compose", overrides)
                cfg = None
            if cfg is not None:
                self.template_hits += 1
                return cfg
        return self.full(overrides)

    # ---------------------------------------------------------------- internal
    def _is_group(self, key: str) -> bool:
        hit = self._groups.get(key)
        if hit is None:
            hit = "/" in key or "@" in key
            if not hit and "." not in key:
                choices = self.template.hydra.runtime.choices if self.template else {}
                hit = key in choices or bool(self.loader.repository.group_exists(key))
            self._groups[key] = hit
        return hit

    def _plain_changes(self, parsed: list[Any]) -> list[Any] | None:
        """The overrides that differ from the template's, if all are plain value changes."""
        from hydra.core.override_parser.types import OverrideType, ValueType

        if len(parsed) != len(self._template_parsed):
            return None
        changes = []
        for new, old in zip(parsed, self._template_parsed, strict=True):
            if new.input_line == old.input_line:
                continue
            for o in (new, old):
                if (
                    o.key_or_group != new.key_or_group
                    or o.type is not OverrideType.CHANGE
                    or o.package is not None
                    or o.value_type is not ValueType.ELEMENT
                    or o.is_hydra_override()
                    or isinstance(o.value(), dict | list)
                ):
                    return None
            if self._is_group(new.key_or_group):
                return None
            changes.append(new)
        return changes

    def _from_template(self, overrides: Sequence[str], inplace: bool) -> DictConfig | None:
        assert self.template is not None and _apply is not None
        parsed = self._parsed.get(tuple(overrides)) or parse_overrides(overrides)
        changes = self._plain_changes(parsed)
        if changes is None:
            return None
        cfg = self.template if inplace else copy.deepcopy(self.template)
        if inplace:
            self.template = None  # consumed: a second compose must not see these values
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
