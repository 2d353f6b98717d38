"""The launcher's settings, checked, and the sources they select (pool + hsm.yaml).

A pool entry has the keys of an hsm.yaml `sources:` entry. An entry may also name a
source of hsm.yaml and change some of its keys (`server1: {max_parallel: 4}`): hsm.yaml
gives the rest. `sources: "local:2,server1"` picks from the pool first, then hsm.yaml,
with the CLI's syntax; empty, it takes every source of the pool.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm_core.config import (
    HsmConfig,
    check_strategy,
    load_config,
    parse_config,
    parse_sources,
    source_spec,
)
from hsm_core.errors import ConfigError
from hsm_core.job_output import check_mode
from hsm_core.model import SourceSpec
from hsm_core.sources.hpc import keys as hpc_keys

log = logging.getLogger(__name__)

SYNC_POLICIES = ("warn", "fail", "push")
WHERE = "hydra.launcher"


@dataclass(frozen=True)
class Settings:
    sources: str | None
    pool_name: str
    pool: dict[str, Any]
    strategy: str | None  # None: hsm.yaml's
    max_retries: int | None  # None: hsm.yaml's
    max_parallel: int | None
    timeout_s: float | None
    health: dict[str, Any] = field(default_factory=dict)
    sync: str | None = None
    ahead: int = 2
    progress: bool = True
    require_all_sources: bool | None = None  # None: hsm.yaml's
    output: str = "failed"
    output_rate: float = 20.0
    # submitit's keys set on the launcher (hpc_keys), for every hpc source of the run.
    hpc: dict[str, Any] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _int(params: Mapping[str, Any], key: str, low: int, default: int | None) -> int | None:
    value = params.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"must be a whole number >= {low}, got {value!r}", key=f"{WHERE}.{key}")
    return value


def settings_from(params: Mapping[str, Any], pool_choice: str | None = None) -> Settings:
    params = {k: _plain(v) for k, v in params.items()}
    pool = params.get("pool") or {"name": "local", "sources": {"local": {"type": "local"}}}
    if not isinstance(pool, dict) or not isinstance(pool.get("sources") or {}, dict):
        raise ConfigError(
            "must be a mapping with `sources:`",
            key=f"{WHERE}.pool",
            hint="a pool file <config dir>/hydra/launcher/pool/NAME.yaml holds "
            "`sources: {name: {type: ...}}`",
        )
    timeout = params.get("timeout_s")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigError(
            f"must be a number of seconds > 0, got {timeout!r}", key=f"{WHERE}.timeout_s"
        )
    sync = params.get("sync")
    if sync is not None and sync not in SYNC_POLICIES:
        raise ConfigError(
            f"unknown policy {sync!r}",
            key=f"{WHERE}.sync",
            hint=f"valid: {', '.join(SYNC_POLICIES)}",
        )
    require_all = params.get("require_all_sources")
    if require_all is not None and not isinstance(require_all, bool):
        raise ConfigError(
            f"must be true or false, got {require_all!r}", key=f"{WHERE}.require_all_sources"
        )
    sources = params.get("sources")
    if sources is not None and not isinstance(sources, str):
        raise ConfigError(
            f"must be a string like 'local:2,server1:8', got {sources!r}", key=f"{WHERE}.sources"
        )
    return Settings(
        sources=sources or None,
        pool_name=str(pool_choice or pool.get("name") or "pool"),
        pool=dict(pool.get("sources") or {}),
        strategy=_strategy(params.get("strategy")),
        max_retries=_int(params, "max_retries", 0, None),
        max_parallel=_int(params, "max_parallel", 1, None),
        timeout_s=float(timeout) if timeout is not None else None,
        health={k: v for k, v in (params.get("health") or {}).items() if v is not None},
        sync=sync,
        ahead=_int(params, "ahead", 0, 2) or 0,
        progress=bool(params.get("progress", True)),
        require_all_sources=require_all,
        output=check_mode(params.get("output", "failed"), f"{WHERE}.output"),
        output_rate=_rate(params.get("output_rate", 20.0)),
        hpc=_hpc_keys(params),
    )


def _hpc_keys(params: Mapping[str, Any]) -> dict[str, Any]:
    keys = hpc_keys.launcher_keys(params, WHERE)
    if params.get("signal") is not None:
        keys["signal"] = hpc_keys.check_signal(params["signal"], f"{WHERE}.signal")
    return keys


def _rate(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ConfigError(
            f"must be a number of lines per second > 0, got {value!r}",
            key=f"{WHERE}.output_rate",
        )
    return float(value)


def _strategy(value: Any) -> str | None:
    return None if value is None else check_strategy(value, WHERE, "strategy")


@dataclass(frozen=True)
class Resolved:
    """Settings merged with hsm.yaml: the launcher's explicit values win."""

    specs: list[SourceSpec]
    strategy: str
    max_retries: int
    health: dict[str, Any]
    require_all_sources: bool = False


def resolve(settings: Settings, project_root: Path) -> Resolved:
    base = load_config(project_root)
    return Resolved(
        specs=resolve_sources(settings, base),
        strategy=settings.strategy or base.strategy,
        max_retries=base.max_retries if settings.max_retries is None else settings.max_retries,
        health={**base.health, **settings.health},
        require_all_sources=base.require_all_sources
        if settings.require_all_sources is None
        else settings.require_all_sources,
    )


def resolve_sources(settings: Settings, base: HsmConfig) -> list[SourceSpec]:
    """The run's sources; one clear ConfigError naming the pool or hsm.yaml if wrong."""
    entries: dict[str, Any] = {k: dict(v) for k, v in base.sources.items()}
    for name, entry in settings.pool.items():
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise ConfigError(
                "must be a mapping of source settings",
                file=f"hydra/launcher/pool={settings.pool_name}",
                key=f"sources.{name}",
            )
        entries[name] = {**entries.get(name, {}), **entry}
        if name == "local":
            entries[name].setdefault("type", "local")
    config = parse_config(
        {"sources": entries},
        f"hydra/launcher/pool={settings.pool_name}"
        + (f" (with {base.where})" if base.path else ""),
    )
    if settings.sources:
        specs = parse_sources(settings.sources, config)
    else:
        specs = [source_spec(name, config.sources[name]) for name in settings.pool]
    if not specs:
        raise ConfigError(
            "the pool has no sources",
            file=f"hydra/launcher/pool={settings.pool_name}",
            hint="add one under `sources:`, or set hydra.launcher.sources=local:2",
        )
    if settings.hpc:
        specs = _with_hpc_keys(specs, settings.hpc)
    if settings.sync:
        specs = [
            s
            if s.type == "local"
            else SourceSpec(
                s.name, s.type, s.max_parallel, {**s.options, "sync": settings.sync}, s.weight
            )
            for s in specs
        ]
    return specs


def _with_hpc_keys(specs: list[SourceSpec], keys: dict[str, Any]) -> list[SourceSpec]:
    """The launcher's submitit keys over every hpc source's own; a run without one
    (a config tried on the local pool first) only says they are not used."""
    if not any(s.type == "hpc" for s in specs):
        log.warning(
            "%s apply to hpc sources; this run has none, so they are not used",
            ", ".join(f"{WHERE}.{k}" for k in sorted(keys)),
        )
        return specs
    out = []
    for s in specs:
        if s.type == "hpc":
            scheduler = str(s.options.get("scheduler", "slurm"))
            hpc_keys.check_scheduler(keys, scheduler, s.name, lambda k: f"{WHERE}.{k}")
            merged = hpc_keys.merge(s.options, keys)
            s = SourceSpec(s.name, s.type, s.max_parallel, merged, s.weight)
        out.append(s)
    return out
