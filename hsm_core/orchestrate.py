"""Drive one engine run over a stored sweep: logs, sources, signals, bookkeeping.

Shared by `hsm run`, `hsm complete` and the Hydra launcher, so that all three leave the
sweep folder in the same shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, Protocol

from hsm_core import ownership
from hsm_core.engine import SweepEngine
from hsm_core.health import HealthSettings
from hsm_core.logs import SweepLogs
from hsm_core.model import SourceSpec, TaskState
from hsm_core.reporting.reports import write_reports_safely
from hsm_core.sources import make_source
from hsm_core.sources.base import ComputeSource, SweepContext
from hsm_core.store import SweepStore

Progress = Callable[[SweepEngine], None]
P = ParamSpec("P")


class Observer(Protocol):
    """Something that follows a run from inside (job output on the terminal, jobs run in
    the launcher's own thread): attached once the engine exists, closed when it is done.
    `cancel` does what Ctrl-C does."""

    def attach(
        self, engine: SweepEngine, sources: Sequence[ComputeSource], cancel: Callable[[], None]
    ) -> None: ...

    async def close(self) -> None: ...


@dataclass
class RunOptions:
    strategy: str = "least_loaded"
    max_retries: int = 0
    max_parallel: int | None = None
    retry_failed: bool = False
    keys: Collection[str] | None = None
    weights: dict[str, float] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)  # hsm.yaml `health:` keys
    # A source that cannot start stops the run (default: the run goes on without it).
    require_all_sources: bool = False


@dataclass
class RunOutcome:
    counts: dict[TaskState, int]
    cancelled: bool
    seconds: float
    not_started: dict[str, str] = field(default_factory=dict)  # source -> why

    @property
    def ok(self) -> bool:
        total = sum(self.counts.values())
        return self.counts.get(TaskState.COMPLETED, 0) == total


def context_for(store: SweepStore, python: str | None = None) -> SweepContext:
    from pathlib import Path

    return SweepContext(
        sweep_id=store.sweep_id,
        sweep_dir=store.sweep_dir,
        project_root=Path(store.meta("project_root") or os.getcwd()),
        python=python or sys.executable,
    )


def _owning(
    run: Callable[Concatenate[SweepStore, P], Coroutine[Any, Any, RunOutcome]],
) -> Callable[Concatenate[SweepStore, P], Coroutine[Any, Any, RunOutcome]]:
    """The caller owns the sweep folder (ownership.acquire) from before it read the
    journal to decide what to run; a caller that does not gets it here, or SweepBusy."""

    @functools.wraps(run)
    async def owned(store: SweepStore, *args: P.args, **kwargs: P.kwargs) -> RunOutcome:
        own = None if ownership.held_here(store.sweep_dir) else ownership.acquire(store.sweep_dir)
        try:
            return await run(store, *args, **kwargs)
        finally:
            if own is not None:
                own.release()

    return owned


@_owning
async def run_sweep(
    store: SweepStore,
    ctx: SweepContext,
    specs: Sequence[SourceSpec],
    opts: RunOptions,
    *,
    sources: Sequence[ComputeSource] | None = None,
    progress: Progress | None = None,
    handle_signals: bool = True,
    notify: Callable[[str], None] | None = None,
    observers: Sequence[Observer] = (),
) -> RunOutcome:
    """Run the engine until every selected task is settled (or the run is cancelled).

    SIGINT/SIGTERM/SIGHUP cancel the run cleanly: every source kills what it started and
    the store ends consistent. `sources` lets a caller pass ready-made sources (the Hydra
    launcher's fork source); otherwise they are built from `specs`. `notify` gets the
    lines to show at once about sources that could not start or joined late (they go to
    logs/health_status.log anyway, and so to the terminal of a CLI run).

    It runs as the owner of the sweep folder (see `_owning`).
    """
    _fast_child_watcher()
    built = list(sources) if sources is not None else [make_source(s, ctx) for s in specs]
    logs = SweepLogs(store.sweep_dir, [s.name for s in built])
    engine = SweepEngine(
        store,
        ctx,
        built,
        strategy=opts.strategy,
        max_retries=opts.max_retries,
        max_parallel=opts.max_parallel,
        weights=opts.weights,
        health=HealthSettings.from_mapping(opts.health),
        require_all=opts.require_all_sources,
        notify=notify,
    )
    # For display and for `hsm cancel`'s signal: pid + start time + boot id, so that a
    # process given the same pid later is never taken for this one. (Liveness: the lock.)
    store.set_meta("orchestrator", ownership.Owner.here().to_json())
    # Keep every source the sweep ever ran on: `hsm complete` re-attaches through them.
    recorded = {d.get("name"): d for d in store.meta("sources") or [] if isinstance(d, dict)}
    for spec in specs:
        if spec.max_parallel > 0:
            recorded[spec.name] = _describe(spec)
    for src in built:
        recorded.setdefault(src.name, _describe(src.spec))
    store.set_meta("sources", list(recorded.values()))
    loop = asyncio.get_running_loop()
    cancelled = False

    def on_signal() -> None:
        nonlocal cancelled
        cancelled = True
        engine.cancel()

    installed: list[signal.Signals] = []
    if handle_signals:
        # SIGHUP: the terminal closed; stop as cleanly as on Ctrl-C, with the summary.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
    for observer in observers:
        observer.attach(engine, built, on_signal)
    ticker = asyncio.create_task(_tick(engine, progress)) if progress else None
    start = time.monotonic()
    try:
        counts = await engine.run(opts.keys, retry_failed=opts.retry_failed)
    finally:
        for observer in observers:
            await observer.close()
        if ticker:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        for sig in installed:
            loop.remove_signal_handler(sig)
        store.set_meta("orchestrator", None)
        # Sources of this run that never started, and why (the summaries name them).
        store.set_meta("not_started", dict(engine.not_started))
        found = {s.name: getattr(s, "metadata", None) for s in built}
        for name, meta in found.items():  # what a source learned starting (ssh: sync report)
            if meta:
                store.set_meta(f"source:{name}", meta)
        # Always: the metadata view must not go on naming this process once it is gone.
        await asyncio.to_thread(store.write_metadata_view)
        engine.release()
        await asyncio.to_thread(write_reports_safely, store)  # logs its errors, never raises
        logs.close()
    if progress:
        progress(engine)
    return RunOutcome(counts, cancelled, time.monotonic() - start, dict(engine.not_started))


def _fast_child_watcher() -> None:
    """Before 3.12, asyncio waits for each child process with a thread of its own; a
    pidfd per child costs far less when a sweep starts hundreds of short tasks."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
        try:
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(asyncio.get_running_loop())
            policy.set_child_watcher(watcher)  # type: ignore[attr-defined,unused-ignore]
        except (OSError, NotImplementedError, AttributeError):
            pass


async def _tick(engine: SweepEngine, progress: Progress) -> None:
    while True:
        progress(engine)
        await asyncio.sleep(0.2)


def _describe(spec: SourceSpec) -> dict[str, object]:
    return {
        "name": spec.name,
        "type": spec.type,
        "max_parallel": spec.max_parallel,
        "options": dict(spec.options),
    }
