"""Running real Hydra apps (the example app, small apps under apps/) as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hsm_core.taskdir import WORKER_RECORD

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example_app" / "train.py"
APPS = Path(__file__).resolve().parent / "apps"
HSM = [
    "hydra/launcher=hsm",
    "hydra/sweeper=hsm",
    "hydra.launcher.sources=local:2",
    "hydra.launcher.progress=false",
]


def run_app(
    app: Path,
    args: list[str],
    *,
    sweep_dir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(app), "-m", *args, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(
        cmd,
        cwd=sweep_dir.parent,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_app(
    app: Path, args: list[str], *, sweep_dir: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """In its own session, so that a killpg() plays the terminal's Ctrl-C."""
    cmd = [sys.executable, str(app), "-m", *args, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.Popen(
        cmd,
        cwd=sweep_dir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def jobs(sweep_dir: Path) -> dict[int, dict[str, Any]]:
    """Hydra job number -> its task: state, attempts, task dir, result record."""
    import json

    from hsm_core.store import SweepStore

    store = SweepStore.open(sweep_dir, readonly=True)
    try:
        nums = store.meta("hydra_job_nums") or {}
        latest = store.latest_attempts()
        out: dict[int, dict[str, Any]] = {}
        for task in store.tasks():
            if task.key not in nums:
                continue
            tdir = sweep_dir / "tasks" / task.name
            try:
                result = json.loads((tdir / WORKER_RECORD).read_text())
            except OSError:
                result = None
            out[int(nums[task.key])] = {
                "state": latest[task.key].state.value,
                "attempts": len(store.attempts(task.key)),
                "dir": tdir,
                "result": result,
                "params": dict(task.params),
            }
        return out
    finally:
        store.close()


def job_return(task_dir: Path) -> Any:
    from hsm_core.taskdir import read_job_return

    return read_job_return(task_dir)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ctrl_c_when(
    proc: subprocess.Popen[str], ready: Any, message: str, timeout: float = 30
) -> tuple[str, str]:
    """Once `ready()` holds, press Ctrl-C (SIGINT to the app's process group, as a
    terminal does) and return its (stdout, stderr); kill it if it does not end."""
    import signal

    from tests.helpers import wait_for

    try:
        wait_for(ready, timeout=timeout, message=message, retry_on=(Exception,))
        os.killpg(proc.pid, signal.SIGINT)
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
