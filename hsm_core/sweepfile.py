"""The sweep file (the original HSM format) read into an ordered list of sweep points.

Example (2 x 2 x 2 = 8 points; ``command: [prog, --lr, "{model.lr}"]`` runs any program)::

    sweep:
      grid: {seed: [1, 2], model: {lr: [0.1, 0.01]}}    # "model.lr"
      paired: [{arch: {depth: [2, 4], width: [64, 32]}}]  # zipped
    script: train.py    # <python> train.py seed=1 model.lr=0.1 depth=2 width=64

Order: grid keys in file order, then paired groups; values in list order; the last factor
varies fastest. A task's identity is ``task_key(params)``, never its position. Numbers read
as OmegaConf reads them (``1e-3`` is a float: write ``"1e-3"`` for the string).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, overload

import yaml

from hsm_core import overrides as ov
from hsm_core.errors import ConfigError
from hsm_core.model import PYTHON, TaskKind, TaskSpec, canonical_json, task_key

log = logging.getLogger(__name__)

TOP_KEYS = (
    "sweep", "grid", "paired", "metadata", "defaults", "script", "command",
    "python", "env", "cwd", "timeout", "max_retries",
)  # fmt: skip
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DURATION = re.compile(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)\Z")  # [D-][HH:]MM:SS


class _Loader(yaml.SafeLoader):
    """Numbers as OmegaConf reads them (``1e-3`` is a float), no dates, no key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:str" and key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key_node.value!r} given twice", key_node.start_mark
                )
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+\Z"),
    list("-+0123456789"),
)
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rs if tag != "tag:yaml.org,2002:timestamp"]
    for ch, rs in _Loader.yaml_implicit_resolvers.items()
}


class _Bad(Exception):
    """(key, message[, hint]) raised inside the parser; parse_sweep adds the file name."""


@dataclass(frozen=True)
class _Axis:
    """One factor of the cartesian product: a grid key, or a paired group (zipped keys)."""

    name: str  # for messages: "grid.seed", "paired[0].arch"
    keys: tuple[str, ...]
    rows: list[tuple[Any, ...]]  # one row per choice, values in `keys` order
    args: list[tuple[str, ...]] = field(default_factory=list)  # script: each row's overrides


@dataclass(frozen=True)
class SweepDefinition:
    """A parsed sweep file: its points in order and how each point is run.

    Points are made as they are read (`iter_points`, `iter_tasks`), never all at once:
    a grid of a million points costs the memory of one."""

    script: str | None
    command: tuple[str, ...] | None
    python: str
    env: dict[str, str]
    cwd: str
    timeout_s: float | None
    max_retries: int | None  # None: not set in the file (the CLI's default applies)
    metadata: dict[str, Any]
    raw: dict[str, Any]
    source_name: str = "<sweep>"
    _axes: tuple[_Axis, ...] = field(default=(), repr=False, compare=False)

    @property
    def params(self) -> list[str]:
        """Parameter names, in point order."""
        return [k for axis in self._axes for k in axis.keys]

    @property
    def size(self) -> int:
        """How many points the sweep has, without making them."""
        return math.prod(len(a.rows) for a in self._axes)

    @property
    def points(self) -> list[dict[str, Any]]:
        return list(self.iter_points())

    def iter_points(self) -> Iterator[dict[str, Any]]:
        names = [a.keys for a in self._axes]
        for choice in itertools.product(*(a.rows for a in self._axes)):
            yield {
                k: v
                for ks, row in zip(names, choice, strict=True)
                for k, v in zip(ks, row, strict=True)
            }

    def to_tasks(self, start_num: int = 1) -> list[TaskSpec]:
        return list(self.iter_tasks(start_num))

    def iter_tasks(self, start_num: int = 1, limit: int | None = None) -> Iterator[TaskSpec]:
        """One COMMAND TaskSpec per point (the first `limit` only), numbered from
        ``start_num`` in point order, made one at a time."""
        env_templates = [(k, ov.Template(v)) for k, v in self.env.items()]
        argvs: Iterator[tuple[str, ...]]
        if self.script is not None:
            head = (self.python, self.script)
            argvs = (head + sum(c, ()) for c in itertools.product(*(a.args for a in self._axes)))
        else:
            templates = [ov.Template(part) for part in self.command or ()]
            argvs = (tuple(t.render(p) for t in templates) for p in self.iter_points())
        pairs = zip(self.iter_points(), argvs, strict=True)
        for num, (params, argv) in enumerate(itertools.islice(pairs, limit), start_num):
            yield TaskSpec(
                key=task_key(params),
                num=num,
                params=params,
                kind=TaskKind.COMMAND,
                argv=argv,
                env=tuple((k, t.render(params)) for k, t in env_templates),
                cwd=self.cwd,
                timeout_s=self.timeout_s,
            )


class TaskStream(Sequence[TaskSpec]):
    """The tasks of a sweep (the first `limit`) as a sequence that makes them again at
    each pass: a check that reads them all, then the store, cost one point of memory
    each, not the whole grid."""

    def __init__(self, definition: SweepDefinition, limit: int | None = None) -> None:
        self.definition = definition
        self.limit = limit
        size = definition.size
        self._len = size if limit is None else min(size, limit)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[TaskSpec]:
        return self.definition.iter_tasks(limit=self.limit)

    @overload
    def __getitem__(self, index: int) -> TaskSpec: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[TaskSpec]: ...
    def __getitem__(self, index: int | slice) -> TaskSpec | Sequence[TaskSpec]:
        if isinstance(index, slice):
            return list(itertools.islice(self, *index.indices(self._len)))
        if not -self._len <= index < self._len:
            raise IndexError(index)
        return next(itertools.islice(self, index % self._len, None))


def load_sweep_file(path: str | Path) -> SweepDefinition:
    """Read and validate a sweep file; every problem is one ConfigError naming the file."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such sweep file", file=name, hint="check the --config path")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the sweep file: {err}", file=name)
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"YAML syntax error{at}: {getattr(err, 'problem', None) or err}", file=name
        )
    return parse_sweep(data, name)


def parse_sweep(data: Any, source_name: str) -> SweepDefinition:
    """Validate loaded sweep data; ``source_name`` (the file) goes into every error."""
    try:
        return _parse(data, source_name)
    except _Bad as bad:
        key, message, hint = (*bad.args, None)[:3]
        raise ConfigError(message, file=source_name, key=key, hint=hint) from None


def _parse(data: Any, source_name: str) -> SweepDefinition:
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise _Bad(None, f"a sweep file must be a mapping, got {got}", "see `grid:`, `script:`")
    block = {} if data.get("sweep") is None else data["sweep"]
    if not isinstance(block, dict):
        raise _Bad("sweep", "must be a mapping holding grid: and/or paired:")
    if "complete" in data:
        raise _Bad("complete", "is not a sweep file key", "run `hsm complete SWEEP` instead")
    opts = {k: v for k, v in data.items() if k != "sweep"}
    for pre, keys, allowed in (("sweep.", block, TOP_KEYS[1:]), ("", opts, TOP_KEYS)):
        for k in keys:
            if k not in allowed:
                raise _Bad(f"{pre}{k}", "unknown key", f"allowed: {', '.join(allowed)}")
    for k, v in block.items():
        if k in opts:
            raise _Bad(k, "given both inside and outside `sweep:`; keep one")
        opts[k] = v
    if "defaults" in opts:
        log.warning("%s: `defaults:` is ignored (HSM never applied it)", source_name)

    def where(k: str) -> str:
        return f"sweep.{k}" if k in block else k

    axes = _grid_axes(opts.get("grid"), where("grid"))
    axes += _paired_axes(opts.get("paired"), where("paired"))
    owner: dict[str, str] = {}
    for axis in axes:
        for k in axis.keys:
            if k in owner:
                raise _Bad(axis.name, f"parameter {k!r} is also set by {owner[k]}")
            owner[k] = axis.name
        texts = [canonical_json(list(row)) for row in axis.rows]  # the task_key identity
        if len(set(texts)) < len(texts):
            dup = next(t for i, t in enumerate(texts) if t in texts[:i])
            raise _Bad(axis.name, f"the value {dup} appears twice; points must differ")
    params = list(owner)

    script, command = opts.get("script"), opts.get("command")
    if (script is None) == (command is None):
        what = "both given" if script is not None else "missing"
        raise _Bad("script/command", f"{what}: give one of `script:` (a Hydra app) or `command:`")
    # Unless the file names one, each source puts its own interpreter here (local: the
    # one hsm runs under; ssh/hpc: their `python:` setting).
    python = opts.get("python", PYTHON)
    if script is not None:
        if not isinstance(script, str) or not script:
            raise _Bad(where("script"), "must be the path of a script")
        if not isinstance(python, str) or not python:
            raise _Bad(where("python"), "must be the path of a Python interpreter")
        axes = [_with_overrides(axis) for axis in axes]
    else:
        if "python" in opts:
            raise _Bad(where("python"), "only applies to `script:`; put it in `command:`")
        try:
            command = ov.parse_command(command, params)
        except ov.TemplateError as err:
            at = where("command") + ("" if err.index is None else f"[{err.index}]")
            raise _Bad(at, str(err), err.hint)
        if unused := set(params).difference(*(ov.Template(part).names for part in command)):
            log.warning("%s: params not used by the command: %s", source_name, sorted(unused))

    env = opts.get("env") or {}
    if not isinstance(env, dict):
        raise _Bad(where("env"), "must be a mapping NAME: value")
    for k, v in env.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise _Bad(f"{where('env')}.{k}", "not a valid environment variable name")
        try:
            if isinstance(v, bool) or not isinstance(v, (str, int, float)) or "\0" in str(v):
                raise ov.TemplateError("must be a string or a number")
            ov.Template.checked(str(v), params)
        except ov.TemplateError as err:
            raise _Bad(f"{where('env')}.{k}", str(err), err.hint)
    cwd = opts.get("cwd", ".")
    if not isinstance(cwd, str) or not cwd or cwd.startswith(("/", "~")):
        raise _Bad(where("cwd"), "must be a directory relative to the project root")
    metadata = opts.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _Bad(where("metadata"), "must be a mapping")
    retries = opts.get("max_retries")
    if retries is not None and (type(retries) is not int or retries < 0):
        raise _Bad(where("max_retries"), "must be a whole number >= 0")

    return SweepDefinition(
        script=script,
        command=command,
        python=python,
        env={k: str(v) for k, v in env.items()},
        cwd=cwd,
        timeout_s=_parse_timeout(opts.get("timeout"), where("timeout")),
        max_retries=retries,
        metadata=metadata,
        raw=data,
        source_name=source_name,
        _axes=tuple(axes),
    )


def _flatten(value: dict[Any, Any], name: str, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) pairs of a nested mapping, in file order."""
    if not value:
        raise _Bad(name + (f".{prefix[:-1]}" if prefix else ""), "empty mapping; give values")
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise _Bad(f"{name}.{prefix}{k}", "parameter names must be non-empty strings")
        if isinstance(v, dict):
            yield from _flatten(v, name, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _check_values(values: list[Any], where: str) -> None:
    for v in values:
        try:
            ov.check_value(v)
        except ov.UnrepresentableValue as err:
            raise _Bad(where, str(err))


def _grid_axes(grid: Any, name: str) -> list[_Axis]:
    if grid is None:
        return []
    if not isinstance(grid, dict):
        raise _Bad(name, "must be a mapping param: [values]")
    axes = []
    for key, value in _flatten(grid, name):
        values = value if isinstance(value, list) else [value]  # a scalar: one fixed value
        if not values:
            raise _Bad(f"{name}.{key}", "empty list; give at least one value")
        _check_values(values, f"{name}.{key}")
        axes.append(_Axis(f"{name}.{key}", (key,), [(v,) for v in values]))
    return axes


def _paired_axes(paired: Any, name: str) -> list[_Axis]:
    if paired is None:
        return []
    hint = "write paired: [{group: {param: [values], ...}}, ...]"
    if not isinstance(paired, list):
        raise _Bad(name, "must be a list of groups", hint)
    axes = []
    for i, item in enumerate(paired):
        if not isinstance(item, dict) or not item:
            raise _Bad(f"{name}[{i}]", "each group must be a mapping group_name: {...}", hint)
        columns: dict[str, list[Any]] = {}  # several group maps in one item: one zipped group
        for group, group_params in item.items():
            if not isinstance(group_params, dict):
                raise _Bad(f"{name}[{i}].{group}", "must be a mapping param: [values]", hint)
            for key, values in _flatten(group_params, f"{name}[{i}].{group}"):
                at = f"{name}[{i}].{group}.{key}"
                if not isinstance(values, list) or not values:
                    raise _Bad(at, "must be a non-empty list (paired lists are zipped)")
                if key in columns:
                    raise _Bad(at, "parameter given twice in this group")
                _check_values(values, at)
                columns[key] = values
        label = f"{name}[{i}].{'+'.join(map(str, item))}"
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise _Bad(label, f"paired lists must have equal lengths, got {sizes}")
        axes.append(_Axis(label, tuple(columns), list(zip(*columns.values(), strict=True))))
    return axes


def _with_overrides(axis: _Axis) -> _Axis:
    """The axis with each row's Hydra overrides, formatted once for all points using it."""
    columns = []
    for i, key in enumerate(axis.keys):
        at = axis.name if len(axis.keys) == 1 else f"{axis.name}.{key}"
        if not ov.is_hydra_key(key):
            raise _Bad(at, f"{key!r} is not a Hydra override key", "use names like a.b_c or +a.b")
        try:
            columns.append([f"{key}={ov.format_value(row[i])}" for row in axis.rows])
        except ov.UnrepresentableValue as err:
            raise _Bad(at, str(err))
    return replace(axis, args=list(zip(*columns, strict=True)))


def _parse_timeout(value: Any, where: str) -> float | None:
    seconds = float(value) if type(value) in (int, float) else -1.0
    if isinstance(value, str) and (m := _DURATION.match(value.strip())):
        d, h, mi, s = (int(x or 0) for x in m.groups())
        seconds = float(((d * 24 + h) * 60 + mi) * 60 + s)
    if value is not None and not 0 < seconds < float("inf"):
        raise _Bad(where, f"{value!r} is not a duration", "give seconds or HH:MM:SS")
    return None if value is None else seconds
