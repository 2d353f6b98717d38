"""What `HsmLauncher.launch()` does, imported only when a launch happens.

Order matters (see research/hydra_fork.md):
1. compose the first job in full: validates it and becomes the template for the others;
2. pickle the shared payload (fails here, before anything runs, naming the culprit);
3. fork the fork server while this process has one thread and no SQLite connection;
4. open the store, add the jobs as tasks, run the engine (threads from here on);
5. hand back every job's JobReturn, in input order.

What a Hydra job is (its task, its request, how it runs, its JobReturn) is one object,
hsm_core.hydra.jobs.HydraJobs: this module makes it, hands it to the fork server and the
sources, and asks it for the JobReturns at the end.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.errors import CompactHydraException

from hsm_core.errors import HsmError
from hsm_core.hydra.compose import JobComposer
from hsm_core.hydra.job import JobRuntime
from hsm_core.hydra.jobs import HydraJobs
from hsm_core.hydra.payload import (
    PayloadError,
    SweepPart,
    app_fingerprint,
    dump_sweep_part,
    unpicklable_warning,
    versions,
    write_sweep_part,
)
from hsm_core.model import SourceSpec
from hsm_core.sweeps import project_root_for
from hydra_plugins.hsm_launcher import _tasks
from hydra_plugins.hsm_launcher._settings import (
    Resolved,
    Settings,
    resolve,
    settings_from,
)

log = logging.getLogger("hydra_plugins.hsm_launcher")


class LauncherError(CompactHydraException):
    """A user error: Hydra prints its one line, without a traceback."""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGHUP, `hsm cancel`) cancelled the jobs; the store is settled."""

    def __init__(self, sweep_dir: Path, returns: list[JobReturn], hint: str) -> None:
        super().__init__(hint)
        self.sweep_dir = sweep_dir
        self.returns = returns
        self.hint = hint  # what finishes the sweep under the sweeper that called us


def launch(
    launcher: Any, jobs: Sequence[tuple[int, list[str]]], *, summary: bool = True
) -> list[JobReturn]:
    """Run the jobs. Cancelled under any sweeper but hsm's (`summary`): print the summary
    and exit 130, as the hsm sweeper does; Hydra's and other sweepers would let the
    interrupt end in a traceback. The hsm sweeper (`summary=False`) gets SweepInterrupted
    and sums up the whole sweep itself."""
    if not jobs:
        return []
    try:
        return _Launch(launcher, jobs).run()
    except HsmError as exc:
        raise LauncherError(str(exc)) from None
    except SweepInterrupted as exc:
        if not summary:
            raise
        _interrupted(exc, jobs)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        if not summary:
            raise
        print("hsm: interrupted before the jobs started; nothing ran", file=sys.stderr)
        raise SystemExit(130) from None


def _interrupted(exc: SweepInterrupted, jobs: Sequence[tuple[int, list[str]]]) -> None:
    from hydra_plugins.hsm_launcher import _summary
    from hydra_plugins.hsm_launcher._sweep import Plan

    batch = [(n, list(o)) for n, o in jobs]
    _summary.report(
        exc.sweep_dir,
        [o for _, o in batch],
        Plan(batch),
        [],  # the journal says how each job ended, as for the hsm sweeper
        True,
        resume=exc.hint,
    )


@dataclass
class _Setup:
    """Everything one launch decided before the engine starts."""

    settings: Settings
    resolved: Resolved
    sweep_dir: Path
    project_root: Path
    cwd: Path
    script: Path
    composer: JobComposer
    jobs: HydraJobs
    sweep_file: str | None  # the shared payload, or None if it cannot be pickled
    server: Any  # the fork server, or None (no local source, or threads: cold workers)
    payload_error: str | None = None  # why the payload cannot be pickled
    inprocess: bool = False  # neither fork nor payload: jobs run in this process

    @property
    def specs(self) -> list[SourceSpec]:
        return self.resolved.specs

    @property
    def remote(self) -> bool:
        return any(s.type != "local" for s in self.specs)


class _Launch:
    def __init__(self, launcher: Any, jobs: Sequence[tuple[int, list[str]]]) -> None:
        assert launcher.config is not None and launcher.hydra_context is not None
        self.launcher = launcher
        self.config = launcher.config
        self.hydra_context = launcher.hydra_context
        self.task_function = launcher.task_function
        self.batch = [(n, list(o)) for n, o in jobs]
        self.lock: Any = None
        self._t0 = time.perf_counter()

    def _mark(self, phase: str) -> None:
        """Where launch() spends its time: `hydra.verbose=hydra_plugins.hsm_launcher`."""
        wall, cpu = time.perf_counter() - self._t0, time.process_time()
        log.debug("launch: %s at %.3f s (this process: %.2f CPU-s)", phase, wall, cpu)

    def run(self) -> list[JobReturn]:
        try:
            setup = self._prepare()
            try:
                return self._run(setup)
            finally:
                if setup.server is not None:
                    setup.server.close()
        finally:
            if self.lock is not None:
                # Kept by this process, idle: the sweeper's next batch takes it over at
                # once, while no other command can start on the sweep in between.
                self.lock.release(keep=True)

    # ------------------------------------------------------------- set-up
    def _prepare(self) -> _Setup:
        cfg = self.config
        setup_globals()
        configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
        pool = cfg.hydra.runtime.choices.get("hydra/launcher/pool")
        settings = settings_from(self.launcher.params, pool)
        cwd = Path.cwd()
        root = project_root_for(cwd)
        resolved = resolve(settings, root)
        sweep_dir = Path(str(cfg.hydra.sweep.dir)).absolute()
        # Before anything is written there: one owner per sweep folder (SweepBusy).
        self.lock = hold(self.launcher, sweep_dir)
        where = ", ".join(f"{s.name}:{s.max_parallel}" for s in resolved.specs)
        log.info(f"Launching {len(self.batch)} jobs with hsm on {where}")
        for num, overrides in self.batch:
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")

        composer = JobComposer(self.hydra_context.config_loader, cfg)
        first = composer.full(self.batch[0][1])  # a bad override fails the launch here
        composer.set_template(self.batch[0][1], first)
        composer.prepare([o for _, o in self.batch])
        self._mark("composed the template")
        rt = JobRuntime(self.task_function, self.hydra_context, composer)
        jobs = HydraJobs(rt, self.batch, sweep_dir)
        script = _script_dir(self.task_function)
        setup = _Setup(settings, resolved, sweep_dir, root, cwd, script, composer, jobs, None, None)
        setup.sweep_file = self._payload(setup)
        self._mark("pickled the payload")
        setup.server = self._fork_server(setup)
        self._mark("forked the fork server")
        return setup

    def _payload(self, s: _Setup) -> str | None:
        from hydra.core.singleton import Singleton

        part = SweepPart(
            task_function=self.task_function,
            hydra_context=self.hydra_context,
            config=self.config,
            singleton_state=Singleton.get_state(),
            sweep_dir=str(s.sweep_dir),
            project_root=str(s.project_root),
            script_dir=_relative(s.script, s.project_root),
            versions=versions(),
        )
        try:
            data = dump_sweep_part(part)
        except PayloadError as exc:
            if s.remote:  # remote hosts cannot run the jobs without it
                raise
            s.payload_error = exc.message
            if threading.active_count() == 1:  # else _fork_server says it all, once
                log.warning(unpicklable_warning(exc))
            return None
        return write_sweep_part(s.sweep_dir, data)

    def _fork_server(self, s: _Setup) -> Any:
        if not any(spec.type == "local" for spec in s.specs):
            return None
        from hsm_core.hydra.forkserver import ForkServer

        if threading.active_count() == 1:
            server = ForkServer(s.jobs)
            server.start()
            return server
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
        if s.sweep_file is None:
            log.warning(
                "this process runs threads (%s), so jobs cannot be forked from it, and they "
                "cannot start in fresh interpreters either: %s. The %d jobs run one after "
                "another inside this process, as Hydra's basic launcher runs them: no jobs "
                "in parallel, no per-job timeout, a job that crashes the process ends the "
                "sweep, job output goes to this terminal only (not to tasks/*/stdout.log), "
                "and `hsm complete` cannot finish the sweep. To run them in parallel, start "
                "the threads inside the task function, or make that object picklable",
                names,
                s.payload_error,
                len(self.batch),
            )
            s.inprocess = True
            return None
        log.warning(
            "this process runs threads (%s): local jobs start as fresh interpreters "
            "(slower) instead of forks",
            names,
        )
        return None

    # ---------------------------------------------------------------- run
    def _run(self, s: _Setup) -> list[JobReturn]:
        from hsm_core.orchestrate import RunOptions, context_for, run_sweep

        store = _tasks.open_store(
            s.sweep_dir, self.config, s.settings, s.specs, s.project_root, self.task_function
        )
        jobs = s.jobs
        try:
            cwd = _relative(s.cwd, s.project_root)
            tasks = jobs.add_tasks(store, cwd=cwd, timeout_s=s.settings.timeout_s)
            store.set_meta("hydra_app", app_fingerprint(self.task_function))
            write_parts = self._payload_writer(s, store, tasks)
            if write_parts is not None and (s.server is None or s.remote):
                write_parts()  # cold or remote workers read them: before anything runs
                write_parts = None
            self._mark("stored the tasks")
            ctx = context_for(store)
            inprocess = None
            if s.inprocess:
                from hydra_plugins.hsm_launcher._inprocess import InProcessSource

                inprocess = InProcessSource(s.specs[0], ctx, jobs)
                sources: list[Any] = [inprocess]
            else:
                from hsm_core.hydra.fork import make_sources

                sources = make_sources(s.specs, ctx, jobs, s.server, ahead=s.settings.ahead)
            opts = RunOptions(
                strategy=s.resolved.strategy,
                max_retries=s.resolved.max_retries,
                max_parallel=s.settings.max_parallel,
                keys=[t.key for t in tasks],
                health=s.resolved.health,
                require_all_sources=s.resolved.require_all_sources,
            )
            progress = None
            if s.settings.progress:
                from hydra_plugins.hsm_launcher._progress import progress_bar

                progress = progress_bar(len(tasks))
            from hsm_core.job_output import JobOutput

            output = JobOutput(
                s.settings.output,
                s.sweep_dir,
                {t.key: t for t in tasks},
                label=jobs.label,
                rate=s.settings.output_rate,
            )
            # The engine's records go to the sweep's log files, not to the app's console.
            hsm_logger = logging.getLogger("hsm")
            propagate, hsm_logger.propagate = hsm_logger.propagate, False
            # Forked jobs never read their payloads: write them while the first jobs run.
            writer = threading.Thread(target=write_parts, name="hsm-payloads")
            try:
                if write_parts is not None:
                    writer.start()
                if inprocess is not None:
                    from hydra_plugins.hsm_launcher._inprocess import run_in_main_thread

                    def engine() -> Any:
                        run = run_sweep(
                            store,
                            ctx,
                            s.specs[:1],
                            opts,
                            sources=sources,
                            progress=progress,
                            handle_signals=False,  # the main thread takes Ctrl-C
                            observers=[inprocess, output],
                            notify=log.warning,
                        )
                        return asyncio.run(run)

                    outcome = run_in_main_thread(inprocess, engine)
                else:
                    run = run_sweep(
                        store,
                        ctx,
                        s.specs,
                        opts,
                        sources=sources,
                        progress=progress,
                        observers=[output],
                        notify=log.warning,
                    )
                    outcome = asyncio.run(run)
            finally:
                if writer.is_alive():
                    writer.join()
                hsm_logger.propagate = propagate
                if progress is not None:
                    progress.close()
            self._mark("engine done")
            for name, why in sorted(outcome.not_started.items()):
                log.warning(f"source {name} never started: {why}")
            results = jobs.returns(store)
            self._mark("read the JobReturns")
        finally:
            store.close()
        if outcome.cancelled:
            from hydra_plugins.hsm_launcher._summary import launch_interrupted_hint

            sweeper = str(self.config.hydra.sweeper.get("_target_", ""))
            hint = launch_interrupted_hint(s.sweep_dir, sweeper, s.sweep_file is not None)
            raise SweepInterrupted(s.sweep_dir, results, hint)
        return results

    def _payload_writer(self, s: _Setup, store: Any, tasks: Sequence[Any]) -> Any:
        if s.sweep_file is None:
            return None
        # Remote hosts may not have the config files where this machine has them: their
        # jobs get their composed config in the payload.
        jobs = s.jobs.jobs
        configs = [s.composer.compose(j.overrides) if s.remote else None for j in jobs]
        rel = _relative(s.script, s.project_root)
        return _tasks.payload_writer(store, jobs, tasks, s.sweep_file, configs, s.script, rel)


def hold(launcher: Any, sweep_dir: Path) -> Any:
    """This process's lock on the sweep folder, until the launcher is collected (end of
    the multirun) or the process ends: never between two batches of one sweeper."""
    from hsm_core import ownership

    lock = ownership.acquire(sweep_dir, make_dir=True)
    held = launcher.__dict__.setdefault("_hsm_locks", {})
    if held.get(str(sweep_dir)) is not lock:
        held[str(sweep_dir)] = lock
        weakref.finalize(launcher, lock.release)
    return lock


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
