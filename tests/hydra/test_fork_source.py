"""The fork source under the real engine and store, with plain (non-Hydra) jobs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hsm_core.engine import SweepEngine
from hsm_core.hydra.fork import ForkSource, gpu_sets
from hsm_core.hydra.forkserver import ForkServer, ForkServerError
from hsm_core.model import SourceSpec, TaskSpec, TaskState, task_key
from hsm_core.orchestrate import context_for
from hsm_core.store import SweepStore
from hsm_core.taskdir import WORKER_RECORD
from tests.helpers import async_wait_for, wait_for
from tests.hydra.util import pid_alive


def _write_result(task_dir: Path, code: int, **extra: Any) -> None:
    tmp = task_dir / ".result.tmp"
    tmp.write_text(json.dumps({"exit_code": code, **extra}))
    os.replace(tmp, task_dir / WORKER_RECORD)


class PlainJobs:
    """Plain jobs, not Hydra ones: what each does is its task's `action`."""

    def prefork(self, job: Mapping[str, Any]) -> None:
        pass

    def run(self, job: Mapping[str, Any], gate: Any) -> int:
        """What a job does, by its `action` (runs in the forked job process)."""
        task_dir = Path(job["task_dir"])
        action = job["env"]["ACTION"]
        gate()
        start = time.time()
        if action == "fail":
            _write_result(task_dir, 1, error="ValueError: bad")
            return 1
        if action == "exit":
            os._exit(3)
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "sleep":
            child = subprocess.Popen(["sleep", "60"])  # a grandchild in the job's group
            # Whole or not at all: the tests act once it exists (a job killed between the
            # file's creation and its write left it empty).
            tmp = task_dir / "child.pid.tmp"
            tmp.write_text(str(child.pid))
            os.replace(tmp, task_dir / "child.pid")
            time.sleep(60)
        if action == "busy":
            time.sleep(0.3)
        _write_result(
            task_dir,
            0,
            start=start,
            end=time.time(),
            cuda=os.environ.get("CUDA_VISIBLE_DEVICES"),
            pid=os.getpid(),
        )
        print("done", flush=True)
        return 0

    def request(self, ctx: Any, task: TaskSpec, attempt: int) -> dict[str, Any]:
        tdir = ctx.task_dir(task)
        return {
            "key": task.key,
            "task_dir": str(tdir),
            "stdout": str(tdir / "stdout.log"),
            "stderr": str(tdir / "stderr.log"),
            "env": {"ACTION": task.params["action"]},
        }

    def settled(self, task: TaskSpec, state: TaskState, error: str | None) -> None:
        pass


def run(
    tmp_path: Path,
    actions: list[str],
    *,
    slots: int = 2,
    ahead: int = 1,
    options: dict[str, Any] | None = None,
    timeout: float | None = None,
    during: Any = None,
) -> tuple[SweepStore, list[TaskSpec]]:
    server = ForkServer(PlainJobs())
    server.start()  # before any SQLite connection and any thread
    try:
        store = SweepStore.create(tmp_path / "sweep", sweep_id="t", kind="hydra", config={})
        specs = [
            TaskSpec(key=task_key({"i": i}), num=i + 1, params={"action": a}, timeout_s=timeout)
            for i, a in enumerate(actions)
        ]
        tasks = store.add_tasks(specs)
        ctx = context_for(store)
        spec = SourceSpec("local", "local", slots, options or {})
        src = ForkSource(spec, ctx, server, PlainJobs(), ahead=ahead)
        engine = SweepEngine(store, ctx, [src])

        async def main() -> None:
            job = asyncio.create_task(engine.run())
            if during is not None:
                await during(engine, server)
            await job

        asyncio.run(main())
    finally:
        server.close()
    return store, tasks


def states(store: SweepStore, tasks: list[TaskSpec]) -> list[tuple[str, str | None]]:
    latest = store.latest_attempts()
    return [(latest[t.key].state.value, latest[t.key].error) for t in tasks]


def test_outcomes_and_hard_deaths(tmp_path: Path) -> None:
    store, tasks = run(tmp_path, ["ok", "fail", "exit", "kill"])
    got = states(store, tasks)
    assert got[0] == ("COMPLETED", None)
    assert got[1] == ("FAILED", "ValueError: bad")
    assert got[2][0] == "FAILED" and "exited with code 3" in str(got[2][1])
    assert got[3][0] == "FAILED" and "killed by SIGKILL" in str(got[3][1])
    exit_dir = store.task_dir(tasks[2])
    assert "exited with code 3" in (exit_dir / "stderr.log").read_text()  # the reason, noted
    assert (store.task_dir(tasks[0]) / "stdout.log").read_text() == "done\n"


def test_slots_gpus_and_fresh_processes(tmp_path: Path) -> None:
    options = {"gpus": [0, 1, 2, 3], "gpus_per_slot": 2}
    store, tasks = run(tmp_path, ["busy"] * 6, slots=2, ahead=1, options=options)
    results = [json.loads((store.task_dir(t) / WORKER_RECORD).read_text()) for t in tasks]
    assert {r["cuda"] for r in results} <= {"0,1", "2,3"}
    assert len({r["pid"] for r in results}) == 6
    for r in results:  # never more than two task functions at once
        active = sum(o["start"] <= r["start"] < o["end"] for o in results)
        assert active <= 2
    for r in results:  # two running at once never share GPUs
        for o in results:
            if o is not r and o["start"] < r["end"] and r["start"] < o["end"]:
                assert o["cuda"] != r["cuda"]


def test_gpu_sets() -> None:
    assert gpu_sets(["0", "1"], 4, 1) == ["0", "1", "0", "1"]
    assert gpu_sets(["0", "1", "2", "3"], 2, 2) == ["0,1", "2,3"]
    assert gpu_sets([], 2, 1) == []


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    store, tasks = run(tmp_path, ["sleep"], timeout=1.0)
    assert states(store, tasks) == [("FAILED", "timed out after 1 s")]
    child = int((store.task_dir(tasks[0]) / "child.pid").read_text())
    wait_for(lambda: not pid_alive(child), timeout=10, message="grandchild killed")


def test_cancel_stops_running_and_waiting_jobs(tmp_path: Path) -> None:
    async def cancel_when_running(engine: SweepEngine, server: ForkServer) -> None:
        await async_wait_for(lambda: engine.counts()[TaskState.RUNNING] == 2, timeout=20)
        engine.cancel()

    store, tasks = run(tmp_path, ["sleep"] * 4, during=cancel_when_running)
    assert {s for s, _ in states(store, tasks)} == {"CANCELLED"}
    for t in tasks:
        pid_file = store.task_dir(t) / "child.pid"
        if pid_file.exists():
            wait_for(_gone(int(pid_file.read_text())), timeout=10, message="child gone")


def _gone(pid: int) -> Any:
    return lambda: not pid_alive(pid)


def test_dead_fork_server_makes_jobs_lost(tmp_path: Path) -> None:
    async def kill_server(engine: SweepEngine, server: ForkServer) -> None:
        await async_wait_for(lambda: engine.counts()[TaskState.RUNNING] == 1, timeout=20)
        # RUNNING is reported at the fork: wait for the job to have started its child too.
        child_pid = engine.store.sweep_dir / "tasks" / "task_001" / "child.pid"
        await async_wait_for(lambda: child_pid.exists(), timeout=20)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)

    store, tasks = run(tmp_path, ["sleep"], slots=1, during=kill_server)
    first = store.attempts(tasks[0].key)[0]
    assert first.state is TaskState.LOST and "fork server" in str(first.error)
    # the engine does not wait forever for a source that cannot run anything
    assert states(store, tasks)[0][0] in ("LOST", "PENDING")
    child = int((store.task_dir(tasks[0]) / "child.pid").read_text())
    wait_for(lambda: not pid_alive(child), timeout=10, message="the job's own child is gone")


def test_refuses_to_fork_with_threads() -> None:
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with pytest.raises(ForkServerError, match="threads"):
            ForkServer(PlainJobs()).start()
    finally:
        stop.set()
        t.join()
