"""A launch's store and its jobs' payload files (the jobs themselves: hsm_core.hydra.jobs)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hsm_core.hydra.jobs import Job
from hsm_core.hydra.payload import JobPart, write_job_part
from hsm_core.model import SourceSpec, TaskSpec


def open_store(
    sweep_dir: Path,
    config: Any,
    settings: Any,
    specs: Sequence[SourceSpec],
    project_root: Path,
    task_function: Any,
) -> Any:
    """The sweep folder's store: the one an earlier launch there made (its jobs join it),
    or a new one, registered so that `hsm` commands find it."""
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
