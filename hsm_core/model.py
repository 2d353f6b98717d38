"""The task model: what a sweep is made of and the one table of legal state changes.

Everything here is a plain frozen dataclass or an enum so that it can be stored,
pickled and compared; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class TaskState(str, Enum):
    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    LOST = "LOST"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    def __str__(self) -> str:  # so f-strings and YAML show "RUNNING", not "TaskState.RUNNING"
        return self.value


TERMINAL_STATES = frozenset(
    {TaskState.COMPLETED, TaskState.FAILED, TaskState.LOST, TaskState.CANCELLED}
)

# The one transition table. Within an attempt a state only moves forward; a retry or a
# re-queue opens a new attempt (starting at PENDING) instead of moving an old one back.
# LOST -> COMPLETED is the one move out of a terminal state: a host declared dead that
# comes back with a real result proves the work was done (the first result still wins
# at the task level, see SweepStore.record_result).
TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset({TaskState.ASSIGNED, TaskState.CANCELLED, TaskState.LOST}),
    TaskState.ASSIGNED: frozenset(
        {
            TaskState.RUNNING,
            TaskState.COMPLETED,
            TaskState.FAILED,
            TaskState.LOST,
            TaskState.CANCELLED,
        }
    ),
    TaskState.RUNNING: frozenset(
        {TaskState.COMPLETED, TaskState.FAILED, TaskState.LOST, TaskState.CANCELLED}
    ),
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.LOST: frozenset({TaskState.COMPLETED}),
    TaskState.CANCELLED: frozenset(),
}


def can_move(old: TaskState, new: TaskState) -> bool:
    return new in TRANSITIONS[old]


# What every listing shows in place of a source for a task no source has taken yet.
NOT_PLACED = "(not placed)"

# argv[0] of a `script:` task when the sweep file names no interpreter: each source puts
# its own there (the local one hsm runs under; an ssh host's or a cluster's `python:`).
PYTHON = "{hsm:python}"


class TaskKind(str, Enum):
    COMMAND = "command"  # argv run as a process (hsm run)
    HYDRA = "hydra"  # a cloudpickled Hydra job (launcher, hsm complete)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def task_key(params: Mapping[str, Any]) -> str:
    """Stable identity of a sweep point, independent of its position in the sweep.

    Editing the sweep file later (adding values, reordering) keeps the key of every point
    that already existed, so `hsm complete` never renumbers or re-runs finished work.
    """
    digest = hashlib.sha256(canonical_json(dict(params)).encode()).hexdigest()
    return digest[:16]


@dataclass(frozen=True, slots=True)  # many thousands live at once
class TaskSpec:
    """Everything needed to run one sweep point later, on any source."""

    key: str
    num: int
    params: Mapping[str, Any]
    kind: TaskKind = TaskKind.COMMAND
    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = "."  # relative to the project root
    payload: str | None = None  # Hydra jobs: path of the pickled job, relative to the sweep dir
    timeout_s: float | None = None

    @property
    def name(self) -> str:
        return f"task_{self.num:03d}"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "num": self.num,
            "params": dict(self.params),
            "kind": self.kind.value,
            "argv": list(self.argv),
            "env": [list(kv) for kv in self.env],
            "cwd": self.cwd,
            "payload": self.payload,
            "timeout_s": self.timeout_s,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskSpec:
        return cls(
            key=data["key"],
            num=int(data["num"]),
            params=data.get("params") or {},
            kind=TaskKind(data.get("kind", "command")),
            argv=tuple(data.get("argv") or ()),
            env=tuple((str(k), str(v)) for k, v in data.get("env") or ()),
            cwd=data.get("cwd", "."),
            payload=data.get("payload"),
            timeout_s=data.get("timeout_s"),
        )


@dataclass(frozen=True, slots=True)  # many thousands live at once
class TaskEvent:
    """A source's report about one attempt of one task. Sources only ever report; the
    engine decides what the report means for the task (retry, re-queue, ...)."""

    key: str
    attempt: int
    state: TaskState
    source: str | None  # None: the engine itself (e.g. cancelling a queued task)
    time: float = field(default_factory=time.time)
    exit_code: int | None = None
    error: str | None = None  # one line for humans; the details are in the task's logs
    handle: str | None = None  # pid, remote pid, scheduler job id
    # A scheduler stopped the attempt ("timeout" / "preempted"): the next one may go on
    # where it was (hsm_core.resume); None for every other end.
    resume: str | None = None


@dataclass(frozen=True, slots=True)  # many thousands live at once
class Attempt:
    key: str
    attempt: int
    state: TaskState
    source: str | None
    handle: str | None
    created: float
    started: float | None
    ended: float | None
    exit_code: int | None
    error: str | None


@dataclass(frozen=True)
class SourceSpec:
    """A configured compute source: its name, type, slot count and type-specific options."""

    name: str
    type: str
    max_parallel: int
    options: Mapping[str, Any] = field(default_factory=dict)
    weight: float = 1.0

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)
