"""The one interface every compute source implements.

A source runs attempts of tasks and *reports* what happened (TaskEvent) through the
callback it was started with. It never writes the store and never decides about retries:
that is the engine's job. Sources that learn about their tasks by asking (ssh, schedulers)
set `poll_interval`; the engine then calls `poll()` once per cycle for all their tasks.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# The interface's error, re-exported: sources and their callers may name it from here.
from hsm_core.errors import SourceError as SourceError
from hsm_core.model import PYTHON, Attempt, SourceSpec, TaskEvent, TaskKind, TaskSpec, TaskState

Reporter = Callable[[TaskEvent], None]
OutputSink = Callable[[str, str, str, int], None]


@dataclass(frozen=True)
class SweepContext:
    """What a source needs to know about the sweep it serves."""

    sweep_id: str
    sweep_dir: Path  # local sweep folder
    project_root: Path  # local project root; task cwd is relative to it
    python: str  # interpreter for `script:` tasks and workers, on this machine

    def task_dir(self, task: TaskSpec) -> Path:
        return self.sweep_dir / "tasks" / task.name


def task_argv(task: TaskSpec, python: str, sweep_dir: str, task_dir: str) -> list[str]:
    """What a source runs for one attempt: the command itself, or for a Hydra job the
    worker that unpickles its payload (`python -m hsm_core.hydra.worker PAYLOAD TASK_DIR`).

    `python`, `sweep_dir` and `task_dir` are as seen on the machine that runs the task."""
    if task.kind is TaskKind.HYDRA:
        if not task.payload:
            raise ValueError(f"{task.name} is a Hydra job without a payload")
        payload = f"{sweep_dir.rstrip('/')}/{task.payload}"
        return [python, "-m", "hsm_core.hydra.worker", payload, task_dir]
    argv = list(task.argv)
    if argv and argv[0] == PYTHON:
        argv[0] = python
    return argv


def task_env(
    task: TaskSpec,
    sweep_id: str,
    sweep_dir: str,
    task_dir: str,
    attempt: int,
    *,
    one_process: bool = True,
) -> dict[str, str]:
    """The task's own environment plus what hsm tells every task, whatever runs it
    (folders as seen on the machine that runs it).

    `one_process`: the task is one process that hsm started itself (local, ssh, forked),
    so it also gets submitit's local job environment: code written for submitit's
    launchers calls `submitit.JobEnvironment()` for its rank, and that raises outside a
    job submitit knows. A scheduler's job (hpc) passes False: its job script tells
    submitit which cluster it is on, and ranks come from the scheduler."""
    env: dict[str, str] = {}
    if one_process:
        env.update(_SUBMITIT_LOCAL, SUBMITIT_LOCAL_JOB_ID=task.name, SUBMITIT_FOLDER=task_dir)
    env.update(task.env)
    env.update(
        HSM_SWEEP_ID=sweep_id,
        HSM_TASK_ID=task.name,
        HSM_TASK_KEY=task.key,
        HSM_TASK_DIR=task_dir,
        HSM_SWEEP_DIR=sweep_dir,
        HSM_ATTEMPT=str(attempt),
    )
    return env


# submitit's LocalJobEnvironment reads these: one rank of one task on one node.
_SUBMITIT_LOCAL = {
    "SUBMITIT_EXECUTOR": "local",
    "SUBMITIT_LOCAL_NTASKS": "1",
    "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
    "SUBMITIT_LOCAL_NODEID": "0",
    "SUBMITIT_LOCAL_GLOBALID": "0",
    "SUBMITIT_LOCAL_LOCALID": "0",
}


@dataclass(frozen=True)
class HealthReport:
    source: str
    ok: bool
    detail: str = ""
    time: float = field(default_factory=time.time)
    load: float | None = None  # 1-minute load average
    cpus: int | None = None
    mem_free_gb: float | None = None
    disk_free_gb: float | None = None
    gpus: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class ComputeSource(abc.ABC):
    type: ClassVar[str]
    poll_interval: float | None = None  # seconds between poll() calls; None: never polled
    # Time limits a task may reach on this source and resume after (hsm_core.resume).
    max_num_timeout: int = 0

    def __init__(self, spec: SourceSpec, ctx: SweepContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.name = spec.name
        self._report: Reporter = lambda event: None

    @property
    def capacity(self) -> int:
        return self.spec.max_parallel

    async def start(self, report: Reporter) -> None:
        """Connect / prepare. Raise SourceError (or HsmError for a user mistake)."""
        self._report = report

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; tasks that run detached keep running."""

    @abc.abstractmethod
    def running(self) -> int:
        """Attempts accepted and not yet reported finished."""

    def free_slots(self) -> int:
        return max(0, self.capacity - self.running())

    @abc.abstractmethod
    async def submit(self, task: TaskSpec, attempt: int) -> str | None:
        """Start one attempt; return a handle (pid, job id) if there is one.

        Returns once the source has accepted the attempt; progress comes as events."""

    def submit_now(self) -> None:  # noqa: B027 - optional hook
        """The sweep is stopping (Ctrl-C, the end): a source that holds submits back to
        batch them sends them at once, so that no `submit` waits for more."""

    async def poll(self) -> None:  # noqa: B027 - optional for push-based sources
        """One batched status query for every attempt this source holds."""

    @abc.abstractmethod
    async def cancel(self, keys: Collection[str] | None = None) -> None:
        """Stop the given tasks (all when None), killing whole process groups / jobs."""

    async def fetch_results(self, task: TaskSpec) -> None:  # noqa: B027
        """Bring the task's folder back to the local sweep folder (no-op for local)."""

    async def reattach(self, attempts: Collection[tuple[TaskSpec, Attempt]]) -> None:
        """After an orchestrator crash: pick up attempts that may still be running.

        The default knows nothing of them and reports them LOST so they run again."""
        for task, att in attempts:
            self.report_lost(task.key, att.attempt, f"{self.name} cannot re-attach to tasks")

    def report_lost(self, key: str, attempt: int, error: str) -> None:
        """The attempt is gone through no fault of the task: the engine runs it again."""
        self._report(TaskEvent(key, attempt, TaskState.LOST, self.name, error=error))

    async def health_check(self) -> HealthReport:
        return HealthReport(self.name, True, "no checks for this source type")

    async def check_ready(self, *, project_sent: bool = False) -> str | None:
        """What would make every task fail here although the source answers (a host
        without the project, a missing interpreter), in one line; None if nothing.
        `project_sent`: a sweep would send the project here, so its absence is no fault.
        `hsm monitor health` reports it as failing."""
        return None

    def live_output(self) -> str:
        """How a job's output can be shown while it runs: "files" (its task folder on this
        machine fills as it runs), "push" (the source sends the lines: `output_to`), "end"
        (its folder comes back when it ends) or "terminal" (it writes to ours)."""
        return "files"

    def output_to(self, sink: OutputSink) -> None:  # noqa: B027 - push sources only
        """Send jobs' output as it comes: `sink(task_key, stream, text, skipped_bytes)`."""
