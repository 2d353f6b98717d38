"""SSH source: tasks on a remote host, detached, through one agent on one connection.

Per host: one asyncssh connection (hsm_core.transport.ssh), one stdlib agent process on
one channel (hsm_core.remote_agent), under its keeper. The agent launches each attempt
in its own session; the tasks survive the channel, the connection, this process and the
agent itself (its keeper records them, the next agent adopts them). It reports starts
and exits as events, with the task folder's small files inline, so a slot turns over
without any polling. The agent holds `max_parallel` slots and we keep `prefetch`
more attempts queued there, so a freed slot refills without a round trip.

Remote layout: `<project_dir>/.hsm/sweeps/<sweep_id>/tasks/task_NNN/`, the task folder
of hsm_core.taskdir; the agents' journals are in `.agents/` beside `tasks/`; Hydra
payloads go to the same relative path as in the local sweep dir.

Failures: a dropped connection is noticed by keepalives; we reconnect with backoff for
`reconnect_window` seconds and re-attach (the agent's `scan`); if the host stays
unreachable, every attempt it held is reported LOST (never FAILED) and the engine runs
it elsewhere. A task is COMPLETED only once its exit record says so (taskdir.settle)
and its folder is here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import logging
import posixpath
import time
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from typing import Any

from hsm_core import integrity, taskdir
from hsm_core.errors import HsmError, SourceError
from hsm_core.model import Attempt, SourceSpec, TaskEvent, TaskKind, TaskSpec, TaskState
from hsm_core.remote_agent import (
    JOURNAL_DIR,
    ConfigOp,
    Event,
    ExitEvent,
    LaunchOp,
    PongEvent,
    ScanTask,
)
from hsm_core.sources.base import (
    ComputeSource,
    HealthReport,
    OutputSink,
    Reporter,
    SweepContext,
    task_argv,
    task_env,
)
from hsm_core.sources.ssh import collect
from hsm_core.sources.ssh.agent import AgentChannel, ssh_agent_channel
from hsm_core.sources.ssh.options import SSHOptions, remote_path
from hsm_core.transport.ssh import SSHTransport

# Payloads up to this size travel inside the launch message; larger ones by SFTP first.
INLINE_PAYLOAD_MAX = 4 * 1024 * 1024
# How long closing waits for a report-only sync check still running.
SYNC_REPORT_WAIT_S = 30.0


class Link(Enum):
    """The source's connection to its host, as the engine sees it through capacity."""

    NEW = "new"  # not started, or a start failed (the engine closed it)
    UP = "up"
    RECOVERING = "recovering"  # the connection dropped: reconnecting within the window
    DOWN = "down"  # reconnecting failed: no new work until the host answers again
    CLOSED = "closed"


@dataclass
class _Held:
    task: TaskSpec
    attempt: int
    id: str
    remote_dir: str
    sent: bool = False  # its launch went out (to the agent of that moment)
    started: bool = False
    finishing: bool = False
    collect_failures: int = 0


class SSHSource(ComputeSource):
    type = "ssh"

    def __init__(self, spec: SourceSpec, ctx: SweepContext) -> None:
        super().__init__(spec, ctx)
        self.opts = SSHOptions.parse(spec.name, spec.options)
        self.transport = SSHTransport(self.opts.target, name=spec.name)
        self.log = logging.getLogger(f"hsm.source.{self.name}")
        self.metadata: dict[str, Any] = {}  # sync report etc., for the sweep metadata
        self._agent: AgentChannel | None = None
        self._atts: dict[str, _Held] = {}
        self._state = Link.NEW
        self._down_since = 0.0
        self._last_error = ""
        self._recovery: asyncio.Task[None] | None = None
        self._check: asyncio.Task[None] | None = None  # a sync check that only reports
        self._sync_error = ""  # why that check failed, if it did
        self._jobs: set[asyncio.Task[Any]] = set()
        self._pongs: dict[int, asyncio.Future[PongEvent]] = {}
        self._seq = itertools.count(1)
        # Shared Hydra payload files (relative to the sweep dir) -> resolves True once the
        # launch carrying it went out to the current agent, False if it never did.
        self._shipping: dict[str, asyncio.Future[bool]] = {}
        self.home = ""
        self.project_dir = self.opts.project_dir
        self.sweep_dir = ""
        self._starts = 0  # start() calls: a source that could not start is started again
        self.transport.on_lost(lambda exc: self._channel_closed("connection lost"))
        self._output: OutputSink | None = None  # jobs' lines, as the agent sends them

    # ------------------------------------------------------------------ slots
    @property
    def capacity(self) -> int:
        return self.spec.max_parallel + self.opts.prefetch

    def running(self) -> int:
        return len(self._atts)

    def free_slots(self) -> int:
        if self._state is Link.UP:
            return max(0, self.capacity - len(self._atts))
        down_for = time.monotonic() - self._down_since
        if self._state is Link.DOWN and down_for > self.opts.down_timeout:
            # Down for long: take work again so that it is LOST at once and the sweep
            # ends (or moves on) instead of waiting for this host forever.
            return max(0, self.capacity - len(self._atts))
        return 0

    # -------------------------------------------------------------- lifecycle
    async def start(self, report: Reporter) -> None:
        await super().start(report)
        from hsm_core.sources.ssh import sync  # gitpython: loaded only when ssh sources run

        self._state = Link.NEW  # also after a failed start, which the engine closed
        self._starts += 1
        # The local half of the sync check (git, or hashes) runs while we connect.
        local = asyncio.create_task(
            sync.local_state_ahead(self.ctx.project_root, (self.ctx.sweep_dir,))
        )
        try:
            # One try: a host that refuses is retried by the engine in the background,
            # while the sweep runs on the others.
            await self.transport.connect()
        except BaseException:
            local.cancel()  # the thread may finish anyway; nobody waits for it
            raise

        async def check() -> None:  # sets metadata["sync"]; raises on `sync: fail`
            await self._verify_sync(await local)

        if self.opts.sync == "warn" and not await asyncio.to_thread(
            sync.sweep_is_hydra, self.ctx.sweep_dir
        ):
            # Only a report then (no pickle to unpickle there, nothing to stop or push):
            # tasks need not wait for it; close() does, so the sweep metadata has it.
            self._check = asyncio.create_task(self._report_only(check()))
            try:
                await self._start_agent()
            except BaseException:
                self._check.cancel()  # this start failed: its report is of no use
                self._check = None
                raise
            self._state = Link.UP
            return
        # Both are one exec on the same connection: run them side by side (and let both
        # finish, so that close() finds the agent if the check stops the sweep).
        for outcome in await asyncio.gather(self._start_agent(), check(), return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        self._state = Link.UP

    async def _verify_sync(self, local: Any) -> None:
        """The project sync check with this source's options; its report (also of a failed
        check) goes to `metadata["sync"]`."""
        from hsm_core.sources.ssh import sync

        try:
            report = await sync.verify(
                self.transport,
                source=self.name,
                host=self.opts.target.label,
                local_root=self.ctx.project_root,
                remote_dir=self.opts.project_dir,  # resolved on the host, beside the agent start
                python=self.opts.python,
                setup=self.opts.setup,
                shell=self.opts.shell,
                policy=self.opts.sync,
                hydra=await asyncio.to_thread(sync.sweep_is_hydra, self.ctx.sweep_dir),
                skip=(self.ctx.sweep_dir,),  # our own outputs, when inside the project
                local=local,
            )
        except sync.SyncError as exc:
            self.metadata["sync"] = exc.report.to_meta()
            raise
        self.metadata["sync"] = report.to_meta()

    async def _report_only(self, check: Any) -> None:
        try:
            await check
        except (HsmError, SourceError) as exc:
            self._sync_error = str(exc)
            self.log.warning("%s: the project sync check failed: %s", self.name, exc)

    async def check_ready(self, *, project_sent: bool = False) -> str | None:
        """What the project sync check found that would fail every task here: the task
        `python:` does not run, or project_dir holds no project."""
        from hsm_core.sources.ssh.probe import project_problem

        if self._check is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._check), SYNC_REPORT_WAIT_S)
        if self._sync_error:
            return self._sync_error
        missing = (self.metadata.get("sync") or {}).get("project_missing")
        policy = "push" if project_sent else self.opts.sync
        return project_problem(missing, policy, self.opts.target.label)

    async def _start_agent(self) -> None:
        agent = ssh_agent_channel(
            self.transport, self.opts.agent_python, self._on_event, self._channel_closed
        )
        config: ConfigOp = {
            "op": "config",
            "slots": self.spec.max_parallel,
            "gpus": list(self.opts.gpus) or None,
            "inline_max": self.opts.inline_max,
            "exclude": list(self.opts.exclude),
            "grace": self.opts.kill_grace,
            "stream": self._output is not None,
            "checksums": self.opts.checksums,
        }
        # A host too busy to start Python in time gets more time at each start again.
        timeout = self.opts.agent_timeout * min(max(self._starts, 1), 4)
        hello = await agent.start(config, timeout)
        self._agent = agent
        self._shipping = {}  # a new agent: ship the shared payload parts again, to be safe
        self.home = str(hello.get("home") or "/")
        self.project_dir = remote_path(self.opts.project_dir, self.home)
        self.sweep_dir = posixpath.join(self.project_dir, ".hsm", "sweeps", self.ctx.sweep_id)
        # Where the agent journals what it starts and how each ended (re-attach reads it).
        agent.send({"op": "config", "journal": posixpath.join(self.sweep_dir, JOURNAL_DIR)})
        self.metadata["agent"] = {
            "host": hello.get("host"),
            "pid": hello.get("pid"),
            "python": hello.get("python"),
            "version": ".".join(str(v) for v in hello.get("version") or ()),
            "project_dir": self.project_dir,
            "sweep_dir": self.sweep_dir,
        }

    async def close(self) -> None:
        if self._check is not None and not self._check.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._check, SYNC_REPORT_WAIT_S)
        self._state = Link.CLOSED
        for job in (self._recovery, *self._jobs):
            if job is not None and not job.done():
                job.cancel()
        agent, self._agent = self._agent, None
        if agent is not None:
            await agent.close()
        await self.transport.close()

    # ----------------------------------------------------------------- submit
    def remote_task_dir(self, task: TaskSpec) -> str:
        return posixpath.join(self.sweep_dir, "tasks", task.name)

    async def submit(self, task: TaskSpec, attempt: int) -> str | None:
        if self._state is not Link.UP or self._agent is None:
            why = self._last_error or self._state.value
            raise SourceError(f"{self.name} is unreachable: {why}")
        att = _Held(task, attempt, f"{task.key}:{attempt}", self.remote_task_dir(task))
        self._atts[att.id] = att
        try:
            await self._send_launch(att)
        except BaseException:
            if self._atts.get(att.id) is att:
                del self._atts[att.id]
            raise
        return None

    async def _send_launch(self, att: _Held) -> None:
        """Build the attempt's launch and send it to the agent; SourceError if it cannot.

        A Hydra job needs the shared payload parts on the host before it starts. The
        first launch that needs a part carries it (the agent writes it on receipt);
        every other launch that needs it is sent only after that one went out, so on
        the one ordered channel it can never overtake it."""
        agent, shipping = self._agent, self._shipping
        if agent is None:
            raise SourceError(f"{self.name}: no agent")
        task = att.task
        mine: list[str] = []
        theirs: list[tuple[str, asyncio.Future[bool]]] = []
        if task.kind is TaskKind.HYDRA and task.payload:
            loop = asyncio.get_running_loop()
            for rel in await asyncio.to_thread(self._shared_payload):
                fut = shipping.get(rel)
                if fut is None:  # no await between the look-up and the claim
                    shipping[rel] = loop.create_future()
                    mine.append(rel)
                else:
                    theirs.append((rel, fut))
        sent = False
        try:
            while theirs:
                rel, fut = theirs.pop()
                if await asyncio.shield(fut):
                    continue
                again = shipping.get(rel)  # its carrier failed: carry it ourselves
                if again is None:
                    shipping[rel] = asyncio.get_running_loop().create_future()
                    mine.append(rel)
                else:
                    theirs.append((rel, again))
            msg = await self._launch_message(att, mine)
            if self._agent is not agent:
                raise SourceError(f"{self.name}: the agent was restarted; launch again")
            agent.send(msg)
            sent = att.sent = True
        finally:
            for rel in mine:
                fut = shipping[rel]
                if not sent:
                    del shipping[rel]
                if not fut.done():
                    fut.set_result(sent)

    async def _launch_message(self, att: _Held, shared: list[str]) -> LaunchOp:
        task, rdir = att.task, att.remote_dir
        files: dict[str, str] = {}
        if task.kind is TaskKind.HYDRA and task.payload:
            # The job's own pickle, plus the shared parts this launch carries, at the same
            # paths relative to the remote sweep dir.
            for rel in [*shared, task.payload]:
                await self._ship(rel, files)
        argv = task_argv(task, self.opts.python, self.sweep_dir, rdir)
        if self.opts.setup:
            # Setup lines come from the user's own hsm.yaml; the task's argv (and so every
            # parameter value) stays "$@", never parsed by this shell.
            script = "\n".join((*self.opts.setup, 'exec "$@"'))
            argv = [self.opts.shell, "-c", script, "hsm-task", *argv]
        env = task_env(task, self.ctx.sweep_id, self.sweep_dir, rdir, att.attempt)
        skip = [posixpath.relpath(p, rdir) for p in files]
        return {
            "op": "launch",
            "id": att.id,
            "attempt": att.attempt,
            "dir": rdir,
            "cwd": posixpath.normpath(posixpath.join(self.project_dir, task.cwd)),
            "argv": argv,
            "env": env,
            "timeout": task.timeout_s,
            "files": files,
            "skip": skip,
        }

    def _shared_payload(self) -> list[str]:
        from hsm_core.hydra.payload import PAYLOAD_DIR

        root = self.ctx.sweep_dir / PAYLOAD_DIR
        found = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
        return sorted(str(p.relative_to(self.ctx.sweep_dir)) for p in found)

    async def _ship(self, rel: str, files: dict[str, str]) -> None:
        """Into the launch message when small (no extra round trip), else SFTP now."""
        local = self.ctx.sweep_dir / rel
        remote = posixpath.join(self.sweep_dir, rel)
        data = await asyncio.to_thread(local.read_bytes)
        if len(data) <= INLINE_PAYLOAD_MAX:
            files[remote] = base64.b64encode(data).decode("ascii")
            return
        sftp = await self.transport.sftp()
        await sftp.makedirs(posixpath.dirname(remote), exist_ok=True)
        await self.transport.put_file(local, remote)

    # ----------------------------------------------------------------- events
    def _on_event(self, ev: Event) -> None:
        if ev["ev"] == "pong":
            fut = self._pongs.pop(ev["seq"], None)
            if fut is not None and not fut.done():
                fut.set_result(ev)
            return
        if ev["ev"] == "error":
            self.log.warning("agent: %s", ev["msg"])
            return
        att = self._atts.get(ev["id"])
        if att is None:
            return
        if ev["ev"] == "out":
            if self._output is not None:
                self._output(att.task.key, ev["stream"], ev["text"], ev["skipped"])
            return
        if ev["ev"] == "started" or ev["ev"] == "running":
            att.started = True
            self._report(
                TaskEvent(
                    att.task.key,
                    att.attempt,
                    TaskState.RUNNING,
                    self.name,
                    handle=f"{self.opts.target.host}:{ev['pid']}",
                )
            )
        elif ev["ev"] == "exit" and not att.finishing:
            att.finishing = True
            self._spawn(self._finish(att, ev))

    def _spawn(self, coro: Any) -> None:
        job = asyncio.create_task(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _finish(self, att: _Held, ev: ExitEvent) -> None:
        record = ev.get("record")
        if (record or {}).get("never_started") and not att.started and await self._resend(att):
            return  # made but never run (its agent died at that moment): launch again
        if record is None:
            error = str(ev.get("error") or "no exit record")
            if ev.get("launch_error"):
                self._done(att, TaskState.FAILED, error=error)
            elif not att.started and ev.get("never_started") and await self._resend(att):
                return  # never started (queued in an agent that went away): launch again
            else:
                self._done(att, TaskState.LOST, error=f"{error} on {self.name}")
            return
        hydra = att.task.kind is TaskKind.HYDRA
        local = self.ctx.task_dir(att.task)
        worker = None
        sums = integrity.sums_of(ev.get("sums"))
        try:
            stats = await collect.collect_folder(
                local,
                att.remote_dir,
                ev.get("files") or {},
                ev.get("large") or [],
                self.transport.sftp,
                self.opts.exclude,
                sums,
            )
            if sums is not None:
                files = integrity.FilesRecord(
                    att.attempt,
                    self.name,
                    att.remote_dir,
                    sums,
                    integrity.excluded_of(ev.get("excluded")),
                )
                await asyncio.to_thread(integrity.write_record, local, files)
            if hydra:
                legacy = taskdir.is_legacy(record)
                worker = await asyncio.to_thread(taskdir.read_worker_record, local, legacy=legacy)
                await self._pull_job_dir(worker)
        except SourceError as exc:
            # Never COMPLETED without the folder. Connection gone: the exit record stays
            # on the host and the re-attach after reconnecting (or LOST) decides.
            bad = isinstance(exc, integrity.IntegrityError)
            self.log.log(
                logging.ERROR if bad else logging.WARNING,
                "collecting %s failed: %s",
                att.task.name,
                exc,
            )
            att.finishing = False
            if self.transport.connected:  # the host is fine, the copy is not: retry once
                att.collect_failures += 1
                if att.collect_failures > 1:
                    self._done(att, TaskState.LOST, error=f"results not collected: {exc}")
                else:
                    await asyncio.sleep(1.0)
                    self._scan([att])
            return
        self.log.debug("%s: collected %s", att.task.name, stats)
        verdict = await asyncio.to_thread(  # a failed task's stderr.log is read
            functools.partial(
                taskdir.settle,
                record,
                hydra=hydra,
                worker=worker,
                timeout_s=att.task.timeout_s,
                folder=self.ctx.task_dir(att.task),
            )
        )
        self._done(att, verdict.state, verdict.exit_code, verdict.error)

    async def _pull_job_dir(self, worker: dict[str, Any] | None) -> None:
        """A Hydra job writes its output dir under the remote sweep dir (the worker puts
        hydra.sweep.dir there): mirror it to the same place under the local sweep dir."""
        out = str((worker or {}).get("output_dir") or "")
        rel = posixpath.relpath(out, self.sweep_dir) if out else ".."
        if rel == "." or rel.startswith("../") or rel == "..":
            return
        sftp = await self.transport.sftp()
        await collect.pull_tree(sftp, out, self.ctx.sweep_dir / rel, self.opts.exclude)

    def _done(
        self, att: _Held, state: TaskState, code: int | None = None, error: str | None = None
    ) -> None:
        if self._atts.pop(att.id, None) is None:
            return
        self._report(
            TaskEvent(att.task.key, att.attempt, state, self.name, exit_code=code, error=error)
        )

    async def _resend(self, att: _Held) -> bool:
        if self._agent is None:
            return False
        att.finishing = False
        try:
            await self._send_launch(att)
        except SourceError:
            att.finishing = True
            return False
        return True

    # --------------------------------------------------------------- recovery
    def _channel_closed(self, reason: str) -> None:
        if self._state in (Link.CLOSED, Link.NEW) or (
            self._recovery is not None and not self._recovery.done()
        ):
            return
        self.log.warning("%s: %s; reconnecting", self.name, reason)
        self._last_error = reason
        self._state = Link.RECOVERING
        self._recovery = asyncio.create_task(self._recover())

    async def _recover(self) -> None:
        agent, self._agent = self._agent, None
        if agent is not None:
            await agent.close()
        if self.transport.connected and "connection" in self._last_error:
            self.transport.abort()
        try:
            await self.transport.ensure(window=self.opts.reconnect_window)
            await self._start_agent()
        except (SourceError, HsmError) as exc:
            self._went_down(str(exc))
            return
        self._state = Link.UP
        self.log.info("%s: reconnected; re-attaching %d attempts", self.name, len(self._atts))
        self._scan(list(self._atts.values()))

    def _went_down(self, why: str) -> None:
        self._state = Link.DOWN
        self._down_since = time.monotonic()
        self._last_error = why
        self.log.error("%s is unreachable: %s", self.name, why)
        for att in list(self._atts.values()):
            self._done(att, TaskState.LOST, error=f"host unreachable: {why}")
        self._recovery = asyncio.create_task(self._revive())

    async def _revive(self) -> None:
        """Keep trying in the background; the host takes work again once it is back."""
        delay = 2.0
        while self._state is Link.DOWN:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            try:
                await self.transport.connect()
                await self._start_agent()
            except (SourceError, HsmError) as exc:
                self._last_error = str(exc)
                continue
            self._state = Link.UP
            self.log.info("%s is reachable again", self.name)

    def _scan(self, atts: list[_Held]) -> None:
        if not atts or self._agent is None:
            return
        # An attempt whose launch is still being built is its submit's business.
        atts = [a for a in atts if a.sent]
        if not atts:
            return
        for att in atts:
            att.finishing = False
        tasks: list[ScanTask] = [
            {
                "id": a.id,
                "attempt": a.attempt,
                "dir": a.remote_dir,
                "skip": [],
                "timeout": a.task.timeout_s,
            }
            for a in atts
        ]
        try:
            self._agent.send({"op": "scan", "tasks": tasks})
        except SourceError as exc:
            self._channel_closed(str(exc))

    async def reattach(self, attempts: Collection[tuple[TaskSpec, Attempt]]) -> None:
        """After an orchestrator crash: ask the agent what became of each attempt."""
        atts = []
        for task, att in attempts:
            a = _Held(task, att.attempt, f"{task.key}:{att.attempt}", self.remote_task_dir(task))
            a.started = att.state is TaskState.RUNNING
            a.sent = True  # by an earlier orchestrator, perhaps: the agent's scan tells
            self._atts[a.id] = a
            atts.append(a)
        self._scan(atts)

    # ----------------------------------------------------------------- cancel
    async def cancel(self, keys: Collection[str] | None = None) -> None:
        targets = [a for a in self._atts.values() if keys is None or a.task.key in keys]
        if not targets:
            return
        if self._agent is not None and self._state is Link.UP:
            with contextlib.suppress(SourceError):
                self._agent.send({"op": "kill", "ids": [a.id for a in targets]})
                return
        for att in targets:
            note = "cancelled; host unreachable, it may still run there" if att.started else None
            self._done(att, TaskState.CANCELLED, error=note or "cancelled")

    def live_output(self) -> str:
        return "push"

    def output_to(self, sink: OutputSink) -> None:
        self._output = sink  # the agent streams once it starts (config `stream`)

    # ----------------------------------------------------------------- health
    async def health_check(self) -> HealthReport:
        if self._state is not Link.UP or self._agent is None:
            return HealthReport(self.name, False, f"unreachable: {self._last_error}")
        seq = next(self._seq)
        fut: asyncio.Future[PongEvent] = asyncio.get_running_loop().create_future()
        self._pongs[seq] = fut
        try:
            self._agent.send({"op": "ping", "seq": seq, "path": self.project_dir})
            pong = await asyncio.wait_for(fut, 10.0)
        except (SourceError, asyncio.TimeoutError) as exc:
            self._pongs.pop(seq, None)
            return HealthReport(self.name, False, f"agent did not answer: {exc}")
        disk = pong["disk_free"]
        return HealthReport(
            self.name,
            True,
            f"{self.opts.target.label}: {pong['running']} running",
            load=pong["load"][0] if pong["load"] else None,
            cpus=pong["cpus"],
            disk_free_gb=disk / 1e9 if disk is not None else None,
            gpus=self.opts.gpus,
        )
