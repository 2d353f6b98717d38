"""Planning `hsm complete`: which tasks run again, and which sources must come along.

A task is never run again once COMPLETED. Attempts the journal shows as ASSIGNED or
RUNNING may still be alive where they were started (a detached ssh task, a queued
Slurm job, a local runner that outlived a killed orchestrator): their source is brought
into the run with no free slots, only to re-attach to them and collect their results.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from hsm_core.errors import ConfigError
from hsm_core.model import SourceSpec, TaskState
from hsm_core.store import SweepStore

RERUN = (TaskState.PENDING, TaskState.LOST, TaskState.CANCELLED)
REATTACH = (TaskState.ASSIGNED, TaskState.RUNNING)


@dataclass
class CompletionPlan:
    keys: list[str]
    specs: list[SourceSpec]
    by_state: Counter[str]
    watch_only: list[str]
    skipped_failed: int

    def describe(self) -> str:
        if not self.keys:
            extra = (
                f" ({self.skipped_failed} FAILED: add --retry-failed to run them)"
                if self.skipped_failed
                else ""
            )
            return f"nothing to complete{extra}"
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.by_state.items()))
        line = f"completing {len(self.keys)} tasks ({parts}) on " + ", ".join(
            f"{s.name}:{s.max_parallel}" for s in self.specs if s.max_parallel
        )
        if self.watch_only:
            line += f"; re-attaching on {', '.join(self.watch_only)}"
        if self.skipped_failed:
            line += f"; {self.skipped_failed} FAILED left alone (--retry-failed runs them)"
        return line


def parse_task_ranges(text: str) -> list[tuple[int, int]]:
    """`3,7-9` as [(3, 3), (7, 9)]: ranges, never expanded (`1-99999999999` is two ints)."""
    ranges: list[tuple[int, int]] = []
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise ConfigError(
            f"{text!r} names no task", key="--tasks", hint="give numbers or ranges, e.g. 3,7-9"
        )
    for part in parts:
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise ConfigError(
                f"{part!r} is not a task number or a range like 7-9",
                key="--tasks",
                hint="give numbers or ranges separated by commas, e.g. 3,7-9",
            )
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if hi < lo:
            raise ConfigError(f"range {part!r} runs backwards", key="--tasks", hint=f"{hi}-{lo}")
        ranges.append((lo, hi))
    return ranges


def check_task_ranges(ranges: list[tuple[int, int]], nums: list[int]) -> None:
    """Every number the ranges name is a task of the sweep (`nums`, sorted)."""
    span = f"tasks are numbered {nums[0]}-{nums[-1]}" if nums else "the sweep has no tasks"
    for lo, hi in ranges:
        have = bisect.bisect_right(nums, hi) - bisect.bisect_left(nums, lo)
        if have == hi - lo + 1:
            continue
        if lo == hi:
            what = f"no task number {lo} in this sweep"
        elif have == 0:
            what = f"no task in {lo}-{hi} in this sweep"
        else:
            what = f"{lo}-{hi} goes past the tasks of this sweep"
        raise ConfigError(what, key="--tasks", hint=span)


def plan_completion(
    store: SweepStore,
    specs: Sequence[SourceSpec],
    *,
    tasks: str | None = None,
    retry_failed: bool = False,
) -> CompletionPlan:
    """What a completion would run. Only meaningful to act on while owning the sweep
    (ownership.acquire): another orchestrator would be running the same tasks."""
    ranges = None
    if tasks is not None:  # `--tasks ''` is a mistake, not "all tasks"
        ranges = parse_task_ranges(tasks)
        check_task_ranges(ranges, store.task_numbers())
    nums = dict(store.task_nums())
    keys: list[str] = []
    by_state: Counter[str] = Counter()
    need_sources: set[str] = set()
    skipped_failed = 0
    # Plain rows in task order (no spec, no Attempt per task: a sweep may hold 100,000).
    rows = sorted(store.latest_rows(), key=lambda r: nums[r[0]])
    for key, _attempt, state_name, source, _started, _ended in rows:
        num = nums[key]
        if ranges is not None and not any(lo <= num <= hi for lo, hi in ranges):
            continue
        state = TaskState(state_name)
        if state is TaskState.COMPLETED:
            continue
        if state is TaskState.FAILED and not retry_failed:
            skipped_failed += 1
            continue
        keys.append(key)
        by_state[state.value] += 1
        if state in REATTACH and source:
            need_sources.add(source)
    chosen = {s.name for s in specs}
    recorded = {d.get("name"): d for d in store.meta("sources") or [] if isinstance(d, dict)}
    watch_only: list[str] = []
    extra: list[SourceSpec] = []
    for name in sorted(need_sources - chosen):
        d = recorded.get(name)
        if d and d.get("type"):
            extra.append(SourceSpec(name, str(d["type"]), 0, dict(d.get("options") or {})))
            watch_only.append(name)
    return CompletionPlan(keys, [*specs, *extra], by_state, watch_only, skipped_failed)
