"""hpc source: tasks as job arrays on Slurm (submitit's SlurmExecutor) or PBS (hsm's
submitit PBS executor), from the login node itself or through one over ssh.

How it works, in the order of an attempt's life:

- The engine calls ``submit(task, attempt)`` once per task. The source collects the
  submits of a short window (or until its slots are used) and hands them to the
  scheduler as ONE array (chunked to ``array_limit``, ``%`` throttled), not one job each.
  Job ids go to ``scripts/<source>/jobs.jsonl`` at once, so that a restarted
  orchestrator can re-attach to queued jobs.
- Every ``poll()`` reads the records the jobs left in their task folders (no scheduler
  call) and, paced with backoff (``poll_min`` after a submission, doubling up to
  ``poll_interval``; ``poll_min`` again when a record needs the scheduler's verdict),
  asks the scheduler ONE question about every job of the sweep. ``states.decide``
  turns records + scheduler state into the outcome: COMPLETED only with the job
  wrapper's exit record (hsm_core.taskdir.settle); the task's own failures FAILED; node
  failures, preemption, outside cancels and vanished jobs LOST (the engine places them
  again).
- ``cancel`` is one ``scancel``/``qdel`` of exactly this sweep's jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import posixpath
import shlex
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hsm_core.errors import HsmError, SourceError
from hsm_core.model import (
    PYTHON,
    Attempt,
    SourceSpec,
    TaskEvent,
    TaskKind,
    TaskSpec,
    TaskState,
)
from hsm_core.resume import RESUME_ENV
from hsm_core.sources.base import (
    ComputeSource,
    HealthReport,
    Reporter,
    SweepContext,
    task_argv,
    task_env,
)
from hsm_core.sources.hpc.client import BackendClient, LocalBackend, SSHBackend
from hsm_core.sources.hpc.options import HPCOptions, parse_options
from hsm_core.sources.hpc.rpc import JobRequest, Partition, PollAnswer, Records, SubmitAnswer
from hsm_core.sources.hpc.states import Phase, Verdict, decide, phase_of, worker_of

LEDGER = "jobs.jsonl"
SCAN_INTERVAL_S = 0.5  # reading records on the login node itself: cheap
REMOTE_SCAN_INTERVAL_S = 2.0  # one ssh round trip per scan
FETCH_PARALLEL = 8


@dataclass
class _Held:
    task: TaskSpec
    attempt: int
    task_dir: str  # as the cluster sees it
    job_id: str | None = None
    future: asyncio.Future[str | None] | None = None
    submitted: float = 0.0
    running: bool = False
    cancelled: bool = False  # by hsm: a CANCELLED job is then not LOST
    state: str | None = None  # the scheduler's latest word
    missing_since: float | None = None
    ended_at: float | None = None  # when the task ended, from its own record


@dataclass
class _Array:
    throttle: int
    unsettled: set[str] = field(default_factory=set)
    array: bool = True  # False: a plain job (a chunk of one), no throttle to change
    short_since: float | None = None  # since when slots it could use are free, not raised


class HPCSource(ComputeSource):
    type = "hpc"

    def __init__(self, spec: SourceSpec, ctx: SweepContext) -> None:
        super().__init__(spec, ctx)
        opts = parse_options(spec)
        if opts.python is None:
            opts = replace(opts, python="python3" if opts.remote else shlex.quote(ctx.python))
        self.opts: HPCOptions = replace(opts, job_name=f"hsm-{ctx.sweep_id}"[:64])
        self.max_num_timeout = self.opts.max_num_timeout
        self.log = logging.getLogger(f"hsm.source.{self.name}")
        self.client: BackendClient = (
            SSHBackend(self.opts, self.name) if self.opts.remote else LocalBackend(self.opts)
        )
        self.poll_interval = REMOTE_SCAN_INTERVAL_S if self.opts.remote else SCAN_INTERVAL_S
        self._jobs: dict[str, _Held] = {}
        self._batch: list[_Held] = []
        self._batch_full = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False  # the sweep is stopping: nothing is held back any more
        self._submit_lock = asyncio.Lock()
        self._arrays: dict[str, _Array] = {}
        self._next_query = 0.0  # monotonic time of the next scheduler query
        self._pause = self.opts.poll_min_s  # doubles after each query, up to poll_interval
        self._staged: set[str] = set()
        self._ledger = ctx.sweep_dir / "scripts" / self.name / LEDGER
        self.cluster_sweep_dir = str(ctx.sweep_dir)
        self.cluster_project_dir = str(ctx.project_root)
        self.stats = {"submits": 0, "queries": 0, "scans": 0, "cancels": 0}

    # ------------------------------------------------------------ lifecycle
    @property
    def capacity(self) -> int:
        # Attempts held by the scheduler at once (queued + running); `max_parallel` is
        # the running cap, enforced by the arrays' `%` throttle.
        return self.opts.max_queued

    def running(self) -> int:
        return len(self._jobs)

    async def start(self, report: Reporter) -> None:
        await super().start(report)
        await self.client.start()
        if isinstance(self.client, SSHBackend):
            assert self.opts.project_dir is not None
            project = self.client.absolute(self.opts.project_dir)
            base = self.opts.remote_dir or posixpath.join(project, "sweeps", "outputs")
            self.cluster_project_dir = project
            self.cluster_sweep_dir = posixpath.join(self.client.absolute(base), self.ctx.sweep_id)
        info = await self.client.call({"op": "check"})
        if self.opts.scheduler == "pbs" and info.get("pbs_dialect"):
            self._set_opts(pbs_dialect=str(info["pbs_dialect"]))
        largest = int(info.get("max_array_size") or 0) - 1  # indices 0 .. MaxArraySize-1
        if 0 < largest < self.opts.array_limit:
            self.log.info(
                "array_limit %d lowered to %d: the cluster's MaxArraySize is %d",
                self.opts.array_limit,
                largest,
                largest + 1,
            )
            self._set_opts(array_limit=largest)
        await asyncio.to_thread(self._ledger.parent.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        self.submit_now()
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        await self.client.close()

    def _set_opts(self, **changes: Any) -> None:
        self.opts = replace(self.opts, **changes)
        self.client.opts = self.opts

    # ---------------------------------------------------------------- submit
    def _cluster_task_dir(self, task: TaskSpec) -> str:
        if not self.opts.remote:
            return str(self.ctx.task_dir(task))
        return posixpath.join(self.cluster_sweep_dir, "tasks", task.name)

    async def submit(self, task: TaskSpec, attempt: int) -> str | None:
        job = _Held(task, attempt, self._cluster_task_dir(task))
        job.future = asyncio.get_running_loop().create_future()
        self._jobs[task.key] = job
        self._batch.append(job)
        if self.free_slots() == 0:
            self._batch_full.set()  # no further submit can come: do not wait the window
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_after_window())
        return await job.future

    async def _flush_after_window(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._batch_full.wait(), self.opts.batch_window_s)
            async with self._submit_lock:
                self._batch_full.clear()
                if self._batch and self._hold():
                    continue  # looked at again a window later
                batch, self._batch = self._batch, []
                if batch:
                    await self._submit_batch(batch)
                if not self._batch:
                    return
                # A submit that came while this batch was being sent saw this task still
                # running and started none of its own: its batch goes next.

    def _hold(self) -> bool:
        """Keep the batch for more: it is smaller than `min_refill` while the scheduler
        still holds at least that many tasks waiting beyond the running cap. (A slot
        freed by each task that ends would otherwise be refilled by an array of its own,
        one sbatch per poll cycle for the whole sweep.)"""
        if self._closing:
            return False
        wanted = self.opts.min_refill
        held = len(self._batch)
        waiting = len(self._jobs) - held - self.opts.array_parallelism
        return held < wanted and waiting >= wanted

    def submit_now(self) -> None:
        self._closing = True
        self._batch_full.set()

    def _throttle(self) -> int:
        """`%` for a new array: what the running cap leaves after the arrays still out."""
        claimed = sum(min(a.throttle, len(a.unsettled)) for a in self._arrays.values())
        return max(1, self.opts.array_parallelism - claimed)

    async def _submit_batch(self, batch: list[_Held]) -> None:
        batch = [j for j in batch if self._jobs.get(j.task.key) is j]
        if not batch:
            return
        throttle = self._throttle()
        try:
            if self.opts.remote:
                await self.client.stage(self._staging(batch))
            answer: SubmitAnswer = await self.client.call(
                {
                    "op": "submit",
                    "folder": posixpath.join(self.cluster_sweep_dir, "scripts", self.name),
                    "jobs": [self._request(j) for j in batch],
                    "parallelism": throttle,
                }
            )
        except (SourceError, HsmError) as exc:
            answer = {"job_ids": [], "error": str(exc)}
        self.stats["submits"] += 1
        ids = [str(i) for i in answer.get("job_ids") or []]
        now = time.monotonic()
        lines = []
        for job, jid in zip(batch, ids, strict=False):
            job.job_id, job.submitted = jid, now
            array = self._arrays.setdefault(jid.split("_")[0], _Array(throttle, array="_" in jid))
            array.unsettled.add(job.task.key)
            lines.append(
                {"key": job.task.key, "attempt": job.attempt, "job": jid, "dir": job.task_dir}
            )
            if job.future is not None and not job.future.done():
                job.future.set_result(jid)
        if lines:
            await asyncio.to_thread(self._append_ledger, lines)
            self.log.info("submitted %d tasks as job(s) %s", len(ids), _arrays_of(ids))
        error = answer.get("error") or "the scheduler did not take the job"
        for job in batch[len(ids) :]:
            self._jobs.pop(job.task.key, None)
            if job.future is not None and not job.future.done():
                job.future.set_exception(SourceError(f"submission failed: {error}"))
        # New jobs: ask soon, then less and less often (poll_min, x2, ... poll_interval).
        self._pause = self.opts.poll_min_s
        first = now + self.opts.poll_min_s
        self._next_query = first if self._next_query <= now else min(self._next_query, first)

    def _request(self, job: _Held) -> JobRequest:
        task = job.task
        cwd = posixpath.normpath(posixpath.join(self.cluster_project_dir, task.cwd))
        env = task_env(
            task,
            self.ctx.sweep_id,
            self.cluster_sweep_dir,
            job.task_dir,
            job.attempt,
            one_process=False,
        )
        # The compute node's interpreter is only known there: the job binds PYTHON.
        argv = task_argv(task, PYTHON, self.cluster_sweep_dir, job.task_dir)
        return {
            "key": task.key,
            "attempt": job.attempt,
            "name": task.name,
            "kind": task.kind.value,
            "task_dir": job.task_dir,
            "cwd": cwd,
            "argv": argv,
            "env": env,
            "timeout_s": task.timeout_s,
            "resume": env.get(RESUME_ENV) == "1",
            "stop_signal": self.opts.signal,
        }

    def _staging(self, batch: list[_Held]) -> list[tuple[Path, str]]:
        """Hydra jobs on a remote cluster: the launch's shared payload parts (once), and
        each job's own part, at the same paths relative to the sweep folder there."""
        from hsm_core.hydra.payload import PAYLOAD_DIR

        if not any(j.task.kind is TaskKind.HYDRA and j.task.payload for j in batch):
            return []
        root = self.ctx.sweep_dir / PAYLOAD_DIR
        rels = (
            sorted(str(p.relative_to(self.ctx.sweep_dir)) for p in root.rglob("*") if p.is_file())
            if root.is_dir()
            else []
        )
        rels = [r for r in rels if r not in self._staged]
        self._staged.update(rels)
        rels += [j.task.payload for j in batch if j.task.kind is TaskKind.HYDRA and j.task.payload]
        return [
            (self.ctx.sweep_dir / rel, posixpath.join(self.cluster_sweep_dir, rel)) for rel in rels
        ]

    def _append_ledger(self, lines: list[dict[str, Any]]) -> None:
        with open(self._ledger, "a") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")

    def _read_ledger(self) -> dict[tuple[str, int], dict[str, Any]]:
        out: dict[tuple[str, int], dict[str, Any]] = {}
        try:
            text = self._ledger.read_text()
        except OSError:
            return out
        for line in text.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                rec = json.loads(line)
                out[(str(rec["key"]), int(rec["attempt"]))] = rec
        return out

    # ------------------------------------------------------------------ poll
    async def poll(self) -> None:
        active = [j for j in self._jobs.values() if j.job_id]
        if not active:
            return
        now = time.monotonic()
        ask = now >= self._next_query
        ids = sorted({j.job_id for j in active if j.job_id}) if ask else []
        dirs = [(j.task_dir, j.attempt) for j in active]
        try:
            answer = await self.client.call({"op": "poll", "job_ids": ids, "dirs": dirs})
        except SourceError as exc:
            self.log.warning("status of %d tasks unknown: %s", len(active), exc)
            self._next_query = time.monotonic() + self.opts.poll_min_s
            return
        self.stats["scans"] += 1
        now = time.monotonic()
        if ask:
            self.stats["queries"] += 1
            self._after_query(active, answer, now)
        records = answer.get("records") or {}
        settled: list[tuple[_Held, Verdict]] = []
        for job in active:
            verdict = self._settle(job, records.get(job.task_dir) or {}, now)
            if verdict is not None:
                settled.append((job, verdict))
        await self._finish_all(settled)
        await self._rebalance()

    async def _rebalance(self) -> None:
        """Raise the `%` throttle of arrays that got less than the running cap because
        others were still out when they were submitted (Slurm only: one `scontrol
        update` per array raised, once the raise is worth a call: see `throttle_raises`)."""
        if self.opts.scheduler != "slurm":
            return
        raises = throttle_raises(
            self._arrays,
            self.opts.array_parallelism,
            step=self.opts.min_refill,
            wait=self.opts.poll_interval_s,
            now=time.monotonic(),
        )
        if raises:
            self.log.debug("raising array throttles: %s", raises)
            try:
                await self.client.call({"op": "throttle", "arrays": raises})
            except SourceError as exc:
                self.log.warning("could not raise array throttles %s: %s", raises, exc)

    def _after_query(self, active: list[_Held], answer: PollAnswer, now: float) -> None:
        if answer.get("accounting") is False and self.opts.accounting:
            self._set_opts(accounting=False)
        error = answer.get("status_error")
        if error:
            self.log.warning("scheduler query failed: %s", error)
        else:
            states = answer.get("states") or {}
            for job in active:
                state = states.get(job.job_id or "")
                if state:
                    job.state, job.missing_since = state, None
                elif job.missing_since is None:
                    job.missing_since = now
        # Records in the task folders settle most jobs without the scheduler; its word
        # is needed for jobs that die around their task (node failure, time limit,
        # outside cancel), so ask at doubling intervals up to poll_interval.
        self._next_query = now + self._pause
        self._pause = min(self._pause * 2, self.opts.poll_interval_s)

    def _settle(self, job: _Held, rec: Records, now: float) -> Verdict | None:
        if not job.running and (rec.get("started") or phase_of(job.state) is Phase.RUNNING):
            job.running = True
            started = _when(rec.get("started"), "started")
            self._report(
                TaskEvent(
                    job.task.key,
                    job.attempt,
                    TaskState.RUNNING,
                    self.name,
                    time=started or time.time(),
                    handle=job.job_id,
                )
            )
        job.ended_at = _when(rec.get("exit"), "ended")
        state = job.state
        if (
            job.missing_since is not None
            and now - job.missing_since >= self.opts.vanish_after_s
            and not phase_of(state).over
        ):
            state = "VANISHED"
        verdict = decide(
            state,
            rec.get("exit"),
            worker_of(rec),
            hydra=job.task.kind is TaskKind.HYDRA,
            cancelled_by_us=job.cancelled,
            stderr_tail=rec.get("stderr") or "",
            started=bool(rec.get("started")),
        )
        if verdict is None and rec.get("exit"):
            # The process is over but only the scheduler can say why: ask soon.
            self._next_query = min(self._next_query, now + self.opts.poll_min_s)
        return verdict

    async def _finish_all(self, settled: list[tuple[_Held, Verdict]]) -> None:
        settled = [(j, v) for j, v in settled if self._jobs.get(j.task.key) is j]
        for job, _ in settled:
            del self._jobs[job.task.key]
        if self.opts.remote and settled:
            gate = asyncio.Semaphore(FETCH_PARALLEL)

            async def fetch(job: _Held) -> None:
                async with gate:
                    try:
                        await self.client.fetch(job.task_dir, self.ctx.task_dir(job.task))
                    except SourceError as exc:
                        self.log.warning("%s: results not fetched: %s", job.task.name, exc)

            await asyncio.gather(*(fetch(j) for j, _ in settled))
        for job, verdict in settled:
            array = self._arrays.get((job.job_id or "").split("_")[0])
            if array is not None:
                array.unsettled.discard(job.task.key)
                if not array.unsettled:
                    self._arrays.pop((job.job_id or "").split("_")[0], None)
            self._report(
                TaskEvent(
                    job.task.key,
                    job.attempt,
                    verdict.state,
                    self.name,
                    time=job.ended_at or time.time(),
                    exit_code=verdict.exit_code,
                    error=verdict.error,
                    handle=job.job_id,
                    resume=verdict.resume,
                )
            )

    def live_output(self) -> str:
        return "end" if self.opts.remote else "files"

    # ---------------------------------------------------------------- cancel
    async def cancel(self, keys: Collection[str] | None = None) -> None:
        targets = [j for k, j in self._jobs.items() if keys is None or k in keys]
        if not targets:
            return
        for job in targets:
            job.cancelled = True
        unsent = [j for j in targets if j.job_id is None]
        for job in unsent:  # still in the batch window: never reaches the scheduler
            with contextlib.suppress(ValueError):
                self._batch.remove(job)
            if job.future is not None and not job.future.done():
                job.future.set_result(None)
        sent = [j for j in targets if j.job_id]
        if keys is None:
            # Whole arrays: one id each also stops their members still queued.
            ids = sorted({(j.job_id or "").split("_")[0] for j in sent})
        else:
            ids = sorted(j.job_id or "" for j in sent)
        if ids:
            self.stats["cancels"] += 1
            try:
                await self.client.call({"op": "cancel", "job_ids": ids})
            except SourceError as exc:
                self.log.error("cancel failed: %s", exc)
        records: dict[str, Records] = {}
        if sent:
            with contextlib.suppress(SourceError):
                answer = await self.client.call(
                    {"op": "poll", "job_ids": [], "dirs": [(j.task_dir, j.attempt) for j in sent]}
                )
                records = answer.get("records") or {}
        outcome: list[tuple[_Held, Verdict]] = []
        for job in targets:
            rec: Records = records.get(job.task_dir) or {}
            hydra = job.task.kind is TaskKind.HYDRA
            done = decide("COMPLETED", rec.get("exit"), worker_of(rec), hydra=hydra)
            if done is not None and done.state is TaskState.COMPLETED:
                outcome.append((job, done))
            else:
                outcome.append((job, Verdict(TaskState.CANCELLED, None, "cancelled")))
        await self._finish_all(outcome)

    # -------------------------------------------------------------- re-attach
    async def reattach(self, attempts: Collection[tuple[TaskSpec, Attempt]]) -> None:
        """After an orchestrator crash: watch the jobs again instead of re-running them."""
        ledger = await asyncio.to_thread(self._read_ledger)
        now = time.monotonic()
        for task, att in attempts:
            rec = ledger.get((task.key, att.attempt)) or {}
            jid = att.handle or rec.get("job")
            if not jid:
                self.report_lost(
                    task.key,
                    att.attempt,
                    "no job id was recorded for this attempt; running it again",
                )
                continue
            job = _Held(task, att.attempt, str(rec.get("dir") or self._cluster_task_dir(task)))
            job.job_id, job.submitted = str(jid), now
            job.running = att.state is TaskState.RUNNING
            self._jobs[task.key] = job
            # Its throttle is unknown: claim the whole cap, so no new array oversubscribes.
            throttle = self.opts.array_parallelism
            array = self._arrays.setdefault(
                job.job_id.split("_")[0], _Array(throttle, array="_" in job.job_id)
            )
            array.unsettled.add(task.key)
        self._pause = self.opts.poll_min_s
        self._next_query = now  # ask at the first poll

    # ----------------------------------------------------------------- health
    async def health_check(self) -> HealthReport:
        try:
            info = await self.client.call({"op": "health"})
        except (SourceError, HsmError) as exc:
            return HealthReport(self.name, False, f"{self.opts.scheduler}: {exc}")
        parts = info.get("partitions") or []
        jobs = info.get("jobs") or {}
        part_text = ", ".join(_describe_partition(p) for p in parts) or "none"
        job_text = ", ".join(f"{n} {s.lower()}" for s, n in sorted(jobs.items())) or "none"
        where = f" via {self.opts.ssh['host']}" if self.opts.ssh else ""
        want = self.opts.partition
        ok = not want or any(p.get("name") == want for p in parts)
        detail = (
            f"{self.opts.scheduler}{where} reachable; partitions: {part_text}; "
            f"your jobs: {job_text}"
        )
        if not ok:
            detail += f"; partition {want!r} not found"
        return HealthReport(self.name, ok, detail, extra=dict(info))


def throttle_raises(
    arrays: dict[str, _Array], cap: int, *, step: int, wait: float, now: float
) -> dict[str, int]:
    """Array id -> its new `%`, for arrays that may run more now that others drained
    (their throttles are updated here). Every change is an `scontrol update`, and the
    arrays before it drain a few tasks per poll cycle: raised as slots free, a refill
    array took a call per cycle (100 for 1,000 tasks at max_queued 200). So a raise
    waits until it is worth a call: it gives at least `step` slots (min_refill, at most
    half the cap), or all the array can use, or its slots have been free for `wait` s
    (poll_interval: an idle slot waits no longer than a status query would)."""
    step = max(1, min(step, (cap + 1) // 2))
    out: dict[str, int] = {}
    for main, array in sorted(arrays.items(), key=lambda kv: int(kv[0] or 0)):
        if not array.array:
            continue
        others = sum(min(a.throttle, len(a.unsettled)) for m, a in arrays.items() if m != main)
        need = min(cap, len(array.unsettled))
        want = min(cap - others, need)
        if want <= array.throttle:
            array.short_since = None
            continue
        if array.short_since is None:
            array.short_since = now
        if want - array.throttle >= step or want == need or now - array.short_since >= wait:
            out[main] = array.throttle = want
            array.short_since = None
    return out


def _describe_partition(part: Partition) -> str:
    nodes = part.get("nodes") or {}
    counts = ", ".join(f"{n} {s}" for s, n in sorted(nodes.items()))
    star = "*" if part.get("default") else ""
    avail = part.get("available")
    inner = "; ".join(x for x in (str(avail) if avail else "", counts) if x)
    return f"{part.get('name')}{star} ({inner})" if inner else f"{part.get('name')}{star}"


def _when(record: Any, key: str) -> float | None:
    """A time stamp from a task's own record (the compute node's clock)."""
    value = record.get(key) if isinstance(record, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _arrays_of(ids: list[str]) -> str:
    return ", ".join(sorted({i.split("_")[0] for i in ids}))
