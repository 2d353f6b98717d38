"""A host whose sshd is killed or frozen (SIGSTOP) mid-sweep: its attempts become LOST,
never FAILED, they run again on the other host, and the sweep does not hang."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from hsm_core.model import TaskEvent, TaskState
from hsm_core.orchestrate import context_for
from hsm_core.sources.ssh.source import SSHSource
from tests.helpers import async_wait_for
from tests.integration.ssh_support import (
    FAST_SSH,
    command_tasks,
    make_project,
    new_store,
    run,
    ssh_spec,
)
from tests.services import SSHEnv, SSHHostControl


@pytest.mark.parametrize("failure", ["kill", "freeze"])
def test_dead_host_attempts_are_lost_and_rerun(
    ssh_env: SSHEnv, ssh_host_control: SSHHostControl, tmp_path: Path, failure: str
) -> None:
    project = make_project(tmp_path / "proj")
    tasks = command_tasks([["sh", "-c", "sleep 1.5; echo ok-$0", str(i)] for i in range(6)])
    store = new_store(tmp_path / "sweep", project, tasks)
    specs = [
        ssh_spec(ssh_env, "h1", prefetch=0, **FAST_SSH),
        ssh_spec(ssh_env, "h2", prefetch=0, **FAST_SSH),
    ]
    on_h2: set[str] = set()

    def listener(ev: TaskEvent) -> None:
        if ev.state is TaskState.RUNNING and ev.source == "h2":
            on_h2.add(ev.key)

    async def scenario() -> object:
        job = asyncio.create_task(run(store, specs, listener=listener))
        await async_wait_for(lambda: len(on_h2) == 2, timeout=15, message="2 tasks on h2")
        await asyncio.to_thread(getattr(ssh_host_control, failure), "h2")
        return await asyncio.wait_for(job, 40)

    t0 = time.monotonic()
    outcome = asyncio.run(scenario())
    elapsed = time.monotonic() - t0

    assert outcome.counts[TaskState.COMPLETED] == 6, outcome.counts  # type: ignore[attr-defined]
    attempts = store.attempts()
    assert not [a for a in attempts if a.state is TaskState.FAILED]
    lost = [a for a in attempts if a.state is TaskState.LOST]
    assert {a.key for a in lost} == on_h2, "the attempts running on h2 must be LOST"
    assert all(a.source == "h2" and "unreachable" in (a.error or "") for a in lost), lost
    for key in on_h2:  # ... and done again elsewhere
        final = store.latest_attempts()[key]
        assert final.state is TaskState.COMPLETED and final.source == "h1"
    assert elapsed < 30, f"took {elapsed:.1f} s to notice the dead host"
    store.close()


def test_dropped_connection_reattaches_without_loss(ssh_env: SSHEnv, tmp_path: Path) -> None:
    """The ssh session dies under the agent (network blip, sshd restart): hsm reconnects,
    re-attaches to the tasks still running there, and nothing is LOST or run twice."""
    project = make_project(tmp_path / "proj")
    script = 'echo start >> "$HSM_TASK_DIR/results/starts"; sleep 2; echo ok'
    tasks = command_tasks([["sh", "-c", script, str(i)] for i in range(2)])
    store = new_store(tmp_path / "sweep", project, tasks)
    spec = ssh_spec(
        ssh_env,
        "h1",
        reconnect_window=10,
        **{k: v for k, v in FAST_SSH.items() if k != "reconnect_window"},
    )
    source = SSHSource(spec, context_for(store))
    running: set[str] = set()
    first_agent: list[int] = []

    def listener(ev: TaskEvent) -> None:
        if ev.state is TaskState.RUNNING:
            running.add(ev.key)

    async def scenario() -> object:
        job = asyncio.create_task(run(store, [spec], sources=[source], listener=listener))
        await async_wait_for(lambda: len(running) == 2, timeout=15, message="2 tasks running")
        agent = int(source.metadata["agent"]["pid"])
        first_agent.append(agent)
        # The sshd process serving our session (the agent's parent; hosts share our /proc).
        session = int(Path(f"/proc/{agent}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(session, signal.SIGKILL)
        return await asyncio.wait_for(job, 30)

    outcome = asyncio.run(scenario())

    assert outcome.counts[TaskState.COMPLETED] == 2, outcome.counts  # type: ignore[attr-defined]
    assert source.metadata["agent"]["pid"] != first_agent[0], "no new agent was started"
    for task in store.tasks():
        assert [a.state for a in store.attempts(task.key)] == [TaskState.COMPLETED]
        tdir = store.sweep_dir / "tasks" / task.name
        assert (tdir / "results" / "starts").read_text() == "start\n"
        assert (tdir / "stdout.log").read_text() == "ok\n"
    store.close()
