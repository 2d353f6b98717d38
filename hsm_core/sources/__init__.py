"""Compute sources, created by type name through a lazy registry.

A source module is imported only when a sweep uses that type, so `hsm run` on local
processes never pays for asyncssh or submitit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from hsm_core.errors import ConfigError

if TYPE_CHECKING:
    from hsm_core.model import SourceSpec
    from hsm_core.sources.base import ComputeSource, SweepContext

_REGISTRY: dict[str, str] = {
    "local": "hsm_core.sources.local:LocalSource",
    "ssh": "hsm_core.sources.ssh.source:SSHSource",
    "hpc": "hsm_core.sources.hpc.source:HPCSource",
}


def register_source_type(type_name: str, target: str) -> None:
    """Register `module:Class` as the implementation of a source type."""
    _REGISTRY[type_name] = target


def source_types() -> list[str]:
    return sorted(_REGISTRY)


def source_class(type_name: str) -> type[ComputeSource]:
    try:
        target = _REGISTRY[type_name]
    except KeyError:
        raise ConfigError(
            f"unknown source type {type_name!r}",
            hint=f"valid types: {', '.join(source_types())}",
        ) from None
    module, _, cls = target.partition(":")
    found: type[ComputeSource] = getattr(importlib.import_module(module), cls)
    return found


def make_source(spec: SourceSpec, ctx: SweepContext) -> ComputeSource:
    return source_class(spec.type)(spec, ctx)
