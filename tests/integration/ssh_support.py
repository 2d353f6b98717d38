"""Shared set-up for the ssh source tests: a local git project, a sweep store, specs for
the loopback hosts (each test gets its own remote project dir), and a runner."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hsm_core.model import SourceSpec, TaskEvent, TaskSpec, task_key
from hsm_core.orchestrate import RunOptions, RunOutcome, context_for, run_sweep
from hsm_core.sources.base import ComputeSource
from hsm_core.store import SweepStore
from tests.services import SSHEnv

# Writes argv[1] to stdout as the exact bytes it received, and what it saw of its
# environment to results/env.json (in HSM_TASK_DIR, so collection brings it back).
ECHO_PY = """\
import json, os, sys
sys.stdout.buffer.write(os.fsencode(sys.argv[1]) if len(sys.argv) > 1 else b"")
keys = ("HSM_SWEEP_ID", "HSM_TASK_ID", "HSM_TASK_DIR", "HSM_SWEEP_DIR", "SSH_CONNECTION")
seen = {k: os.environ.get(k) for k in keys}
seen["cwd"] = os.getcwd()
with open(os.path.join(os.environ["HSM_TASK_DIR"], "results", "env.json"), "w") as f:
    json.dump(seen, f)
"""

FAST_SSH = {  # notice a dead host within a few seconds (tests only)
    "keepalive_interval": 1,
    "keepalive_count": 2,
    "connect_timeout": 2,
    "reconnect_window": 2,
    "kill_grace": 1,
}


def make_project(root: Path, files: dict[str, str] | None = None) -> Path:
    """A small git project (one commit) with echo.py."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "echo.py").write_text(ECHO_PY)
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=root, check=True)
    return root


_made: list[str] = []


def remote_project(ssh_env: SSHEnv, alias: str) -> str:
    """A fresh remote project dir for one test, removed when the test session ends (the
    loopback hosts share our filesystem)."""
    path = f"{ssh_env.host(alias).project_dir}/t_{uuid.uuid4().hex[:10]}"
    _made.append(path)
    return path


@atexit.register
def _remove_remote_projects() -> None:
    for path in _made:
        shutil.rmtree(path, ignore_errors=True)


def ssh_spec(
    ssh_env: SSHEnv,
    alias: str,
    slots: int = 2,
    project_dir: str | None = None,
    **options: Any,
) -> SourceSpec:
    host = ssh_env.host(alias)
    opts: dict[str, Any] = {
        "host": alias,
        "ssh_config": str(ssh_env.ssh_config),
        "project_dir": project_dir or remote_project(ssh_env, alias),
        "python": host.python,
        "sync": "push",
    }
    opts.update(options)
    return SourceSpec(alias, "ssh", slots, options=opts)


def ssh_entry(ssh_env: SSHEnv, alias: str, slots: int = 2, **extra: Any) -> dict[str, Any]:
    """An hsm.yaml `sources:` entry for a loopback host (own remote project dir, quick to
    notice a dead host)."""
    return {
        "type": "ssh",
        "host": alias,
        "ssh_config": str(ssh_env.ssh_config),
        "project_dir": remote_project(ssh_env, alias),
        "python": ssh_env.host(alias).python,
        "sync": "push",
        "max_parallel": slots,
        **FAST_SSH,
        **extra,
    }


def command_tasks(argvs: Sequence[Sequence[str]], params: Sequence[dict[str, Any]] | None = None):
    out = []
    for i, argv in enumerate(argvs):
        p = params[i] if params else {"i": i}
        out.append(TaskSpec(key=task_key(p), num=i + 1, params=p, argv=tuple(argv)))
    return out


def new_store(sweep_dir: Path, project: Path, tasks: Sequence[TaskSpec]) -> SweepStore:
    store = SweepStore.create(
        sweep_dir,
        sweep_id=f"t{uuid.uuid4().hex[:12]}",
        kind="command",
        config={},
        metadata={},
        project_root=project,
    )
    store.add_tasks(tasks)
    return store


async def run(
    store: SweepStore,
    specs: Sequence[SourceSpec],
    *,
    sources: Sequence[ComputeSource] | None = None,
    listener: Callable[[TaskEvent], None] | None = None,
    engine_hook: Callable[[Any], None] | None = None,
    **opts: Any,
) -> RunOutcome:
    """run_sweep with an optional listener on every event the engine records."""
    hooked = False

    def progress(engine: Any) -> None:
        nonlocal hooked
        if not hooked:
            hooked = True
            if listener is not None:
                engine.listeners.append(listener)
            if engine_hook is not None:
                engine_hook(engine)

    ctx = context_for(store, sys.executable)
    return await run_sweep(
        store,
        ctx,
        specs,
        RunOptions(**opts),
        sources=sources,
        progress=progress,
        handle_signals=False,
    )
