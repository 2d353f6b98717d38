"""HealthMonitor: periodic checks per source, and the rules that disable and re-enable.

Two rules disable a source:
- reachability: `consecutive_failures` failed checks in a row (a check that raises, says
  not ok, or does not answer within `timeout_s`). Its running attempts become LOST and
  run elsewhere; it is checked on every interval and re-enabled when a check passes.
- failure rate: more than `failure_rate` of its finished tasks FAILED, after at least
  `min_tasks`. It stays disabled for the run (a host that breaks every task, e.g. a
  missing package), except that the last enabled source is never disabled this way:
  tasks failing everywhere are the task's own fault, not a host's. The engine then gives
  the tasks it failed back to the queue (SweepEngine._redistribute).

A source that has not started (or could not: its start is retried by the engine) is
disabled and not checked; `started()` enables it.

Every decision is logged to "hsm.health" (logs/health_status.log); utilisation samples
to "hsm.utilization" (logs/source_utilization.log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hsm_core.sources.base import ComputeSource, HealthReport

log = logging.getLogger("hsm.health")
util_log = logging.getLogger("hsm.utilization")


@dataclass
class HealthSettings:
    interval_s: float = 300.0
    consecutive_failures: int = 3
    failure_rate: float = 0.4
    min_tasks: int = 5
    timeout_s: float = 20.0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> HealthSettings:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass
class SourceHealth:
    name: str
    enabled: bool = True
    reason: str | None = None  # why disabled
    sticky: bool = False  # disabled by the failure-rate rule: not re-enabled by a check
    failures_in_row: int = 0
    completed: int = 0
    failed: int = 0
    last: HealthReport | None = None
    history: list[tuple[float, bool, str]] = field(default_factory=list)
    spared: bool = False  # said once that the last source is kept despite its failures
    starting: bool = False  # not started yet: no checks (the engine retries its start)


Disable = Callable[[str, str, bool], None]  # (source, reason, tasks_are_lost)
Enable = Callable[[str], None]
Usage = Callable[[str], int]


class HealthMonitor:
    def __init__(
        self,
        sources: Mapping[str, ComputeSource],
        settings: HealthSettings,
        *,
        on_disable: Disable,
        on_enable: Enable,
        inflight: Usage,
    ) -> None:
        self.sources = sources
        self.settings = settings
        self.state = {name: SourceHealth(name) for name in sources}
        self._on_disable = on_disable
        self._on_enable = on_enable
        self._inflight = inflight
        self._wake: dict[str, asyncio.Event] = {name: asyncio.Event() for name in sources}
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._loop(name)) for name in self.sources]

    async def stop(self) -> None:
        # Cancelling alone is not enough: asyncio.wait_for (before 3.12) can swallow a
        # cancellation that arrives as its awaitable completes, and the loop would wait a
        # whole interval more. The flag ends it at its next step regardless.
        self._stopping = True
        for t in self._loops:
            t.cancel()
        for t in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # ----------------------------------------------------------- start-up
    def starting(self, name: str) -> None:
        """Not started yet: disabled, and not checked until `started()`."""
        st = self.state[name]
        st.starting, st.enabled = True, False

    def start_failed(self, name: str, reason: str, tries: int, retry_in: float | None) -> None:
        """A start failed: said at WARNING the first time, then at INFO (the terminal
        shows warnings; a host down for an hour must not fill it)."""
        st = self.state[name]
        st.reason = f"could not start: {reason}"
        if retry_in is None:
            st.sticky = True
            log.error("%s: disabled for this run: %s", name, reason)
        elif tries == 1:
            log.warning(
                "%s: disabled: could not start: %s; the sweep goes on without it, "
                "trying again in the background",
                name,
                reason,
            )
        else:
            log.info(
                "%s: still cannot start (try %d): %s; next try in %.0f s",
                name,
                tries,
                reason,
                retry_in,
            )

    def slow(self, name: str, waited: float) -> None:
        st = self.state[name]
        st.reason = f"still starting after {waited:g} s"
        log.warning(
            "%s: disabled: still starting after %g s; the sweep begins without it, and it "
            "joins when it is ready",
            name,
            waited,
        )

    def started(self, name: str, tries: int, late: bool) -> None:
        """Started; `late`: after the sweep began without it."""
        st = self.state[name]
        st.starting, st.enabled, st.reason, st.failures_in_row = False, True, None, 0
        if late:
            log.warning("%s: re-enabled: started at try %d; it joins the sweep", name, tries)

    # -------------------------------------------------------------- checks
    def check_soon(self, name: str) -> None:
        """A task was lost there: check now rather than at the next interval."""
        if name in self._wake:
            self._wake[name].set()

    def enabled_count(self) -> int:
        return sum(1 for s in self.state.values() if s.enabled)

    def record_outcome(self, name: str, ok: bool) -> None:
        st = self.state.get(name)
        if st is None:
            return
        if ok:
            st.completed += 1
        else:
            st.failed += 1
        total = st.completed + st.failed
        rate = st.failed / total
        s = self.settings
        if st.enabled and total >= s.min_tasks and rate > s.failure_rate:
            if self.enabled_count() <= 1:
                if st.spared:
                    return
                st.spared = True
                log.warning(
                    "%s: %.0f%% of %d tasks failed, but it is the last enabled source; "
                    "the tasks themselves are likely at fault",
                    name,
                    100 * rate,
                    total,
                )
                return
            reason = (
                f"failure rate {100 * rate:.0f}% after {total} tasks "
                f"(limit {100 * s.failure_rate:.0f}%)"
            )
            st.sticky = True
            self._disable(st, reason, lost=False)

    async def _loop(self, name: str) -> None:
        wake = self._wake[name]
        while not self._stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self.settings.interval_s)
            if self._stopping:
                return
            wake.clear()
            await self.check(name)

    async def check(self, name: str) -> HealthReport:
        src = self.sources[name]
        st = self.state[name]
        if st.starting:
            return HealthReport(name, False, st.reason or "not started yet")
        t0 = time.monotonic()
        try:
            report = await asyncio.wait_for(src.health_check(), self.settings.timeout_s)
        except asyncio.TimeoutError:
            report = HealthReport(name, False, f"no answer within {self.settings.timeout_s:g} s")
        except Exception as exc:
            report = HealthReport(name, False, f"{type(exc).__name__}: {exc}")
        st.last = report
        st.history.append((report.time, report.ok, report.detail))
        del st.history[:-50]
        util_log.info(
            "%s running=%d/%d load=%s mem_free_gb=%s disk_free_gb=%s check_ms=%.0f",
            name,
            self._inflight(name),
            src.capacity,
            _fmt(report.load),
            _fmt(report.mem_free_gb),
            _fmt(report.disk_free_gb),
            1000 * (time.monotonic() - t0),
        )
        if report.ok:
            if st.failures_in_row:
                log.info("%s: check passed after %d failed", name, st.failures_in_row)
            st.failures_in_row = 0
            if not st.enabled and not st.sticky:
                st.enabled = True
                st.reason = None
                log.warning("%s: re-enabled (%s)", name, report.detail or "check passed")
                self._on_enable(name)
            return report
        st.failures_in_row += 1
        log.warning(
            "%s: check failed (%d/%d): %s",
            name,
            st.failures_in_row,
            self.settings.consecutive_failures,
            report.detail,
        )
        if st.enabled and st.failures_in_row >= self.settings.consecutive_failures:
            self._disable(st, f"unreachable: {report.detail}", lost=True)
        elif st.failures_in_row < self.settings.consecutive_failures:
            # Confirm quickly instead of waiting a whole interval per failed check.
            asyncio.get_running_loop().call_later(
                min(self.settings.interval_s, max(1.0, self.settings.timeout_s / 4)),
                self._wake[name].set,
            )
        return report

    def _disable(self, st: SourceHealth, reason: str, lost: bool) -> None:
        st.enabled = False
        st.reason = reason
        log.error("%s: disabled: %s", st.name, reason)
        self._on_disable(st.name, reason, lost)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
