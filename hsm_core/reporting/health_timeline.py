"""`hsm monitor health --watch [--test-recovery]`: what each source went through while
watched (last failure, when it was disabled, when re-enabled), and the recovery test.

The recovery test starts one ssh source as a sweep would (one connection, its agent),
checks it with the sweep's own HealthMonitor rules (hsm_core.health: `consecutive_failures`
failed checks in a row disable it, a passing check re-enables it), drops its connection
once on purpose, and checks it every `STEP_S` until it is healthy again. It passes when
the source was healthy again within its bound: the ssh source's `reconnect_window` (how
long it tries to reconnect before calling the host down) plus one health check's
`timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsm_core.errors import ConfigError

if TYPE_CHECKING:
    from hsm_core.reporting.source_health import SourceCheck

STEP_S = 0.5  # checks this often once the connection is dropped


@dataclass
class Timeline:
    last_failure: float | None = None
    last_failure_detail: str = ""
    disabled_at: float | None = None
    reenabled_at: float | None = None
    disabled: bool = False

    def note(self, when: float, ok: bool, detail: str, disabled: bool) -> None:
        if not ok:
            self.last_failure, self.last_failure_detail = when, detail
        if disabled and not self.disabled:
            self.disabled, self.disabled_at = True, when
        elif ok and self.disabled:
            self.disabled, self.reenabled_at = False, when


class Timelines(dict[str, Timeline]):
    def add_round(self, rows: list[SourceCheck]) -> None:
        """Fold one round of `check_sources` rows in."""
        for r in rows:
            self.setdefault(r.name, Timeline()).note(
                r.checked, r.ok, r.detail, bool(r.disabled_reason)
            )


@dataclass
class RecoveryResult:
    source: str
    ok: bool
    bound_s: float
    detected_s: float | None = None
    disabled_s: float | None = None
    reenabled_s: float | None = None
    recovered_s: float | None = None
    failed_checks: int = 0
    detail: str = ""
    timeline: Timeline = field(default_factory=Timeline)


def pick_ssh_source(entries: Mapping[str, Mapping[str, Any]], names: list[str] | None) -> str:
    wanted = names or list(entries)
    ssh = [n for n in wanted if entries.get(n, {}).get("type") == "ssh"]
    if not ssh:
        raise ConfigError(
            "--test-recovery disconnects an ssh source, and none is selected",
            key="--test-recovery",
            hint="add an ssh source to hsm.yaml, or name one with --sources",
        )
    return ssh[0]


async def test_recovery(
    name: str,
    entry: Mapping[str, Any],
    health: Mapping[str, Any],
    project_root: Path,
    say: Callable[[float, str], None],
) -> RecoveryResult:
    """Drop `name`'s connection once and follow its recovery; `say(t, line)` reports
    each step, t seconds after the drop (negative: before)."""
    from hsm_core.config import source_spec
    from hsm_core.health import HealthMonitor, HealthSettings
    from hsm_core.sources import make_source
    from hsm_core.sources.base import SweepContext
    from hsm_core.sources.ssh.options import SSHOptions

    settings = HealthSettings.from_mapping(health)
    entry = {**entry, "sync": "warn"}  # looking must not push anything
    spec = source_spec(name, entry)
    opts = SSHOptions.parse(name, spec.options)
    bound = opts.reconnect_window + settings.timeout_s
    result = RecoveryResult(name, False, bound)
    t0 = time.monotonic()
    marks: dict[str, float] = {}

    def since() -> float:
        return time.monotonic() - t0

    def disabled(src_name: str, reason: str, lost: bool) -> None:
        marks.setdefault("disabled", since())
        result.timeline.note(time.time(), False, reason, True)
        say(since(), f"{src_name} disabled: {reason}")

    def enabled(src_name: str) -> None:
        marks.setdefault("reenabled", since())
        result.timeline.note(time.time(), True, "", False)
        say(since(), f"{src_name} re-enabled")

    with tempfile.TemporaryDirectory(prefix="hsm-recovery-") as scratch:
        ctx = SweepContext("health-recovery", Path(scratch), project_root, sys.executable)
        src: Any = make_source(spec, ctx)
        try:
            await asyncio.wait_for(src.start(lambda ev: None), settings.timeout_s)
        except Exception as exc:
            result.detail = f"{name} did not start: {exc}"
            return result
        monitor = HealthMonitor(
            {name: src}, settings, on_disable=disabled, on_enable=enabled, inflight=lambda n: 0
        )
        try:
            first = await monitor.check(name)
            t0 = time.monotonic()
            if not first.ok:
                result.detail = f"{name} is not healthy to begin with: {first.detail}"
                say(0.0, result.detail)
                return result
            say(0.0, f"{name} healthy ({first.detail}); dropping its connection now")
            src.transport.abort()
            while since() <= bound:
                report = await monitor.check(name)
                result.timeline.note(report.time, report.ok, report.detail, False)
                if not report.ok:
                    result.failed_checks += 1
                    if "detected" not in marks:
                        marks["detected"] = since()
                    say(since(), f"check failed ({result.failed_checks}): {report.detail}")
                elif "detected" in marks:
                    marks["recovered"] = since()
                    say(since(), f"check passed: {report.detail}")
                    break
                else:  # still up: the drop is not seen yet
                    say(since(), f"check passed (the drop is not seen yet): {report.detail}")
                await asyncio.sleep(STEP_S)  # the pace of the checks, not synchronisation
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(src.close(), settings.timeout_s)
    result.detected_s = marks.get("detected")
    result.disabled_s = marks.get("disabled")
    result.reenabled_s = marks.get("reenabled")
    result.recovered_s = marks.get("recovered")
    if result.detected_s is None:
        result.detail = f"the dropped connection was never seen within {bound:g} s"
    elif result.recovered_s is None:
        result.detail = f"not healthy again within {bound:g} s"
    else:
        result.ok = True
        result.detail = (
            f"detected after {result.detected_s:.1f} s, healthy again after "
            f"{result.recovered_s:.1f} s (bound {bound:g} s: reconnect_window "
            f"{opts.reconnect_window:g} s + health timeout_s {settings.timeout_s:g} s)"
        )
    return result
