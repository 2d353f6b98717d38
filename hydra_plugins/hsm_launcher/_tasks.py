"""A launch's jobs as stored tasks: identity, numbers, re-runs, and their payload files."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsm_core.hydra.job import job_params
from hsm_core.hydra.payload import JOB_FILE, JobPart, write_job_part
from hsm_core.model import TaskKind, TaskSpec, TaskState, task_key


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


def fresh_keys(store: Any, jobs: list[Job]) -> list[Job]:
    """A launcher runs what it is given. A job that completed in an earlier run in this
    sweep dir (the same command again under the basic sweeper) becomes a new task: a
    completed task is final in the journal. (The hsm sweeper leaves such jobs out.)"""
    latest = store.latest_attempts()
    out = []
    for job in jobs:
        key, rerun = job.key, 0
        while (att := latest.get(key)) is not None and att.state is TaskState.COMPLETED:
            rerun += 1
            key = hydra_task_key(job.num, job.overrides, rerun)
        out.append(Job(job.num, job.overrides, key))
    return out


def add_tasks(
    store: Any, jobs: Sequence[Job], *, cwd: str, timeout_s: float | None
) -> list[TaskSpec]:
    """Store the jobs as tasks numbered from 1 (job #0 is task_001) where that number is
    free; failed, lost or cancelled ones from an earlier run get a new attempt."""
    known = {t.key: t.num for t in store.tasks()}
    used = set(known.values())
    next_num = max(used, default=0) + 1
    specs = []
    for job in jobs:
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
    tasks: list[TaskSpec] = store.add_tasks(specs)
    latest = store.latest_attempts()
    for task in tasks:
        att = latest.get(task.key)
        if att is not None and att.state.terminal:
            store.new_attempt(task.key)
    nums = dict(store.meta("hydra_job_nums") or {})
    nums.update({j.key: j.num for j in jobs})
    store.set_meta("hydra_job_nums", nums)
    return tasks


def payload_writer(
    store: Any,
    jobs: Sequence[Job],
    tasks: Sequence[TaskSpec],
    sweep_file: str,
    configs: Sequence[Any],
    script: Path,
    script_rel: str,
) -> Callable[[], None]:
    """A function writing each job's own payload file (`configs`: composed job configs, or
    None each, for workers that compose themselves)."""

    def write() -> None:
        for job, task, config in zip(jobs, tasks, configs, strict=True):
            part = JobPart(
                num=job.num,
                job_id=job.job_id,
                overrides=job.overrides,
                sweep_file=sweep_file,
                config=config,
                script_dir=str(script),
                script_rel=script_rel,
            )
            write_job_part(store.task_dir(task), part)

    return write
