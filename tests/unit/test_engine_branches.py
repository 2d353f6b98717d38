"""The engine's rarer branches, driven by ScriptedSource on a virtual clock
(tests/fakes): a late report after the task ran elsewhere, the limit on losses, a source
disabled by its health checks and enabled again, and the deadline of a cancel that no
source confirms. Real sources reach these only by luck or by force (a frozen host); here
each takes milliseconds and happens exactly when the script says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from hsm_core.engine import CANCEL_DEADLINE_S, LOST_LIMIT, SweepEngine
from hsm_core.health import HealthSettings
from hsm_core.model import SourceSpec, TaskEvent, TaskState
from hsm_core.orchestrate import context_for
from hsm_core.store import SweepStore
from tests.fakes.clock import run_virtual
from tests.fakes.scripted import Script, ScriptedSource, Step, completes, holds, lost
from tests.sweep_utils import command_tasks, make_sweep

QUIET = HealthSettings(interval_s=3600)  # no health checks unless a test asks


def _store(tmp_path: Path, n: int) -> SweepStore:
    return make_sweep(tmp_path, command_tasks([["true"]] * n))


def _source(store: SweepStore, name: str, slots: int, script: Script, **kw: Any) -> ScriptedSource:
    return ScriptedSource(SourceSpec(name, "scripted", slots), context_for(store), script, **kw)


async def _until(check: Callable[[], bool], what: str, within: float = 600.0) -> None:
    """Poll in loop time (virtual: free) until `check()`; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, f"not within {within:g} s: {what}"
        await asyncio.sleep(0.01)


class Run:
    """An engine over scripted sources, with every recorded event and its loop time."""

    def __init__(self, store: SweepStore, sources: Sequence[ScriptedSource], **kw: Any) -> None:
        kw.setdefault("health", QUIET)
        self.engine = SweepEngine(store, context_for(store), sources, **kw)
        self.log: list[tuple[float, TaskEvent]] = []
        self.engine.listeners.append(self._heard)

    def _heard(self, ev: TaskEvent) -> None:
        self.log.append((asyncio.get_running_loop().time(), ev))

    def states(self, state: TaskState) -> list[TaskEvent]:
        return [ev for _, ev in self.log if ev.state is state]


def _latest(store: SweepStore) -> dict[str, Any]:
    return store.latest_attempts()


def test_a_late_completed_report_wins_and_the_rerun_is_cancelled(tmp_path: Path) -> None:
    store = _store(tmp_path, 1)
    (task,) = store.tasks()
    a = _source(store, "a", 1, lambda t, n: holds())
    b = _source(store, "b", 1, lambda t, n: holds())
    run = Run(store, [a, b])

    async def scenario() -> dict[TaskState, int]:
        job = asyncio.create_task(run.engine.run())
        await _until(lambda: a.submitted == [(task.key, 1)], "attempt 1 on a")
        a.report(task.key, 1, TaskState.LOST, "host gone")  # a's host dropped off
        await _until(lambda: b.submitted == [(task.key, 2)], "attempt 2 on b")
        a.report(task.key, 1, TaskState.COMPLETED)  # ...and came back with the result
        return await job

    counts, _ = run_virtual(scenario())
    assert counts[TaskState.COMPLETED] == 1
    assert b.cancels == [[task.key]]  # the re-run was stopped, not completed twice
    states = {att.attempt: att.state for att in store.attempts(task.key)}
    assert states == {1: TaskState.COMPLETED, 2: TaskState.CANCELLED}


def test_a_task_lost_lost_limit_times_in_a_row_is_given_up(tmp_path: Path) -> None:
    store = _store(tmp_path, 1)
    (task,) = store.tasks()
    a = _source(store, "a", 1, lambda t, n: lost(5.0))
    run = Run(store, [a])
    counts, took = run_virtual(run.engine.run())
    assert counts[TaskState.LOST] == 1
    assert a.submitted == [(task.key, n) for n in range(1, LOST_LIMIT + 1)]
    assert took >= 5.0 * LOST_LIMIT
    assert _latest(store)[task.key].state is TaskState.LOST


def test_an_unhealthy_source_is_disabled_its_tasks_rerun_and_it_is_enabled_again(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path, 4)
    # a's first attempts: its host stops answering checks (t=10, 11: disabled, they are
    # LOST for the engine), and the source notices the connection is gone at t=15.
    script: Script = lambda t, n: lost(15.0, "connection lost") if n == 1 else completes(1.0)  # noqa: E731
    # Checks: t=10, 11 fail (disabled), 11 again (a task was lost there: check now), 21
    # fail; t=31 passes: enabled again.
    a = _source(store, "a", 2, script, health=[False] * 4)
    b = _source(store, "b", 2, lambda t, n: completes(60.0))
    settings = HealthSettings(interval_s=10, consecutive_failures=2, timeout_s=4)
    run = Run(store, [a, b], health=settings)
    counts, _ = run_virtual(run.engine.run())
    assert counts[TaskState.COMPLETED] == 4
    lost_on_a = [ev for ev in run.states(TaskState.LOST) if ev.source == "a"]
    assert len(lost_on_a) == 2 and all("unreachable" in (ev.error or "") for ev in lost_on_a)
    # Re-enabled by its first passing check, the tasks ran again on a, before b had a
    # free slot (t=60).
    again = [t for t, ev in run.log if ev.state is TaskState.ASSIGNED and ev.attempt == 2]
    assert len(again) == 2 and all(20 < t < 60 for t in again)
    assert sorted(n for _, n in a.submitted) == [1, 1, 2, 2]
    assert run.engine.health.state["a"].enabled


@pytest.mark.parametrize("confirms", [True, False])
def test_cancel_waits_for_confirmation_up_to_its_deadline(tmp_path: Path, confirms: bool) -> None:
    store = _store(tmp_path, 2)
    a = _source(store, "a", 2, lambda t, n: holds(), confirms_cancel=confirms)
    run = Run(store, [a])

    async def scenario() -> tuple[float, float]:
        job = asyncio.create_task(run.engine.run())
        await _until(lambda: len(run.states(TaskState.RUNNING)) == 2, "both running")
        loop = asyncio.get_running_loop()
        t0, real = loop.time(), time.monotonic()
        run.engine.cancel()
        await job
        return loop.time() - t0, time.monotonic() - real

    (waited, real), _ = run_virtual(scenario())
    # The deadline is kept in the loop's time: virtual here, so it passes at once (it
    # took CANCEL_DEADLINE_S of real time while the engine read time.monotonic()).
    assert real < CANCEL_DEADLINE_S * 2 / 3
    latest = _latest(store)
    assert {att.state for att in latest.values()} == {TaskState.CANCELLED}
    unconfirmed = [att for att in latest.values() if "did not confirm" in (att.error or "")]
    if confirms:
        assert waited < 1.0 and not unconfirmed
    else:
        assert waited >= CANCEL_DEADLINE_S and len(unconfirmed) == 2


def test_the_scripted_steps_come_in_loop_time(tmp_path: Path) -> None:
    """The fake itself: reports at the times its script says, not earlier or later."""
    store = _store(tmp_path, 1)
    (task,) = store.tasks()
    steps = [Step(TaskState.RUNNING, 2.0), Step(TaskState.COMPLETED, 3.0)]
    a = _source(store, "a", 1, lambda t, n: steps)
    heard: list[tuple[float, TaskState]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        await a.start(lambda ev: heard.append((loop.time(), ev.state)))
        t0 = loop.time()
        await a.submit(task, 1)
        await _until(lambda: len(heard) == 2, "two reports")
        heard[:] = [(t - t0, s) for t, s in heard]

    run_virtual(scenario())
    assert [s for _, s in heard] == [TaskState.RUNNING, TaskState.COMPLETED]
    assert [t for t, _ in heard] == pytest.approx([2.0, 5.0], abs=0.02)
    assert a.running() == 0
