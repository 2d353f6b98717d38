"""SweepEngine: places tasks on sources, listens to their reports, retries and re-queues.

The engine is the only writer of the store. Sources report TaskEvents; the engine checks
each against the transition table in memory (so it can decide at once), and journals
them in order, in batches, off the event loop. One loop iteration = place what fits,
wait for reports, journal them, decide what follows (retry, re-queue, done).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import shutil
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hsm_core import resume
from hsm_core.errors import HsmError, InfrastructureError, SourceError, SourceUnavailable
from hsm_core.health import HealthMonitor, HealthSettings
from hsm_core.model import TaskEvent, TaskSpec, TaskState, can_move
from hsm_core.sources.base import ComputeSource, SweepContext
from hsm_core.store import Reopen, SweepStore
from hsm_core.strategies import Load, Placer
from hsm_core.taskdir import ATTEMPT_FILES, TaskPaths
from hsm_core.views import ViewWriter, task_name

log = logging.getLogger("hsm.engine")
assign_log = logging.getLogger("hsm.assign")
task_log = logging.getLogger("hsm.task")

CANCEL_DEADLINE_S = 15.0
# A task lost this many times in a row is not the hosts' fault any more.
LOST_LIMIT = 5
# Sources starting at once (each: a connection, an agent, a sync check). More only
# compete for this machine's CPU: 16 started 50 loopback sources no sooner than 8 (see
# bench/README.md). Logins to any one sshd are bounded apart (LOGINS_PER_HOST in
# transport/ssh.py), reconnects mid-sweep included.
START_AT_ONCE = 8
# A start that takes longer counts as failed; the source is tried again later.
START_DEADLINE_S = 180.0
# The sweep waits for every source's first start (so that a mistake stops it before any
# task), but not longer than this after the first one with slots is up: then it begins
# on those up, and a slow one joins when it is ready.
START_GRACE_S = 30.0
# A source that could not start is tried again after this, then at doubling intervals.
RESTART_FIRST_S = 2.0
RESTART_MAX_S = 60.0


@dataclass(frozen=True)
class _Handle:
    key: str
    attempt: int
    handle: str


@dataclass(frozen=True)
class _Cancelled:
    """Queued attempts cancelled before they were placed (SweepStore.cancel_pending)."""

    attempts: list[tuple[str, int]]
    time: float


@dataclass(slots=True)
class _Live:
    attempt: int
    state: TaskState
    source: str | None = None
    num: int = 0
    failures: int = 0
    losses: int = 0
    lost_on: frozenset[str] = frozenset()  # shared empty set: 100,000 of them cost nothing
    failed_on: tuple[str, ...] = ()  # the source of each failure counted in `failures`
    completed_attempt: int | None = None  # an older attempt that finished after all
    timeouts: int = 0  # time limits this task resumed after (hsm_core.resume)
    preemptions: int = 0
    resume: str | None = None  # the current attempt goes on where the last one stopped
    pin: str | None = None  # ... on this source, where its checkpoint is


class SweepEngine:
    def __init__(
        self,
        store: SweepStore,
        ctx: SweepContext,
        sources: Iterable[ComputeSource],
        *,
        strategy: str = "least_loaded",
        max_retries: int = 0,
        max_parallel: int | None = None,
        weights: dict[str, float] | None = None,
        seed: int | None = None,
        health: HealthSettings | None = None,
        require_all: bool = False,
        start_at_once: int = START_AT_ONCE,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        """`require_all`: a source that cannot start stops the run (else the run goes on
        without it and keeps trying it). `notify` gets the lines about sources starting
        late or not at all that the user should see at once (they are logged anyway)."""
        self.store = store
        self.ctx = ctx
        self.sources = {s.name: s for s in sources}
        if not self.sources:
            raise HsmError("no compute source to run on", "pass --sources, e.g. local:4")
        if max_parallel is not None and max_parallel < 1:
            # 0 would place nothing and wait forever.
            raise HsmError(f"max_parallel must be >= 1, not {max_parallel}", "or leave it unset")
        self.placer = Placer(strategy, seed)
        self.max_retries = max_retries
        self.max_parallel = max_parallel
        self.weights = weights or {}
        self.enabled: dict[str, bool] = {name: False for name in self.sources}  # until started
        self.require_all = require_all
        self.notify = notify
        self._start_slots = asyncio.Semaphore(max(1, start_at_once))
        self._started: set[str] = set()
        self.not_started: dict[str, str] = {}  # source -> why, while it has not started
        self._start_phase: list[asyncio.Task[BaseException | None]] = []
        self._restarts: dict[str, asyncio.Task[None]] = {}
        # Each task's spec as the journal stores it (JSON text), parsed when it is placed:
        # a third of the memory of parsed specs, which a 100,000-task sweep notices.
        self._specs: dict[str, str] = {}
        self._running = False  # the main loop runs: a source that starts now joins it
        self._ended = False
        self._live: dict[str, _Live] = {}
        self._queue: deque[str] = deque()
        self._inflight: dict[str, int] = {name: 0 for name in self.sources}
        self._assigned_total: dict[str, int] = {name: 0 for name in self.sources}
        self._events: asyncio.Queue[TaskEvent | None] = asyncio.Queue()
        self._writes: list[TaskEvent | Reopen | _Handle | _Cancelled] = []
        # One thread for the journal's writes, in order, on the store's connection. The
        # views are another thread's business (ViewWriter): it reads the journal through
        # its own connection, and the engine never waits for it while tasks are placed.
        self._io = ThreadPoolExecutor(1, thread_name_prefix="hsm-store")
        self.views = ViewWriter(store.sweep_dir)
        self._tally: dict[TaskState, int] = {s: 0 for s in TaskState}
        self._submits: set[asyncio.Task[None]] = set()
        self._cancelling = False
        self.listeners: list[Callable[[TaskEvent], None]] = []
        self.health = HealthMonitor(
            self.sources,
            health or HealthSettings(),
            on_disable=self._disable_source,
            on_enable=self._enable_source,
            inflight=lambda name: self._inflight[name],
        )
        self.stalled: str | None = None  # why the run ended with work left, if it did
        self._rate_disabled: set[str] = set()  # disabled by the failure-rate rule

    # ------------------------------------------------------------------ public
    def cancel(self) -> None:
        """Stop placing work and cancel everything running (safe from a signal handler)."""
        if not self._cancelling:
            self._cancelling = True
            self._events.put_nowait(None)
            for job in self._start_phase:  # a slow host must not hold up Ctrl-C
                job.cancel()

    def counts(self) -> dict[TaskState, int]:
        return dict(self._tally)  # kept as states change: a progress bar costs no scan

    def _set_state(self, live: _Live, state: TaskState) -> None:
        if not live.completed_attempt:
            self._tally[live.state] -= 1
            self._tally[state] += 1
        live.state = state

    def release(self) -> None:
        """Drop what the engine holds per task once its run is over (counts() stays):
        the end-of-run reports then reuse that memory instead of adding to it."""
        self._specs.clear()
        self._live.clear()
        self._queue.clear()

    def inflight(self) -> dict[str, int]:
        return dict(self._inflight)

    async def run(
        self, keys: Collection[str] | None = None, *, retry_failed: bool = False
    ) -> dict[TaskState, int]:
        """Run every task of the store (or `keys`) that is not finished; return the counts."""
        await self._in_io(self._load, keys, retry_failed)
        pollers: list[asyncio.Task[None]] = []
        # Task folders, status files, the mapping: made and kept up to date in the
        # background from here on (the agents make a task's folder if it is not there yet).
        self.views.start()
        began = False
        try:
            # Inside the try: when one source cannot start, the ones that did are closed.
            await self._start_sources()
            began = True
            self.store.set_meta("started", time.time())
            self.health.start()
            self._running = True
            pollers = [
                asyncio.create_task(self._poll_loop(s))
                for s in self.sources.values()
                if s.poll_interval
            ]
            await self._main_loop()
        finally:
            await self.health.stop()
            self._running = False
            self._ended = True  # no new retries from here
            for job in self._restarts.values():
                job.cancel()
            await asyncio.gather(*self._restarts.values(), return_exceptions=True)
            for p in pollers:
                p.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
            for src in self.sources.values():
                src.submit_now()
            if self._submits:
                await asyncio.gather(*self._submits, return_exceptions=True)
            if began:
                await self._flush()
                self.store.set_meta("ended", time.time())
            else:
                # The run stops before any task (no source could start, or a mistake):
                # the journal stays as it was, tasks to retry not reopened yet.
                self._writes.clear()
            # The views catch up with the journal while the sources close their
            # connections; before anything else ends (a failed start may remove the
            # sweep folder next). Interrupted: what the views writer reads back of
            # older views is left to the next run (Ctrl-C must not wait for it).
            close_views = functools.partial(self.views.close, audit=not self._cancelling)
            await asyncio.gather(
                asyncio.to_thread(close_views),
                *(s.close() for s in self.sources.values()),
                return_exceptions=True,
            )
            self._io.shutdown(wait=False)
        return self.counts()

    def _task(self, key: str) -> TaskSpec:
        return TaskSpec.from_json(json.loads(self._specs[key]))

    async def _in_io(self, fn: Callable[..., object], *args: object) -> None:
        await asyncio.get_running_loop().run_in_executor(self._io, functools.partial(fn, *args))

    # ----------------------------------------------------------------- set-up
    def _load(self, keys: Collection[str] | None, retry_failed: bool) -> None:
        wanted = set(keys) if keys is not None else None
        reattach: dict[str, list[str]] = {}
        for key, num, spec, attempt, state_name, source in self.store.task_rows():
            if wanted is not None and key not in wanted:
                continue
            state = TaskState(state_name)
            self._specs[key] = spec
            live = _Live(attempt, state, source, num)
            self._live[key] = live
            self._tally[state] += 1
            if state is TaskState.PENDING:
                self._queue.append(key)
            elif state in (TaskState.ASSIGNED, TaskState.RUNNING):
                # A previous orchestrator died while this ran: its source may re-attach.
                reattach.setdefault(source or "", []).append(key)
            elif state in (TaskState.LOST, TaskState.CANCELLED) or (
                state is TaskState.FAILED and retry_failed
            ):
                self._reopen(key)
        self._reattach = reattach
        self._load_resumes()

    def _load_resumes(self) -> None:
        """What a previous orchestrator decided about time limits and preemptions: the
        counts against max_num_timeout, and an open attempt's resume on its source."""
        for key, rows in self.store.resumes().items():
            live = self._live.get(key)
            if live is None:
                continue
            for attempt, kind, source in rows:
                if kind == "timeout":
                    live.timeouts += 1
                else:
                    live.preemptions += 1
                if attempt == live.attempt and not live.state.terminal:
                    live.resume, live.pin = kind, source

    async def _start_sources(self) -> None:
        """Start every source, START_AT_ONCE at a time, and wait until each has started
        or failed once (for START_GRACE_S at most, once one with slots is up). A mistake
        (an HsmError other than SourceUnavailable: a host key to confirm, `sync: fail`)
        stops the run. An outage (refused, timed out, login refused, no interpreter, an
        agent that does not answer) disables the source and retries it in the
        background, unless `require_all`. No source with slots up stops the run: then
        nothing has started."""
        for name in self.sources:
            self.health.starting(name)
        sources = list(self.sources.values())
        jobs = [asyncio.create_task(self._try_start(s, 1)) for s in sources]
        self._start_phase = jobs
        try:
            await self._first_tries(jobs)
        except asyncio.CancelledError:
            for job in jobs:
                job.cancel()
            raise
        finally:
            self._start_phase = []
        down: dict[str, BaseException] = {}
        for src, job in zip(sources, jobs, strict=True):
            if job.done():
                failure = (
                    SourceError("cancelled while starting") if job.cancelled() else job.result()
                )
                if failure is not None:
                    down[src.name] = failure
        if not self._cancelling:
            try:
                self._check_start(down)
            except BaseException:
                for job in jobs:
                    job.cancel()
                raise
        for src, job in zip(sources, jobs, strict=True):
            if src.name in down:
                self._start_failed(src, down[src.name], 1)
            elif not job.done():  # slow: the sweep begins without it, it may join later
                self.not_started[src.name] = f"still starting after {START_GRACE_S:g} s"
                self.health.slow(src.name, START_GRACE_S)
                self._say(
                    f"source {src.name} is still starting after {START_GRACE_S:g} s: the "
                    "sweep begins without it, and it joins when it is ready"
                )
                self._restarts[src.name] = asyncio.create_task(self._late(src, job))
        await self._reattach_all()

    async def _first_tries(self, jobs: list[asyncio.Task[BaseException | None]]) -> None:
        """Until every first start settled, a mistake showed (any failure when
        require_all), or START_GRACE_S passed since the first source with slots was up
        (a machine so busy that every start is slow delays them all alike)."""
        loop = asyncio.get_running_loop()
        first_up: float | None = None
        pending = set(jobs)
        while pending:
            timeout = None
            if first_up is None and self._usable():
                first_up = loop.time()
            if first_up is not None and not self.require_all:
                timeout = first_up + START_GRACE_S - loop.time()
                if timeout <= 0:
                    return
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for job in done:
                failure = None if job.cancelled() else job.result()
                if failure is not None and (self.require_all or not _outage(failure)):
                    return

    def _usable(self) -> bool:
        return any(self.sources[n].spec.max_parallel > 0 for n in self._started)

    def _check_start(self, down: dict[str, BaseException]) -> None:
        for failure in down.values():
            if not _outage(failure):
                raise failure  # a mistake: the run stops before any task starts
        if down and self.require_all:
            name, failure = next(iter(down.items()))
            raise HsmError(
                f"source {name} could not start: {_reason(failure)}",
                f"check it with `hsm sources test {name}`; without --require-all-sources "
                "the sweep runs on the other sources",
            ) from failure
        if down and not self._usable():
            listed = "; ".join(f"{n}: {_reason(e)}" for n, e in list(down.items())[:3])
            more = f" (and {len(down) - 3} more)" if len(down) > 3 else ""
            test = f"hsm sources test {next(iter(down))}" if len(down) == 1 else "hsm sources test"
            raise HsmError(f"no source could start: {listed}{more}", f"check with `{test}`")

    async def _try_start(self, src: ComputeSource, tries: int) -> BaseException | None:
        """One start of `src`, within the bound on starts at once; the failure, if any."""
        failure: BaseException
        clock = asyncio.get_running_loop().time  # the loop's clock: the one wait_for uses
        async with self._start_slots:
            t0 = clock()
            try:
                await asyncio.wait_for(src.start(self._report), START_DEADLINE_S)
            except asyncio.TimeoutError as exc:
                failure = exc
                if clock() - t0 >= START_DEADLINE_S:
                    failure = SourceError(f"did not start within {START_DEADLINE_S:g} s")
            except Exception as exc:
                failure = exc
            else:
                self._joined(src, tries)
                return None
        log.debug("starting %s failed", src.name, exc_info=failure)
        with contextlib.suppress(Exception):  # what the failed start opened
            await asyncio.wait_for(src.close(), 10.0)
        return failure

    def _joined(self, src: ComputeSource, tries: int) -> None:
        self._started.add(src.name)
        self.not_started.pop(src.name, None)
        self.enabled[src.name] = True
        self.health.started(src.name, tries, self._running)
        if self._running:
            self._say(f"source {src.name} started (try {tries}): it joins the sweep")
            self._events.put_nowait(None)  # wake the loop: there are slots to fill

    def _start_failed(self, src: ComputeSource, failure: BaseException, tries: int) -> bool:
        """Say why; True when the source is to be tried again."""
        reason = self.not_started[src.name] = _reason(failure)
        if self._cancelling or self._ended or src.spec.max_parallel < 1:
            return False  # ending, or only there to re-attach: nothing to retry it for
        if not _outage(failure):
            self.health.start_failed(src.name, reason, tries, None)
            self._say(f"source {src.name} is left out of this run: {reason}")
            return False
        delay = min(RESTART_FIRST_S * 2 ** (tries - 1), RESTART_MAX_S)
        self.health.start_failed(src.name, reason, tries, delay)
        if tries == 1:
            self._say(
                f"source {src.name} could not start: {reason}; the sweep runs without it "
                "and tries it again in the background"
            )
            self._restarts[src.name] = asyncio.create_task(self._restart(src))
        return True

    async def _late(self, src: ComputeSource, first: asyncio.Task[BaseException | None]) -> None:
        """A first start still going when the sweep began: it joins, or fails as any."""
        failure = await first
        if failure is not None:
            self._start_failed(src, failure, 1)

    async def _restart(self, src: ComputeSource) -> None:
        """Try a source that could not start again, with backoff, until it starts (or a
        mistake shows that it never will in this run)."""
        tries = 1
        while not self._cancelling:
            await asyncio.sleep(min(RESTART_FIRST_S * 2 ** (tries - 1), RESTART_MAX_S))
            tries += 1
            failure = await self._try_start(src, tries)
            if failure is None or not self._start_failed(src, failure, tries):
                return

    def _say(self, line: str) -> None:
        if self.notify is not None:
            self.notify(line)

    async def _reattach_all(self) -> None:
        """Attempts a previous orchestrator left running: their source asks after them;
        a source not in this run, or down, cannot, and they run again."""
        for src_name, keys in self._reattach.items():
            owner = self.sources.get(src_name)
            pairs = [(self._task(k), self.store.attempts(k)[-1]) for k in keys]
            for k in keys:
                self._live[k].source = src_name
                if owner is not None:
                    self._inflight[src_name] += 1
            if owner is not None and src_name in self._started:
                await owner.reattach(pairs)
                continue
            if owner is None:
                why = f"source {src_name!r} is not in this run"
            else:
                why = f"{src_name} could not start ({self.not_started.get(src_name)})"
            for task, att in pairs:
                self._report(
                    TaskEvent(
                        task.key,
                        att.attempt,
                        TaskState.LOST,
                        src_name,
                        error=f"{why}; running it again",
                    )
                )

    # -------------------------------------------------------------- main loop
    async def _main_loop(self) -> None:
        while True:
            if self._cancelling:
                await self._cancel_all()
                return
            placed = self._dispatch()
            # Journal the assignments before any process starts: after a crash, a task
            # that may have started is never found PENDING (and started a second time).
            await self._flush()
            for src, task, attempt in placed:
                job = asyncio.create_task(self._submit(src, task, attempt))
                self._submits.add(job)
                job.add_done_callback(self._submits.discard)
            if not any(self._inflight.values()) and not self._submits:
                if not self._queue:
                    return
                if not any(self.enabled.values()):
                    self.stalled = "every source is disabled: " + "; ".join(
                        f"{n}: {h.reason}" for n, h in self.health.state.items()
                    )
                    log.error("%d tasks left PENDING; %s", len(self._queue), self.stalled)
                    return
            batch = [await self._events.get()]
            while not self._events.empty():
                batch.append(self._events.get_nowait())
            for ev in batch:
                if ev is not None:
                    self._handle(ev)

    def _report(self, event: TaskEvent) -> None:
        self._events.put_nowait(event)

    def _candidates(self) -> list[Load]:
        out = []
        for name, src in self.sources.items():
            if not self.enabled[name]:
                continue
            cap = src.capacity
            if self._inflight[name] < cap and src.free_slots() > 0:
                out.append(
                    Load(
                        name,
                        cap,
                        self._inflight[name],
                        self.weights.get(name, src.spec.weight),
                        self._assigned_total[name],
                    )
                )
        return out

    def _dispatch(self) -> list[tuple[ComputeSource, TaskSpec, int]]:
        placed: list[tuple[ComputeSource, TaskSpec, int]] = []
        held: list[str] = []  # resumes whose source has no slot now: first next time
        while self._queue and not self._cancelling:
            total = sum(self._inflight.values())
            if self.max_parallel is not None and total >= self.max_parallel:
                break
            candidates = self._candidates()
            if not candidates:
                break
            key = self._queue.popleft()
            live = self._live[key]
            if live.pin is not None and not self.enabled.get(live.pin, False):
                # Its checkpoint is out of reach: run it again from the start elsewhere.
                log.warning("%s: %s is disabled; not resuming there", key, live.pin)
                live.pin = live.resume = None
            if live.pin is not None:
                candidates = [c for c in candidates if c.name == live.pin]
                if not candidates:
                    held.append(key)
                    continue
            pick = self.placer.choose(candidates, live.lost_on)
            src = self.sources[pick.name]
            self._inflight[src.name] += 1
            self._assigned_total[src.name] += 1
            ev = TaskEvent(key, live.attempt, TaskState.ASSIGNED, src.name)
            self._record(ev)
            task = self._task(key)
            if live.resume:
                task = resume.resumed(task)
            assign_log.info("%s -> %s (attempt %d)", task.name, src.name, live.attempt)
            placed.append((src, task, live.attempt))
        self._queue.extendleft(reversed(held))
        return placed

    async def _submit(self, src: ComputeSource, task: TaskSpec, attempt: int) -> None:
        try:
            if attempt > 1:
                keep = resume.KEPT if resume.RESUME_ENV in dict(task.env) else ()
                _archive_attempt(self.ctx.task_dir(task), attempt - 1, keep)
            handle = await src.submit(task, attempt)
            if handle:
                # Journaled at once: a job still queued at a crash is found by its id.
                self._writes.append(_Handle(task.key, attempt, handle))
                self._events.put_nowait(None)  # wake the loop: it flushes the journal
        except SourceError as exc:
            self._report(TaskEvent(task.key, attempt, TaskState.LOST, src.name, error=str(exc)))
        except Exception as exc:
            log.exception("submitting %s to %s failed", task.name, src.name)
            self._report(
                TaskEvent(task.key, attempt, TaskState.LOST, src.name, error=f"submit: {exc}")
            )

    # --------------------------------------------------------------- reports
    def _record(self, ev: TaskEvent) -> None:
        self._follow(ev)
        self._writes.append(ev)

    def _follow(self, ev: TaskEvent) -> None:
        """An accepted event in memory, and to the listeners (the journal: `_writes`)."""
        live = self._live[ev.key]
        self._set_state(live, ev.state)
        if ev.source:
            live.source = ev.source
        for listener in self.listeners:
            listener(ev)

    def _handle(self, ev: TaskEvent) -> None:
        live = self._live.get(ev.key)
        if live is None:
            log.warning("report for unknown task %s ignored", ev.key)
            return
        if ev.attempt != live.attempt:
            self._late_report(ev, live)
            return
        if not can_move(live.state, ev.state):
            log.debug("ignored %s -> %s for %s", live.state, ev.state, ev.key)
            return
        resumes = self._resumes(ev, live)
        if ev.resume and not resumes:
            ev = resume.exhausted(ev, live.timeouts, self._max_num_timeout(ev.source))
        self._record(ev)
        if ev.state in (TaskState.RUNNING, TaskState.COMPLETED, TaskState.CANCELLED):
            task_log.info(
                "%s %s on %s (attempt %d)",
                task_name(live.num),
                ev.state.value,
                ev.source,
                ev.attempt,
            )
        if not ev.state.terminal:
            return
        name = task_name(live.num)
        if ev.source in self._inflight:
            self._inflight[ev.source] -= 1
        if live.completed_attempt:
            self._health_outcome(ev)
            return  # an older attempt already delivered the result
        if resumes:
            # Neither the task's failure nor the source's: no retry, no health outcome.
            if ev.resume == "timeout":
                live.timeouts += 1
            else:
                live.preemptions += 1
            log.warning("%s: %s on %s; resuming there", name, ev.error, ev.source)
            self._reopen(ev.key, resume=ev.resume, pin=ev.source)
            return
        if ev.state is TaskState.FAILED and ev.source in self._rate_disabled:
            # The source broke most of its tasks (a host without the project): not this
            # task's failure. It runs elsewhere.
            log.warning(
                "%s failed on %s, disabled for its failure rate: %s", name, ev.source, ev.error
            )
            if not self._cancelling:
                live.lost_on = live.lost_on | {ev.source}
                self._reopen(ev.key)
        elif ev.state is TaskState.FAILED:
            live.failures += 1
            if ev.source:
                live.failed_on = (*live.failed_on, ev.source)
            log.info("%s failed on %s: %s", name, ev.source, ev.error)
            if live.failures <= self.max_retries and not self._cancelling:
                log.info("%s: retry %d of %d", name, live.failures, self.max_retries)
                self._reopen(ev.key)
        elif ev.state is TaskState.LOST:
            live.losses += 1
            if ev.source:
                live.lost_on = live.lost_on | {ev.source}
            log.warning("%s lost on %s: %s", name, ev.source, ev.error)
            if live.losses < LOST_LIMIT and not self._cancelling:
                self._reopen(ev.key)
        # Last: a source the failure-rate rule disables now gives its failures back.
        self._health_outcome(ev)

    def _max_num_timeout(self, source: str | None) -> int:
        src = self.sources.get(source or "")
        return src.max_num_timeout if src is not None else 0

    def _resumes(self, ev: TaskEvent, live: _Live) -> bool:
        if not ev.resume or self._cancelling or live.completed_attempt:
            return False
        if ev.source not in self.sources:
            return False
        limit = self._max_num_timeout(ev.source)
        return resume.decide(ev, live.timeouts, live.preemptions, limit)

    def _health_outcome(self, ev: TaskEvent) -> None:
        if ev.source in self.sources and ev.state is not TaskState.CANCELLED:
            if ev.state is TaskState.LOST:
                self.health.check_soon(ev.source)
            else:
                self.health.record_outcome(ev.source, ev.state is TaskState.COMPLETED)

    def _late_report(self, ev: TaskEvent, live: _Live) -> None:
        """A report about an older attempt (its host came back). The store keeps it only
        if it moves that attempt forward (LOST -> COMPLETED). The first COMPLETED result
        wins: a re-run still going is then cancelled, never completed a second time."""
        log.info("late report for %s attempt %d: %s", ev.key, ev.attempt, ev.state)
        self._writes.append(ev)
        if ev.state is not TaskState.COMPLETED or live.completed_attempt:
            return
        if live.state is TaskState.COMPLETED:
            return
        self._tally[live.state] -= 1
        self._tally[TaskState.COMPLETED] += 1
        live.completed_attempt = ev.attempt
        name = task_name(live.num)
        log.warning(
            "%s: attempt %d finished after all; attempt %d is not needed",
            name,
            ev.attempt,
            live.attempt,
        )
        if live.state is TaskState.PENDING:
            with contextlib.suppress(ValueError):
                self._queue.remove(ev.key)
        elif live.state in (TaskState.ASSIGNED, TaskState.RUNNING) and live.source in self.sources:
            job = asyncio.create_task(self.sources[live.source].cancel([ev.key]))
            self._submits.add(job)
            job.add_done_callback(self._submits.discard)

    def _disable_source(self, name: str, reason: str, lost: bool) -> None:
        self.enabled[name] = False
        if lost:
            for key, live in self._live.items():
                if live.source == name and live.state in (TaskState.ASSIGNED, TaskState.RUNNING):
                    self._report(
                        TaskEvent(key, live.attempt, TaskState.LOST, name, error=f"{name} {reason}")
                    )
        else:
            self._redistribute(name)
        self._events.put_nowait(None)  # wake the loop

    def _redistribute(self, name: str) -> None:
        """`name` was disabled for its failure rate: the failures it caused were not the
        tasks' own. Each is given back (it no longer counts against --max-retries), and a
        task whose last attempt failed there goes back to the queue, to run elsewhere; so
        do those still running there if they fail too (see _handle)."""
        self._rate_disabled.add(name)
        moved = 0
        for key, live in self._live.items():
            n = live.failed_on.count(name)
            if not n:
                continue
            live.failures -= n
            live.failed_on = tuple(s for s in live.failed_on if s != name)
            live.lost_on = live.lost_on | {name}
            failed_there = live.state is TaskState.FAILED and live.source == name
            if failed_there and not live.completed_attempt and not self._cancelling:
                self._reopen(key)
                moved += 1
        if moved:
            log.warning("%s: %d tasks that failed there go back to the queue", name, moved)

    def _enable_source(self, name: str) -> None:
        self.enabled[name] = True
        self._events.put_nowait(None)

    def _reopen(self, key: str, resume: str | None = None, pin: str | None = None) -> None:
        live = self._live[key]
        live.attempt += 1
        live.resume, live.pin = resume, pin
        self._set_state(live, TaskState.PENDING)
        self._writes.append(Reopen(key, live.attempt, resume, pin))
        self._queue.append(key)

    async def _flush(self) -> None:
        if not self._writes:
            return
        writes, self._writes = self._writes, []
        await self._in_io(self._write, writes)

    def _write(self, writes: list[TaskEvent | Reopen | _Handle | _Cancelled]) -> None:
        # Only the journal here: it must be on disk before anything starts. The views
        # follow it in their own thread (ViewWriter). Reports and new attempts go in
        # one transaction, in order: a terminal report is never on disk without the
        # attempt (and resume) it opened.
        batch: list[TaskEvent | Reopen] = []
        for w in writes:
            if isinstance(w, TaskEvent | Reopen):
                batch.append(w)
                continue
            self._apply(batch)
            batch = []
            if isinstance(w, _Handle):
                self.store.set_handle(w.key, w.attempt, w.handle)
            else:
                self.store.cancel_pending(w.attempts, w.time)
        self._apply(batch)

    def _apply(self, batch: list[TaskEvent | Reopen]) -> None:
        if not batch:
            return
        for item, ok in zip(batch, self.store.apply_many(batch), strict=True):
            if isinstance(item, Reopen) and not ok:
                log.error("attempt numbering diverged for %s at %d", item.key, item.attempt)

    async def _poll_loop(self, src: ComputeSource) -> None:
        assert src.poll_interval
        while True:
            await asyncio.sleep(src.poll_interval)
            if src.name not in self._started:
                continue
            try:
                await src.poll()
            except Exception:
                log.exception("polling %s failed", src.name)

    # ------------------------------------------------------------------ cancel
    async def _cancel_all(self) -> None:
        log.warning(
            "cancelling: %d queued, %d running", len(self._queue), sum(self._inflight.values())
        )
        # Every queued task at once, journaled in one set-wide statement: on a fresh
        # sweep of 100,000 tasks, one statement triple per task would hold Ctrl-C back.
        queued: list[tuple[str, int]] = []
        now = time.time()
        while self._queue:
            key = self._queue.popleft()
            live = self._live[key]
            self._follow(TaskEvent(key, live.attempt, TaskState.CANCELLED, None, time=now))
            queued.append((key, live.attempt))
        if queued:
            self._writes.append(_Cancelled(queued, now))
        for src in self.sources.values():
            src.submit_now()  # a held batch would keep its submits waiting
        if self._submits:
            await asyncio.gather(*self._submits, return_exceptions=True)
        await asyncio.gather(
            *(s.cancel(None) for s in self.sources.values()), return_exceptions=True
        )
        clock = asyncio.get_running_loop().time  # the loop's clock: the one wait_for uses
        deadline = clock() + CANCEL_DEADLINE_S
        while any(self._inflight.values()) and clock() < deadline:
            with contextlib.suppress(asyncio.TimeoutError):
                ev = await asyncio.wait_for(self._events.get(), deadline - clock())
                if ev is not None:
                    self._handle(ev)
        for key, live in self._live.items():
            if live.state in (TaskState.ASSIGNED, TaskState.RUNNING):
                self._handle(
                    TaskEvent(
                        key,
                        live.attempt,
                        TaskState.CANCELLED,
                        live.source,
                        error="cancelled; the source did not confirm in time",
                    )
                )
        await self._flush()


def _archive_attempt(tdir: Path, attempt: int, keep: tuple[str, ...] = ()) -> None:
    """Files of an attempt that a new attempt would overwrite move to attempt_N/ (but
    `keep`: a resumed attempt goes on with its `results/`)."""
    present = [n for n in ATTEMPT_FILES if n not in keep and (tdir / n).exists()]
    if not present:
        return
    dest = TaskPaths(tdir).attempt(attempt)
    dest.mkdir(exist_ok=True)
    for n in present:
        shutil.move(str(tdir / n), str(dest / n))


def _outage(failure: BaseException) -> bool:
    """A start failure that is the source's condition, not a mistake in the sweep."""
    if isinstance(failure, HsmError):
        return isinstance(failure, SourceUnavailable | InfrastructureError)
    return isinstance(failure, Exception)


def _reason(failure: BaseException) -> str:
    text = str(failure).strip()
    if not isinstance(failure, HsmError) or not text:
        text = f"{type(failure).__name__}: {text}" if text else type(failure).__name__
    return text.splitlines()[0]
