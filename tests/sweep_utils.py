"""Small builders shared by tests: a stored sweep of command tasks, and running it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hsm_core.model import SourceSpec, TaskKind, TaskSpec, TaskState, task_key
from hsm_core.orchestrate import RunOptions, RunOutcome, context_for, run_sweep
from hsm_core.store import SweepStore
from tests.helpers import wait_for

__all__ = ["wait_for"]

PY = sys.executable


def command_tasks(argvs: Sequence[Sequence[str]], timeout_s: float | None = None) -> list[TaskSpec]:
    return [
        TaskSpec(
            key=task_key({"i": i}),
            num=i + 1,
            params={"i": i},
            kind=TaskKind.COMMAND,
            argv=tuple(argv),
            timeout_s=timeout_s,
        )
        for i, argv in enumerate(argvs)
    ]


def make_sweep(tmp: Path, tasks: Sequence[TaskSpec], sweep_id: str = "t") -> SweepStore:
    store = SweepStore.create(
        tmp / sweep_id, sweep_id=sweep_id, kind="command", config={}, project_root=tmp
    )
    store.add_tasks(tasks)
    return store


def run_local(
    store: SweepStore, slots: int = 2, options: dict[str, Any] | None = None, **opts: Any
) -> RunOutcome:
    spec = SourceSpec("local", "local", slots, options or {})
    return asyncio.run(
        run_sweep(store, context_for(store), [spec], RunOptions(**opts), handle_signals=False)
    )


def states(store: SweepStore) -> dict[int, TaskState]:
    latest = store.latest_attempts()
    return {t.num: latest[t.key].state for t in store.tasks()}


def hsm(
    *args: str,
    cwd: Path,
    check: bool = False,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    **kw: Any,
) -> subprocess.CompletedProcess[str]:
    """`hsm ARGS` in `cwd` (a sweep index of its own, 200 columns; `env` adds or wins)."""
    env = {**os.environ, "XDG_STATE_HOME": str(cwd / ".state"), "COLUMNS": "200", **(env or {})}
    proc = subprocess.run(
        [PY, "-m", "hsm_core.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"hsm {args} exited {proc.returncode}: {proc.stderr}")
    return proc


def hsm_popen(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "XDG_STATE_HOME": str(cwd / ".state"), "COLUMNS": "200", **(env or {})}
    return subprocess.Popen(
        [PY, "-m", "hsm_core.cli.main", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Tasks that write a `result.json` of their own (issue 11 item 5): each source must decide
# by the exit status its parent saw and keep the file as the task's output.
_OWN_RESULT = (
    "import json, os, signal, sys\n"
    "what = sys.argv[1]\n"
    "path = os.path.join(os.environ['HSM_TASK_DIR'], 'result.json')\n"
    "if what != 'none':\n"
    "    json.dump({'acc': 0.9} if what == 'ok' else {'exit_code': 0}, open(path, 'w'))\n"
    "if what == 'exit7': sys.exit(7)\n"
    "if what == 'segv': os.kill(os.getpid(), signal.SIGSEGV)\n"
)
OWN_RESULT_CASES = ("exit7", "segv", "ok", "none")


def own_result_tasks(python: str = PY) -> list[TaskSpec]:
    return command_tasks([[python, "-c", _OWN_RESULT, what] for what in OWN_RESULT_CASES])


def check_own_results(store: SweepStore) -> None:
    """A forged `{"exit_code": 0}` fails with the real status; an ordinary result.json of
    the task's own completes and stays in its folder, as written."""
    import json

    latest = store.latest_attempts()
    tasks = store.tasks()
    got = [(latest[t.key].state, latest[t.key].exit_code) for t in tasks]
    assert got[0] == (TaskState.FAILED, 7), got
    assert got[1][0] is TaskState.FAILED and "SIGSEGV" in str(latest[tasks[1].key].error), got
    assert got[2:] == [(TaskState.COMPLETED, 0), (TaskState.COMPLETED, 0)], got
    own = [json.loads((store.task_dir(t) / "result.json").read_text()) for t in tasks[:3]]
    assert own == [{"exit_code": 0}, {"exit_code": 0}, {"acc": 0.9}]
    assert not (store.task_dir(tasks[3]) / "result.json").exists()


# A task that leaves two processes behind and exits 0: one in its own process group, one
# that left it with setsid (issue 11 item 8: both must end with the task, on every source).
LEAVES_BEHIND = [
    "sh",
    "-c",
    'sleep 60 & echo $! > "$HSM_TASK_DIR/results/same"; '
    'setsid sleep 61 & echo $! > "$HSM_TASK_DIR/results/own"; exit 0',
]


def check_nothing_left_behind(store: SweepStore) -> None:
    from hsm_core.procs import pid_alive

    latest = store.latest_attempts()
    for task in store.tasks():
        assert latest[task.key].state is TaskState.COMPLETED, latest[task.key]
        for name in ("same", "own"):
            pid = int((store.task_dir(task) / "results" / name).read_text())
            wait_for(lambda p=pid: not pid_alive(p), timeout=15, message=f"{name} child {pid}")
