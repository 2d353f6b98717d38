"""`hsm complete SWEEP`: run what is not COMPLETED, on any sources, after any crash."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hsm_core import job_output
from hsm_core.cli import render
from hsm_core.strategies import STRATEGIES

if TYPE_CHECKING:
    from hsm_core.store import SweepStore


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep id or folder")
    p.add_argument("--sources", "-s", default="local", help='e.g. "local:4,ssh:server2:8"')
    p.add_argument("--retry-failed", action="store_true", help="run FAILED tasks again too")
    p.add_argument("--tasks", help="only these task numbers, e.g. 3,7-9")
    p.add_argument("--strategy", choices=STRATEGIES, help="placement strategy")
    p.add_argument("--max-retries", type=int, help="re-run a FAILED task up to N times")
    p.add_argument("--max-parallel", type=int, help="cap on running tasks over all sources")
    p.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    p.add_argument(
        "--require-all-sources",
        action="store_true",
        help="stop if any source cannot start (default: run on those that can, and keep "
        "trying the others)",
    )
    job_output.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from hsm_core import ownership
    from hsm_core.config import check_at_least
    from hsm_core.store import SweepStore
    from hsm_core.sweeps import find_sweep

    check_at_least(args.max_parallel, 1, "--max-parallel")
    check_at_least(args.max_retries, 0, "--max-retries")
    path = find_sweep(args.sweep)
    # Owned before the journal is read: what to run must not change under us (a second
    # `hsm complete`, a Hydra launcher, an `hsm run` still going). A dry run only looks.
    lock = None if args.dry_run else ownership.acquire(path)
    try:
        store = SweepStore.open(path)
        try:
            return _complete(args, store)
        finally:
            store.close()
    finally:
        if lock is not None:
            lock.release()


def _complete(args: argparse.Namespace, store: SweepStore) -> int:
    from hsm_core import ownership
    from hsm_core.complete import plan_completion
    from hsm_core.config import check_strategy, load_config, parse_sources
    from hsm_core.orchestrate import RunOptions, context_for, run_sweep

    root = Path(store.meta("project_root") or Path.cwd())
    config = load_config(root)
    specs = parse_sources(args.sources, config)
    plan = plan_completion(store, specs, tasks=args.tasks, retry_failed=args.retry_failed)
    con = render.console()
    con.print(plan.describe())
    if args.dry_run:
        if ownership.running(store.sweep_dir, store.meta("orchestrator")):
            con.print("(the sweep is running now: this may change before it ends)")
        return 0
    if not plan.keys:
        return 0
    strategy = check_strategy(args.strategy or config.strategy, "--strategy", "strategy")
    opts = RunOptions(
        strategy=strategy,
        max_retries=args.max_retries if args.max_retries is not None else config.max_retries,
        max_parallel=args.max_parallel,
        retry_failed=args.retry_failed,
        keys=plan.keys,
        health=dict(config.health),
        require_all_sources=args.require_all_sources or config.require_all_sources,
    )
    ctx = context_for(store)
    show = not args.no_progress and sys.stdout.isatty()
    tasks = store.task_stubs(plan.keys)
    output = job_output.JobOutput(args.output, store.sweep_dir, tasks, rate=args.output_rate)
    with render.LiveProgress(len(plan.keys), enabled=show) as live:
        run = run_sweep(store, ctx, plan.specs, opts, progress=live.update, observers=[output])
        outcome = asyncio.run(run)
    render.summary(store, outcome)
    return 0 if outcome.ok else (130 if outcome.cancelled else 1)
