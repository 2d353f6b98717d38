"""What `hsm monitor watch` shows: one frame of a sweep, read from its journal.

A frame costs one query over the newest attempts (fast on 10,000 tasks) plus a few
single-task lookups for the rows it lists, so it can be rebuilt every second from another
terminal while the orchestrator writes (SQLite WAL: readers never block the writer).
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm_core.model import NOT_PLACED, TaskState
from hsm_core.reporting.errors_analysis import classify
from hsm_core.reporting.failures import attempt_logs
from hsm_core.reporting.sweepdata import source_slots
from hsm_core.store import SweepStore
from hsm_core.taskdir import read_tail

HEALTH_LOG = Path("logs") / "health_status.log"
_LOG_LINE = re.compile(r"^(?P<time>\S+ \S+) (?P<level>[A-Z]+)\s+(?P<logger>\S+): (?P<msg>.*)$")


class _Tally:
    """Totals derived from a per-state count, for a source's line and the whole frame."""

    counts: dict[TaskState, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(n for s, n in self.counts.items() if s.terminal)

    @property
    def in_flight(self) -> int:
        return self.counts.get(TaskState.RUNNING, 0) + self.counts.get(TaskState.ASSIGNED, 0)


@dataclass(frozen=True)
class SourceLine(_Tally):
    name: str
    slots: int | None
    counts: dict[TaskState, int]

    @property
    def running(self) -> int:
        return self.in_flight


@dataclass(frozen=True)
class RunningLine:
    name: str
    source: str | None
    state: TaskState
    attempt: int
    runtime_s: float | None  # since RUNNING; None while still ASSIGNED


@dataclass(frozen=True)
class FailureLine:
    name: str
    source: str | None
    state: TaskState
    ended: float | None
    cause: str
    error: str


@dataclass(frozen=True)
class HealthLine:
    source: str
    state: str  # ok | warning | disabled | unknown
    message: str
    when: str


@dataclass(frozen=True)
class Frame(_Tally):
    sweep_id: str
    sweep_dir: Path
    active: bool
    now: float
    counts: dict[TaskState, int]
    sources: list[SourceLine]
    running: list[RunningLine]  # the longest-running first, at most `max_running`
    failures: list[FailureLine]  # newest first
    health: list[HealthLine]
    elapsed_s: float | None
    mean_duration_s: float | None
    eta_s: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_running(self) -> int:
        return self.in_flight

    @property
    def n_failures(self) -> int:
        return self.counts.get(TaskState.FAILED, 0) + self.counts.get(TaskState.LOST, 0)


def orchestrator_active(sweep_dir: Path, orch: Any) -> bool:
    """Is a command running this sweep? Its lock says (ownership.running)."""
    from hsm_core.ownership import running

    return running(sweep_dir, orch)


def eta(
    queued: int, running_since: list[float], mean_s: float | None, parallel: int, now: float
) -> float | None:
    """Seconds until the queue drains if tasks keep their observed mean duration
    (`queued`: tasks not started yet; `running_since`: when each running one started)."""
    if mean_s is None:
        return None
    left = sum(max(0.0, mean_s - (now - t)) for t in running_since)
    if not queued and not left:
        return 0.0
    return (queued * mean_s + left) / max(1, parallel)


def health_lines(sweep_dir: Path, sources: list[str]) -> list[HealthLine]:
    """Each source's health as the sweep's health monitor logged it (health_status.log):
    disabled from a "disabled" line until a "re-enabled" one; otherwise the level of the
    last line about it. Reads only the end of the file."""
    text = read_tail(sweep_dir / HEALTH_LOG, 256 * 1024)
    if not text:
        return []
    parsed = []
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        if m:
            parsed.append((m.group("time"), m.group("level"), m.group("msg").strip()))
    out = []
    for name in sources:
        rx = re.compile(rf"(?<![\w.-]){re.escape(name)}(?![\w-])")
        disabled: str | None = None
        last: tuple[str, str, str] | None = None
        for when, level, msg in parsed:
            if not rx.search(msg):
                continue
            low = msg.lower()
            if "re-enabl" in low:
                disabled = None
            elif "disabled" in low:
                disabled = msg
            last = (when, level, msg)
        if last is None:
            continue
        when, level, msg = last
        if disabled is not None:
            state, msg = "disabled", disabled if disabled == msg else f"{disabled}; then: {msg}"
        elif level in ("WARNING", "ERROR", "CRITICAL") and "re-enabl" not in msg.lower():
            state = "warning"
        else:
            state = "ok"
        out.append(HealthLine(name, state, msg, when.split(" ")[-1].split(".")[0]))
    return out


def snapshot(store: SweepStore, *, max_running: int = 12, max_failures: int = 6) -> Frame:
    now = time.time()
    meta = store.all_meta()
    # Plain rows, not an Attempt per task: this runs every 2 s on sweeps of 100,000.
    rows = store.latest_rows()
    tally: Counter[str] = Counter()
    per_source: dict[str, dict[TaskState, int]] = {}
    by_source: Counter[tuple[str, str]] = Counter()
    durations: list[float] = []
    for _key, _att, state, source, started, ended in rows:
        by_source[(source or NOT_PLACED, state)] += 1
        if state == "COMPLETED" and started is not None and ended is not None:
            durations.append(ended - started)
    for (src, state), n in by_source.items():
        tally[state] += n
        per_source.setdefault(src, {})[TaskState(state)] = n
    counts = {TaskState(state): n for state, n in tally.items()}
    slots = source_slots(meta)
    for name in slots:
        per_source.setdefault(name, {})
    sources = [
        SourceLine(name, slots.get(name), per_source[name])
        for name in sorted(per_source, key=lambda n: (n == NOT_PLACED, n))
    ]
    active = orchestrator_active(store.sweep_dir, meta.get("orchestrator"))

    def name_of(key: str) -> str:
        try:
            return store.task(key).name
        except KeyError:
            return key

    busy = [r for r in rows if r[2] in ("ASSIGNED", "RUNNING")]
    busy.sort(key=lambda r: r[4] if r[4] is not None else now)
    running = [
        RunningLine(
            name_of(key),
            source,
            TaskState(state),
            att,
            (now - started) if started is not None else None,
        )
        for key, att, state, source, started, _ in busy[:max_running]
    ]
    bad = [r for r in rows if r[2] in ("FAILED", "LOST")]
    bad.sort(key=lambda r: r[5] or 0.0, reverse=True)
    failures = []
    for key, att_no, *_ in bad[:max_failures]:
        a = next(x for x in store.attempts(key) if x.attempt == att_no)
        name = name_of(key)
        text, _ = attempt_logs(store.sweep_dir / "tasks" / name)
        cause = classify(a.state, a.exit_code, a.error, text)
        failures.append(
            FailureLine(name, a.source, a.state, a.ended, cause.label, cause.summary or "")
        )
    mean = statistics.fmean(durations) if durations else None
    started = meta.get("started")
    ended = meta.get("ended")
    elapsed = None
    if isinstance(started, (int, float)):
        stop = now if active or not isinstance(ended, (int, float)) else ended
        elapsed = max(0.0, stop - started)
    parallel = sum(slots.values()) or max(1, len(busy))
    queued = tally["PENDING"] + tally["ASSIGNED"]
    since = [r[4] for r in busy if r[2] == "RUNNING" and r[4] is not None]
    names = [s.name for s in sources if s.name != NOT_PLACED]
    return Frame(
        sweep_id=str(meta.get("sweep_id", store.sweep_dir.name)),
        sweep_dir=store.sweep_dir,
        active=active,
        now=now,
        counts=counts,
        sources=sources,
        running=running,
        failures=failures,
        health=health_lines(store.sweep_dir, names),
        elapsed_s=elapsed,
        mean_duration_s=mean,
        eta_s=eta(queued, since, mean, parallel, now) if active else None,
    )
