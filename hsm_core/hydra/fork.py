"""The local source for Hydra jobs: one fresh process per job, forked from the launcher.

A cold interpreter per job costs ~0.45 CPU-s (Python + Hydra import + compose); a fork of
the warm launcher costs a few ms. The fork server (forkserver.py) is created by the
launcher before the engine starts threads; this source drives it from the event loop.

Slots: `max_parallel` jobs run their task function at once. Up to `ahead` more may be
forked and set up (compose, output dir, logging) while every slot is busy; they wait at a
gate and start the moment a slot frees, with that slot's GPUs in CUDA_VISIBLE_DEVICES.
Every job runs in its own process group: timeout and cancel kill the whole group.

Outcome (hsm_core.taskdir.settle): the job process's wait status, as the fork server saw
it, with hsm's worker record: exit 0 and a COMPLETED record is COMPLETED, a raised
exception FAILED; a process that died without a record (os._exit, a signal, the OOM
killer) is FAILED and the reason is appended to its job log and its stderr.log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hsm_core import remote_agent, taskdir
from hsm_core.errors import ForkServerError, SourceError
from hsm_core.hydra.fork_messages import Event, JobRequest
from hsm_core.hydra.forkserver import EXIT_CANCELLED, ForkJobs, ForkServer
from hsm_core.model import Attempt, SourceSpec, TaskEvent, TaskSpec, TaskState
from hsm_core.sources.base import ComputeSource, HealthReport, Reporter, SweepContext

KILL_GRACE_S = 3.0
# After its launcher died, a fork server stops the jobs left within a few seconds and
# journals each exit: how long a recovery waits for those lines.
RECOVER_WAIT_S = 15.0


class Jobs(ForkJobs, Protocol):
    """The jobs this source runs (hsm_core.hydra.jobs.HydraJobs): what the server runs,
    and on this side what one attempt needs and who hears how it ended."""

    def request(self, ctx: SweepContext, task: TaskSpec, attempt: int) -> JobRequest:
        """The request the server hands to `run` (JSON): task_dir, stdout, stderr, env;
        with `journal` and `attempt`, the server journals the job (see forkserver)."""
        ...

    def settled(self, task: TaskSpec, state: TaskState, error: str | None) -> None:
        """Called as each attempt settles, before the engine hears of it."""


@dataclass
class _Held:
    task: TaskSpec
    attempt: int
    jid: str
    pid: int | None = None
    slot: int | None = None
    running_reported: bool = False
    stopping: TaskState | None = None  # CANCELLED, or FAILED for a timeout
    reason: str | None = None
    timer: asyncio.TimerHandle | None = None
    done: asyncio.Future[None] | None = None


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name} (signal {sig})"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"ended with wait status {status}"


def gpu_sets(gpus: list[str], slots: int, per_slot: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES for each slot: slot i gets `per_slot` GPUs, round robin."""
    if not gpus:
        return []
    per_slot = max(1, per_slot)
    out = []
    for i in range(slots):
        start = (i * per_slot) % len(gpus)
        out.append(",".join(gpus[(start + j) % len(gpus)] for j in range(per_slot)))
    return out


class ForkSource(ComputeSource):
    type = "local"

    def __init__(
        self,
        spec: SourceSpec,
        ctx: SweepContext,
        server: ForkServer,
        jobs: Jobs,
        *,
        ahead: int = 2,
    ) -> None:
        super().__init__(spec, ctx)
        self.server = server
        self.jobs = jobs
        self.ahead = max(0, ahead)
        gpus = [str(g) for g in spec.option("gpus") or []]
        self.gpu_env = gpu_sets(gpus, spec.max_parallel, int(spec.option("gpus_per_slot", 1)))
        self._jobs: dict[str, _Held] = {}  # by jid
        self._by_key: dict[str, _Held] = {}
        self._free = list(range(spec.max_parallel))
        self._buf = b""
        self._broken: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._counter = 0
        self.log = logging.getLogger(f"hsm.source.{self.name}")

    # ------------------------------------------------------------ interface
    @property
    def capacity(self) -> int:
        return self.spec.max_parallel + self.ahead

    def running(self) -> int:
        return len(self._jobs)

    def free_slots(self) -> int:
        # Broken, it still takes submissions: each fails at once (LOST), so the engine moves
        # the work elsewhere or gives up, instead of waiting for a slot that never frees.
        return max(0, self.capacity - len(self._jobs))

    async def start(self, report: Reporter) -> None:
        await super().start(report)
        if self.server.evt_r is None:
            raise SourceError("the fork server is not running")
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.server.evt_r, self._on_events)

    async def close(self) -> None:
        if self._loop is not None and self.server.evt_r is not None:
            self._loop.remove_reader(self.server.evt_r)
        self._loop = None

    async def submit(self, task: TaskSpec, attempt: int) -> str | None:
        if self._broken:
            raise SourceError(self._broken)
        self._counter += 1
        job = _Held(task, attempt, f"{task.name}.{attempt}.{self._counter}")
        job.done = asyncio.get_running_loop().create_future()
        req = self.jobs.request(self.ctx, task, attempt)
        try:
            self.server.send({"op": "run", "id": job.jid, "job": req})
        except ForkServerError as exc:
            raise SourceError(str(exc)) from None
        self._jobs[job.jid] = job
        self._by_key[task.key] = job
        self._fill_slots()
        return None

    async def cancel(self, keys: Collection[str] | None = None) -> None:
        targets = [j for j in self._jobs.values() if keys is None or j.task.key in keys]
        for job in targets:
            self._stop(job, TaskState.CANCELLED, "cancelled")
        waits = [j.done for j in targets if j.done is not None]
        if waits:
            await asyncio.wait(waits, timeout=KILL_GRACE_S + 5)

    async def reattach(self, attempts: Collection[tuple[TaskSpec, Attempt]]) -> None:
        """After a launcher died: its fork server journaled each job it forked and how
        it ended. A job that finished is settled from that record, never run again; one
        the old server is still stopping is waited for; any other is LOST (runs again).
        (Forked jobs do not outlive their launcher: docs/distributed.md.)"""
        pending = list(attempts)
        folder = str(self.ctx.sweep_dir / remote_agent.JOURNAL_DIR)
        boot = remote_agent.boot_id()
        deadline = asyncio.get_running_loop().time() + RECOVER_WAIT_S
        while pending:
            journal = remote_agent.Journal(folder).refresh()
            waiting = []
            for task, att in pending:
                key = (str(self.ctx.task_dir(task)), att.attempt)
                record = journal.exits.get(key)
                start = journal.starts.get(key)
                if record is not None:
                    self._recovered(task, att.attempt, record)
                elif start and remote_agent.owner_alive(start, boot):
                    waiting.append((task, att))
                else:
                    why = "its launcher died" if start else "its launcher died before it started"
                    self.report_lost(task.key, att.attempt, why)
            pending = waiting
            if pending and asyncio.get_running_loop().time() > deadline:
                for task, att in pending:
                    self.report_lost(task.key, att.attempt, "its old fork server did not stop")
                return
            if pending:
                await asyncio.sleep(0.2)

    def _recovered(self, task: TaskSpec, attempt: int, record: dict[str, Any]) -> None:
        folder = self.ctx.task_dir(task)
        worker = taskdir.read_worker_record(folder, legacy=taskdir.is_legacy(record))
        verdict = taskdir.settle(
            record, hydra=True, worker=worker, timeout_s=task.timeout_s, folder=folder
        )
        self.jobs.settled(task, verdict.state, verdict.error)
        self._report(
            TaskEvent(
                task.key,
                attempt,
                verdict.state,
                self.name,
                exit_code=verdict.exit_code,
                error=verdict.error,
            )
        )

    async def health_check(self) -> HealthReport:
        ok = self._broken is None
        return HealthReport(self.name, ok, self._broken or "fork server alive", cpus=os.cpu_count())

    # -------------------------------------------------------------- slots
    def _fill_slots(self) -> None:
        for job in self._jobs.values():
            if not self._free:
                return
            if job.slot is None and job.stopping is None:
                self._go(job)

    def _go(self, job: _Held) -> None:
        job.slot = self._free.pop(0)
        env = {}
        if self.gpu_env:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu_env[job.slot]
        try:
            self.server.send({"op": "go", "id": job.jid, "env": env})
        except ForkServerError:
            return  # the EOF handler settles every job
        timeout = job.task.timeout_s
        if timeout and self._loop is not None:
            job.timer = self._loop.call_later(timeout, self._timed_out, job, timeout)
        self._maybe_running(job)

    def _maybe_running(self, job: _Held) -> None:
        if job.slot is not None and job.pid is not None and not job.running_reported:
            job.running_reported = True
            self._report(
                TaskEvent(
                    job.task.key, job.attempt, TaskState.RUNNING, self.name, handle=str(job.pid)
                )
            )

    def _timed_out(self, job: _Held, timeout: float) -> None:
        self._stop(job, TaskState.FAILED, f"timed out after {timeout:g} s")

    def _stop(self, job: _Held, state: TaskState, reason: str) -> None:
        if job.stopping is not None or job.jid not in self._jobs:
            return
        job.stopping, job.reason = state, reason
        try:
            self.server.send(
                {
                    "op": "kill",
                    "id": job.jid,
                    "sig": int(signal.SIGTERM),
                    "grace": KILL_GRACE_S,
                    "why": "timeout" if state is TaskState.FAILED else "cancel",  # journaled
                }
            )
        except ForkServerError:
            pass

    # ------------------------------------------------------------- events
    def _on_events(self) -> None:
        assert self.server.evt_r is not None
        try:
            data = os.read(self.server.evt_r, 65536)
        except BlockingIOError:
            return
        if not data:
            self._server_gone()
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.strip():
                self._event(json.loads(line))

    def _event(self, msg: Event) -> None:
        job = self._jobs.get(str(msg["id"]))
        if job is None:
            return
        if msg["ev"] == "started":
            job.pid = int(msg["pid"])
            self._maybe_running(job)
        elif msg["ev"] == "exit":
            self._finish(job, int(msg["status"]))
        elif msg["ev"] == "error":
            self._settle(job, TaskState.LOST, str(msg["msg"]), None)

    def _finish(self, job: _Held, status: int) -> None:
        task_dir = self.ctx.task_dir(job.task)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        worker = taskdir.read_worker_record(task_dir)
        if job.stopping is not None:
            if taskdir.exit_code_of(worker) == 0:
                # hsm's worker recorded the job as returned before our cancel or timeout
                # reached its process on the way out: that kill is ours, not the job's
                # outcome, and calling it cancelled would run a finished job again.
                self._settle(job, TaskState.COMPLETED, None, 0)
            else:
                self._settle(job, job.stopping, job.reason, code)
            return
        if worker is None and code == EXIT_CANCELLED:
            self._settle(job, TaskState.CANCELLED, "cancelled before it started", code)
            return
        # The wait status is the job's exit record: this process is its parent's parent,
        # and nothing the job writes can change it.
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        record = {"exit_code": 128 + sig if sig else code, "signal": sig, "layout": taskdir.LAYOUT}
        verdict = taskdir.settle(record, hydra=True, worker=worker)
        reason = verdict.error
        if verdict.state is TaskState.FAILED and worker is None:
            if code != 0:
                reason = f"job process {describe_status(status)} before writing its result"
            from hsm_core.hydra.job import note_hard_death

            note_hard_death(task_dir, job.task, reason or "failed")
        self._settle(job, verdict.state, reason, verdict.exit_code)

    def _settle(self, job: _Held, state: TaskState, error: str | None, code: int | None) -> None:
        self._jobs.pop(job.jid, None)
        if self._by_key.get(job.task.key) is job:
            del self._by_key[job.task.key]
        if job.timer is not None:
            job.timer.cancel()
        if job.slot is not None:
            self._free.append(job.slot)
            self._free.sort()
        self.jobs.settled(job.task, state, error)  # e.g. the JobReturn is read now
        self._report(
            TaskEvent(job.task.key, job.attempt, state, self.name, exit_code=code, error=error)
        )
        if job.done is not None and not job.done.done():
            job.done.set_result(None)
        if not self._broken:
            self._fill_slots()

    def _server_gone(self) -> None:
        if self._loop is not None and self.server.evt_r is not None:
            self._loop.remove_reader(self.server.evt_r)
        self._broken = "the fork server stopped"
        for job in list(self._jobs.values()):
            if job.pid is not None:  # whatever the job started dies with it
                try:
                    os.killpg(job.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            # Its wait status is gone with the server: hsm's worker record is all there is.
            worker = taskdir.read_worker_record(self.ctx.task_dir(job.task))
            if worker is not None:
                verdict = taskdir.settle(worker, hydra=True, worker=worker)
                self._settle(job, verdict.state, verdict.error, verdict.exit_code)
            elif job.stopping is not None:
                self._settle(job, job.stopping, job.reason, None)
            else:
                self._settle(job, TaskState.LOST, self._broken, None)


def make_sources(
    specs: Sequence[SourceSpec],
    ctx: SweepContext,
    jobs: Jobs,
    server: ForkServer | None,
    *,
    ahead: int,
) -> list[ComputeSource]:
    """The sources of a Hydra launch: a local one runs its jobs forked from the fork
    server (when there is one: else cold workers); any other is made by its type."""
    from hsm_core.sources import make_source

    return [
        ForkSource(spec, ctx, server, jobs, ahead=ahead)
        if spec.type == "local" and server is not None
        else make_source(spec, ctx)
        for spec in specs
    ]
