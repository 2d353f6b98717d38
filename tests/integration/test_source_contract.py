"""The contract every ComputeSource keeps, as Hydra's LauncherTestSuite is for launchers:
one suite, run against each source type on its real back-end (local processes, an ssh
host on loopback, the one-node Slurm) and against tests/fakes' ScriptedSource, so that
the fake the engine's unit tests rely on behaves as the real ones do.

The suite drives a source the way the engine does (start, submit, poll every
poll_interval, cancel, close) and checks only what the interface promises."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from hsm_core.model import PYTHON, SourceSpec, TaskEvent, TaskSpec, TaskState, task_key
from hsm_core.orchestrate import context_for
from hsm_core.sources import make_source
from hsm_core.sources.base import ComputeSource
from hsm_core.store import SweepStore
from tests.fakes.scripted import ScriptedSource, Step, completes, fails, holds
from tests.integration.ssh_support import FAST_SSH, make_project, new_store, ssh_spec

HPC_FAST = {"time": 2, "poll_min": 0.5, "poll_interval": 1, "batch_window": 0.1}


def _task(num: int, code: int, sleep: float = 0.0) -> TaskSpec:
    params = {"code": code, "sleep": sleep, "num": num}
    body = f"import sys, time; time.sleep({sleep}); sys.exit({code})"
    return TaskSpec(key=task_key(params), num=num, params=params, argv=(PYTHON, "-c", body))


def _as_params_say(task: TaskSpec, attempt: int) -> Sequence[Step]:
    """ScriptedSource's reading of the same tasks."""
    if float(task.params["sleep"]) > 60:
        return holds()
    if int(task.params["code"]) == 0:
        return completes(0.2)
    return fails(0.2, f"exit code {task.params['code']}")


Factory = Callable[[SweepStore], ComputeSource]


@pytest.fixture(params=["scripted", "local", "ssh", "hpc-slurm"])
def source_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_source(source_type: str, request: pytest.FixtureRequest) -> Factory:
    if source_type == "scripted":
        return lambda store: ScriptedSource(
            SourceSpec("fake", "scripted", 2), context_for(store), _as_params_say
        )
    if source_type == "local":
        return lambda store: make_source(SourceSpec("local", "local", 2), context_for(store))
    if source_type == "ssh":
        ssh_env = request.getfixturevalue("ssh_env")
        spec = ssh_spec(ssh_env, "h1", slots=2, **FAST_SSH)
        return lambda store: make_source(spec, context_for(store))
    slurm_env = request.getfixturevalue("slurm_env")
    spec = SourceSpec("cluster", "hpc", 2, {"partition": slurm_env.partition, **HPC_FAST})
    return lambda store: make_source(spec, context_for(store))


class Driver:
    """The engine's part, minus the engine: every report, in order."""

    def __init__(self, src: ComputeSource) -> None:
        self.src = src
        self.events: list[TaskEvent] = []
        self._poller: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Driver:
        await self.src.start(self.events.append)
        if self.src.poll_interval:
            self._poller = asyncio.create_task(self._poll(self.src.poll_interval))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await self.src.close()

    async def _poll(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await self.src.poll()

    def said(self, key: str, state: TaskState) -> bool:
        return any(ev.key == key and ev.state is state for ev in self.events)

    def final(self, key: str) -> list[TaskEvent]:
        return [ev for ev in self.events if ev.key == key and ev.state.terminal]

    async def until(self, check: Callable[[], bool], what: str, within: float = 60) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not check():
            assert loop.time() < deadline, f"{what}: not within {within:g} s; {self.events}"
            await asyncio.sleep(0.05)


def _store(tmp_path: Path, tasks: Sequence[TaskSpec]) -> SweepStore:
    project = make_project(tmp_path / "project")
    return new_store(tmp_path / "sweep", project, tasks)


def test_an_exit_code_decides_completed_or_failed(tmp_path: Path, new_source: Factory) -> None:
    tasks = [_task(1, 0), _task(2, 3)]
    store = _store(tmp_path, tasks)
    src = new_source(store)
    assert src.capacity >= 1  # a source may hold more than its slots (queued on a cluster)

    async def scenario() -> Driver:
        async with Driver(src) as d:
            for task in tasks:
                await src.submit(task, 1)  # returns once accepted (a handle is optional)
            assert src.free_slots() <= src.capacity
            await d.until(lambda: all(d.final(t.key) for t in tasks), "both tasks end")
            await d.until(lambda: src.running() == 0, "no attempt held")
            for task in tasks:
                await src.fetch_results(task)
        return d

    d = asyncio.run(scenario())
    done, failed = (d.final(t.key) for t in tasks)
    assert [ev.state for ev in done] == [TaskState.COMPLETED]
    assert [ev.state for ev in failed] == [TaskState.FAILED]
    assert {(ev.source, ev.attempt) for ev in d.events} == {(src.name, 1)}
    for task in tasks:  # RUNNING, if said at all, comes before the end
        states = [ev.state for ev in d.events if ev.key == task.key]
        assert states[-1].terminal and TaskState.RUNNING not in states[states.index(states[-1]) :]


def test_cancel_ends_a_running_attempt(tmp_path: Path, new_source: Factory) -> None:
    long, short = _task(1, 0, sleep=300), _task(2, 0)
    store = _store(tmp_path, [long, short])
    src = new_source(store)

    async def scenario() -> Driver:
        async with Driver(src) as d:
            await src.submit(long, 1)
            await src.submit(short, 1)
            await d.until(lambda: d.said(long.key, TaskState.RUNNING), "the long one runs")
            await d.until(lambda: bool(d.final(short.key)), "the short one ends")
            await src.cancel([long.key])
            await d.until(lambda: bool(d.final(long.key)), "the cancelled one ends", 60)
            await d.until(lambda: src.running() == 0, "no attempt held")
        return d

    d = asyncio.run(scenario())
    assert [ev.state for ev in d.final(long.key)] == [TaskState.CANCELLED]
    assert [ev.state for ev in d.final(short.key)] == [TaskState.COMPLETED]  # untouched


ENV_PY = (
    "import json, os; d = os.path.join(os.environ['HSM_TASK_DIR'], 'results');"
    " os.makedirs(d, exist_ok=True);"
    " keys = ('HSM_SWEEP_ID', 'HSM_TASK_ID', 'HSM_TASK_KEY', 'HSM_ATTEMPT');"
    " json.dump({k: os.environ.get(k) for k in keys}, open(os.path.join(d, 'env.json'), 'w'))"
)


def test_the_task_sees_what_hsm_tells_every_task(
    tmp_path: Path, new_source: Factory, source_type: str
) -> None:
    if source_type == "scripted":
        pytest.skip("the scripted source runs nothing")
    params = {"env": 1}
    task = TaskSpec(key=task_key(params), num=1, params=params, argv=(PYTHON, "-c", ENV_PY))
    store = _store(tmp_path, [task])
    src = new_source(store)

    async def scenario() -> None:
        async with Driver(src) as d:
            await src.submit(task, 3)  # a third attempt: the task is told which
            await d.until(lambda: bool(d.final(task.key)), "the task ends")
            await src.fetch_results(task)

    asyncio.run(scenario())
    seen = json.loads((store.task_dir(task) / "results" / "env.json").read_text())
    assert seen == {
        "HSM_SWEEP_ID": store.sweep_id,
        "HSM_TASK_ID": task.name,
        "HSM_TASK_KEY": task.key,
        "HSM_ATTEMPT": "3",
    }
