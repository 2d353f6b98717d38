"""What `HsmLauncher.launch()` does, imported only when a launch happens.

Order matters (see research/hydra_fork.md):
1. compose the first job in full: validates it and becomes the template for the others;
2. pickle the shared payload (fails here, before anything runs, naming the culprit);
3. fork the fork server while this process has one thread and no SQLite connection;
4. open the store, add the jobs as tasks, run the engine (threads from here on);
5. read every job's JobReturn back, in input order.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.errors import CompactHydraException

from hsm_core.errors import HsmError
from hsm_core.hydra_compose import JobComposer
from hsm_core.hydra_job import JOB_RETURN, JobRuntime, job_key, job_params, run_here
from hsm_core.hydra_payload import (
    JOB_FILE,
    JobPart,
    PayloadError,
    SweepPart,
    app_fingerprint,
    dump_sweep_part,
    unpicklable_warning,
    versions,
    write_job_part,
    write_sweep_part,
)
from hsm_core.model import SourceSpec, TaskKind, TaskSpec, task_key
from hydra_plugins.hsm_launcher import _results
from hydra_plugins.hsm_launcher._settings import (
    Resolved,
    Settings,
    project_root_for,
    resolve,
    settings_from,
)

log = logging.getLogger("hydra_plugins.hsm_launcher")


class LauncherError(CompactHydraException):
    """A user error: Hydra prints its one line, without a traceback."""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) cancelled the jobs; the store is settled."""


@dataclass(frozen=True)
class Job:
    num: int
    overrides: list[str]
    key: str

    @property
    def job_id(self) -> str:
        return str(self.num)


def launch(launcher: Any, jobs: Sequence[tuple[int, list[str]]]) -> list[JobReturn]:
    if not jobs:
        return []
    try:
        return _Launch(launcher, jobs).run()
    except HsmError as exc:
        raise LauncherError(str(exc)) from None


def hydra_task_key(num: int, overrides: Sequence[str]) -> str:
    """A job is its number and its overrides: a second run of the same command in the same
    sweep dir finds the same tasks; the same overrides under another number stay apart."""
    return task_key({"job": num, "params": job_params(overrides)})


class _Launch:
    def __init__(self, launcher: Any, jobs: Sequence[tuple[int, list[str]]]) -> None:
        assert launcher.config is not None and launcher.hydra_context is not None
        self.launcher = launcher
        self.config = launcher.config
        self.hydra_context = launcher.hydra_context
        self.task_function = launcher.task_function
        self.jobs = [Job(n, o, hydra_task_key(n, o)) for n, o in jobs]
        self._t0 = time.perf_counter()

    def _mark(self, phase: str) -> None:
        """Where launch() spends its time: `hydra.verbose=hydra_plugins.hsm_launcher`."""
        log.debug("launch: %s at %.3f s", phase, time.perf_counter() - self._t0)

    def run(self) -> list[JobReturn]:
        cfg = self.config
        setup_globals()
        configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
        choices = cfg.hydra.runtime.choices
        settings = settings_from(self.launcher.params, choices.get("hydra/launcher/pool"))
        cwd = Path.cwd()
        project_root = project_root_for(cwd)
        resolved = resolve(settings, project_root)
        specs = resolved.specs
        sweep_dir = Path(str(cfg.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        where = ", ".join(f"{s.name}:{s.max_parallel}" for s in specs)
        log.info(f"Launching {len(self.jobs)} jobs with hsm on {where}")
        for job in self.jobs:
            log.info(f"\t#{job.num} : {' '.join(filter_overrides(job.overrides))}")

        composer = JobComposer(self.hydra_context.config_loader, cfg)
        first = composer.full(self.jobs[0].overrides)  # a bad override fails the launch here
        composer.set_template(self.jobs[0].overrides, first)
        composer.prepare([j.overrides for j in self.jobs])
        self._mark("composed the template")
        remote = any(s.type != "local" for s in specs)
        script = _script_dir(self.task_function)
        sweep_file = self._payload(sweep_dir, project_root, script, required=remote)
        rt = JobRuntime(self.task_function, self.hydra_context, composer)
        self._mark("pickled the payload")
        server = self._fork_server(rt, specs, sweep_file)
        self._mark("forked the fork server")
        try:
            return self._run(
                settings,
                resolved,
                specs,
                sweep_dir,
                project_root,
                cwd,
                script,
                sweep_file,
                composer,
                server,
                remote,
            )
        finally:
            if server is not None:
                server.close()

    # ------------------------------------------------------------- payload
    def _payload(self, sweep_dir: Path, root: Path, script: Path, *, required: bool) -> str | None:
        from hydra.core.singleton import Singleton

        part = SweepPart(
            task_function=self.task_function,
            hydra_context=self.hydra_context,
            config=self.config,
            singleton_state=Singleton.get_state(),
            sweep_dir=str(sweep_dir),
            project_root=str(root),
            script_dir=_relative(script, root),
            versions=versions(),
        )
        try:
            data = dump_sweep_part(part)
        except PayloadError as exc:
            if required:
                raise
            log.warning(unpicklable_warning(exc))
            return None
        return write_sweep_part(sweep_dir, data)

    def _fork_server(self, rt: JobRuntime, specs: list[SourceSpec], sweep_file: str | None) -> Any:
        if not any(s.type == "local" for s in specs):
            return None
        from hsm_core.sources.forkserver import ForkServer

        table = {j.num: j for j in self.jobs}  # the task keys are settled later, with the store

        def runner(req: Any, gate: Any) -> int:
            job = table[int(req["num"])]
            return run_here(
                rt,
                num=job.num,
                job_id=job.job_id,
                overrides=job.overrides,
                task_dir=Path(req["task_dir"]),
                gate=gate,
                inplace=True,
            )

        def prefork(req: Any) -> None:  # in the fork server: a template per job shape
            rt.composer.ensure_template(table[int(req["num"])].overrides)

        if threading.active_count() == 1:
            server = ForkServer(runner, prefork)
            server.start()
            return server
        names = ", ".join(t.name for t in threading.enumerate())
        if sweep_file is None:
            raise HsmError(
                f"cannot run the jobs: this process runs threads ({names}), so jobs cannot be "
                "forked from it, and the job payload cannot be pickled (see the warning above)",
                "start no threads before the Hydra app's main function",
            )
        log.warning(
            "this process runs threads (%s): local jobs start as fresh interpreters "
            "(slower) instead of forks",
            names,
        )
        return None

    # ---------------------------------------------------------------- run
    def _run(
        self,
        settings: Settings,
        resolved: Resolved,
        specs: list[SourceSpec],
        sweep_dir: Path,
        project_root: Path,
        cwd: Path,
        script: Path,
        sweep_file: str | None,
        composer: JobComposer,
        server: Any,
        remote: bool,
    ) -> list[JobReturn]:
        from hsm_core.orchestrate import RunOptions, context_for, run_sweep

        store = _results.open_store(
            sweep_dir, self.config, settings, specs, project_root, self.task_function
        )
        try:
            self.jobs = _fresh_keys(store, self.jobs)
            tasks = self._add_tasks(store, settings, cwd, project_root)
            _reopen_unfinished(store, tasks)
            store.set_meta("hydra_app", app_fingerprint(self.task_function))
            nums = dict(store.meta("hydra_job_nums") or {})
            nums.update({j.key: j.num for j in self.jobs})
            store.set_meta("hydra_job_nums", nums)
            parts = self._job_parts(
                store, tasks, sweep_file, composer, script, project_root, remote
            )
            if parts is not None and (server is None or remote):
                parts()  # workers (cold, remote) read them: before anything runs
                parts = None
            self._mark("stored the tasks")
            ctx = context_for(store)
            returns = _results.Returns(sweep_dir, _results.ErrorLog(sweep_dir))
            job_nums = {j.key: j.num for j in self.jobs}
            sources = _results.make_sources(specs, ctx, server, settings, returns, job_nums)
            opts = RunOptions(
                strategy=resolved.strategy,
                max_retries=resolved.max_retries,
                max_parallel=settings.max_parallel,
                keys=[t.key for t in tasks],
                health=resolved.health,
            )
            progress = _results.progress_bar(len(tasks)) if settings.progress else None
            # The engine's records go to the sweep's log files, not to the app's console.
            hsm_logger = logging.getLogger("hsm")
            propagate, hsm_logger.propagate = hsm_logger.propagate, False
            # Forked jobs do not need their payloads: write them while the first jobs run.
            writer = threading.Thread(target=parts, name="hsm-payloads") if parts else None
            try:
                if writer is not None:
                    writer.start()
                outcome = asyncio.run(
                    run_sweep(store, ctx, specs, opts, sources=sources, progress=progress)
                )
            finally:
                if writer is not None:
                    writer.join()
                hsm_logger.propagate = propagate
                if progress is not None:
                    progress.close()
            self._mark("engine done")
            results = _results.collect(store, self.jobs, tasks, returns)
            self._mark("read the JobReturns")
        finally:
            store.close()
        if outcome.cancelled:
            raise SweepInterrupted(f"cancelled; finished jobs are kept in {sweep_dir}")
        return results

    def _job_parts(
        self,
        store: Any,
        tasks: Sequence[TaskSpec],
        sweep_file: str | None,
        composer: JobComposer,
        script: Path,
        project_root: Path,
        remote: bool,
    ) -> Any:
        """A function writing each job's own payload (composed here for remote sources,
        whose hosts may not have the config files where this machine has them)."""
        if sweep_file is None:
            return None
        rel = _relative(script, project_root)
        configs = [composer.compose(j.overrides) if remote else None for j in self.jobs]

        def write() -> None:
            for job, task, config in zip(self.jobs, tasks, configs, strict=True):
                part = JobPart(
                    num=job.num,
                    job_id=job.job_id,
                    overrides=job.overrides,
                    sweep_file=sweep_file,
                    config=config,
                    script_dir=str(script),
                    script_rel=rel,
                )
                write_job_part(store.task_dir(task), part)

        return write

    def _add_tasks(
        self, store: Any, settings: Settings, cwd: Path, project_root: Path
    ) -> list[TaskSpec]:
        known = {t.key: t.num for t in store.tasks()}
        used = set(known.values())
        next_num = max(used, default=0) + 1
        specs = []
        for job in self.jobs:
            num = known.get(job.key)
            if num is None:
                num = job.num + 1  # hsm numbers tasks from 1: job #0 is task_001
                if num in used:
                    num = next_num
                used.add(num)
                next_num = max(next_num, num + 1)
            name = f"task_{num:03d}"
            specs.append(
                TaskSpec(
                    key=job.key,
                    num=num,
                    params=job_params(job.overrides),
                    kind=TaskKind.HYDRA,
                    argv=(sys.executable, "-m", "hsm_core.worker"),
                    cwd=_relative(cwd, project_root),
                    payload=f"tasks/{name}/{JOB_FILE}",
                    timeout_s=settings.timeout_s,
                )
            )
        return store.add_tasks(specs)


def _fresh_keys(store: Any, jobs: list[Job]) -> list[Job]:
    """A launcher runs what it is given. A job that completed in an earlier run in this
    sweep dir (the same command again under the basic sweeper) becomes a new task: a
    completed task is final in the journal. (The hsm sweeper leaves such jobs out.)"""
    from hsm_core.model import TaskState

    latest = store.latest_attempts()
    out = []
    for job in jobs:
        key, rerun = job.key, 0
        while (att := latest.get(key)) is not None and att.state is TaskState.COMPLETED:
            rerun += 1
            key = task_key({"job": job.num, "params": job_params(job.overrides), "rerun": rerun})
        out.append(Job(job.num, job.overrides, key))
    return out


def _reopen_unfinished(store: Any, tasks: Sequence[TaskSpec]) -> None:
    """Failed, lost or cancelled in an earlier run: a new attempt runs it again."""
    latest = store.latest_attempts()
    for task in tasks:
        att = latest.get(task.key)
        if att is not None and att.state.terminal:
            store.new_attempt(task.key)


def _script_dir(task_function: Any) -> Path:
    try:
        return Path(inspect.getfile(task_function)).resolve().parent
    except (TypeError, OSError):
        return Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] else Path.cwd()


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve())) or "."
    except ValueError:
        return "."


__all__ = ["JOB_RETURN", "LauncherError", "SweepInterrupted", "job_key", "launch"]
