"""The contract every ComputeSource keeps, as Hydra's LauncherTestSuite is for launchers:
one suite, run against each source type on its real back-end (local processes, an ssh
host on loopback, the one-node Slurm), against PBS's FAKE commands (tests/fakes/pbs: no
PBS server can run here), against the Hydra plugin's two local sources running a real
Hydra app's jobs (forked by the fork server, or in the launcher's own main thread), and
against tests/fakes' ScriptedSource, so that the fake the engine's unit tests rely on
behaves as the real ones do.

The suite drives a source the way the engine does (start, submit into free slots, poll
every poll_interval, cancel, close) and checks only what the interface promises; a cancel
must end the task's processes too, not only report CANCELLED. Its
tasks are shapes (exit code, seconds asleep; or "record your environment"): each
source type's Harness turns them into what that source runs, a command or a Hydra job."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hsm_core.model import PYTHON, SourceSpec, TaskEvent, TaskSpec, TaskState, task_key
from hsm_core.orchestrate import context_for
from hsm_core.sources import make_source
from hsm_core.sources.base import ComputeSource
from hsm_core.store import SweepStore
from tests.fakes.pbs_env import fake_pbs
from tests.fakes.scripted import ScriptedSource, Step, completes, fails, holds
from tests.hydra.util import pid_alive
from tests.integration.ssh_support import FAST_SSH, make_project, new_store, ssh_spec

HPC_FAST = {"time": 2, "poll_min": 0.5, "poll_interval": 1, "batch_window": 0.1}
APPS = Path(__file__).resolve().parents[1] / "hydra" / "apps"

T = TypeVar("T")
Shape = tuple[int, float]  # a task that sleeps this long, then exits with this code
ENV: Shape = (-1, 0.0)  # a task that records what hsm tells every task, then exits 0

ENV_PY = (
    "import json, os; d = os.path.join(os.environ['HSM_TASK_DIR'], 'results');"
    " os.makedirs(d, exist_ok=True);"
    " keys = ('HSM_SWEEP_ID', 'HSM_TASK_ID', 'HSM_TASK_KEY', 'HSM_ATTEMPT');"
    " json.dump({k: os.environ.get(k) for k in keys}, open(os.path.join(d, 'env.json'), 'w'))"
)


def _command(num: int, shape: Shape, token: str) -> TaskSpec:
    """`token` in its command line finds the task's process, wherever hsm started it."""
    if shape == ENV:
        params: dict[str, Any] = {"env": 1}
        body = f"{ENV_PY}  # {token}"
        return TaskSpec(key=task_key(params), num=num, params=params, argv=(PYTHON, "-c", body))
    code, sleep = shape
    params = {"code": code, "sleep": sleep, "num": num}
    body = f"import sys, time; time.sleep({sleep}); sys.exit({code})  # {token}"
    return TaskSpec(key=task_key(params), num=num, params=params, argv=(PYTHON, "-c", body))


def _processes_with(token: str) -> list[int]:
    """Live processes on this machine whose command line holds `token` (the loopback ssh
    hosts, the one-node Slurm and the FAKE PBS all run their tasks here)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if token.encode() in (entry / "cmdline").read_bytes():  # empty for a zombie
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def _as_params_say(task: TaskSpec, attempt: int) -> Sequence[Step]:
    """ScriptedSource's reading of the same tasks."""
    if float(task.params["sleep"]) > 60:
        return holds()
    if int(task.params["code"]) == 0:
        return completes(0.2)
    return fails(0.2, f"exit code {task.params['code']}")


class Harness:
    """How the suite stands one source type up: the tasks its shapes become, the sweep
    they are stored in, the source, and where the scenario runs (the main thread)."""

    def __init__(
        self, make: Callable[[SweepStore], ComputeSource] | None = None, *, runs: bool = True
    ) -> None:
        self.make = make
        self.runs = runs  # its tasks are processes here, that still_running() can see
        self.tokens: dict[str, str] = {}  # task key -> the token in its command line

    def prepare(
        self, tmp_path: Path, shapes: Sequence[Shape]
    ) -> tuple[SweepStore, list[TaskSpec], ComputeSource]:
        assert self.make is not None
        tasks = []
        for i, shape in enumerate(shapes):
            token = f"hsm-contract-{uuid.uuid4().hex}"
            tasks.append(_command(i + 1, shape, token))
            self.tokens[tasks[-1].key] = token
        project = make_project(tmp_path / "project")
        store = new_store(tmp_path / "sweep", project, tasks)
        return store, tasks, self.make(store)

    def run(self, src: ComputeSource, scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return asyncio.run(scenario())

    def still_running(self, task: TaskSpec) -> list[int]:
        """Processes of the task's attempt that are still alive (a scripted task has none)."""
        return _processes_with(self.tokens[task.key])


class HydraHarness(Harness):
    """The Hydra plugin's local sources, with the jobs of a real Hydra app
    (tests/hydra/apps/contract.py): ForkSource (each job forked from this process by a
    fork server, as the launcher does) or InProcessSource (the jobs one after another in
    this process's main thread, the scenario in an engine thread, as the launcher does
    when jobs can be neither forked nor pickled)."""

    def __init__(self, *, inprocess: bool) -> None:
        super().__init__(runs=not inprocess)
        self.inprocess = inprocess
        self.servers: list[Any] = []
        self.pid_files: dict[str, Path] = {}  # task key -> where its job wrote its pid

    def prepare(
        self, tmp_path: Path, shapes: Sequence[Shape]
    ) -> tuple[SweepStore, list[TaskSpec], ComputeSource]:
        from hsm_core.hydra.fork import ForkSource
        from hsm_core.hydra.forkserver import ForkServer
        from hsm_core.hydra.jobs import HydraJobs
        from tests.hydra.apps.contract import job as task_function

        sweep_dir = tmp_path / "sweep"
        batch = []
        for num, shape in enumerate(shapes):
            code, sleep = shape
            overrides = ["env=true"] if shape == ENV else [f"code={code}", f"sleep={sleep}"]
            batch.append((num, overrides))
        rt = _hydra_runtime(task_function, sweep_dir, [o for _, o in batch])
        jobs = HydraJobs(rt, batch, sweep_dir)  # what the launcher hands its sources
        server = None
        if not self.inprocess:
            # Forked before the store's SQLite connection exists, as the launcher does.
            server = ForkServer(jobs)
            server.start()
            self.servers.append(server)
        store = SweepStore.create(sweep_dir, sweep_id="contract", kind="hydra", config={})
        tasks = jobs.add_tasks(store, cwd=".", timeout_s=None)
        self.pid_files = {j.key: sweep_dir / str(j.num) / "pid" for j in jobs.jobs}
        ctx = context_for(store)
        if self.inprocess:
            from hydra_plugins.hsm_launcher._inprocess import InProcessSource

            return store, tasks, InProcessSource(SourceSpec("local", "local", 1), ctx, jobs)
        spec = SourceSpec("local", "local", 2)
        return store, tasks, ForkSource(spec, ctx, server, jobs)

    def run(self, src: ComputeSource, scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
        if not self.inprocess:
            return asyncio.run(scenario())
        from hydra_plugins.hsm_launcher._inprocess import InProcessSource, run_in_main_thread

        assert isinstance(src, InProcessSource)
        result: T = run_in_main_thread(src, lambda: asyncio.run(scenario()))
        return result

    def still_running(self, task: TaskSpec) -> list[int]:
        if self.inprocess:  # the job was a call in this process, over before its report
            return []
        try:  # the job's own process, forked by the server
            pid = int(self.pid_files[task.key].read_text())
        except (OSError, ValueError):
            return []
        return [pid] if pid_alive(pid) else []

    def close(self) -> None:
        for server in self.servers:
            server.close()


def _hydra_runtime(task_function: Any, sweep_dir: Path, jobs: Sequence[Sequence[str]]) -> Any:
    """What the launcher holds for one launch of the contract app: Hydra's context, the
    sweep config (its sweep dir the store's folder) and a composer with the first job's
    template. Hydra's own logging stays off: the jobs may run in this test process."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.utils import setup_globals
    from hydra.types import HydraContext, RunMode

    from hsm_core.hydra.compose import JobComposer
    from hsm_core.hydra.job import JobRuntime

    setup_globals()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(APPS / "conf")))
    overrides = [
        f"hydra.sweep.dir={sweep_dir}",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
        "hydra.job.chdir=false",
    ]
    config = loader.load_configuration(
        config_name="contract", overrides=overrides, run_mode=RunMode.MULTIRUN
    )
    composer = JobComposer(loader, config)
    composer.set_template(jobs[0], composer.full(jobs[0]))
    composer.prepare(jobs)
    context = HydraContext(config_loader=loader, callbacks=Callbacks(config))
    return JobRuntime(task_function, context, composer)


SOURCE_TYPES = [
    "scripted",
    "local",
    "ssh",
    "hpc-slurm",
    "hpc-pbs-pro-FAKE",
    "hpc-pbs-torque-FAKE",
    "hydra-fork",
    "hydra-inprocess",
]


@pytest.fixture(params=SOURCE_TYPES)
def source_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def harness(
    source_type: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Harness]:
    if source_type.startswith("hydra-"):
        request.getfixturevalue("hydra_restore_singletons")
        hydra = HydraHarness(inprocess=source_type == "hydra-inprocess")
        try:
            yield hydra
        finally:
            hydra.close()
        return
    if source_type == "scripted":
        yield Harness(
            lambda store: ScriptedSource(
                SourceSpec("fake", "scripted", 2), context_for(store), _as_params_say
            ),
            runs=False,
        )
    elif source_type == "local":
        yield Harness(
            lambda store: make_source(SourceSpec("local", "local", 2), context_for(store))
        )
    elif source_type == "ssh":
        ssh_env = request.getfixturevalue("ssh_env")
        spec = ssh_spec(ssh_env, "h1", slots=2, **FAST_SSH)
        yield Harness(lambda store: make_source(spec, context_for(store)))
    elif source_type == "hpc-slurm":
        slurm_env = request.getfixturevalue("slurm_env")
        spec = SourceSpec("cluster", "hpc", 2, {"partition": slurm_env.partition, **HPC_FAST})
        yield Harness(lambda store: make_source(spec, context_for(store)))
    else:  # hpc-pbs-<dialect>-FAKE
        dialect = source_type.split("-")[2]
        spec = SourceSpec("cluster", "hpc", 2, {"scheduler": "pbs", **HPC_FAST})
        with fake_pbs(dialect, tmp_path, monkeypatch):
            yield Harness(lambda store: make_source(spec, context_for(store)))


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

    async def submit(self, task: TaskSpec, attempt: int = 1) -> None:
        """As the engine does: into a free slot (a one-slot source takes one at a time)."""
        await self.until(lambda: self.src.free_slots() > 0, f"a free slot for {task.name}")
        await self.src.submit(task, attempt)  # returns once accepted (a handle is optional)

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


def test_an_exit_code_decides_completed_or_failed(tmp_path: Path, harness: Harness) -> None:
    _, tasks, src = harness.prepare(tmp_path, [(0, 0.0), (3, 0.0)])
    assert src.capacity >= 1  # a source may hold more than its slots (queued on a cluster)

    async def scenario() -> Driver:
        async with Driver(src) as d:
            for task in tasks:
                await d.submit(task)
            assert src.free_slots() <= src.capacity
            await d.until(lambda: all(d.final(t.key) for t in tasks), "both tasks end")
            await d.until(lambda: src.running() == 0, "no attempt held")
            for task in tasks:
                await src.fetch_results(task)
        return d

    d = harness.run(src, scenario)
    done, failed = (d.final(t.key) for t in tasks)
    assert [ev.state for ev in done] == [TaskState.COMPLETED]
    assert [ev.state for ev in failed] == [TaskState.FAILED]
    assert {(ev.source, ev.attempt) for ev in d.events} == {(src.name, 1)}
    for task in tasks:  # RUNNING, if said at all, comes before the end
        states = [ev.state for ev in d.events if ev.key == task.key]
        assert states[-1].terminal and TaskState.RUNNING not in states[states.index(states[-1]) :]


def test_cancel_ends_a_running_attempt(tmp_path: Path, harness: Harness) -> None:
    _, (short, long), src = harness.prepare(tmp_path, [(0, 0.0), (0, 300.0)])

    async def scenario() -> Driver:
        async with Driver(src) as d:
            await d.submit(short)  # first: a one-slot source runs them in turn
            await d.submit(long)
            await d.until(lambda: d.said(long.key, TaskState.RUNNING), "the long one runs")
            await d.until(lambda: bool(d.final(short.key)), "the short one ends")
            if harness.runs:  # RUNNING may come before the task's own process exists
                await d.until(lambda: bool(harness.still_running(long)), "its process starts")
            await src.cancel([long.key])
            await d.until(lambda: bool(d.final(long.key)), "the cancelled one ends", 60)
            await d.until(lambda: src.running() == 0, "no attempt held")
            # Ended, not only reported: nothing of it may keep running (and using a slot).
            await d.until(lambda: not harness.still_running(long), "its processes end", 30)
        return d

    d = harness.run(src, scenario)
    assert [ev.state for ev in d.final(long.key)] == [TaskState.CANCELLED]
    assert [ev.state for ev in d.final(short.key)] == [TaskState.COMPLETED]  # untouched


def test_the_task_sees_what_hsm_tells_every_task(
    tmp_path: Path, harness: Harness, source_type: str
) -> None:
    if source_type == "scripted":
        pytest.skip("the scripted source runs nothing")
    store, (task,), src = harness.prepare(tmp_path, [ENV])

    async def scenario() -> None:
        async with Driver(src) as d:
            await d.submit(task, 3)  # a third attempt: the task is told which
            await d.until(lambda: bool(d.final(task.key)), "the task ends")
            await src.fetch_results(task)

    harness.run(src, scenario)
    seen = json.loads((store.task_dir(task) / "results" / "env.json").read_text())
    assert seen == {
        "HSM_SWEEP_ID": store.sweep_id,
        "HSM_TASK_ID": task.name,
        "HSM_TASK_KEY": task.key,
        "HSM_ATTEMPT": "3",
    }
