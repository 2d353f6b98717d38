"""Views after a crash: whenever an orchestrator ends, every view agrees with the journal.

A SIGKILLed `hsm run` leaves views behind its journal (the tasks it settled since its
last refresh), perhaps a status.yaml cut short, and its own pid in sweep_metadata.yaml.
The next orchestrator (`hsm complete`) or `hsm cancel` must leave them all right.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from hsm_core.model import TaskEvent, TaskState
from hsm_core.store import SweepStore
from tests.sweep_utils import PY, command_tasks, hsm, hsm_popen, make_sweep, wait_for


def _dead_pid() -> int:
    proc = subprocess.Popen([PY, "-c", "pass"])
    proc.wait()
    return proc.pid


def _crashed_sweep(tmp_path: Path, n: int = 6) -> SweepStore:
    """The journal a SIGKILLed run leaves: three tasks COMPLETED whose views never caught
    up, one RUNNING whose process is gone, the dead run named as the orchestrator, and one
    status.yaml cut short."""
    tasks = command_tasks([[PY, "-c", "pass"]] * n)
    store = make_sweep(tmp_path, tasks)
    for t in tasks[:3]:
        for state in (TaskState.ASSIGNED, TaskState.RUNNING, TaskState.COMPLETED):
            assert store.apply(TaskEvent(t.key, 1, state, "local", exit_code=0))
    store.apply(TaskEvent(tasks[3].key, 1, TaskState.ASSIGNED, "local"))
    store.apply(TaskEvent(tasks[3].key, 1, TaskState.RUNNING, "local"))
    store.set_meta(
        "orchestrator", {"pid": _dead_pid(), "host": socket.gethostname(), "since": time.time()}
    )
    cut = store.task_dir(tasks[4]) / "status.yaml"
    cut.write_text(cut.read_text()[:12])
    return store


def _views(sweep_dir: Path) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    statuses = [
        yaml.safe_load(p.read_text()) for p in sorted((sweep_dir / "tasks").glob("*/status.yaml"))
    ]
    mapping = yaml.safe_load((sweep_dir / "task_mapping.yaml").read_text())["tasks"]
    meta = yaml.safe_load((sweep_dir / "sweep_metadata.yaml").read_text())
    return statuses, mapping, meta


def _assert_views_agree(store: SweepStore) -> None:
    latest = store.latest_attempts()
    statuses, mapping, meta = _views(store.sweep_dir)
    assert len(statuses) == len(latest)
    for t in store.tasks():
        att = latest[t.key]
        doc = yaml.safe_load((store.task_dir(t) / "status.yaml").read_text())
        assert (doc["state"], doc["attempt"]) == (att.state.value, att.attempt), t.name
        row = mapping[t.name]
        assert (row["state"], row["source"], row["attempt"]) == (
            att.state.value,
            att.source,
            att.attempt,
        ), t.name
    counts = store.counts()
    assert meta["counts"] == {s.value: counts.get(s, 0) for s in TaskState}
    assert meta["orchestrator"] is None


def test_complete_after_a_crash_leaves_every_view_right(tmp_path: Path) -> None:
    store = _crashed_sweep(tmp_path)
    res = hsm("complete", str(store.sweep_dir), "-s", "local:2", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert store.counts() == {TaskState.COMPLETED: 6}
    _assert_views_agree(store)
    store.close()


def test_cancel_after_a_crash_leaves_every_view_right(tmp_path: Path) -> None:
    store = _crashed_sweep(tmp_path)
    res = hsm("cancel", str(store.sweep_dir), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    _assert_views_agree(store)
    store.close()


def test_sigkilled_run_then_complete(tmp_path: Path) -> None:
    """The real thing: `hsm run` killed with SIGKILL while tasks settle, then completed."""
    n = 40
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump({"grid": {"i": list(range(n))}, "command": ["sleep", "0.05"]})
    )
    proc = hsm_popen(
        "run", "-c", "sweep.yaml", "-s", "local:2", "--sweep-id", "k", "--no-progress", cwd=tmp_path
    )
    db = tmp_path / "sweeps" / "outputs" / "k" / "sweep.db"

    def settled() -> int:
        if proc.poll() is not None or not db.exists():
            return 0
        store = SweepStore.open(db.parent, readonly=True)
        try:
            return store.counts().get(TaskState.COMPLETED, 0)
        finally:
            store.close()

    wait_for(lambda: settled() >= n // 3, timeout=60, retry_on=(Exception,))
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    res = hsm("complete", "k", "-s", "local:2", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    store = SweepStore.open(db.parent)
    assert store.counts() == {TaskState.COMPLETED: n}
    _assert_views_agree(store)
    store.close()
