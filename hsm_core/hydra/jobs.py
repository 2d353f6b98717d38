"""What a Hydra job is, for one launch: `HydraJobs`, the one object the launch hands to
the fork server and to the sources that run its jobs.

Hydra's joblib launcher gives joblib one function that runs a job, and gets one JobReturn
per job back, in order. hsm's launch gives the sweep engine's sources this object:

- the job table: each job's Hydra number, overrides and task key (`add_tasks` stores
  them as tasks);
- `request`: what one attempt needs, on the environment every source gives a task
  (`sources.base.task_env`: HSM_ATTEMPT, HSM_TASK_DIR, ...);
- `prefork` (in the fork server: a compose template per job shape, inherited by later
  forks) and `run` (in the job's own process) / `run_inline` (in the launcher's);
- `settled`: a job's JobReturn read as soon as it settles, a failure in `logs/errors.log`;
- `returns`: one JobReturn per job, in input order, a FAILED stand-in for a job that left
  none.

Where and when a job runs is the engine's and the sources' business, not this object's.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsm_core import taskdir
from hsm_core.hydra.fork_messages import JobRequest
from hsm_core.hydra.job import JobRuntime, job_params, note_hard_death, read_info, run_here
from hsm_core.hydra.payload import JOB_FILE
from hsm_core.model import TaskKind, TaskSpec, TaskState, task_key
from hsm_core.remote_agent import JOURNAL_DIR
from hsm_core.sources.base import SweepContext, task_env


@dataclass(frozen=True)
class Job:
    num: int  # Hydra's job number
    overrides: list[str]
    key: str

    @property
    def job_id(self) -> str:
        return str(self.num)


def hydra_task_key(num: int, overrides: Sequence[str], rerun: int = 0) -> str:
    """A job is its number and its overrides: a second run of the same command in the same
    sweep dir finds the same tasks; the same overrides under another number stay apart."""
    ident: dict[str, Any] = {"job": num, "params": job_params(overrides)}
    if rerun:
        ident["rerun"] = rerun
    return task_key(ident)


class JobFailed(RuntimeError):
    """A job that left no JobReturn (it died hard, was lost, timed out or was cancelled)."""


class HydraJobs:
    """One launch's Hydra jobs: their table, how one runs, and their JobReturns."""

    def __init__(
        self, rt: JobRuntime, jobs: Sequence[tuple[int, Sequence[str]]], sweep_dir: Path
    ) -> None:
        self.rt = rt
        self.sweep_dir = sweep_dir
        self.jobs = [Job(n, list(o), hydra_task_key(n, o)) for n, o in jobs]
        self.tasks: list[TaskSpec] = []  # the jobs' tasks, in the same order (add_tasks)
        self._by_num = {j.num: j for j in self.jobs}
        self._by_key = {j.key: j for j in self.jobs}
        self._returns: dict[str, Any] = {}  # read as jobs settle (JobReturn or None)
        self.errors = ErrorLog(sweep_dir)

    def label(self, task: TaskSpec) -> str:
        return f"#{self._by_key[task.key].num}"

    # ------------------------------------------------------------ the store
    def add_tasks(self, store: Any, *, cwd: str, timeout_s: float | None) -> list[TaskSpec]:
        """Store the jobs as tasks numbered from 1 (job #0 is task_001) where that number
        is free; failed, lost or cancelled ones from an earlier run get a new attempt.

        A launcher runs what it is given: a job that completed in an earlier run in this
        sweep dir (the same command again under the basic sweeper) becomes a new task, as
        a completed task is final in the journal. (The hsm sweeper leaves those out.)"""
        latest = store.latest_attempts()
        fresh = []
        for job in self.jobs:
            key, rerun = job.key, 0
            while (att := latest.get(key)) is not None and att.state is TaskState.COMPLETED:
                rerun += 1
                key = hydra_task_key(job.num, job.overrides, rerun)
            fresh.append(Job(job.num, job.overrides, key))
        self.jobs = fresh
        self._by_key = {j.key: j for j in fresh}

        known = {t.key: t.num for t in store.tasks()}
        used = set(known.values())
        next_num = max(used, default=0) + 1
        specs = []
        for job in fresh:
            num = known.get(job.key)
            if num is None:
                num = job.num + 1
                if num in used:
                    num = next_num
                used.add(num)
                next_num = max(next_num, num + 1)
            specs.append(
                TaskSpec(
                    key=job.key,
                    num=num,
                    params=job_params(job.overrides),
                    kind=TaskKind.HYDRA,
                    argv=(sys.executable, "-m", "hsm_core.hydra.worker"),
                    cwd=cwd,
                    payload=f"tasks/task_{num:03d}/{JOB_FILE}",
                    timeout_s=timeout_s,
                )
            )
        self.tasks = store.add_tasks(specs)
        latest = store.latest_attempts()
        for task in self.tasks:
            att = latest.get(task.key)
            if att is not None and att.state.terminal:
                store.new_attempt(task.key)
        nums = dict(store.meta("hydra_job_nums") or {})
        nums.update({j.key: j.num for j in fresh})
        store.set_meta("hydra_job_nums", nums)
        return self.tasks

    # ------------------------------------------------------- running one job
    def request(self, ctx: SweepContext, task: TaskSpec, attempt: int) -> JobRequest:
        """What one attempt of a job needs where it runs (JSON: it crosses a pipe)."""
        tdir = ctx.task_dir(task)
        (tdir / taskdir.RESULTS).mkdir(parents=True, exist_ok=True)
        return {
            "key": task.key,
            "num": self._by_key[task.key].num,
            # Journaled by the fork server like an agent's task: a recovery after the
            # launcher died reads how the job ended (ForkSource.reattach, hsm complete).
            "journal": str(ctx.sweep_dir / JOURNAL_DIR),
            "attempt": attempt,
            "layout": taskdir.LAYOUT,
            "task_dir": str(tdir),
            "stdout": str(tdir / taskdir.STDOUT),
            "stderr": str(tdir / taskdir.STDERR),
            "env": task_env(task, ctx.sweep_id, str(ctx.sweep_dir), str(tdir), attempt),
        }

    def prefork(self, req: JobRequest) -> None:
        """In the fork server, before it forks the job: a compose template for the job's
        shape, which this job and every later one of that shape inherit."""
        self.rt.composer.ensure_template(self._by_num[int(req["num"])].overrides)

    def run(self, req: JobRequest, gate: Callable[[], None]) -> int:
        """The job, in its own process forked by the fork server (which set its
        environment); the process ends when this returns."""
        return self._run_here(req, gate=gate, inplace=True, last_in_process=True)

    def run_inline(self, req: JobRequest) -> int:
        """The job in this process, between others: its environment only while it runs."""
        with _environ(req["env"]):
            return self._run_here(req)

    def _run_here(self, req: JobRequest, **how: Any) -> int:
        job = self._by_num[int(req["num"])]
        return run_here(
            self.rt,
            num=job.num,
            job_id=job.job_id,
            overrides=job.overrides,
            task_dir=Path(req["task_dir"]),
            **how,
        )

    # ----------------------------------------------------------- the returns
    def settled(self, task: TaskSpec, state: TaskState, error: str | None) -> None:
        """Read the JobReturn as the job settles, while the others still run."""
        if state is TaskState.FAILED:
            self.errors.add(task, error or "failed")
        if state in (TaskState.COMPLETED, TaskState.FAILED):
            self._returns[task.key] = taskdir.read_job_return(self.sweep_dir / "tasks" / task.name)

    def returns(self, store: Any) -> list[Any]:
        """One JobReturn per job, in input order; a job without one gets a FAILED stand-in
        that says why and where to look."""
        from hydra.core.utils import JobReturn, JobStatus

        latest = store.latest_attempts()
        out: list[JobReturn] = []
        for job, task in zip(self.jobs, self.tasks, strict=True):
            task_dir = store.task_dir(task)
            att = latest.get(task.key)
            state = att.state if att else TaskState.PENDING
            ret = None
            if state in (TaskState.COMPLETED, TaskState.FAILED):
                ret = self._returns.pop(task.key, None)
                if ret is None:
                    ret = taskdir.read_job_return(task_dir)
            if ret is not None:
                _relocate(ret, task_dir)
                if ret.status is JobStatus.FAILED:
                    self.errors.add(task, att.error if att and att.error else "failed")
                out.append(ret)
                continue
            error = (att.error if att else None) or state.value.lower()
            hard_death = state is TaskState.FAILED and _worker_info(task_dir) is None
            if hard_death and task.key not in self.errors.reported:  # the fork source noted its own
                note_hard_death(task_dir, task, error)
            if state is TaskState.FAILED:
                self.errors.add(task, error)
            info = read_info(task_dir) or {}
            where = f"; see {info['log']}" if info.get("log") else f"; see {task_dir}"
            exc = JobFailed(f"job #{job.num} ({task.name}) {state.value}: {error}{where}")
            out.append(
                JobReturn(
                    overrides=list(job.overrides),
                    working_dir=info.get("output_dir"),
                    status=JobStatus.FAILED,
                    _return_value=exc,
                )
            )
        return out


class ErrorLog:
    """`logs/errors.log`: every failed job with its traceback or exit reason, as it fails."""

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir = sweep_dir
        self.path = sweep_dir / "logs" / "errors.log"
        self.reported: set[str] = set()

    def add(self, task: TaskSpec, error: str) -> None:
        if task.key in self.reported:
            return
        self.reported.add(task.key)
        task_dir = self.sweep_dir / "tasks" / task.name
        info = _worker_info(task_dir) or read_info(task_dir) or {}
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        params = " ".join(f"{k}={v}" if v is not None else k for k, v in task.params.items())
        lines = [f"=== {when} {task.name} FAILED ({params}): {error}"]
        if info.get("traceback"):
            lines.append(str(info["traceback"]).rstrip())
        if info.get("log"):
            lines.append(f"job log: {info['log']}")
        lines.append(f"task folder: {task_dir}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        except OSError:
            pass


def _worker_info(task_dir: Path) -> dict[str, Any] | None:
    """hsm's worker record of the job (an older hsm's `result.json` in its shape, for a
    sweep it started)."""
    return taskdir.read_worker_record(task_dir, legacy=True)


def _relocate(ret: Any, task_dir: Path) -> None:
    """A job run on another host reports that host's paths: point them at the local copy."""
    info = _worker_info(task_dir) or {}
    wd = ret.working_dir
    remote_sweep = info.get("sweep_dir")
    local_sweep = str(task_dir.parent.parent)
    if wd and remote_sweep and remote_sweep != local_sweep and wd.startswith(remote_sweep):
        ret.working_dir = local_sweep + wd[len(remote_sweep) :]


@contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """`env` in os.environ for a while: what a job in its own process would see."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
