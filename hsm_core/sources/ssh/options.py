"""The hsm.yaml keys of an ssh source, checked once, with errors naming the key.

Example (every key is described in docs/ssh.md)::

    server1:
      type: ssh
      host: server1                 # address or ~/.ssh/config alias (required)
      project_dir: /home/alice/proj # the remote copy of the project (required)
      python: /home/alice/envs/ml/bin/python
      setup: ["source ~/envs/ml/bin/activate"]
      max_parallel: 8
      gpus: [0, 1]
      sync: warn                    # warn | fail | push
      exclude: ["*.ckpt"]           # never pulled back
      checksums: true               # sha256 of every collected file, checked on arrival
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hsm_core.errors import ConfigError
from hsm_core.transport.ssh import TARGET_KEYS, SSHTarget

SYNC_POLICIES = ("warn", "fail", "push")
KNOWN_KEYS = (
    *TARGET_KEYS,
    "project_dir",
    "python",
    "agent_python",
    "setup",
    "shell",
    "gpus",
    "sync",
    "exclude",
    "checksums",
    "prefetch",
    "inline_max",
    "reconnect_window",
    "down_timeout",
    "kill_grace",
    "agent_timeout",
)


@dataclass(frozen=True)
class SSHOptions:
    target: SSHTarget
    project_dir: str
    python: str = "python3"
    agent_python: str = "python3"
    setup: tuple[str, ...] = ()
    shell: str = "/bin/bash"
    gpus: tuple[str, ...] = ()
    sync: str = "warn"
    exclude: tuple[str, ...] = ()
    checksums: bool = True
    prefetch: int = 2
    inline_max: int = 64 * 1024
    reconnect_window: float = 20.0
    down_timeout: float = 120.0
    kill_grace: float = 5.0
    agent_timeout: float = 60.0

    @classmethod
    def parse(cls, name: str, options: Mapping[str, Any]) -> SSHOptions:
        where = f"sources.{name}"

        def fail(key: str, message: str, hint: str | None = None) -> ConfigError:
            return ConfigError(message, key=f"{where}.{key}", hint=hint)

        check_keys(name, options)
        target = SSHTarget.from_options(options, where=where)
        project_dir = options.get("project_dir")
        if not isinstance(project_dir, str) or not project_dir.strip():
            raise fail(
                "project_dir",
                "missing: the path of the project's copy on that host",
                "e.g. project_dir: /home/alice/proj (relative paths start at the home dir)",
            )
        python = _string(options, "python", "python3", fail)
        agent_python = options.get("agent_python")
        if agent_python is None:
            # The agent starts before any setup line: only an absolute python is safe.
            agent_python = python if posixpath.isabs(python) else "python3"
        agent_python = _string({"agent_python": agent_python}, "agent_python", "", fail)
        setup = options.get("setup") or []
        if isinstance(setup, str):
            setup = [setup]
        if not isinstance(setup, list) or not all(isinstance(s, str) for s in setup):
            raise fail("setup", "must be a list of shell lines")
        gpus = options.get("gpus") or []
        if not isinstance(gpus, list) or not all(
            isinstance(g, (int, str)) and not isinstance(g, bool) for g in gpus
        ):
            raise fail("gpus", "must be a list of GPU ids, e.g. [0, 1]")
        sync = options.get("sync", "warn")
        if sync not in SYNC_POLICIES:
            raise fail("sync", f"is {sync!r}", f"valid: {', '.join(SYNC_POLICIES)}")
        exclude = options.get("exclude") or []
        if isinstance(exclude, str):
            exclude = [exclude]
        if not isinstance(exclude, list) or not all(isinstance(e, str) for e in exclude):
            raise fail("exclude", "must be a list of glob patterns, e.g. ['*.ckpt']")
        checksums = options.get("checksums", True)
        if not isinstance(checksums, bool):
            raise fail("checksums", f"must be true or false, got {checksums!r}")
        numbers = {
            key: _number(options, key, default, fail)
            for key, default in (
                ("prefetch", cls.prefetch),
                ("inline_max", cls.inline_max),
                ("reconnect_window", cls.reconnect_window),
                ("down_timeout", cls.down_timeout),
                ("kill_grace", cls.kill_grace),
                ("agent_timeout", cls.agent_timeout),
            )
        }
        if numbers["agent_timeout"] <= 0:
            raise fail("agent_timeout", "must be a number of seconds > 0")
        return cls(
            target=target,
            project_dir=project_dir.rstrip("/") or "/",
            python=python,
            agent_python=agent_python,
            setup=tuple(setup),
            shell=_string(options, "shell", "/bin/bash", fail),
            gpus=tuple(str(g) for g in gpus),
            sync=str(sync),
            exclude=tuple(exclude),
            checksums=checksums,
            prefetch=int(numbers["prefetch"]),
            inline_max=int(numbers["inline_max"]),
            reconnect_window=numbers["reconnect_window"],
            down_timeout=numbers["down_timeout"],
            kill_grace=numbers["kill_grace"],
            agent_timeout=numbers["agent_timeout"],
        )


def check_keys(name: str, options: Mapping[str, Any]) -> None:
    """An unknown key (a typo such as `pyhton:`) is a ConfigError listing the valid ones."""
    unknown = sorted(set(options) - set(KNOWN_KEYS) - {"type", "max_parallel", "weight"})
    if unknown:
        raise ConfigError(
            "unknown key for an ssh source",
            key=f"sources.{name}.{unknown[0]}",
            hint=f"allowed: {', '.join(KNOWN_KEYS)}, max_parallel, weight",
        )


def _string(options: Mapping[str, Any], key: str, default: str, fail: Any) -> str:
    value = options.get(key, default)
    if not isinstance(value, str) or not value:
        raise fail(key, f"must be a non-empty string, got {value!r}")
    return value


def _number(options: Mapping[str, Any], key: str, default: float, fail: Any) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise fail(key, f"must be a number >= 0, got {value!r}")
    return float(value)


def remote_path(base: str, home: str) -> str:
    """Resolve `~`, `~/x` and relative paths against the remote home directory."""
    if base == "~":
        return home
    if base.startswith("~/"):
        return posixpath.join(home, base[2:])
    if not posixpath.isabs(base):
        return posixpath.join(home, base)
    return base
