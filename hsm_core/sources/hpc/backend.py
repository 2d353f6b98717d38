"""The login-node half of the hpc source: submitit executors, one status query for many
jobs, cancel and health, for Slurm and PBS.

Synchronous, like submitit itself. The hpc source calls these functions through
``asyncio.to_thread`` when it runs on the login node, and runs ``python -m
hsm_core.sources.hpc_backend`` there over ssh (one JSON request on stdin, one JSON answer
on stdout) when it does not: the same code submits in both cases.

Every scheduler command hsm runs itself goes through :func:`run_command`; ``sbatch`` /
``qsub`` are run by submitit's executors, ``qstat`` / ``qdel`` by the PBS executor.
"""

from __future__ import annotations

import abc
import getpass
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hsm_core.errors import HsmError, SchedulerError
from hsm_core.sources.hpc.job import run_task
from hsm_core.sources.hpc.keys import sbatch_option
from hsm_core.sources.hpc.options import HpcOptions
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

COMMAND_TIMEOUT_S = 60.0
STDERR_TAIL_BYTES = 4096


def run_command(
    argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run one scheduler command; SchedulerError when it cannot run at all."""
    log.debug("scheduler command: %s", shlex.join(argv))
    try:
        return subprocess.run(
            list(argv),
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise SchedulerError(f"`{argv[0]}` not found on PATH") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SchedulerError(f"`{shlex.join(argv)}` failed: {exc}") from None


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


class Scheduler(abc.ABC):
    """One scheduler's executor, status query, cancel and health, behind one interface."""

    name: str

    def __init__(self, opts: HpcOptions) -> None:
        self.opts = opts

    @abc.abstractmethod
    def executor(self, folder: str, parallelism: int) -> Any:
        """A submitit executor set up from the options, for arrays of `parallelism`."""

    @abc.abstractmethod
    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        """One query for all these jobs: submitit id -> Slurm-style state name. Jobs the
        scheduler does not mention are left out."""

    @abc.abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> None:
        """One command that cancels exactly these jobs (arrays or elements)."""

    @abc.abstractmethod
    def health(self) -> dict[str, Any]:
        """Reachable? Partitions/queues and the user's jobs."""

    def throttle(self, arrays: Mapping[str, int]) -> None:  # noqa: B027 - optional
        """Change the `%` limit of running arrays (where the scheduler can)."""

    def check(self) -> dict[str, Any]:
        """Before the first submission: the partition exists (raises HsmError if not)."""
        return {}


class Slurm(Scheduler):
    name = "slurm"

    def __init__(self, opts: HpcOptions) -> None:
        super().__init__(opts)
        self.accounting = opts.accounting  # False once sacct said accounting is off

    def executor(self, folder: str, parallelism: int) -> Any:
        from submitit.slurm.slurm import SlurmExecutor

        o = self.opts
        try:
            ex = SlurmExecutor(folder, python=o.python, max_num_timeout=0)
        except RuntimeError as exc:
            raise SchedulerError(f"{exc} (no `srun` on PATH)") from None
        extra: dict[str, Any] = dict(sbatch_option(d, "directives") for d in o.directives)
        if not o.requeue:
            # A node failure must reach hsm (LOST, placed again), not be requeued silently.
            extra.setdefault("no-requeue", True)
        # submitit asks for USR2 before the time limit, which Slurm may send up to a minute
        # early: with short limits it kills every process of the job at start (USR2's
        # default action), the task's own included. hsm's default, URG, is ignored by
        # default; apps that handle USR2 set `signal: USR2`.
        extra["signal"] = f"{o.signal}@{o.signal_delay_s}"
        params: dict[str, Any] = {
            "job_name": o.name or o.job_name,
            "time": o.time_min,
            "cpus_per_task": o.cpus_per_task,
            "array_parallelism": parallelism,
            "setup": list(o.setup),
            "additional_parameters": extra,
            "stderr_to_stdout": o.stderr_to_stdout,
        }
        if o.srun_args:
            params["srun_args"] = list(o.srun_args)
        # submitit's names; unset ones are left out, so sbatch gets no line for them.
        for key in (
            "partition",
            "account",
            "qos",
            "gpus_per_task",
            "gpus_per_node",
            "comment",
            "constraint",
            "exclude",
            "gres",
            "cpus_per_gpu",
            "mem_per_gpu",
            "mem_per_cpu",
        ):
            if getattr(o, key):
                params[key] = getattr(o, key)
        if o.mem_gb:
            params["mem"] = _mem(o.mem_gb)
        try:
            ex.update_parameters(**params)
        except ValueError as exc:
            raise HsmError(f"bad Slurm parameters: {_last(str(exc))}") from None
        return ex

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        if self.accounting:
            found = self._sacct(job_ids)
            if found is not None:
                return self._still_live(*found)
        return self._squeue(job_ids)

    def _still_live(self, found: dict[str, str], explicit: set[str]) -> dict[str, str]:
        """sacct lags: cancel the pending rest of an array and, for a while, it lists the
        whole array as one `123_[0-2%2] CANCELLED` line, its running elements included
        (a failure drill ran such elements twice: LOST, placed again, while they ran on).
        An end read from such a range line (not from the job's own `123_0` line) is
        checked with squeue, which knows what is alive: a job it lists as queued or
        running is not over. So the extra squeue call comes only after such a cancel."""
        from hsm_core.sources.hpc.states import phase_of

        over = [j for j, state in found.items() if phase_of(state).over and j not in explicit]
        if not over:
            return found
        live = {
            j: state
            for j, state in self._squeue(over).items()
            if not phase_of(state).over and state != "VANISHED"
        }
        return {**found, **live}

    def _sacct(self, job_ids: Sequence[str]) -> tuple[dict[str, str], set[str]] | None:
        """States of the jobs, and which of them sacct named on a line of their own (not
        only inside a range like `123_[0-2%2]`); None if accounting is off."""
        from submitit.slurm.slurm import SlurmInfoWatcher

        # A private watcher (not submitit's process-wide one): its command and parser
        # only, paced by the hpc source, not by submitit's clock.
        watcher = SlurmInfoWatcher(delay_s=0)
        for jid in job_ids:
            watcher.register_job(jid)
        argv = watcher._make_command()
        if argv is None:
            return {}, set()
        done = run_command([*argv, "-X"])
        if done.returncode != 0:
            if "accounting storage is disabled" in done.stderr.lower():
                log.warning("sacct: accounting is off on this cluster; asking squeue instead")
                self.accounting = False
                return None
            raise SchedulerError(f"sacct exited with {done.returncode}: {_last(done.stderr)}")
        info = watcher.read_info(done.stdout)
        own = {line.split("|", 1)[0] for line in done.stdout.splitlines()}
        return {jid: info[jid].get("State", "") for jid in job_ids if jid in info}, {
            j for j in own if "[" not in j
        }

    def _squeue(self, job_ids: Sequence[str]) -> dict[str, str]:
        from submitit.slurm.slurm import read_job_id

        mains = sorted({j.split("_")[0] for j in job_ids})
        # --states=all: jobs that ended lately (MinJobAge) are listed with their end state.
        done = run_command(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(mains)])
        if done.returncode != 0 and "invalid job id" not in done.stderr.lower():
            raise SchedulerError(f"squeue exited with {done.returncode}: {_last(done.stderr)}")
        seen: dict[str, str] = {}
        for line in done.stdout.splitlines():
            jid, _, state = line.strip().partition("|")
            if not jid:
                continue
            for parts in read_job_id(jid):
                if len(parts) == 3:
                    for i in range(int(parts[1]), int(parts[2]) + 1):
                        seen[f"{parts[0]}_{i}"] = state
                else:
                    seen["_".join(parts[:2])] = state
        # Without accounting, a job squeue does not list any more has left for good.
        return {j: seen.get(j, "VANISHED") for j in job_ids}

    def cancel(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        done = run_command(["scancel", *job_ids])
        if done.returncode != 0 and "invalid job id" not in done.stderr.lower():
            raise SchedulerError(f"scancel exited with {done.returncode}: {_last(done.stderr)}")

    def throttle(self, arrays: Mapping[str, int]) -> None:
        for job_id, limit in arrays.items():
            done = run_command(
                ["scontrol", "update", f"JobId={job_id}", f"ArrayTaskThrottle={int(limit)}"]
            )
            if done.returncode != 0:
                raise SchedulerError(
                    f"scontrol update exited {done.returncode}: {_last(done.stderr)}"
                )

    def check(self) -> dict[str, Any]:
        # The largest array the cluster takes (one call, at start): the source splits
        # its batches under it, whatever `array_limit` says.
        info: dict[str, Any] = {}
        done = run_command(["scontrol", "show", "config"])
        m = re.search(r"^MaxArraySize\s*=\s*(\d+)", done.stdout, re.MULTILINE)
        if done.returncode == 0 and m:
            info["max_array_size"] = int(m.group(1))
        want = self.opts.partition
        if not want:
            return info  # the cluster's default partition: nothing more to check
        parts = self._partitions()
        names = [p["name"] for p in parts]
        if want and want not in names:
            raise HsmError(
                f"Slurm partition {want!r} does not exist",
                f"partitions here: {', '.join(names) or 'none'}",
            )
        return {**info, "partitions": parts}

    def _partitions(self) -> list[dict[str, Any]]:
        done = run_command(["sinfo", "-h", "-o", "%P|%a|%D|%t"])
        if done.returncode != 0:
            raise SchedulerError(f"sinfo exited with {done.returncode}: {_last(done.stderr)}")
        parts: dict[str, dict[str, Any]] = {}
        for line in done.stdout.splitlines():
            fields = line.strip().split("|")
            if len(fields) != 4:
                continue
            name, avail, nodes, state = fields
            default = name.endswith("*")
            name = name.rstrip("*")
            entry = parts.setdefault(
                name, {"name": name, "available": avail, "default": default, "nodes": {}}
            )
            entry["nodes"][state] = entry["nodes"].get(state, 0) + int(nodes or 0)
        return list(parts.values())

    def health(self) -> dict[str, Any]:
        parts = self._partitions()
        done = run_command(["squeue", "-h", "-u", _user(), "-o", "%T"])
        if done.returncode != 0:
            raise SchedulerError(f"squeue exited with {done.returncode}: {_last(done.stderr)}")
        jobs: dict[str, int] = {}
        for line in done.stdout.split():
            jobs[line] = jobs.get(line, 0) + 1
        return {"partitions": parts, "jobs": jobs}


class PBS(Scheduler):
    name = "pbs"

    def _executor_class(self) -> Any:
        from hsm_core.sources.hpc.pbs.executor import PBSExecutor

        return PBSExecutor

    def executor(self, folder: str, parallelism: int) -> Any:
        o = self.opts
        try:
            ex = self._executor_class()(
                folder, python=o.python, max_num_timeout=0, dialect=o.pbs_dialect
            )
        except RuntimeError as exc:
            raise SchedulerError(str(exc)) from None
        directives = list(o.directives)
        if not o.requeue:
            directives.append("-r n")  # not rerunnable: a failed node reaches hsm
        params: dict[str, Any] = {
            "job_name": o.name or o.job_name,
            "timeout_min": o.time_min,
            "cpus_per_task": o.cpus_per_task,
            # One task per node on PBS: per task and per node are the same here.
            "gpus_per_node": o.gpus_per_node or o.gpus_per_task,
            "stderr_to_stdout": o.stderr_to_stdout,
            "array_parallelism": parallelism,
            "setup": list(o.setup),
            "directives": directives,
        }
        if o.partition:
            params["queue"] = o.partition
        if o.account:
            params["account"] = o.account
        if o.mem_gb:
            params["mem_gb"] = o.mem_gb
        try:
            ex.update_parameters(**params)
        except ValueError as exc:
            raise HsmError(f"bad PBS parameters: {_last(str(exc))}") from None
        return ex

    def _any_executor(self) -> Any:
        # poll/cancel need no folder of their own; the executor is what knows the dialect.
        return self.executor(str(Path.home() / ".cache" / "hsm" / "pbs"), 1)

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        got: dict[str, str] = self._any_executor().poll_states(job_ids)
        return {j: s for j, s in got.items() if s and s != "UNKNOWN"}

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            self._any_executor().cancel(job_ids, check=False)

    def check(self) -> dict[str, Any]:
        from hsm_core.sources.hpc.pbs.executor import detect_dialect

        if self.opts.pbs_dialect:
            return {"pbs_dialect": self.opts.pbs_dialect}
        try:
            return {"pbs_dialect": detect_dialect()}
        except RuntimeError as exc:
            raise HsmError(str(exc), "set `pbs_dialect: pro` or `torque` for this source") from None

    def health(self) -> dict[str, Any]:
        done = run_command(["qstat", "-Q"])
        if done.returncode != 0:
            raise SchedulerError(f"qstat -Q exited with {done.returncode}: {_last(done.stderr)}")
        queues = [
            {"name": line.split()[0]}
            for line in done.stdout.splitlines()[2:]
            if line.strip() and not line.startswith("-")
        ]
        mine = run_command(["qstat", "-u", _user()])
        jobs: dict[str, int] = {}
        for line in mine.stdout.splitlines():
            if re.match(r"^\d+", line):
                words = line.split()
                state = words[-2] if len(words) >= 2 else "?"
                jobs[state] = jobs.get(state, 0) + 1
        return {"partitions": queues, "jobs": jobs}


def scheduler_for(opts: HpcOptions) -> Scheduler:
    return PBS(opts) if opts.scheduler == "pbs" else Slurm(opts)


def _mem(gb: float) -> str:
    return f"{int(gb)}G" if gb == int(gb) else f"{int(gb * 1024)}M"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (containers)
        return str(Path.home().name)


# ---------------------------------------------------------------- operations


def prepare_task_dir(task_dir: str, attempt: int) -> None:
    """Make the folder; move an earlier attempt's files to attempt_N/ (never overwrite).
    (The engine does the same locally; on a remote cluster this is the only place that
    can.)"""
    tdir = Path(task_dir)
    tdir.mkdir(parents=True, exist_ok=True)
    present = [n for n in ATTEMPT_FILES if (tdir / n).exists()]
    if present and attempt > 1:
        dest = TaskPaths(tdir).attempt(attempt - 1)
        dest.mkdir(exist_ok=True)
        for n in present:
            if not (dest / n).exists():
                shutil.move(str(tdir / n), str(dest / n))
    (tdir / RESULTS).mkdir(exist_ok=True)


def submit(
    opts: HpcOptions, folder: str, jobs: Sequence[Mapping[str, Any]], parallelism: int
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
                prepare_task_dir(str(job["task_dir"]), int(job["attempt"]))
            with ex.batch():
                pending = [ex.submit(run_task, dict(job)) for job in chunk]
            ids.extend(str(p.job_id) for p in pending)
        except Exception as exc:
            text = _last(str(exc)) if str(exc).strip() else type(exc).__name__
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


def read_records(task_dir: str, attempt: int) -> dict[str, Any]:
    """The records this attempt left so far (records of other attempts are ignored)."""
    tdir = Path(task_dir)

    def mine(rec: dict[str, Any] | None) -> dict[str, Any] | None:
        if rec is None or rec.get("attempt", attempt) != attempt:
            return None
        return rec

    out: dict[str, Any] = {
        "started": mine(read_json(tdir / HPC_START)),
        "exit": mine(read_json(tdir / HPC_EXIT)),
        "worker": mine(read_json(tdir / WORKER_RECORD)),
    }
    if out["exit"] is not None and "layout" not in out["exit"]:
        # An attempt an older hsm ran: its worker record was result.json.
        out["legacy_result"] = mine(read_json(tdir / LEGACY_RESULT))
    if out["exit"] is not None:
        out["stderr"] = _tail(tdir / STDERR)
    return out


def poll(
    opts: HpcOptions, job_ids: Sequence[str], dirs: Iterable[tuple[str, int]]
) -> dict[str, Any]:
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


def cancel(opts: HpcOptions, job_ids: Sequence[str]) -> None:
    scheduler_for(opts).cancel(job_ids)


def check(opts: HpcOptions) -> dict[str, Any]:
    return scheduler_for(opts).check()


def health(opts: HpcOptions) -> dict[str, Any]:
    return scheduler_for(opts).health()


# ---------------------------------------------------------- remote entry point


def handle(request: Mapping[str, Any]) -> dict[str, Any]:
    opts = HpcOptions.from_json(request["options"])
    op = request["op"]
    if op == "submit":
        ids, error = submit(opts, request["folder"], request["jobs"], int(request["parallelism"]))
        return {"job_ids": ids, "error": error}
    if op == "poll":
        dirs = [(str(d), int(a)) for d, a in request.get("dirs", [])]
        return poll(opts, request.get("job_ids", []), dirs)
    if op == "cancel":
        cancel(opts, request["job_ids"])
        return {}
    if op == "throttle":
        scheduler_for(opts).throttle({str(k): int(v) for k, v in request["arrays"].items()})
        return {}
    if op == "check":
        return check(opts)
    if op == "health":
        return health(opts)
    if op == "ping":
        import os

        return {"python": sys.version.split()[0], "home": str(Path.home()), "cwd": os.getcwd()}
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    """`python -m hsm_core.sources.hpc_backend`: one JSON request on stdin, one answer."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
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
