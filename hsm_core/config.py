"""hsm.yaml (named sources, health settings) and the `--sources` selection syntax.

Every error names the file and the key and lists what is allowed, before any task starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hsm_core.errors import ConfigError
from hsm_core.model import SourceSpec
from hsm_core.strategies import STRATEGIES

CONFIG_NAME = "hsm.yaml"
SOURCE_TYPES = ("local", "ssh", "hpc")
TOP_KEYS = ("sources", "health", "strategy", "max_retries", "collect", "require_all_sources")
HEALTH_DEFAULTS: dict[str, Any] = {
    "interval_s": 300.0,
    "consecutive_failures": 3,
    "failure_rate": 0.4,
    "min_tasks": 5,
    "timeout_s": 20.0,
}


@dataclass(frozen=True)
class HsmConfig:
    path: Path | None
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    health: Mapping[str, Any] = field(default_factory=lambda: dict(HEALTH_DEFAULTS))
    strategy: str = "least_loaded"
    max_retries: int = 0
    require_all_sources: bool = False  # a source that cannot start stops the run

    @property
    def where(self) -> str:
        return str(self.path) if self.path else "hsm.yaml"


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hsm" / CONFIG_NAME


def find_config(project_root: Path) -> Path | None:
    """The project's hsm.yaml wins over the user's ~/.config/hsm/hsm.yaml."""
    for candidate in (Path(project_root) / CONFIG_NAME, user_config_path()):
        if candidate.is_file():
            return candidate
    return None


def load_config(project_root: Path, path: Path | None = None) -> HsmConfig:
    path = path or find_config(project_root)
    if path is None:
        return HsmConfig(None)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"not valid YAML{where}", file=str(path), hint="fix the syntax and run again"
        ) from None
    return parse_config(data, str(path), path)


def parse_config(data: Any, where: str, path: Path | None = None) -> HsmConfig:
    if not isinstance(data, dict):
        raise ConfigError("must be a mapping with a `sources:` key", file=where)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r}", file=where, hint=f"allowed: {', '.join(TOP_KEYS)}"
        )
    sources = data.get("sources") or {}
    if not isinstance(sources, dict):
        raise ConfigError("must map source names to settings", file=where, key="sources")
    for name, entry in sources.items():
        _check_source(name, entry, where)
    health = dict(HEALTH_DEFAULTS)
    given = data.get("health") or {}
    if not isinstance(given, dict):
        raise ConfigError("must be a mapping", file=where, key="health")
    for k, v in given.items():
        if k not in HEALTH_DEFAULTS:
            raise ConfigError(
                f"unknown key {k!r}",
                file=where,
                key="health",
                hint=f"allowed: {', '.join(HEALTH_DEFAULTS)}",
            )
        if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
            raise ConfigError("must be a non-negative number", file=where, key=f"health.{k}")
        health[k] = v
    strategy = data.get("strategy", "least_loaded")
    check_strategy(strategy, where, "strategy")
    retries = data.get("max_retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ConfigError("must be a whole number >= 0", file=where, key="max_retries")
    require_all = data.get("require_all_sources", False)
    if not isinstance(require_all, bool):
        raise ConfigError("must be true or false", file=where, key="require_all_sources")
    return HsmConfig(path, sources, health, strategy, retries, require_all)


def check_at_least(value: Any, minimum: float, key: str, what: str = "a whole number") -> Any:
    """A numeric flag's value, or one clear line (`--max-parallel 0` would wait forever)."""
    if value is not None and not value >= minimum:
        raise ConfigError(f"must be {what} >= {minimum:g}, not {value:g}", key=key)
    return value


def check_strategy(strategy: Any, where: str, key: str) -> str:
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown strategy {strategy!r}",
            file=where,
            key=key,
            hint=f"valid: {', '.join(STRATEGIES)}",
        )
    return str(strategy)


def _check_source(name: Any, entry: Any, where: str) -> None:
    key = f"sources.{name}"
    if not isinstance(name, str) or not name or ":" in name or "," in name:
        raise ConfigError("source names are words without ':' or ','", file=where, key=key)
    if not isinstance(entry, dict):
        raise ConfigError("must be a mapping with at least `type:`", file=where, key=key)
    stype = entry.get("type")
    if stype not in SOURCE_TYPES:
        raise ConfigError(
            f"type is {stype!r}",
            file=where,
            key=f"{key}.type",
            hint=f"valid: {', '.join(SOURCE_TYPES)}",
        )
    mp = entry.get("max_parallel", 1)
    if not isinstance(mp, int) or isinstance(mp, bool) or mp < 1:
        raise ConfigError("must be a whole number >= 1", file=where, key=f"{key}.max_parallel")
    weight = entry.get("weight", 1.0)
    if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
        raise ConfigError("must be a number > 0", file=where, key=f"{key}.weight")
    if stype == "ssh" and not entry.get("host"):
        raise ConfigError("an ssh source needs `host:`", file=where, key=f"{key}.host")
    try:
        if stype == "ssh":
            from hsm_core.sources.ssh.options import check_keys

            check_keys(name, entry)  # only the keys: files named there may be elsewhere
        if stype == "hpc":
            from hsm_core.sources.hpc.options import parse_options

            parse_options(source_spec(name, entry))
    except ConfigError as err:  # the same line, with the file named
        text = err.message.removeprefix(f"{err.key}: ")
        raise ConfigError(text, file=where, key=err.key, hint=err.hint) from None


def source_spec(name: str, entry: Mapping[str, Any], slots: int | None = None) -> SourceSpec:
    options = {k: v for k, v in entry.items() if k not in ("type", "max_parallel", "weight")}
    default_slots = entry.get("max_parallel") or _default_slots(entry)
    return SourceSpec(
        name=name,
        type=str(entry["type"]),
        max_parallel=int(slots or default_slots),
        options=options,
        weight=float(entry.get("weight", 1.0)),
    )


def _default_slots(entry: Mapping[str, Any]) -> int:
    if entry.get("type") == "local":
        gpus = entry.get("gpus")
        return len(gpus) if gpus else (os.cpu_count() or 1)
    return 1


def parse_sources(text: str, config: HsmConfig) -> list[SourceSpec]:
    """`local:4,ssh:server1:8,hpc:cluster:32` or configured names: `server1,cluster:16`."""
    if not text or not text.strip():
        raise ConfigError("is empty", key="--sources", hint="e.g. --sources local:4")
    specs: list[SourceSpec] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            raise ConfigError(f"empty entry in {text!r}", key="--sources")
        parts = item.split(":")
        if parts[0] in SOURCE_TYPES and (parts[0] == "local" or len(parts) >= 2):
            stype = parts[0]
            name = "local" if stype == "local" else parts[1]
            rest = parts[1:] if stype == "local" else parts[2:]
        else:
            stype, name, rest = None, parts[0], parts[1:]
        if len(rest) > 1:
            raise ConfigError(
                f"{item!r} has too many ':' parts",
                key="--sources",
                hint="use TYPE:NAME:SLOTS, NAME:SLOTS or local:SLOTS",
            )
        slots = _slots(rest[0], item) if rest else None
        entry = config.sources.get(name)
        if entry is None:
            if name == "local" and stype in (None, "local"):
                entry = {"type": "local"}
            else:
                known = ", ".join(sorted(config.sources)) or "none"
                raise ConfigError(
                    f"unknown source {name!r}",
                    key="--sources",
                    hint=f"sources in {config.where}: {known}; add it under `sources:` there",
                )
        if stype is not None and entry.get("type") != stype:
            raise ConfigError(
                f"{name!r} is a {entry.get('type')} source in {config.where}, not {stype}",
                key="--sources",
            )
        if any(s.name == name for s in specs):
            raise ConfigError(f"source {name!r} named twice", key="--sources")
        specs.append(source_spec(name, entry, slots))
    return specs


def _slots(text: str, item: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(
            f"slot count {text!r} in {item!r} is not a whole number >= 1", key="--sources"
        )
    return n
