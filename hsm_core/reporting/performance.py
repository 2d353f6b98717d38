"""Where the time went: per-source and per-sweep numbers for reports/performance_analysis.yaml.

Definitions (all from the journal, per attempt; aggregated in SQL, so the numbers of a
100,000-task sweep cost no object per attempt):

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
import time
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from hsm_core.model import TaskState
from hsm_core.reporting.sweepdata import SweepData


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    return sorted_stats(sorted(values))


def sorted_stats(ordered: Sequence[float]) -> dict[str, float | int | None]:
    """stats() of values already in ascending order (as the journal's queries give them)."""
    if not ordered:
        return {"count": 0, "mean": None, "median": None, "p95": None, "max": None}
    n = len(ordered)
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    # nearest-rank percentile: an observed value, never an interpolation
    p95 = ordered[max(0, math.ceil(0.95 * n) - 1)]
    return {
        "count": n,
        "mean": _r(math.fsum(ordered) / n),
        "median": _r(median),
        "p95": _r(p95),
        "max": _r(ordered[-1]),
    }


def _by_source(rows: Iterable[tuple[str, float]]) -> dict[str, dict[str, float | int | None]]:
    """stats per source of (source, value) rows: the values kept as plain doubles (8
    bytes each, not an object), sorted once per source."""
    values: dict[str, array[float]] = {}
    for name, v in rows:
        got = values.get(name)
        if got is None:
            got = values[name] = array("d")
        got.append(v)
    return {name: sorted_stats(sorted(v)) for name, v in values.items()}


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts))


def span(data: SweepData) -> tuple[float | None, float | None]:
    """(first ASSIGNED or RUNNING time, last end or now if something still runs)."""
    return data.span


def performance(data: SweepData) -> dict[str, Any]:
    t0, t1 = span(data)
    makespan = (t1 - t0) if t0 is not None and t1 is not None else 0.0
    totals = {row[0]: row[1:] for row in data.per_source()}
    durations = _by_source(data.durations())
    waits = _by_source(data.queue_waits())
    per: dict[str, dict[str, Any]] = {}
    total_busy = useful = 0.0
    for name in sorted(set(totals) | set(data.slots)):
        tasks, attempts, done, failed, lost, cancelled, running, busy, ran = totals.get(
            name, (0, 0, 0, 0, 0, 0, 0, 0.0, 0.0)
        )
        total_busy += busy
        useful += ran
        settled = done + failed + lost
        slots = data.slots.get(name) or 0
        per[name] = {
            "tasks": tasks,
            "attempts": attempts,
            "completed": done,
            "failed": failed,
            "lost": lost,
            "cancelled": cancelled,
            "running": running,
            "success_rate": _r(done / settled, 4) if settled else None,
            "duration_s": durations.get(name) or sorted_stats(()),
            "queue_wait_s": waits.get(name) or sorted_stats(()),
            "busy_s": _r(busy),
            "slots": slots or None,
            "utilisation": _r(busy / (slots * makespan), 4) if slots and makespan else None,
        }
    newest = data.newest_counts()
    counts = {s.value: newest.get(s, 0) for s in TaskState}
    n_tasks = sum(newest.values())
    n_attempts = data.attempt_count()
    all_slots = sum(data.slots.values())
    settled = counts["COMPLETED"] + counts["FAILED"] + counts["LOST"]
    sweep = {
        "id": data.sweep_id,
        "tasks": n_tasks,
        "attempts": n_attempts,
        "reruns": n_attempts - n_tasks,
        "states": counts,
        "success_rate": _r(counts["COMPLETED"] / settled, 4) if settled else None,
        "first_assigned": _iso(t0),
        "last_end": _iso(t1),
        "makespan_s": _r(makespan),
        "busy_s": _r(total_busy),
        "slots": all_slots or None,
        "efficiency": _r(useful / (all_slots * makespan), 4) if all_slots and makespan else None,
        "throughput_per_min": _r(counts["COMPLETED"] / makespan * 60, 3) if makespan else None,
        "running": data.active,
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
