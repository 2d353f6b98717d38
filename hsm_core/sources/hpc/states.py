"""What a batch scheduler's job state means for an hsm attempt: the one mapping table.

No I/O here. The hpc source feeds :func:`decide` with the scheduler's word about a job
(Slurm's state names; the PBS executor reports the same names, see
``hsm_core.sources.pbs.status``) and with the records the job left in its task folder
(names in hsm_core.taskdir):

- ``.hsm_exit.json``: the job wrapper's exit record (exit code, signal, whether the
  scheduler signalled it), written after the task process ended, so the task cannot
  forge it. It is the ONLY proof of COMPLETED (through ``taskdir.settle``, the rule all
  sources share); "the job left the queue" or "the scheduler says COMPLETED" never is
  (the original tool's failure, see the docs). It also tells the task's own failure from
  a job killed around it.
- ``.hsm_result.json``: hsm's worker record of a Hydra job (COMPLETED or the error).

Slurm state names: https://slurm.schedmd.com/sacct.html#SECTION_JOB-STATE-CODES
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from enum import Enum
from typing import Any

from hsm_core.model import TaskState
from hsm_core.reporting.errors_analysis import final_exception
from hsm_core.taskdir import (
    Verdict,
    exit_code_of,
    is_legacy,
    legacy_worker_record,
    settle,
    worker_error,
)

__all__ = ["Phase", "Verdict", "decide", "describe", "phase_of", "popen_signal", "worker_of"]


class Phase(Enum):
    QUEUED = "queued"  # waiting in the scheduler; no slot yet
    RUNNING = "running"
    ENDED = "ended"  # the scheduler saw the job finish normally
    FAILED = "failed"  # the job's script failed: the task's fault
    TIMEOUT = "timeout"  # the job's time limit: the task's fault (or its config)
    OUT_OF_MEMORY = "out_of_memory"
    INFRA = "infra"  # node died, preempted, never booted: not the task's fault
    CANCELLED = "cancelled"  # scancel / qdel (by us or by someone else)
    VANISHED = "vanished"  # the scheduler no longer knows the job
    UNKNOWN = "unknown"  # not (yet) in the scheduler's answer, or a state we do not know

    @property
    def over(self) -> bool:
        return self not in (Phase.QUEUED, Phase.RUNNING, Phase.UNKNOWN)


# The one table: scheduler state name -> phase. Unknown names count as UNKNOWN (not
# over): an unexpected word never ends an attempt, the result record or a later known
# state does.
SCHEDULER_STATES: Mapping[str, Phase] = {
    "PENDING": Phase.QUEUED,
    "REQUEUED": Phase.QUEUED,
    "REQUEUE_FED": Phase.QUEUED,
    "REQUEUE_HOLD": Phase.QUEUED,
    "RESV_DEL_HOLD": Phase.QUEUED,
    "CONFIGURING": Phase.QUEUED,
    "RUNNING": Phase.RUNNING,
    "COMPLETING": Phase.RUNNING,
    "SIGNALING": Phase.RUNNING,
    "STAGE_OUT": Phase.RUNNING,
    "RESIZING": Phase.RUNNING,
    "SUSPENDED": Phase.RUNNING,
    "STOPPED": Phase.RUNNING,
    "COMPLETED": Phase.ENDED,
    "FAILED": Phase.FAILED,
    "DEADLINE": Phase.FAILED,  # the job's own --deadline passed
    "SPECIAL_EXIT": Phase.FAILED,
    "TIMEOUT": Phase.TIMEOUT,
    "OUT_OF_MEMORY": Phase.OUT_OF_MEMORY,
    "NODE_FAIL": Phase.INFRA,
    "BOOT_FAIL": Phase.INFRA,
    "PREEMPTED": Phase.INFRA,
    "REVOKED": Phase.INFRA,  # federation: the job ran on another cluster
    "LAUNCH_FAILED": Phase.INFRA,
    "CANCELLED": Phase.CANCELLED,
    "VANISHED": Phase.VANISHED,
}

_PHASE_TEXT = {
    Phase.FAILED: "the job failed",
    Phase.TIMEOUT: "time limit reached",
    Phase.OUT_OF_MEMORY: "out of memory",
    Phase.INFRA: "infrastructure failure",
    Phase.VANISHED: "the job vanished from the scheduler",
}


def phase_of(state: str | None) -> Phase:
    """`CANCELLED by 1000`, `RUNNING`, `TIMEOUT`... -> Phase (first word decides)."""
    if not state:
        return Phase.UNKNOWN
    word = state.split()[0].rstrip("+").upper()
    return SCHEDULER_STATES.get(word, Phase.UNKNOWN)


# Signals that come from outside the task (scancel, time limit, node shutdown, OOM
# killer); SIGSEGV, SIGABRT and the like are the task's own crash.
_OUTSIDE_SIGNALS = frozenset({"SIGTERM", "SIGKILL", "SIGINT", "SIGHUP", "SIGCONT"})


def _killed(record: Mapping[str, Any] | None) -> bool:
    """The scheduler signalled the wrapper, or the process died from a signal that comes
    from outside: the exit code alone does not say whose fault it was."""
    if not record or record.get("timed_out"):  # hsm's own per-task timeout
        return False
    return bool(record.get("terminated") or record.get("signal") in _OUTSIDE_SIGNALS)


def describe(record: Mapping[str, Any], stderr_tail: str = "") -> str:
    """One line for a failed record: its own error, else exit code / signal + stderr."""
    own = record.get("error")
    if isinstance(own, str) and own.strip():
        text = own.strip().splitlines()[0]
    elif record.get("timed_out"):
        text = f"timed out after {record.get('timeout_s')} s"
    elif record.get("signal"):
        text = f"killed by {record['signal']}"
    else:
        text = f"exit code {exit_code_of(record)}"
    # The exception a Python task died of says more than the line after it (Hydra's
    # "Set the environment variable HYDRA_FULL_ERROR=1 ...").
    exc = final_exception(stderr_tail) if stderr_tail else None
    if exc:
        return text if exc in text else f"{exc} ({text})"
    last = last_line(stderr_tail)
    if last and last not in text:
        text = f"{text}: {last}"
    return text


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def popen_signal(returncode: int) -> str | None:
    """Popen's negative return code -> SIGTERM etc."""
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def worker_of(records: Mapping[str, Any]) -> dict[str, Any] | None:
    """hsm's worker record among an attempt's records (backend.read_records): the
    current one, or for an attempt an older hsm ran, its `result.json` (an older
    backend on the login node answers with `result`)."""
    worker = records.get("worker")
    if worker is not None:
        return dict(worker)
    if is_legacy(records.get("exit")):
        return legacy_worker_record(records.get("legacy_result") or records.get("result"))
    return None


def decide(
    state: str | None,
    exit_record: Mapping[str, Any] | None,
    worker: Mapping[str, Any] | None = None,
    *,
    hydra: bool = False,
    cancelled_by_us: bool = False,
    stderr_tail: str = "",
    started: bool = False,
    kill_signal: str | None = None,
) -> Verdict | None:
    """The attempt's outcome, or None while it is not settled yet.

    `exit_record` is the wrapper's .hsm_exit.json and `worker` hsm's worker record of a
    Hydra job (both of the current attempt), `state` the scheduler's latest word (None:
    not asked / not known); `started`: the wrapper's start record exists; `kill_signal`:
    the signal the scheduler says killed the job, if it says.
    """
    phase = phase_of(state)
    code = exit_code_of(exit_record)
    if exit_record is not None and (code == 0 or not _killed(exit_record)):
        # The task's process ended on its own (or succeeded): its exit record decides.
        verdict = settle(exit_record, hydra=hydra, worker=worker)
        if verdict.state is TaskState.FAILED and code != 0 and not worker_error(worker):
            return Verdict(TaskState.FAILED, code, describe(exit_record, stderr_tail))
        return verdict
    if not phase.over:
        return None
    # From here the job is over and its own records do not settle it: the scheduler's
    # word says whose fault it was.
    rc = code
    raw = state.split()[0] if state else "?"
    if phase is Phase.CANCELLED:
        if cancelled_by_us:
            return Verdict(TaskState.CANCELLED, rc, "cancelled")
        return Verdict(TaskState.LOST, rc, f"job cancelled outside hsm ({state})")
    if raw.upper() == "PREEMPTED":
        return Verdict(TaskState.LOST, rc, f"preempted ({raw})", resume="preempted")
    if phase in (Phase.INFRA, Phase.VANISHED):
        return Verdict(TaskState.LOST, rc, f"{_PHASE_TEXT[phase]} ({raw})")
    if phase is Phase.TIMEOUT:
        return Verdict(TaskState.FAILED, rc, f"{_PHASE_TEXT[phase]} ({raw})", resume="timeout")
    if phase is Phase.OUT_OF_MEMORY:
        return Verdict(TaskState.FAILED, rc, f"{_PHASE_TEXT[phase]} ({raw})")
    if exit_record is not None:
        # The job ended normally or failed, and the process was killed by a signal:
        # the task's own doing (it killed itself, the kernel's OOM killer, ...).
        return Verdict(TaskState.FAILED, rc, describe(exit_record, stderr_tail))
    if phase is Phase.FAILED:
        tail = last_line(stderr_tail)
        extra = f": {tail}" if tail else ""
        if started:
            # The wrapper itself was killed (SIGKILL, the OOM killer): no exit record.
            how = f"{raw}, {kill_signal}" if kill_signal else raw
            return Verdict(
                TaskState.FAILED, None, f"the job was killed after its task started ({how}){extra}"
            )
        return Verdict(
            TaskState.FAILED, None, f"{_PHASE_TEXT[phase]} before the task ran ({raw}){extra}"
        )
    # Phase.ENDED without any record: never COMPLETED without the wrapper's exit record.
    return Verdict(
        TaskState.FAILED,
        None,
        f"the scheduler says {raw} but the task left no exit record "
        "(is the sweep folder shared with the compute nodes?)",
    )
