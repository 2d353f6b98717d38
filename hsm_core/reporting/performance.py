"""Where the time went: per-source and per-sweep numbers for reports/performance_analysis.yaml.

Definitions (all from the journal, per attempt):

- duration: RUNNING -> end of a COMPLETED attempt (failed runs are not "how long a task takes");
- queue wait: ASSIGNED -> RUNNING (scheduler queue, connection, process start);
- busy time: RUNNING -> end of every attempt, whatever its outcome (a running one: until now);
- success rate: COMPLETED / (COMPLETED + FAILED + LOST) attempts on that source;
- makespan: first ASSIGNED -> last end of the sweep (includes pauses between runs of
  `hsm complete`);
- utilisation (per source): busy time / (slots x makespan);
- efficiency (sweep): busy time of COMPLETED attempts / (all slots x makespan), i.e. the
  share of the capacity that produced results.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

from hsm_core.model import Attempt, TaskState
from hsm_core.reporting.sweepdata import SweepData


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "mean": None, "median": None, "p95": None, "max": None}
    ordered = sorted(values)
    # nearest-rank percentile: an observed value, never an interpolation
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return {
        "count": len(ordered),
        "mean": _r(statistics.fmean(ordered)),
        "median": _r(statistics.median(ordered)),
        "p95": _r(p95),
        "max": _r(ordered[-1]),
    }


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts))


def run_time(att: Attempt, now: float) -> float | None:
    if att.started is None:
        return None
    end = att.ended if att.ended is not None else (now if not att.state.terminal else None)
    return None if end is None else max(0.0, end - att.started)


def span(data: SweepData) -> tuple[float | None, float | None]:
    """(first ASSIGNED or RUNNING time, last end or now if something still runs)."""
    starts: list[float] = list(data.assigned.values())
    ends: list[float] = []
    running = False
    for att in data.all_attempts():
        if att.started is not None:
            starts.append(att.started)
        if att.ended is not None:
            ends.append(att.ended)
        if att.state in (TaskState.ASSIGNED, TaskState.RUNNING):
            running = True
    if not starts:
        return None, None
    end = max(ends) if ends else None
    if running or end is None:
        end = max(end or 0.0, data.now)
    return min(starts), end


def performance(data: SweepData) -> dict[str, Any]:
    t0, t1 = span(data)
    makespan = (t1 - t0) if t0 is not None and t1 is not None else 0.0
    per: dict[str, dict[str, Any]] = {}
    by_source: dict[str, list[Attempt]] = {}
    for att in data.all_attempts():
        if att.source:
            by_source.setdefault(att.source, []).append(att)
    total_busy = useful = 0.0
    for name in sorted(set(by_source) | set(data.slots)):
        atts = by_source.get(name, [])
        states = {s: 0 for s in TaskState}
        for a in atts:
            states[a.state] += 1
        settled = states[TaskState.COMPLETED] + states[TaskState.FAILED] + states[TaskState.LOST]
        durations = [
            a.ended - a.started
            for a in atts
            if a.state is TaskState.COMPLETED and a.started is not None and a.ended is not None
        ]
        waits = [w for a in atts if (w := data.queue_wait(a)) is not None]
        busy = sum(r for a in atts if (r := run_time(a, data.now)) is not None)
        total_busy += busy
        useful += sum(durations)
        slots = data.slots.get(name) or 0
        per[name] = {
            "tasks": len({a.key for a in atts}),
            "attempts": len(atts),
            "completed": states[TaskState.COMPLETED],
            "failed": states[TaskState.FAILED],
            "lost": states[TaskState.LOST],
            "cancelled": states[TaskState.CANCELLED],
            "running": states[TaskState.RUNNING] + states[TaskState.ASSIGNED],
            "success_rate": _r(states[TaskState.COMPLETED] / settled, 4) if settled else None,
            "duration_s": stats(durations),
            "queue_wait_s": stats(waits),
            "busy_s": _r(busy),
            "slots": slots or None,
            "utilisation": _r(busy / (slots * makespan), 4) if slots and makespan else None,
        }
    latest = [atts[-1] for atts in data.attempts.values()]
    counts = {s.value: 0 for s in TaskState}
    for a in latest:
        counts[a.state.value] += 1
    n_attempts = sum(len(v) for v in data.attempts.values())
    all_slots = sum(data.slots.values())
    settled = counts["COMPLETED"] + counts["FAILED"] + counts["LOST"]
    sweep = {
        "id": data.sweep_id,
        "tasks": len(latest),
        "attempts": n_attempts,
        "reruns": n_attempts - len(latest),
        "states": counts,
        "success_rate": _r(counts["COMPLETED"] / settled, 4) if settled else None,
        "first_assigned": _iso(t0),
        "last_end": _iso(t1),
        "makespan_s": _r(makespan),
        "busy_s": _r(total_busy),
        "slots": all_slots or None,
        "efficiency": _r(useful / (all_slots * makespan), 4) if all_slots and makespan else None,
        "throughput_per_min": _r(counts["COMPLETED"] / makespan * 60, 3) if makespan else None,
        "running": bool(data.active),
    }
    return {
        "generated": _iso(data.now),
        "definitions": {
            "duration_s": "RUNNING to end, COMPLETED attempts",
            "queue_wait_s": "ASSIGNED to RUNNING",
            "utilisation": "busy time of all attempts / (slots x makespan)",
            "efficiency": "busy time of COMPLETED attempts / (all slots x makespan)",
        },
        "sweep": sweep,
        "sources": per,
    }
