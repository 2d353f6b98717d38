"""The results of a sweep: one row per task, its parameters and its metrics.

A task's metrics are the numbers it produced (hsm_core.metrics says where they are found
and in which order). The view writer records them in the journal once, when each task
completes; this module reads them from there, a task folder only for what was never
recorded. A name that is also a parameter of the sweep is dropped (programs echo their
configuration). Only COMPLETED tasks have metrics: a failed run's last numbers are not
its result.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from hsm_core.metrics import RETURN, read_metrics
from hsm_core.model import TaskKind, TaskSpec, TaskState

if TYPE_CHECKING:
    from hsm_core.store import SweepStore


@dataclass(frozen=True)
class TaskResult:
    """One row: a task, its state, its parameters and what it measured."""

    task: TaskSpec
    state: TaskState
    source: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # metric -> where it was found
    values: dict[str, Any] = field(default_factory=dict)  # parameters, numbers as numbers

    @property
    def name(self) -> str:
        return self.task.name


@dataclass(frozen=True)
class Results:
    sweep_id: str
    rows: list[TaskResult]
    params: list[str]  # parameter names, in sweep order
    metrics: list[str]  # metric names, in order of first appearance
    completed: int = 0  # COMPLETED tasks of the sweep (with or without metrics)

    def value(self, row: TaskResult, key: str) -> Any:
        """A parameter's value (as a number when it reads as one) or a metric's."""
        if key in row.metrics:
            return row.metrics[key]
        return row.values.get(key)


# ------------------------------------------------------------------ numbers
def as_number(value: Any) -> Any:
    """A Hydra parameter arrives as text ("0.1"): numbers read as numbers, other values
    stay as they are."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            return value
        return number if value.strip().lower() not in ("nan", "inf", "-inf") else value
    return value


# ------------------------------------------------------------------- sweep
def load_results(store: SweepStore, *, only_metrics: bool = False) -> Results:
    """Every task of the sweep with its metrics (COMPLETED tasks only have some);
    `only_metrics`: the tasks that have metrics only (what the report's plots need).

    The metrics come from the journal, where the view writer recorded them once when each
    task completed; a task folder is read only for what was never recorded (a sweep of an
    older hsm, a task completed since the last refresh). One pass over the journal's rows,
    keeping of each spec only its parameters and kind: a sweep of 100,000 tasks does not
    hold every argv and environment in memory, nor a row for each task without metrics
    when `only_metrics`."""
    params: dict[str, None] = {}
    rows: list[TaskResult] = []
    seen: dict[str, None] = {}
    tasks_dir = os.path.join(str(store.sweep_dir), "tasks")
    unread: list[tuple[int, TaskSpec]] = []  # (row index, task) whose folder must be read
    for key, num, spec_text, state_name, source, recorded in store.result_rows(
        only_metrics=only_metrics
    ):
        spec = json.loads(spec_text)
        task_params = spec.get("params") or {}
        params.update(dict.fromkeys(task_params))
        task = TaskSpec(key, num, task_params, TaskKind(spec.get("kind", "command")))
        state = TaskState(state_name)
        metrics: dict[str, float] = {}
        origin: dict[str, str] = {}
        if state is TaskState.COMPLETED:
            if recorded is None:
                unread.append((len(rows), task))
            elif recorded != "{}":
                doc = json.loads(recorded)
                metrics, origin = doc.get("m") or {}, doc.get("o") or {}
        if only_metrics and not metrics and recorded is not None:
            continue
        values = {k: as_number(v) for k, v in task_params.items()}
        rows.append(TaskResult(task, state, source, metrics, origin, values))
    names = list(params)
    skip = set(names)
    for i, task in unread:
        metrics, origin = read_metrics(os.path.join(tasks_dir, task.name), task.kind, names)
        rows[i] = dataclasses.replace(rows[i], metrics=metrics, origin=origin)
    if unread and only_metrics:
        rows = [r for r in rows if r.metrics]
    for row in rows:
        for m in [m for m in row.metrics if m in skip]:  # a name another task sweeps
            del row.metrics[m]
            row.origin.pop(m, None)
        seen.update(dict.fromkeys(row.metrics))
    echoes = _echoes(rows, list(seen), names)
    if echoes:
        for row in rows:
            for m in echoes:
                row.metrics.pop(m, None)
                row.origin.pop(m, None)
    ordered = [RETURN] if RETURN in seen else []
    ordered += [m for m in seen if m != RETURN and m not in echoes]
    completed = store.counts().get(TaskState.COMPLETED, 0) if only_metrics else None
    if completed is None:
        completed = sum(1 for r in rows if r.state is TaskState.COMPLETED)
    return Results(store.sweep_id, rows, names, ordered, completed)


def _echoes(rows: list[TaskResult], metrics: list[str], params: list[str]) -> set[str]:
    """Metrics that repeat a parameter in every task that has them (`lr` beside
    `optim.lr`): the program echoing its configuration, not a measurement."""
    out: set[str] = set()
    have = [r for r in rows if r.metrics]
    for m in metrics:
        with_m = [r for r in have if m in r.metrics]
        for p in params:
            if all(_same(r.metrics[m], r.task.params.get(p)) for r in with_m):
                out.add(m)
                break
    return out


def _same(metric: float, param: Any) -> bool:
    value = as_number(param)
    return finite(value) and float(value) == metric


def finite(x: Any) -> TypeGuard[float]:
    """A real number that is not NaN or infinite (booleans are not numbers here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
