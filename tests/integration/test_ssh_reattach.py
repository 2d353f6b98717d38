"""The orchestrator is SIGKILLed while remote tasks run: they keep running, and the next
run re-attaches to them (same attempt, no second start) and collects their folders."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from hsm_core.model import TaskState
from hsm_core.remote_agent import JOURNAL_DIR, Journal
from hsm_core.store import SweepStore
from tests.helpers import wait_for
from tests.integration.ssh_support import command_tasks, make_project, new_store, run, ssh_spec
from tests.services import SSHEnv

DRIVER = """
import asyncio, json, sys
from pathlib import Path
from hsm_core.model import SourceSpec
from hsm_core.store import SweepStore
from tests.integration.ssh_support import run
spec = json.loads(Path(sys.argv[2]).read_text())
store = SweepStore.open(Path(sys.argv[1]))
asyncio.run(run(store, [SourceSpec(spec["name"], "ssh", spec["slots"], spec["options"])]))
"""


def _states(sweep_dir: Path) -> dict[str, TaskState]:
    store = SweepStore.open(sweep_dir, readonly=True)
    try:
        return {k: a.state for k, a in store.latest_attempts().items()}
    finally:
        store.close()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkilled_orchestrator_reattaches_and_collects(ssh_env: SSHEnv, tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    # Each task appends to a file in the remote project: a second start would show.
    script = 'echo start >> "$HSM_TASK_DIR/results/starts"; sleep 2.5; echo done-$0'
    tasks = command_tasks([["sh", "-c", script, str(i)] for i in range(4)])
    store = new_store(tmp_path / "sweep", project, tasks)
    sweep_dir = store.sweep_dir
    store.close()
    # 2 slots + 2 queued inside the agent: the queued ones die with it (never started).
    spec = ssh_spec(ssh_env, "h1", slots=2, prefetch=2)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"name": spec.name, "slots": 2, "options": spec.options}))
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(sweep_dir), str(spec_file)],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        running = wait_for(
            lambda: (
                [k for k, s in _states(sweep_dir).items() if s is TaskState.RUNNING]
                if sum(s is TaskState.RUNNING for s in _states(sweep_dir).values()) == 2
                else None
            ),
            timeout=20,
            message="two tasks RUNNING under the first orchestrator",
        )
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()

    remote_root = Path(spec.options["project_dir"]) / ".hsm" / "sweeps"
    # Journaled before "started" was reported (hosts share our disk).
    [journal_dir] = remote_root.glob(f"*/{JOURNAL_DIR}")
    starts = Journal(str(journal_dir)).refresh().starts
    assert len(starts) == 2
    pids = [rec["pid"] for rec in starts.values()]
    assert all(_alive(pid) for pid in pids), "remote tasks died with the orchestrator"

    store = SweepStore.open(sweep_dir)
    outcome = asyncio.run(run(store, [spec]))

    assert outcome.counts[TaskState.COMPLETED] == 4, outcome.counts
    for task in store.tasks():
        attempts = store.attempts(task.key)
        assert [a.state for a in attempts] == [TaskState.COMPLETED], (task.name, attempts)
        tdir = sweep_dir / "tasks" / task.name
        assert (tdir / "stdout.log").read_text() == f"done-{task.argv[3]}\n"
        assert (tdir / "results" / "starts").read_text() == "start\n", "started twice"
    assert set(running) <= {t.key for t in store.tasks()}
    store.close()
