"""The launcher's bookkeeping: the sweep store, the sources, the error log, the progress
bar, and the JobReturns read back from the task folders."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

from hsm_core import taskdir
from hsm_core.hydra.job import note_hard_death, read_info
from hsm_core.model import SourceSpec, TaskSpec, TaskState
from hsm_core.remote_agent import JOURNAL_DIR
from hsm_core.sources.base import ComputeSource, SweepContext, task_env
from hsm_core.taskdir import read_job_return


class JobFailed(RuntimeError):
    """A job that left no JobReturn (it died hard, was lost, timed out or was cancelled)."""


def open_store(
    sweep_dir: Path,
    config: Any,
    settings: Any,
    specs: Sequence[SourceSpec],
    project_root: Path,
    task_function: Any,
) -> Any:
    from omegaconf import OmegaConf

    from hsm_core.store import SweepStore
    from hsm_core.sweeps import new_sweep_id, register

    if SweepStore.exists(sweep_dir):
        return SweepStore.open(sweep_dir)
    sweep_id = new_sweep_id()
    launcher = {k: v for k, v in vars(settings).items() if k not in ("pool",)}
    store = SweepStore.create(
        sweep_dir,
        sweep_id=sweep_id,
        kind="hydra",
        config={
            "app": str(config.hydra.job.name),
            "overrides": OmegaConf.to_container(config.hydra.overrides.task),
            "launcher": launcher,
            "sources": [
                {"name": s.name, "type": s.type, "max_parallel": s.max_parallel} for s in specs
            ],
        },
        metadata={
            "hydra_sweep_dir": str(sweep_dir),
            "task_function": getattr(task_function, "__qualname__", str(task_function)),
            "command": " ".join(sys.argv),
        },
        project_root=project_root,
    )
    register(sweep_id, sweep_dir, project_root)
    return store


class Returns:
    """JobReturns read as jobs settle, while the others still run (not all at the end)."""

    def __init__(self, sweep_dir: Path, errors: ErrorLog) -> None:
        self.sweep_dir = sweep_dir
        self.errors = errors
        self.cache: dict[str, JobReturn | None] = {}

    def settled(self, task: TaskSpec, state: TaskState, error: str | None) -> None:
        if state is TaskState.FAILED:
            self.errors.add(task, error or "failed", self.sweep_dir)
        if state in (TaskState.COMPLETED, TaskState.FAILED):
            self.cache[task.key] = read_job_return(self.sweep_dir / "tasks" / task.name)

    def get(self, task: TaskSpec, task_dir: Path) -> JobReturn | None:
        ret = self.cache.pop(task.key, None)
        return ret if ret is not None else read_job_return(task_dir)


class ErrorLog:
    """`logs/errors.log`: every failed job with its traceback or exit reason, as it fails."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = sweep_dir / "logs" / "errors.log"
        self.reported: set[str] = set()

    def add(self, task: TaskSpec, error: str, sweep_dir: Path) -> None:
        if task.key in self.reported:
            return
        self.reported.add(task.key)
        task_dir = sweep_dir / "tasks" / task.name
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


def make_sources(
    specs: Sequence[SourceSpec],
    ctx: SweepContext,
    server: Any,
    settings: Any,
    returns: Returns,
    job_nums: dict[str, int],
) -> list[ComputeSource]:
    from hsm_core.sources import make_source

    out: list[ComputeSource] = []
    for spec in specs:
        if spec.type == "local" and server is not None:
            from hsm_core.hydra.fork import ForkSource

            out.append(
                ForkSource(
                    spec,
                    ctx,
                    server,
                    _requester(ctx, job_nums),
                    ahead=settings.ahead,
                    on_settled=returns.settled,
                )
            )
        else:
            out.append(make_source(spec, ctx))
    return out


def _requester(ctx: SweepContext, job_nums: dict[str, int]) -> Any:
    def request(task: TaskSpec, attempt: int) -> dict[str, Any]:
        tdir = ctx.task_dir(task)
        (tdir / "results").mkdir(parents=True, exist_ok=True)
        env = task_env(task, ctx.sweep_id, str(ctx.sweep_dir), str(tdir), attempt)
        return {
            "key": task.key,
            "num": job_nums[task.key],
            # Journaled by the fork server like an agent's task: a recovery after the
            # launcher died reads how the job ended (ForkSource.reattach, hsm complete).
            "journal": str(ctx.sweep_dir / JOURNAL_DIR),
            "attempt": attempt,
            "layout": taskdir.LAYOUT,
            "task_dir": str(tdir),
            "stdout": str(tdir / "stdout.log"),
            "stderr": str(tdir / "stderr.log"),
            "env": env,
        }

    return request


def collect(
    store: Any, jobs: Sequence[Any], tasks: Sequence[TaskSpec], returns: Returns
) -> list[JobReturn]:
    """One JobReturn per job, in input order; a job without one gets a FAILED stand-in."""
    errors = returns.errors
    latest = store.latest_attempts()
    out: list[JobReturn] = []
    for job, task in zip(jobs, tasks, strict=True):
        task_dir = store.task_dir(task)
        att = latest.get(task.key)
        state = att.state if att else TaskState.PENDING
        ret = (
            returns.get(task, task_dir)
            if state in (TaskState.COMPLETED, TaskState.FAILED)
            else None
        )
        if ret is not None:
            _relocate(ret, task_dir)
            if ret.status is JobStatus.FAILED:
                errors.add(task, att.error if att and att.error else "failed", store.sweep_dir)
            out.append(ret)
            continue
        error = (att.error if att else None) or state.value.lower()
        hard_death = state is TaskState.FAILED and _worker_info(task_dir) is None
        if hard_death and task.key not in errors.reported:  # the fork source noted its own
            note_hard_death(task_dir, task, error)
        if state is TaskState.FAILED:
            errors.add(task, error, store.sweep_dir)
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


def _worker_info(task_dir: Path) -> dict[str, Any] | None:
    """hsm's worker record of the job (an older hsm's `result.json` in its shape, for a
    sweep it started)."""
    from hsm_core.taskdir import read_worker_record

    return read_worker_record(task_dir, legacy=True)


def _relocate(ret: JobReturn, task_dir: Path) -> None:
    """A job run on another host reports that host's paths: point them at the local copy."""
    info = _worker_info(task_dir) or {}
    wd = ret.working_dir
    remote_sweep = info.get("sweep_dir")
    local_sweep = str(task_dir.parent.parent)
    if wd and remote_sweep and remote_sweep != local_sweep and wd.startswith(remote_sweep):
        ret.working_dir = local_sweep + wd[len(remote_sweep) :]


class _Progress:
    def __init__(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("hsm"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            transient=True,
        )
        self.task = self.bar.add_task("jobs", total=total, detail="")
        self.bar.start()

    def __call__(self, engine: Any) -> None:
        counts = engine.counts()
        done = sum(
            counts.get(s, 0) for s in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)
        )
        failed = counts.get(TaskState.FAILED, 0)
        running = counts.get(TaskState.RUNNING, 0)
        detail = f"running {running}" + (f", failed {failed}" if failed else "")
        self.bar.update(self.task, completed=done, detail=detail)

    def close(self) -> None:
        self.bar.stop()


def progress_bar(total: int) -> _Progress | None:
    """A live bar on an interactive terminal only (logs and CI stay clean)."""
    if not sys.stderr.isatty() or os.environ.get("TERM") == "dumb":
        return None
    return _Progress(total)
