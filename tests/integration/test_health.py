"""Health rules on real local sources: failure-rate disabling, unreachable sources losing
their tasks to the others, and recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hsm_core.engine import SweepEngine
from hsm_core.health import HealthSettings
from hsm_core.logs import SweepLogs
from hsm_core.model import SourceSpec, TaskState
from hsm_core.orchestrate import context_for
from hsm_core.sources.base import HealthReport, SweepContext
from hsm_core.sources.local import LocalSource
from tests.sweep_utils import PY, command_tasks, make_sweep


class SwitchableLocal(LocalSource):
    """A real local source whose health check reads a switch file: the test's stand-in
    for a host that stops answering (the ssh tests kill a real sshd instead)."""

    def __init__(self, spec: SourceSpec, ctx: SweepContext, switch: Path) -> None:
        super().__init__(spec, ctx)
        self.switch = switch

    async def health_check(self) -> HealthReport:
        if self.switch.exists():
            return HealthReport(self.name, False, "switched off by the test")
        return await super().health_check()


def test_source_whose_tasks_all_fail_is_disabled(tmp_path: Path) -> None:
    code = "import os, sys, time; time.sleep(0.05); sys.exit(1 if os.environ.get('BROKEN') else 0)"
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", code, str(i)] for i in range(24)]))
    ctx = context_for(store)
    good = LocalSource(SourceSpec("good", "local", 2), ctx)
    bad = LocalSource(SourceSpec("bad", "local", 2, {"env": {"BROKEN": "1"}}), ctx)
    engine = SweepEngine(
        store,
        ctx,
        [good, bad],
        strategy="round_robin",
        max_retries=3,
        health=HealthSettings(interval_s=60, min_tasks=5, failure_rate=0.4),
    )
    logs = SweepLogs(store.sweep_dir, ["good", "bad"])
    try:
        counts = asyncio.run(engine.run())
    finally:
        logs.close()
    assert counts[TaskState.COMPLETED] == 24
    st = engine.health.state["bad"]
    assert not st.enabled and "failure rate" in (st.reason or "")
    assert st.failed + st.completed < 10  # stopped getting work soon after 5 tasks
    log = (store.sweep_dir / "logs" / "health_status.log").read_text()
    assert "bad: disabled: failure rate" in log


def test_tasks_a_broken_source_failed_run_elsewhere_and_are_not_failures(tmp_path: Path) -> None:
    """Issue 11, item 7: a source that breaks every task (here: an environment variable;
    on a host, a project_dir without the project) is disabled for its failure rate, and
    the tasks it failed go back to the queue, without retries asked for and without
    counting as the tasks' own failures."""
    code = "import os, sys, time; time.sleep(0.05); sys.exit(1 if os.environ.get('BROKEN') else 0)"
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", code, str(i)] for i in range(12)]))
    ctx = context_for(store)
    good = LocalSource(SourceSpec("good", "local", 2), ctx)
    bad = LocalSource(SourceSpec("bad", "local", 3, {"env": {"BROKEN": "1"}}), ctx)
    engine = SweepEngine(
        store,
        ctx,
        [good, bad],
        strategy="round_robin",
        max_retries=0,
        health=HealthSettings(interval_s=60, min_tasks=3, failure_rate=0.4),
    )
    counts = asyncio.run(engine.run())
    assert counts[TaskState.COMPLETED] == 12, counts
    assert not engine.health.state["bad"].enabled
    attempts = store.attempts()
    failed_on_bad = [a for a in attempts if a.state is TaskState.FAILED]
    assert failed_on_bad and {a.source for a in failed_on_bad} == {"bad"}
    latest = store.latest_attempts()
    assert {a.source for a in latest.values()} == {"good"}


def test_last_source_is_never_disabled_by_failure_rate(tmp_path: Path) -> None:
    store = make_sweep(
        tmp_path, command_tasks([[PY, "-c", "raise SystemExit(1)", str(i)] for i in range(6)])
    )
    ctx = context_for(store)
    only = LocalSource(SourceSpec("only", "local", 2), ctx)
    engine = SweepEngine(store, ctx, [only], health=HealthSettings(min_tasks=3))
    counts = asyncio.run(engine.run())
    assert counts[TaskState.FAILED] == 6  # all ran; none left pending
    assert engine.health.state["only"].enabled


def test_unreachable_source_loses_its_tasks_and_recovers(tmp_path: Path) -> None:
    switch = tmp_path / "down"
    code = "import time; time.sleep(0.4)"
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", code, str(i)] for i in range(12)]))
    ctx = context_for(store)
    flaky = SwitchableLocal(SourceSpec("flaky", "local", 2), ctx, switch)
    steady = LocalSource(SourceSpec("steady", "local", 2), ctx)
    settings = HealthSettings(interval_s=0.3, consecutive_failures=2, timeout_s=2)
    engine = SweepEngine(store, ctx, [flaky, steady], strategy="round_robin", health=settings)

    async def go() -> dict[TaskState, int]:
        run = asyncio.create_task(engine.run())
        while engine.inflight()["flaky"] == 0:
            await asyncio.sleep(0.02)
        switch.write_text("")
        while engine.enabled["flaky"]:
            await asyncio.sleep(0.02)
        switch.unlink()
        while not engine.enabled["flaky"]:
            await asyncio.sleep(0.02)
        return await asyncio.wait_for(run, 60)

    logs = SweepLogs(store.sweep_dir, ["flaky", "steady"])
    try:
        counts = asyncio.run(go())
    finally:
        logs.close()
    assert counts[TaskState.COMPLETED] == 12
    lost = [e for e in store.events() if e[4] == "LOST"]
    assert lost and all(e[5] == "flaky" for e in lost)
    # Each lost task still finished exactly once (its lost attempt may also have finished
    # later: then the first result wins and the re-run is cancelled or never counted).
    latest = store.latest_attempts()
    assert all(a.state is TaskState.COMPLETED for a in latest.values())
    log = (store.sweep_dir / "logs" / "health_status.log").read_text()
    assert "flaky: disabled: unreachable" in log and "flaky: re-enabled" in log
    util = (store.sweep_dir / "logs" / "source_utilization.log").read_text()
    assert "steady running=" in util
