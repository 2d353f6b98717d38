"""The hpc source's requests to its login-node half (backend.py) and the answers, one
TypedDict per kind.

On the wire (``python -m hsm_core.sources.hpc.backend`` over ssh) a request is one JSON
object: the op's keys plus ``options`` (the source's HPCOptions.to_json(), added by the
client); the answer is one JSON object, or ``{"error": ..., "user_error": true?}``. A
login node may run another hsm version than the orchestrator: keys are only ever added.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class JobRequest(TypedDict):
    """One task for the scheduler; `run_task` (job.py) runs it on the compute node.
    (submitit pickles it: jobs queued by an older hsm may lack newer keys.)"""

    key: str
    attempt: int
    name: str
    kind: str  # TaskKind's value
    task_dir: str
    cwd: str
    argv: list[str]
    env: dict[str, str]
    timeout_s: float | None
    resume: bool
    stop_signal: str


# -- requests ----------------------------------------------------------------------------
class SubmitOp(TypedDict):
    op: Literal["submit"]
    folder: str  # submitit's folder for the batch's scripts and pickles
    jobs: list[JobRequest]
    parallelism: int  # the arrays' `%` throttle


class PollOp(TypedDict):
    op: Literal["poll"]
    job_ids: list[str]  # empty: no scheduler query, only the records
    dirs: list[tuple[str, int]]  # (task dir, attempt); JSON makes the pairs lists


class CancelOp(TypedDict):
    op: Literal["cancel"]
    job_ids: list[str]


class ThrottleOp(TypedDict):
    op: Literal["throttle"]
    arrays: dict[str, int]  # array job id -> its new `%` limit


class CheckOp(TypedDict):
    op: Literal["check"]


class HealthOp(TypedDict):
    op: Literal["health"]


class PingOp(TypedDict):
    op: Literal["ping"]


Op = SubmitOp | PollOp | CancelOp | ThrottleOp | CheckOp | HealthOp | PingOp


# -- answers -----------------------------------------------------------------------------
class SubmitAnswer(TypedDict):
    job_ids: list[str]  # of what was submitted, in order
    error: str | None  # what stopped the rest


class Records(TypedDict, total=False):
    """What one attempt left in its task folder so far (JSON records, or None)."""

    started: dict[str, Any] | None
    exit: dict[str, Any] | None
    worker: dict[str, Any] | None
    legacy_result: dict[str, Any] | None  # an attempt an older hsm ran (no `layout`)
    result: dict[str, Any] | None  # the same, from a backend of an older hsm
    stderr: str  # the tail of stderr.log, once it exited


class PollAnswer(TypedDict):
    states: dict[str, str]  # job id -> Slurm-style state
    status_error: str | None
    records: dict[str, Records]  # by task dir
    accounting: bool  # False: the scheduler keeps no record of finished jobs


class _Partition(TypedDict):
    name: str


class Partition(_Partition, total=False):  # PBS queues have a name only
    available: str
    default: bool
    nodes: dict[str, int]  # node state -> count


class CheckAnswer(TypedDict, total=False):
    max_array_size: int
    partitions: list[Partition]
    pbs_dialect: str


class HealthAnswer(TypedDict):
    partitions: list[Partition]
    jobs: dict[str, int]  # the user's jobs: state -> count


class PingAnswer(TypedDict):
    python: str
    home: str
    cwd: str


class NoAnswer(TypedDict):
    """cancel, throttle: done, nothing to say."""


class _Error(TypedDict):
    error: str


class ErrorAnswer(_Error, total=False):
    user_error: bool  # a mistake of the user's (HsmError), not the infrastructure's


Answer = SubmitAnswer | PollAnswer | CheckAnswer | HealthAnswer | PingAnswer | NoAnswer
