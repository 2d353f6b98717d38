"""A host whose sshd is killed or frozen (SIGSTOP) mid-sweep: its attempts become LOST,
never FAILED, they run again on the other host, and the sweep does not hang."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hsm_core.model import TaskEvent, TaskState
from tests.helpers import async_wait_for
from tests.integration.ssh_support import (
    FAST_SSH,
    command_tasks,
    make_project,
    new_store,
    run,
    ssh_spec,
)
from tests.services import SshEnv, SshHostControl


@pytest.mark.parametrize("failure", ["kill", "freeze"])
def test_dead_host_attempts_are_lost_and_rerun(
    ssh_env: SshEnv, ssh_host_control: SshHostControl, tmp_path: Path, failure: str
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
