"""ScriptedSource: a ComputeSource whose attempts end as a script says, in the loop's
time (with tests/fakes/clock.py: virtual time). Nothing runs; it exists to drive the
engine through branches that real sources reach only by luck or by force (a host back
with a result after its task ran elsewhere, a source that never confirms a cancel).
It passes the same contract suite as the real sources (tests/integration/
test_source_contract.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from hsm_core.model import SourceSpec, TaskEvent, TaskSpec, TaskState
from hsm_core.sources.base import ComputeSource, HealthReport, Reporter, SweepContext


@dataclass(frozen=True)
class Step:
    """One report about an attempt, `after` seconds after the previous one."""

    state: TaskState
    after: float = 0.0
    error: str | None = None


Script = Callable[[TaskSpec, int], Sequence[Step]]  # (task, attempt) -> its reports


def completes(after: float = 1.0) -> Sequence[Step]:
    return [Step(TaskState.RUNNING), Step(TaskState.COMPLETED, after)]


def fails(after: float = 1.0, error: str = "exit code 1") -> Sequence[Step]:
    return [Step(TaskState.RUNNING), Step(TaskState.FAILED, after, error)]


def lost(after: float = 1.0, error: str = "host gone") -> Sequence[Step]:
    return [Step(TaskState.RUNNING), Step(TaskState.LOST, after, error)]


def holds() -> Sequence[Step]:
    """Runs until cancelled (or until the test reports for it)."""
    return [Step(TaskState.RUNNING)]


def by_argv(task: TaskSpec, attempt: int) -> Sequence[Step]:
    """The default script, for the contract suite: `exit N` fails unless N is 0,
    `sleep S` holds for S seconds, anything else completes."""
    argv = list(task.argv)
    if argv[:1] == ["exit"]:
        code = int(argv[1])
        return completes(0.1) if code == 0 else fails(0.1, f"exit code {code}")
    if argv[:1] == ["sleep"]:
        return completes(float(argv[1]))
    return completes(0.1)


class ScriptedSource(ComputeSource):
    type = "scripted"

    def __init__(
        self,
        spec: SourceSpec,
        ctx: SweepContext,
        script: Script = by_argv,
        *,
        start_failures: Sequence[BaseException] = (),
        health: Sequence[bool] = (),
        confirms_cancel: bool = True,
    ) -> None:
        super().__init__(spec, ctx)
        self.script = script
        self.start_failures = list(start_failures)  # raised by the next starts, in order
        self.health = list(health)  # the next health checks' answers (then: ok)
        self.confirms_cancel = confirms_cancel
        self.starts = 0
        self.submitted: list[tuple[str, int]] = []
        self.cancels: list[list[str] | None] = []
        self._timers: dict[tuple[str, int], list[asyncio.TimerHandle]] = {}

    async def start(self, report: Reporter) -> None:
        await super().start(report)
        self.starts += 1
        if self.start_failures:
            raise self.start_failures.pop(0)

    def running(self) -> int:
        return len(self._timers)

    async def submit(self, task: TaskSpec, attempt: int) -> str | None:
        key = (task.key, attempt)
        self.submitted.append(key)
        loop = asyncio.get_running_loop()
        at = 0.0
        timers = self._timers[key] = []
        for step in self.script(task, attempt):
            at += step.after
            timers.append(
                loop.call_later(at, self.report, task.key, attempt, step.state, step.error)
            )
        return f"scripted-{len(self.submitted)}"

    def report(self, key: str, attempt: int, state: TaskState, error: str | None = None) -> None:
        """Send one report now (the script's, or a test's: a late one, a stray one)."""
        if state.terminal:
            for timer in self._timers.pop((key, attempt), []):
                timer.cancel()
        self._report(TaskEvent(key, attempt, state, self.name, error=error))

    async def cancel(self, keys: Collection[str] | None = None) -> None:
        self.cancels.append(None if keys is None else sorted(keys))
        if not self.confirms_cancel:
            return
        for key, attempt in list(self._timers):
            if keys is None or key in keys:
                self.report(key, attempt, TaskState.CANCELLED)

    async def health_check(self) -> HealthReport:
        ok = self.health.pop(0) if self.health else True
        return HealthReport(self.name, ok, "scripted" if ok else "scripted: not ok")
