"""A read model of one sweep for reports: every task, every attempt, when each was placed.

Loaded from the store in three queries (tasks, attempts, events), so a report on 10,000
tasks starts from memory instead of one query per task. The attempts table has created,
started and ended per attempt; the time an attempt was ASSIGNED (queue wait starts there)
is only in the events table.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hsm_core.model import Attempt, TaskSpec, TaskState
from hsm_core.store import SweepStore
from hsm_core.taskdir import TaskPaths

_NO_PARAMS: Mapping[str, Any] = MappingProxyType({})
FINISHED = (TaskState.COMPLETED, TaskState.FAILED, TaskState.LOST)


@dataclass(frozen=True)
class SweepData:
    sweep_dir: Path
    sweep_id: str
    meta: dict[str, Any]
    tasks: dict[str, TaskSpec]  # by key, in task number order
    attempts: dict[str, list[Attempt]]  # by key, in attempt order
    assigned: dict[tuple[str, int], float]  # (key, attempt) -> time it was ASSIGNED
    slots: dict[str, int]  # source name -> max_parallel, as the orchestrator recorded it
    now: float = field(default_factory=time.time)
    load_params: Callable[[], dict[str, Mapping[str, Any]]] = field(default=dict, repr=False)

    @functools.cached_property
    def params(self) -> dict[str, Mapping[str, Any]]:
        """Every task's parameters by key, read when first asked for (the failure analysis
        needs them; a report of a sweep without failures never does)."""
        return self.load_params()

    def latest(self, key: str) -> Attempt:
        return self.attempts[key][-1]

    def all_attempts(self) -> list[Attempt]:
        return [a for atts in self.attempts.values() for a in atts]

    def task_dir(self, task: TaskSpec) -> Path:
        return self.sweep_dir / "tasks" / task.name

    def attempt_dir(self, task: TaskSpec, attempt: int) -> Path:
        """Where an attempt's files are: the task folder for the newest attempt, and
        attempt_N/ for older ones (the engine moves them there before a re-run)."""
        tdir = self.task_dir(task)
        if attempt == self.latest(task.key).attempt:
            return tdir
        return TaskPaths(tdir).attempt(attempt)

    def queue_wait(self, att: Attempt) -> float | None:
        """Seconds from ASSIGNED to RUNNING (scheduler queue, connection, process start)."""
        t = self.assigned.get((att.key, att.attempt))
        if t is None or att.started is None:
            return None
        return max(0.0, att.started - t)

    @property
    def active(self) -> bool:
        """A command runs the sweep: it says so in the journal and holds its lock (a
        killed one leaves the first, never the second)."""
        from hsm_core.ownership import running

        orch = self.meta.get("orchestrator")
        return bool(orch) and running(self.sweep_dir, orch)


def load_sweep(store: SweepStore) -> SweepData:
    meta = store.all_meta()
    # Numbers only (parameters on demand, `params`): a report of 100,000 tasks needs no
    # argv, env or payload held in memory.
    tasks = {key: TaskSpec(key, num, _NO_PARAMS) for key, num in store.task_nums()}
    attempts: dict[str, list[Attempt]] = {k: [] for k in tasks}
    for att in store.attempts():  # ordered by key, attempt
        attempts.setdefault(att.key, []).append(att)
    assigned = store.assigned_times()
    return SweepData(
        sweep_dir=store.sweep_dir,
        sweep_id=str(meta.get("sweep_id", store.sweep_dir.name)),
        meta=meta,
        tasks=tasks,
        attempts={k: v for k, v in attempts.items() if v and k in tasks},
        assigned=assigned,
        slots=source_slots(meta),
        load_params=lambda: {key: params for key, _, params in store.task_params()},
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
