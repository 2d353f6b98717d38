"""The task folder: its file names, who writes each one, and the one rule that turns an
attempt's exit record into its state. (submitit's JobPaths is the model: every path of
a task is a property of one object.)

    tasks/task_NNN/
      params.yaml  status.yaml     views the orchestrator writes from the journal
      stdout.log  stderr.log       the task's output, as it writes it
      results/  (any other file)   the task's own files; a `result.json` there is the
                                   task's own output too, never hsm's record
      hydra_job.json               Hydra job: where Hydra put it (before the job runs)
      job_return.pkl               Hydra job: the pickled JobReturn
      .hsm_result.json             Hydra job: hsm's worker's record (status, error,
                                   traceback, output dir)
      .hsm_job.json .hsm_exit.json hpc: the job wrapper's start and exit records
      .hsm_files.json              collected from a host: every file's size and sha256
                                   as the host listed them (hsm_core.integrity)
      attempt_N/                   the files of an earlier attempt, moved aside

Whose word counts: an attempt's exit status comes from the task's parent, which a task
cannot overwrite: the agent's journal and exit event (local and ssh sources), the fork
server's wait status (Hydra jobs forked from the launcher), the job wrapper's
`.hsm_exit.json` (hpc; written after the task ended). A Hydra job is COMPLETED only when
that status is 0 AND hsm's worker recorded the job as COMPLETED.

Sweeps written by hsm before this layout kept hsm's record in `result.json`. An exit
record without the `layout` mark comes from such an hsm: for that attempt only, a
`result.json` in the worker's shape is read as the worker's record.

The stdlib-only agent (remote_agent.py) keeps its own copies of the names it needs;
tests/unit/test_taskdir.py pins them equal.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsm_core.model import TaskState

# The layout version that exit records carry (`"layout": LAYOUT`); absent: an older hsm.
LAYOUT = 2

PARAMS = "params.yaml"
STATUS = "status.yaml"
STDOUT = "stdout.log"
STDERR = "stderr.log"
RESULTS = "results"
JOB_INFO = "hydra_job.json"
JOB_RETURN = "job_return.pkl"
JOB_PAYLOAD = "hydra_job.pkl"  # a Hydra job's own pickled part (hydra.payload.JOB_FILE)
WORKER_RECORD = ".hsm_result.json"
HPC_START = ".hsm_job.json"
HPC_EXIT = ".hsm_exit.json"
LEGACY_RESULT = "result.json"  # hsm's record before LAYOUT 2; the task's own file since
LEGACY_AGENT_FILES = (".hsm_pid.json", ".hsm_exit.json")  # agents before protocol 2
# The host's list of a collected folder's files with their sha256 (hsm_core.integrity).
FILES_RECORD = ".hsm_files.json"

# Written by the orchestrator on its side: never overwritten by a collected copy.
LOCAL_OWNED = frozenset({PARAMS, STATUS, FILES_RECORD})
# hsm's records of one attempt: removed (or moved aside) before the next attempt runs in
# the same folder, so that none of them can speak for it.
HSM_RECORDS = (WORKER_RECORD, JOB_RETURN, JOB_INFO, HPC_START, HPC_EXIT)
# A multi-rank job's ranks > 0 keep their records and logs in ranks/<k>/.
RANKS = "ranks"
# What a new attempt moves to attempt_N/: hsm's records and the task's usual output.
ATTEMPT_FILES = (STDOUT, STDERR, RESULTS, LEGACY_RESULT, *HSM_RECORDS, RANKS)


@dataclass(frozen=True)
class TaskPaths:
    """Every path of one task folder."""

    folder: Path

    @property
    def stdout(self) -> Path:
        return self.folder / STDOUT

    @property
    def stderr(self) -> Path:
        return self.folder / STDERR

    @property
    def results(self) -> Path:
        return self.folder / RESULTS

    @property
    def job_info(self) -> Path:
        return self.folder / JOB_INFO

    @property
    def job_return(self) -> Path:
        return self.folder / JOB_RETURN

    @property
    def worker_record(self) -> Path:
        return self.folder / WORKER_RECORD

    @property
    def hpc_start(self) -> Path:
        return self.folder / HPC_START

    @property
    def hpc_exit(self) -> Path:
        return self.folder / HPC_EXIT

    def attempt(self, n: int) -> Path:
        """Where attempt `n`'s files went once a later attempt took the folder over."""
        return self.folder / f"attempt_{n}"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file; None if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def legacy_worker_record(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An older hsm's Hydra worker record (it was `result.json`), recognised by its shape."""
    if data and "job_return" in data and "status" in data and "exit_code" in data:
        return dict(data)
    return None


def read_worker_record(folder: Path, *, legacy: bool = False) -> dict[str, Any] | None:
    """hsm's worker record of a Hydra job in `folder`; with `legacy`, an older hsm's
    `result.json` in the worker's shape when there is no current one."""
    record = read_json(folder / WORKER_RECORD)
    if record is None and legacy:
        record = legacy_worker_record(read_json(folder / LEGACY_RESULT))
    return record


def read_job_return(folder: Path) -> Any | None:
    """The Hydra JobReturn pickled in `folder`; None when it is missing, truncated, or of
    a class that no longer unpickles."""
    import pickle

    try:
        with open(folder / JOB_RETURN, "rb") as f:
            return pickle.load(f)
    except Exception:
        return None


def is_legacy(exit_record: Mapping[str, Any] | None) -> bool:
    """Written by an hsm from before this layout (no `layout` mark)?"""
    return exit_record is not None and "layout" not in exit_record


# ------------------------------------------------------------------------- the rule
@dataclass(frozen=True)
class Verdict:
    state: TaskState
    exit_code: int | None = None
    error: str | None = None
    resume: str | None = None  # "timeout" / "preempted": see hsm_core.resume


def exit_code_of(record: Mapping[str, Any] | None) -> int | None:
    if not record:
        return None
    try:
        return int(record["exit_code"])
    except (KeyError, TypeError, ValueError):
        return None


def signal_of(code: int | None, record: Mapping[str, Any] | None = None) -> str | None:
    """SIGKILL etc.: from the record's `signal` (a name or a number), else from a shell
    style exit code 128+N."""
    sig = (record or {}).get("signal")
    if isinstance(sig, str) and sig:
        return sig
    number = sig if isinstance(sig, int) else (code - 128 if code and code > 128 else None)
    if not number:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(code: int | None, record: Mapping[str, Any] | None = None) -> str:
    """How a process ended, in words: `killed by SIGSEGV`, `exit code 3`."""
    sig = signal_of(code, record)
    if sig:
        return f"killed by {sig}"
    if code == 127:
        return "exit code 127 (command not found; see stderr.log)"
    return f"exit code {code}"


STDERR_TAIL_BYTES = 16 * 1024  # the end of stderr.log holds the traceback


def read_tail(path: Path | str, limit: int) -> str:
    """The last `limit` bytes of a file as text ("" if it cannot be read): logs can be
    huge, and their end holds the last values and the traceback."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - limit))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


def failure_reason(code: int, record: Mapping[str, Any] | None, folder: Path | None) -> str:
    """`exit code 1`, led by the exception a Python task died of when its stderr.log ends
    with one: `ValueError: boom (exit code 1)`. (A signal death leaves no traceback.)"""
    reason = describe_exit(code, record)
    if folder is None or code == 127 or signal_of(code, record):
        return reason
    from hsm_core.reporting.errors_analysis import final_exception

    exc = final_exception(read_tail(folder / STDERR, STDERR_TAIL_BYTES))
    return f"{exc} ({reason})" if exc else reason


def worker_error(worker: Mapping[str, Any] | None) -> str | None:
    error = (worker or {}).get("error")
    return str(error).strip().splitlines()[0] if isinstance(error, str) and error.strip() else None


def settle(
    record: Mapping[str, Any] | None,
    *,
    hydra: bool = False,
    worker: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
    folder: Path | None = None,
) -> Verdict:
    """The one rule: what an attempt's exit record (from the task's parent) means.

    `worker` is hsm's worker record of a Hydra job (read_worker_record). No record at
    all: nobody saw the task end (its parent died with it), so LOST: it runs again.
    `folder`, the task folder: a failed exit names the exception its stderr.log ends
    with (read only then)."""
    if record is None:
        return Verdict(TaskState.LOST, None, "ended without an exit record")
    code = exit_code_of(record)
    if record.get("cancelled"):
        return Verdict(TaskState.CANCELLED, code, "cancelled")
    if record.get("timed_out"):
        limit = timeout_s if timeout_s is not None else record.get("timeout_s")
        why = f"timed out after {limit:g} s" if limit else "timed out"
        return Verdict(TaskState.FAILED, code, why)
    if code is None:
        return Verdict(TaskState.LOST, None, "the exit record has no exit code")
    if code != 0:
        why = worker_error(worker) or failure_reason(code, record, folder)
        return Verdict(TaskState.FAILED, code, why)
    if not hydra:
        return Verdict(TaskState.COMPLETED, 0)
    recorded = exit_code_of(worker)
    if recorded == 0:
        return Verdict(TaskState.COMPLETED, 0)
    if worker is None:
        return Verdict(
            TaskState.FAILED,
            0,
            "the job's process exited with code 0 before hsm's worker recorded the job "
            "(os._exit in the job?)",
        )
    return Verdict(TaskState.FAILED, recorded, worker_error(worker) or "the job failed")
