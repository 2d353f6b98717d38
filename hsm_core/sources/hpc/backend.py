"""The login-node half of the hpc source: submit, poll, cancel, check and health as
plain functions over a scheduler adapter (slurm.py, pbs/scheduler.py), and the RPC entry
point that serves them.

Synchronous, like submitit itself. The hpc source calls these functions through
``asyncio.to_thread`` when it runs on the login node, and runs ``python -m
hsm_core.sources.hpc.backend`` there over ssh (one JSON request on stdin, one JSON answer
on stdout) when it does not: the same code submits in both cases.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from hsm_core.errors import HsmError, SchedulerError
from hsm_core.resume import KEPT
from hsm_core.sources.hpc.job import run_task
from hsm_core.sources.hpc.options import HPCOptions
from hsm_core.sources.hpc.rpc import (
    Answer,
    CheckAnswer,
    ErrorAnswer,
    HealthAnswer,
    JobRequest,
    Op,
    PollAnswer,
    Records,
)
from hsm_core.sources.hpc.scheduler import Scheduler, tail_line
from hsm_core.sources.hpc.slurm import Slurm
from hsm_core.taskdir import (
    ATTEMPT_FILES,
    HPC_EXIT,
    HPC_START,
    LEGACY_RESULT,
    RESULTS,
    STDERR,
    WORKER_RECORD,
    TaskPaths,
)

log = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 4096


def scheduler_for(opts: HPCOptions) -> Scheduler:
    if opts.scheduler == "pbs":
        from hsm_core.sources.hpc.pbs.scheduler import PBS

        return PBS(opts)
    return Slurm(opts)


# ---------------------------------------------------------------- operations


def prepare_task_dir(task_dir: str, attempt: int, resume: bool = False) -> None:
    """Make the folder; move an earlier attempt's files to attempt_N/ (never overwrite),
    but for a resumed attempt its `results/`. (The engine does the same locally; on a
    remote cluster this is the only place that can.)"""
    tdir = Path(task_dir)
    tdir.mkdir(parents=True, exist_ok=True)
    keep = KEPT if resume else ()
    present = [n for n in ATTEMPT_FILES if n not in keep and (tdir / n).exists()]
    if present and attempt > 1:
        dest = TaskPaths(tdir).attempt(attempt - 1)
        dest.mkdir(exist_ok=True)
        for n in present:
            if not (dest / n).exists():
                shutil.move(str(tdir / n), str(dest / n))
    (tdir / RESULTS).mkdir(exist_ok=True)


def submit(
    opts: HPCOptions, folder: str, jobs: Sequence[JobRequest], parallelism: int
) -> tuple[list[str], str | None]:
    """Submit the job requests as arrays of at most `array_limit`, each throttled to
    `parallelism`. Returns the job ids of what was submitted (in order) and the error
    that stopped the rest, if any: a failed second chunk must not hide the first."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    scheduler = scheduler_for(opts)
    ex = scheduler.executor(folder, parallelism)
    ids: list[str] = []
    for start in range(0, len(jobs), opts.array_limit):
        chunk = jobs[start : start + opts.array_limit]
        try:
            for job in chunk:
                prepare_task_dir(str(job["task_dir"]), int(job["attempt"]), bool(job.get("resume")))
            with ex.batch():
                pending = [ex.submit(run_task, dict(job)) for job in chunk]
            ids.extend(str(p.job_id) for p in pending)
        except Exception as exc:
            text = tail_line(str(exc)) if str(exc).strip() else type(exc).__name__
            log.warning("submission of %d tasks failed: %s", len(chunk), text)
            return ids, text
    return ids, None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - STDERR_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def read_records(task_dir: str, attempt: int) -> Records:
    """The records this attempt left so far (records of other attempts are ignored)."""
    tdir = Path(task_dir)

    def mine(rec: dict[str, Any] | None) -> dict[str, Any] | None:
        if rec is None or rec.get("attempt", attempt) != attempt:
            return None
        return rec

    exit = mine(read_json(tdir / HPC_EXIT))
    out: Records = {
        "started": mine(read_json(tdir / HPC_START)),
        "exit": exit,
        "worker": mine(read_json(tdir / WORKER_RECORD)),
    }
    if exit is not None and "layout" not in exit:
        # An attempt an older hsm ran: its worker record was result.json.
        out["legacy_result"] = mine(read_json(tdir / LEGACY_RESULT))
    if exit is not None:
        out["stderr"] = _tail(tdir / STDERR)
    return out


def poll(opts: HPCOptions, job_ids: Sequence[str], dirs: Iterable[tuple[str, int]]) -> PollAnswer:
    """One status query (when job_ids is not empty) and then the records of the task dirs.
    The query comes first: a job it reports over has written its records already."""
    states: dict[str, str] = {}
    error = None
    scheduler = scheduler_for(opts)
    if job_ids:
        try:
            states = scheduler.states(job_ids)
        except SchedulerError as exc:
            error = str(exc)
    records = {d: read_records(d, a) for d, a in dirs}
    accounting = getattr(scheduler, "accounting", True)
    return {"states": states, "status_error": error, "records": records, "accounting": accounting}


def cancel(opts: HPCOptions, job_ids: Sequence[str]) -> None:
    scheduler_for(opts).cancel(job_ids)


def check(opts: HPCOptions) -> CheckAnswer:
    return scheduler_for(opts).check()


def health(opts: HPCOptions) -> HealthAnswer:
    return scheduler_for(opts).health()


# ---------------------------------------------------------- remote entry point


def handle(request: Mapping[str, Any]) -> Answer:
    """One request as it travels: the op's keys (rpc.Op) and `options`."""
    opts = HPCOptions.from_json(request["options"])
    op = cast(Op, request)
    if op["op"] == "submit":
        ids, error = submit(opts, op["folder"], op["jobs"], int(op["parallelism"]))
        return {"job_ids": ids, "error": error}
    if op["op"] == "poll":
        dirs = [(str(d), int(a)) for d, a in op.get("dirs", [])]
        return poll(opts, op.get("job_ids", []), dirs)
    if op["op"] == "cancel":
        cancel(opts, op["job_ids"])
        return {}
    if op["op"] == "throttle":
        scheduler_for(opts).throttle({str(k): int(v) for k, v in op["arrays"].items()})
        return {}
    if op["op"] == "check":
        return check(opts)
    if op["op"] == "health":
        return health(opts)
    if op["op"] == "ping":
        import os

        return {"python": sys.version.split()[0], "home": str(Path.home()), "cwd": os.getcwd()}
    raise ValueError(f"unknown op {op['op']!r}")


def main() -> None:
    """`python -m hsm_core.sources.hpc.backend`: one JSON request on stdin, one answer."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    answer: Answer | ErrorAnswer
    try:
        answer = handle(json.loads(sys.stdin.read()))
    except SchedulerError as exc:  # an InfrastructureError: before the user's errors
        answer = {"error": str(exc)}
    except HsmError as exc:
        answer = {"error": str(exc), "user_error": True}
    except Exception as exc:
        log.exception("hpc backend failed")
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
