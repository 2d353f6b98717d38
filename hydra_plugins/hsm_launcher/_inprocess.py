"""The last resort: jobs run one after another in the launcher's own main thread, the way
Hydra's basic launcher runs them.

Used when jobs can be neither forked (the app runs threads) nor sent to a fresh
interpreter (the payload cannot be pickled). The engine still keeps the journal (states,
errors.log, resume) but runs in a thread of its own; the main thread takes the jobs from
it one at a time. Ctrl-C interrupts the running job (a KeyboardInterrupt in the task
function, as under the basic launcher) and cancels the rest; between jobs it only
cancels the rest (a KeyboardInterrupt there would lose the outcome of the job that was
being started or recorded).
"""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from hsm_core.hydra.job import read_info
from hsm_core.hydra.jobs import HydraJobs
from hsm_core.model import SourceSpec, TaskEvent, TaskSpec, TaskState
from hsm_core.sources.base import ComputeSource, HealthReport, SweepContext
from hsm_core.taskdir import WORKER_RECORD

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InProcessSource(ComputeSource):
    """One slot: the launcher's main thread."""

    type = "local"

    def __init__(
        self,
        spec: SourceSpec,
        ctx: SweepContext,
        jobs: HydraJobs,
    ) -> None:
        super().__init__(SourceSpec(spec.name, "local", 1, dict(spec.options)), ctx)
        self.jobs = jobs
        self.requests: queue.Queue[tuple[TaskSpec, int] | None] = queue.Queue()
        self._held: dict[str, tuple[TaskSpec, int]] = {}  # accepted, not yet settled
        self._current: str | None = None
        self._in_job = False  # the main thread is inside the job's own code
        self._kill_sent = False  # cancel() signalled the running job
        self._interrupt = False  # Ctrl-C between jobs: cancel the rest at the next turn
        self._cancelled: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancel_run: Callable[[], None] | None = None

    # -------------------------------------------------- engine side (its thread)
    def attach(
        self, engine: Any, sources: Sequence[ComputeSource], cancel: Callable[[], None]
    ) -> None:
        self._cancel_run = cancel

    async def close(self) -> None:
        self.requests.put(None)  # the main thread stops serving

    async def start(self, report: Any) -> None:
        await super().start(report)
        self._loop = asyncio.get_running_loop()

    def running(self) -> int:
        return len(self._held)

    async def submit(self, task: TaskSpec, attempt: int) -> str | None:
        self._held[task.key] = (task, attempt)
        self.requests.put((task, attempt))
        return None

    async def cancel(self, keys: Collection[str] | None = None) -> None:
        for key in [k for k in self._held if keys is None or k in keys]:
            if key == self._current:
                self._cancelled.add(key)
                self._kill_sent = True
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            else:  # queued: it never starts
                _, attempt = self._held.pop(key)
                self._cancelled.add(key)
                self._report(TaskEvent(key, attempt, TaskState.CANCELLED, self.name))

    async def health_check(self) -> HealthReport:
        return HealthReport(self.name, True, "jobs run in the launcher's process")

    def live_output(self) -> str:
        return "terminal"  # the jobs print to it themselves, as under the basic launcher

    # ------------------------------------------------------------ main thread
    def _tell(self, event: TaskEvent) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._report, event)

    def serve(self, engine_thread: threading.Thread) -> None:
        """Run the jobs the engine hands out until it is done."""
        # Ctrl-C, and `hsm cancel`'s SIGTERM, as Ctrl-C.
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            while True:
                if self._interrupt:
                    self._interrupt = False
                    self._interrupted()
                try:
                    item = self.requests.get(timeout=0.2)
                except queue.Empty:
                    if not engine_thread.is_alive():
                        return
                    continue
                if item is None:
                    return
                self._run_one(*item)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        """A KeyboardInterrupt only inside the job's own code (the basic launcher's Ctrl-C);
        anywhere else in this loop it would escape before the job's outcome is told."""
        kill_sent, self._kill_sent = self._kill_sent, False
        if self._in_job:
            raise KeyboardInterrupt
        if kill_sent:  # cancel() meant a job that has ended since
            return
        self._interrupt = True

    def _interrupted(self) -> None:
        if self._loop is not None and self._cancel_run is not None:
            self._loop.call_soon_threadsafe(self._cancel_run)

    def _run_one(self, task: TaskSpec, attempt: int) -> None:
        if task.key in self._cancelled or task.key not in self._held:
            return
        req = self.jobs.request(self.ctx, task, attempt)
        task_dir = Path(req["task_dir"])
        self._current = task.key
        self._tell(TaskEvent(task.key, attempt, TaskState.RUNNING, self.name, handle="launcher"))
        interrupted = False
        try:
            self._in_job = True
            if self._interrupt:  # Ctrl-C while the job was being started: as if in it
                self._interrupt = False
                raise KeyboardInterrupt
            code = self.jobs.run_inline(req)
        except KeyboardInterrupt:  # between the job's own steps
            code, interrupted = 1, True
        finally:
            self._in_job = False
            self._current = None
        interrupted = interrupted or _ended_by_interrupt(task_dir)
        asked = task.key in self._cancelled
        if asked or interrupted:
            state, error = TaskState.CANCELLED, "cancelled"
        elif code == 0:
            state, error = TaskState.COMPLETED, None
        else:
            info = read_info(task_dir, WORKER_RECORD) or {}
            state, error = TaskState.FAILED, str(info.get("error") or "job failed")
        self._held.pop(task.key, None)
        self.jobs.settled(task, state, error)
        self._tell(TaskEvent(task.key, attempt, state, self.name, exit_code=code, error=error))
        if interrupted and not asked:  # Ctrl-C in the job: cancel the rest too
            self._interrupted()


def _ended_by_interrupt(task_dir: Path) -> bool:
    info = read_info(task_dir, WORKER_RECORD) or {}
    return str(info.get("error") or "").startswith("KeyboardInterrupt")


def run_in_main_thread(source: InProcessSource, run: Callable[[], Any]) -> Any:
    """`run()` (the engine's asyncio.run) in a thread; the jobs here. Returns its result."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def engine() -> None:
        try:
            result.append(run())
        except BaseException as exc:
            failure.append(exc)
            source.requests.put(None)

    thread = threading.Thread(target=engine, name="hsm-engine", daemon=True)
    thread.start()
    source.serve(thread)
    while thread.is_alive():
        try:
            thread.join()
        except KeyboardInterrupt:  # Ctrl-C after the last job: cancel what is left
            source._interrupted()
    if failure:
        raise failure[0]
    return result[0]
