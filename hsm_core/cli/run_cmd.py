"""`hsm run`: expand a sweep file into tasks and run them on the chosen sources."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsm_core import job_output
from hsm_core.cli import render
from hsm_core.config import check_at_least, check_strategy, load_config, parse_sources
from hsm_core.errors import ConfigError, HsmError
from hsm_core.strategies import STRATEGIES

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hsm_core.model import SourceSpec, TaskSpec
    from hsm_core.store import SweepStore
    from hsm_core.sweepfile import SweepDefinition

# Above this many points a sweep file is most likely a mistake (one more axis than meant):
# refused before anything is written, unless --max-points says otherwise.
MAX_POINTS = 1_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, type=Path, help="sweep file (YAML)")
    p.add_argument(
        "--sources",
        "-s",
        default="local",
        help='where to run, e.g. "local:4,ssh:server1:8,hpc:cluster:32" (default: local)',
    )
    p.add_argument("--strategy", choices=STRATEGIES, help="placement strategy")
    p.add_argument("--max-tasks", type=int, help="run only the first N points of the sweep")
    p.add_argument(
        "--max-points",
        type=int,
        default=MAX_POINTS,
        help=f"refuse a sweep of more points than this (default {MAX_POINTS:,})",
    )
    p.add_argument("--max-retries", type=int, help="re-run a FAILED task up to N times")
    p.add_argument(
        "--max-parallel", type=int, help="cap on running tasks over all sources together"
    )
    p.add_argument("--dry-run", action="store_true", help="print the tasks and commands only")
    p.add_argument("--output-dir", type=Path, help="sweep folder (default sweeps/outputs/ID)")
    p.add_argument("--sweep-id", help="id of the new sweep (default: timestamp + random)")
    p.add_argument(
        "--project-root", type=Path, default=Path.cwd(), help="project root (default: cwd)"
    )
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the checks before the first task (script, interpreter, Hydra keys)",
    )
    p.add_argument(
        "--require-all-sources",
        action="store_true",
        help="stop if any source cannot start (default: run on those that can, and keep "
        "trying the others)",
    )
    job_output.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from hsm_core.sweepfile import TaskStream, load_sweep_file

    check_at_least(args.max_parallel, 1, "--max-parallel")
    root = args.project_root.resolve()
    if args.max_tasks is not None and args.max_tasks < 1:
        raise ConfigError("must be a whole number >= 1", key="--max-tasks")
    if args.max_points < 1:
        raise ConfigError("must be a whole number >= 1", key="--max-points")
    definition = load_sweep_file(args.config)
    size = definition.size
    count = size if args.max_tasks is None else min(size, args.max_tasks)
    if count > args.max_points:
        raise HsmError(
            f"{args.config}: the sweep has {size:,} points, more than --max-points "
            f"{args.max_points:,}",
            f"to run them all, pass --max-points {size}; to run the first N, --max-tasks N",
        )
    # Made one at a time as they are stored (or printed): memory does not grow with them.
    tasks = TaskStream(definition, args.max_tasks)
    config = load_config(root)
    specs = parse_sources(args.sources, config)
    strategy = check_strategy(args.strategy or config.strategy, "--strategy", "strategy")
    retries = args.max_retries if args.max_retries is not None else definition.max_retries
    if retries is None:
        retries = config.max_retries
    if retries < 0:
        raise ConfigError("must be >= 0", key="--max-retries")
    if not args.no_check:
        from hsm_core.preflight import check_sweep

        # What would make every task fail stops here, before any sweep folder exists.
        check_sweep(definition, tasks, root, specs, hydra=not args.dry_run)
    if args.dry_run:
        render.task_table(tasks, count, cwd_root=root)
        return 0
    if not count:
        raise HsmError(f"{args.config}: the sweep has no points", "add values under grid:")
    if config.require_all_sources:
        args.require_all_sources = True
    return _execute(
        args, root, definition, tasks, count, specs, strategy, retries, dict(config.health)
    )


def _execute(
    args: argparse.Namespace,
    root: Path,
    definition: SweepDefinition,
    tasks: Iterable[TaskSpec],
    count: int,
    specs: list[SourceSpec],
    strategy: str,
    retries: int,
    health: dict[str, Any],
) -> int:
    from hsm_core.ownership import acquire
    from hsm_core.store import SweepStore
    from hsm_core.sweeps import OUTPUTS, new_sweep_id

    sweep_id = args.sweep_id or new_sweep_id()
    sweep_dir = (args.output_dir or (root / OUTPUTS / sweep_id)).resolve()
    made = not sweep_dir.exists()
    # The folder's owner from before the journal exists: of two `hsm run --sweep-id X`
    # started together, one builds the sweep and the other is told who does.
    lock = acquire(sweep_dir, make_dir=True)
    try:
        if SweepStore.exists(sweep_dir):
            raise HsmError(
                f"{sweep_dir} already holds a sweep",
                f"use `hsm complete {sweep_dir}` to finish it, or another --output-dir",
            )
        try:
            store = _create(args, root, definition, tasks, sweep_id, sweep_dir)
        except BaseException:
            # Ctrl-C while a big sweep is stored: no half-made sweep folder is left behind.
            _remove_unbegun(sweep_dir, made)
            raise
        return _run_created(args, store, sweep_dir, made, count, specs, strategy, retries, health)
    finally:
        lock.release()


def _run_created(
    args: argparse.Namespace,
    store: SweepStore,
    sweep_dir: Path,
    made: bool,
    count: int,
    specs: list[SourceSpec],
    strategy: str,
    retries: int,
    health: dict[str, Any],
) -> int:
    from hsm_core.orchestrate import RunOptions, context_for, run_sweep
    from hsm_core.sweeps import register

    sweep_id = store.sweep_id
    try:
        register(sweep_id, sweep_dir, args.project_root.resolve())
        ctx = context_for(store)
        opts = RunOptions(
            strategy=strategy,
            max_retries=retries,
            max_parallel=args.max_parallel,
            health=health,
            require_all_sources=args.require_all_sources,
        )
        show = not args.no_progress and sys.stdout.isatty()
        print(f"sweep {sweep_id}: {count} tasks -> {sweep_dir}")
        try:
            output = job_output.JobOutput(
                args.output, sweep_dir, store.task_stubs(), rate=args.output_rate
            )
            with render.LiveProgress(count, enabled=show) as live:
                run = run_sweep(store, ctx, specs, opts, progress=live.update, observers=[output])
                outcome = asyncio.run(run)
        except HsmError:
            # A source could not start (unreachable host, wrong key, project out of sync)
            # before any task was placed: leave no sweep behind that never began.
            if not store.events():
                store.close()
                _remove_unbegun(sweep_dir, made)
            raise
        render.summary(store, outcome)
        return 0 if outcome.ok else (130 if outcome.cancelled else 1)
    finally:
        store.close()


def _create(
    args: argparse.Namespace,
    root: Path,
    definition: SweepDefinition,
    tasks: Iterable[TaskSpec],
    sweep_id: str,
    sweep_dir: Path,
) -> SweepStore:
    from hsm_core.store import SweepStore

    return SweepStore.create(
        sweep_dir,
        sweep_id=sweep_id,
        kind="command",
        config=definition.raw,
        metadata={
            **dict(definition.metadata or {}),
            "sweep_file": str(Path(args.config).resolve()),
            "command": shlex.join(sys.argv),
        },
        project_root=root,
        tasks=tasks,
        task_views=False,  # the engine writes the task folders while the first tasks run
    )


def _remove_unbegun(sweep_dir: Path, made: bool) -> None:
    """A folder this run made goes whole; in one that was there before (--output-dir),
    only the journal goes, so that the folder holds no sweep and nothing else is lost."""
    if made:
        shutil.rmtree(sweep_dir, ignore_errors=True)
        return
    from hsm_core.store import DB_NAME

    for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
        (sweep_dir / name).unlink(missing_ok=True)
