"""A read model of one sweep for reports, read from the journal in SQL as it is needed.

Nothing here holds an object per task or per attempt: the reports of a 100,000-task
sweep aggregate in SQL (per source, per state) and stream what they must look at one row
at a time (the timeline's bars, the failed tasks), so their memory does not grow with
the sweep. The time an attempt was ASSIGNED (its queue wait and its bar start there) is
only in the events table, which has exactly one ASSIGNED event per attempt that was ever
placed (states only move forward, and nothing reaches RUNNING but through ASSIGNED): the
queries below start from those events.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm_core.journal_sql import NEWEST
from hsm_core.model import TaskState
from hsm_core.store import SweepStore
from hsm_core.taskdir import TaskPaths

FINISHED = (TaskState.COMPLETED, TaskState.FAILED, TaskState.LOST)
_IN_FLIGHT = "('PENDING', 'ASSIGNED', 'RUNNING')"


@dataclass(frozen=True, slots=True)
class Bar:
    """One attempt on the timeline: from ASSIGNED through RUNNING to its end."""

    key: str
    attempt: int
    state: TaskState
    start: float  # assigned
    run: float | None  # started
    end: float
    error: str | None


@dataclass(frozen=True, slots=True)
class FailedRow:
    """A task whose newest attempt FAILED or was LOST."""

    key: str
    num: int
    attempt: int
    state: TaskState
    source: str | None
    exit_code: int | None
    error: str | None
    ended: float | None

    @property
    def name(self) -> str:
        return f"task_{self.num:03d}"


@dataclass(frozen=True)
class SweepData:
    store: SweepStore
    sweep_dir: Path
    sweep_id: str
    meta: dict[str, Any]
    slots: dict[str, int]  # source name -> max_parallel, as the orchestrator recorded it
    now: float = field(default_factory=time.time)

    def _rows(self, sql: str, args: Any = ()) -> Iterator[tuple[Any, ...]]:
        yield from self.store._conn.execute(sql, args)

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        row = self.store._conn.execute(sql, args).fetchone()
        assert row is not None
        return tuple(row)

    # -------------------------------------------------------------- parameters
    @functools.cached_property
    def params(self) -> dict[str, Mapping[str, Any]]:
        """Every task's parameters by key, read when first asked for (the failure
        patterns need them; a report of a sweep without failures never does)."""
        return {key: params for key, _, params in self.store.task_params()}

    def params_of(self, key: str) -> Mapping[str, Any]:
        if "params" in self.__dict__:
            return self.params.get(key, {})
        try:
            return self.store.task(key).params
        except KeyError:
            return {}

    # ------------------------------------------------------------------ totals
    @functools.cached_property
    def span(self) -> tuple[float | None, float | None]:
        """(first ASSIGNED or RUNNING time, last end, or now while something runs)."""
        (first_assigned,) = self._one("SELECT MIN(time) FROM events WHERE state = 'ASSIGNED'")
        first_run, last_end, running = self._one(
            "SELECT MIN(started), MAX(ended), "
            "COALESCE(SUM(state IN ('ASSIGNED', 'RUNNING')), 0) FROM attempts"
        )
        starts = [t for t in (first_assigned, first_run) if t is not None]
        if not starts:
            return None, None
        end = last_end
        if running or end is None:
            end = max(end or 0.0, self.now)
        return min(starts), end

    def newest_counts(self) -> dict[TaskState, int]:
        """Tasks per state of their newest attempt."""
        return {
            TaskState(s): n
            for s, n in self._rows(f"SELECT state, COUNT(*) FROM ({NEWEST}) GROUP BY state")
        }

    def attempt_count(self) -> int:
        return int(self._one("SELECT COUNT(*) FROM attempts")[0])

    def per_source(self) -> Iterator[tuple[Any, ...]]:
        """Per source: tasks, attempts, attempts per state, busy seconds (RUNNING to the
        end of every attempt; a running one until now) and seconds of COMPLETED runs."""
        yield from self._rows(
            "SELECT source, COUNT(DISTINCT key), COUNT(*), "
            "SUM(state = 'COMPLETED'), SUM(state = 'FAILED'), SUM(state = 'LOST'), "
            "SUM(state = 'CANCELLED'), SUM(state IN ('ASSIGNED', 'RUNNING')), "
            "COALESCE(SUM(CASE WHEN started IS NULL THEN NULL "
            "  WHEN ended IS NOT NULL THEN MAX(0.0, ended - started) "
            f"  WHEN state IN {_IN_FLIGHT} THEN MAX(0.0, ? - started) END), 0.0), "
            "COALESCE(SUM(CASE WHEN state = 'COMPLETED' AND started IS NOT NULL "
            "  AND ended IS NOT NULL THEN ended - started END), 0.0) "
            "FROM attempts WHERE source IS NOT NULL GROUP BY source",
            (self.now,),
        )

    def durations(self) -> Iterator[tuple[str, float]]:
        """(source, RUNNING to end) of every COMPLETED attempt, in no order."""
        yield from self._rows(
            "SELECT source, ended - started FROM attempts WHERE state = 'COMPLETED' "
            "AND started IS NOT NULL AND ended IS NOT NULL AND source IS NOT NULL"
        )

    def queue_waits(self) -> Iterator[tuple[str, float]]:
        """(source, ASSIGNED to RUNNING) of every attempt that ran, in no order."""
        yield from self._rows(
            "SELECT a.source, MAX(0.0, a.started - e.time) FROM events e "
            "JOIN attempts a ON a.key = e.key AND a.attempt = e.attempt "
            "WHERE e.state = 'ASSIGNED' AND a.started IS NOT NULL AND a.source IS NOT NULL"
        )

    # ---------------------------------------------------------------- timeline
    def bars(self, t1: float) -> Iterator[tuple[str, Bar]]:
        """(source, bar) of every attempt that was placed, by source, then start, then
        end. `t1` ends the bars of attempts still in flight."""
        end = (
            "MAX(e.time, CASE WHEN a.ended IS NOT NULL THEN a.ended "
            "WHEN a.state IN ('ASSIGNED', 'RUNNING') THEN :t1 "
            "ELSE COALESCE(a.started, e.time) END)"
        )
        rows = self._rows(
            f"SELECT a.source, a.key, a.attempt, a.state, e.time AS s, a.started, {end} AS f, "
            "substr(a.error, 1, 200) FROM events e "
            "JOIN attempts a ON a.key = e.key AND a.attempt = e.attempt "
            "WHERE e.state = 'ASSIGNED' AND a.source IS NOT NULL ORDER BY a.source, s, f",
            {"t1": t1},
        )
        for source, key, attempt, state, s, run, f, error in rows:
            yield source, Bar(key, attempt, TaskState(state), s, run, f, error)

    def names(self, keys: Iterable[str]) -> dict[str, str]:
        """task_NNN of each of these tasks."""
        out: dict[str, str] = {}
        wanted = list(dict.fromkeys(keys))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, num in self._rows(f"SELECT key, num FROM tasks WHERE key IN ({marks})", chunk):
                out[key] = f"task_{num:03d}"
        return out

    # ---------------------------------------------------------------- failures
    def failed(self) -> Iterator[FailedRow]:
        """Tasks whose newest attempt FAILED or was LOST, in task order."""
        for key, num, attempt, state, source, code, error, ended in self._rows(
            "SELECT a.key, t.num, a.attempt, a.state, a.source, a.exit_code, a.error, a.ended "
            "FROM attempts a JOIN tasks t ON t.key = a.key "
            "WHERE a.state IN ('FAILED', 'LOST') AND NOT EXISTS (SELECT 1 FROM attempts b "
            "WHERE b.key = a.key AND b.attempt > a.attempt) ORDER BY t.num"
        ):
            yield FailedRow(key, num, attempt, TaskState(state), source, code, error, ended)

    def recovered(self) -> int:
        """Tasks that failed or were lost at least once, then completed."""
        (n,) = self._one(
            f"SELECT COUNT(*) FROM ({NEWEST}) n WHERE n.state = 'COMPLETED' AND n.attempt > 1 "
            "AND EXISTS (SELECT 1 FROM attempts b WHERE b.key = n.key "
            "AND b.attempt < n.attempt AND b.state IN ('FAILED', 'LOST'))"
        )
        return int(n)

    def finished_keys(self) -> frozenset[str]:
        """Tasks whose newest attempt is COMPLETED, FAILED or LOST."""
        return frozenset(
            k
            for (k,) in self._rows(
                f"SELECT key FROM ({NEWEST}) WHERE state IN ('COMPLETED', 'FAILED', 'LOST')"
            )
        )

    # ----------------------------------------------------------------- folders
    def task_dir(self, name: str) -> Path:
        return self.sweep_dir / "tasks" / name

    def attempt_dir(self, name: str, attempt: int, newest: int) -> Path:
        """Where an attempt's files are: the task folder for the newest attempt, and
        attempt_N/ for older ones (the engine moves them there before a re-run)."""
        tdir = self.task_dir(name)
        return tdir if attempt == newest else TaskPaths(tdir).attempt(attempt)

    @property
    def active(self) -> bool:
        """A command runs the sweep: it says so in the journal and holds its lock (a
        killed one leaves the first, never the second)."""
        from hsm_core.ownership import running

        orch = self.meta.get("orchestrator")
        return bool(orch) and running(self.sweep_dir, orch)


def load_sweep(store: SweepStore) -> SweepData:
    meta = store.all_meta()
    return SweepData(
        store=store,
        sweep_dir=store.sweep_dir,
        sweep_id=str(meta.get("sweep_id", store.sweep_dir.name)),
        meta=meta,
        slots=source_slots(meta),
    )


def source_slots(meta: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in meta.get("sources") or []:
        if isinstance(entry, dict) and entry.get("name"):
            try:
                out[str(entry["name"])] = int(entry.get("max_parallel") or 0)
            except (TypeError, ValueError):
                out[str(entry["name"])] = 0
    return out
