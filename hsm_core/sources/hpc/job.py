"""What one element of an hsm job array runs on the compute node.

submitit pickles :func:`run_task` (by reference: hsm must be importable where the jobs
run) with one job request, and its ``python -m submitit.core._submit`` calls it there.
The task itself runs as a child process in its own session, so that the wrapper
survives the task's crash and can write the records the orchestrator reads (names in
hsm_core.taskdir):

- ``.hsm_job.json`` when it starts (job id, host, attempt): "running" without asking
  the scheduler;
- ``.hsm_exit.json`` when the task process ends (exit code, signal, whether the
  scheduler signalled us), written after it ended: the proof of the outcome, and
  FAILED-by-itself versus killed-around-it. A Hydra job's worker record comes from
  hsm's worker itself: the job calls the worker's entry point in its own process
  (``sources.base.task_argv`` says `python -m hsm_core.hydra.worker`; the job's interpreter is
  already up, a second one would double the cost per job).

A `result.json` the task writes is its own output; hsm writes none.

A non-zero exit leaves the job with that exit code, so ``sacct`` agrees with hsm.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from hsm_core.model import PYTHON
from hsm_core.sources.hpc.ranks import (
    WAIT_FOR_RANKS_S,
    job_record,
    rank_and_size,
    rank_dir,
    rank_env,
)
from hsm_core.sources.hpc.states import popen_signal
from hsm_core.taskdir import HPC_EXIT, HPC_START, LAYOUT, RESULTS, STDERR, STDOUT, TaskPaths
from hsm_core.yamlio import write_json_atomic

START_FILE = HPC_START
EXIT_FILE = HPC_EXIT
KILL_GRACE_S = 3.0
# How sources.base.task_argv runs a Hydra job; jobs queued by an older hsm name the old path.
WORKERS = (["-m", "hsm_core.hydra.worker"], ["-m", "hsm_core.worker"])


def job_id_from_env() -> str | None:
    """`123_4` for an array element, `123` for a single job (Slurm or PBS)."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    pbs = env.get("PBS_JOBID")
    if pbs:
        seq = pbs.split(".")[0].split("[")[0]
        index = env.get("PBS_ARRAY_INDEX") or env.get("PBS_ARRAYID")
        return f"{seq}_{index}" if index else seq
    return None


class _Watch:
    """Signals from the scheduler while the task runs (its time limit, scancel, node
    shutdown): pass them to the task's process group and remember them."""

    def __init__(self, task_dir: Path) -> None:
        self.task_dir = task_dir
        self.pgid: int | None = None
        self.terminated: str | None = None
        self.warned = False
        self.on_terminate: Callable[[str], None] | None = None

    def install(self, stop_signal: str = "URG") -> None:
        # submitit's own handlers would requeue or ignore; hsm decides about retries.
        signal.signal(signal.SIGTERM, self._terminate)
        signal.signal(signal.SIGINT, self._terminate)
        # The scheduler's "time limit near" signal: the source's `signal` (URG by
        # default, see slurm.py); a submitit setting may still send USR2.
        for name in {"SIGUSR2", "SIGURG", f"SIG{stop_signal}"} - {"SIGTERM", "SIGINT"}:
            signum = getattr(signal, name, None)
            if signum is not None:
                signal.signal(signum, self._warn)

    def _terminate(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = signal.Signals(signum).name
        if self.on_terminate is not None:  # the task runs in this process
            self.on_terminate(self.terminated)
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGTERM)

    def _warn(self, signum: int, frame: FrameType | None) -> None:
        # Slurm's --signal: the time limit (or a preemption) is near. A command task got
        # the same signal from Slurm; a Hydra job runs here: its on_stop hooks run now
        # (or as they are registered, if the warning comes before the job's code runs).
        from hsm_core import job

        if not self.warned:
            _note(self.task_dir, "the scheduler signalled that the job will be stopped soon")
        self.warned = True
        job.stop()


def _note(task_dir: Path, text: str) -> None:
    with contextlib.suppress(OSError), open(task_dir / STDERR, "a") as f:
        f.write(f"[hsm] {text}\n")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _end_leftovers(pgid: int | None) -> None:
    """What the task left running ends with it, as on every source: the rest of its
    process group, and any process that left the group (setsid, a daemon) and so
    reparented to this wrapper, a child subreaper: SIGTERM, SIGKILL after the grace."""
    from hsm_core import remote_agent as ra

    def others() -> list[int]:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:  # zombies of orphans that reparented here
                pass
        return [p for p in ra.children() if (ra.proc_stat(p) or ("Z",))[0] not in ("Z", "X")]

    deadline = time.monotonic() + KILL_GRACE_S
    sig = signal.SIGTERM
    while True:
        group = ra.kill_group(pgid, sig)
        left = others()
        for pid in left:
            ra.signal_tree(pid, sig)
        if not group and not left:
            return
        if time.monotonic() >= deadline + 1.0:
            return  # SIGKILL was sent: what still shows is going away
        if time.monotonic() >= deadline:
            sig = signal.SIGKILL
        time.sleep(0.05)


def bound_argv(job: Mapping[str, Any]) -> list[str]:
    """The argv the orchestrator made (``sources.base.task_argv``: the command, or the Hydra
    worker), with the python placeholder bound to the interpreter running this job."""
    argv = [str(a) for a in job["argv"]]
    if argv and argv[0] == PYTHON:
        argv[0] = sys.executable
    return argv


def run_task(job: Mapping[str, Any]) -> int:
    """Run one attempt of one task (a job request made by the hpc source's _request)."""
    home = Path(job["task_dir"])
    home.mkdir(parents=True, exist_ok=True)
    (home / RESULTS).mkdir(exist_ok=True)
    rank, size = rank_and_size()
    tdir = rank_dir(home, rank)  # rank k > 0 keeps its records and logs in ranks/<k>/
    tdir.mkdir(parents=True, exist_ok=True)
    attempt = int(job["attempt"])
    with contextlib.suppress(FileNotFoundError):
        (tdir / EXIT_FILE).unlink()  # an earlier attempt's: it must never speak for this one
    base = {
        "attempt": attempt,
        "job_id": job_id_from_env(),
        "host": socket.gethostname(),
        "layout": LAYOUT,
    }
    started = time.time()
    write_json_atomic(tdir / START_FILE, {**base, "pid": os.getpid(), "started": started})
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
    stop_signal = str(job.get("stop_signal") or "URG")
    env["HSM_STOP_SIGNAL"] = stop_signal
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        env["HSM_RESUME"] = "1"  # Slurm requeued this very job (`requeue: true`)
    argv = bound_argv(job)
    if size > 1:
        env.update(rank_env(env))
        if rank > 0:
            env["HSM_RANK_DIR"] = str(tdir)  # a Hydra job's worker record and return
    watch = _Watch(tdir)
    watch.install(stop_signal)
    from hsm_core.remote_agent import subreaper

    subreaper()  # what leaves the task's group reparents here, and ends with the task
    timeout = job.get("timeout_s")
    if job.get("kind") == "hydra" and argv[1:3] in WORKERS:
        return _run_worker_here(job, tdir, argv[3:], env, watch, base, started)
    timed_out = False
    with open(tdir / STDOUT, "wb") as out, open(tdir / STDERR, "wb") as err:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=job.get("cwd") or None,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            why = exc.strerror or str(exc)
            err.write(f"[hsm] cannot start {argv[0] if argv else '?'}: {why}\n".encode())
            err.flush()
            record = {**base, "exit_code": 127, "error": f"cannot start: {why}"}
            return _finish(job, tdir, record, started)
        watch.pgid = proc.pid
        try:
            proc.wait(timeout=float(timeout) if timeout else None)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
    _end_leftovers(proc.pid)
    rc = proc.returncode
    sig = popen_signal(rc)
    record = {
        **base,
        "exit_code": 128 - rc if rc < 0 else rc,
        "signal": sig,
        "terminated": watch.terminated,
        "timed_out": timed_out,
        "timeout_s": timeout,
    }
    return _finish(job, tdir, record, started)


def _run_worker_here(
    job: Mapping[str, Any],
    tdir: Path,
    args: list[str],
    env: dict[str, str],
    watch: _Watch,
    base: dict[str, Any],
    started: float,
) -> int:
    """A Hydra job: call the worker's entry point in this process instead of starting a
    second interpreter (the job's python is already up, with submitit and hsm loaded).
    The worker writes its record; this writes the exit record around it."""
    from hsm_core.hydra import worker

    timeout = job.get("timeout_s")

    def abort(record: dict[str, Any]) -> None:
        # From a signal handler or the timer thread: record why, then leave at once.
        with contextlib.suppress(Exception):
            _write_records(job, tdir, {**base, **record, "started": started, "ended": time.time()})
        os._exit(int(record["exit_code"]))

    watch.on_terminate = lambda name: abort({"exit_code": 143, "signal": name, "terminated": name})
    timer = None
    if timeout:
        timer = threading.Timer(
            float(timeout),
            abort,
            [{"exit_code": 124, "timed_out": True, "timeout_s": timeout}],
        )
        timer.daemon = True
        timer.start()
    os.environ.clear()
    os.environ.update(env)
    with contextlib.suppress(OSError):
        os.chdir(job.get("cwd") or tdir)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    out = os.open(tdir / STDOUT, flags, 0o644)
    err = os.open(tdir / STDERR, flags, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from hsm_core import job as job_api

    job_api._managed = True  # the warning signal comes here: its hooks run from _Watch
    try:
        code = worker.main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the worker records the job's own errors; this is its crash
        traceback.print_exc()
        code = 1
    finally:
        if timer is not None:
            timer.cancel()
        watch.on_terminate = None
        # Hydra pointed the root logger at the job's log; submitit's closing lines stay out.
        for handler in root.handlers:
            if handler not in handlers:
                with contextlib.suppress(Exception):
                    handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (out, err, *saved):
            os.close(fd)
    _end_leftovers(None)  # the job ran in this process: whatever it started and left
    return _finish(job, tdir, {**base, "exit_code": code}, started)


def _owned(tdir: Path, attempt: int) -> bool:
    """Is the task folder still this attempt's? An attempt given up as LOST (its node
    froze) can come back later, after the next attempt has taken the folder over."""
    try:
        current = json.loads((tdir / START_FILE).read_text()).get("attempt")
    except (OSError, ValueError, AttributeError):
        return False
    return bool(current == attempt)


def _write_records(job: Mapping[str, Any], tdir: Path, record: dict[str, Any]) -> None:
    attempt = int(job["attempt"])
    rank, size = rank_and_size()
    if rank == 0 and size > 1:
        # Rank 0 speaks for the job. Stopped from outside, the rank that failed (and so
        # made srun stop the others) wrote its record already: wait only briefly.
        wait = 2.0 if record.get("terminated") else WAIT_FOR_RANKS_S
        record = job_record(record, tdir, size, attempt, wait)
    if not _owned(tdir, attempt):
        tdir = TaskPaths(tdir).attempt(attempt)
        tdir.mkdir(exist_ok=True)
    write_json_atomic(tdir / EXIT_FILE, record)


def _finish(job: Mapping[str, Any], tdir: Path, record: dict[str, Any], started: float) -> int:
    record.update(started=started, ended=time.time())
    _write_records(job, tdir, record)
    code = int(record["exit_code"])
    if code != 0:
        # The job's own exit code, so that the scheduler's accounting agrees with hsm.
        raise SystemExit(min(code, 255))
    return 0


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - debugging aid
    """`python -m hsm_core.sources.hpc.job REQUEST.json`: run a job request by hand."""
    args = list(sys.argv[1:] if argv is None else argv)
    run_task(json.loads(Path(args[0]).read_text()))


if __name__ == "__main__":  # pragma: no cover
    main()
