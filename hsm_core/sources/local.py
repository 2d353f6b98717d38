"""Local source: tasks on this machine, started by one hsm agent (hsm_core.remote_agent)
over pipes, the same agent the ssh source runs on each host.

The agent runs in its own session (under its keeper, see remote_agent) and is the parent
of every task, each in a session of its own: it journals each task's exit record, so a
killed orchestrator loses nothing (the agent finishes the tasks it started, records them,
then exits; `hsm complete` finds them through a new agent's scan). A killed agent costs
a delay: its keeper records its tasks, and a new agent takes them over in their slots.
Output goes straight to the task folder as it is written. Cancel and timeout signal the
whole process group, and what a task leaves behind ends with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from hsm_core import taskdir
from hsm_core.errors import HsmError, SourceError
from hsm_core.model import Attempt, SourceSpec, TaskEvent, TaskKind, TaskSpec, TaskState
from hsm_core.remote_agent import JOURNAL_DIR, ConfigOp, Event, ExitEvent, LaunchOp, ScanTask
from hsm_core.sources.agent_channel import AgentChannel
from hsm_core.sources.base import (
    ComputeSource,
    HealthReport,
    Reporter,
    SweepContext,
    task_argv,
    task_env,
)

KILL_GRACE_S = 3.0
AGENT_START_TIMEOUT_S = 30.0
# A dead agent is replaced (its tasks taken over) at most this often per minute; beyond,
# its tasks are LOST as if this machine were a dead host.
AGENT_RESTARTS_PER_MIN = 5


@dataclass
class _Held:
    task: TaskSpec
    attempt: int
    id: str
    slot: int
    agent: AgentChannel | None = None  # the agent it was sent to
    started: bool = False
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class LocalSource(ComputeSource):
    type = "local"

    def __init__(self, spec: SourceSpec, ctx: SweepContext) -> None:
        super().__init__(spec, ctx)
        gpus = spec.option("gpus") or []
        self.gpus: list[str] = [str(g) for g in gpus]
        # Per-source environment (e.g. a scratch dir or a library path on this machine).
        self.extra_env = {str(k): str(v) for k, v in (spec.option("env") or {}).items()}
        self._runs: dict[str, _Held] = {}
        self._free_slots = list(range(spec.max_parallel))
        self._agent: AgentChannel | None = None
        self._agent_lock = asyncio.Lock()
        self._restarts: list[float] = []
        self._closing = False
        self._jobs: set[asyncio.Task[None]] = set()
        self.log = logging.getLogger(f"hsm.source.{self.name}")

    def running(self) -> int:
        return len(self._runs)

    # -------------------------------------------------------------- lifecycle
    async def start(self, report: Reporter) -> None:
        await super().start(report)
        await self._ensure_agent()

    async def _ensure_agent(self) -> AgentChannel:
        if self._agent is not None and self._agent.alive:  # every submit: no lock then
            return self._agent
        async with self._agent_lock:
            if self._agent is not None and self._agent.alive:
                return self._agent
            log_path = self.ctx.sweep_dir / "logs" / "sources" / f"{self.name}.agent.log"

            async def spawn() -> asyncio.subprocess.Process:
                log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(log_path, "ab") as err:  # the agent's own tracebacks, if any
                    return await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "hsm_core.remote_agent",
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=err,
                        # Its own session: Ctrl-C in the terminal reaches hsm, which
                        # cancels in order, and a killed hsm leaves the agent running.
                        start_new_session=True,
                        # `-m` puts the cwd first on sys.path: not the user's folder,
                        # where a `json.py` would shadow the agent's imports. (Each task
                        # gets its own cwd.)
                        cwd=self.ctx.sweep_dir,
                    )

            def closed(reason: str) -> None:
                self._closed(agent, reason)

            agent = AgentChannel(f"local {self.name}", spawn, self._on_event, closed)
            config: ConfigOp = {
                "op": "config",
                "journal": str(self.ctx.sweep_dir / JOURNAL_DIR),
                "slots": max(1, self.spec.max_parallel),
                "grace": KILL_GRACE_S,
                "listing": False,  # the folder is already here
            }
            await agent.start(config, AGENT_START_TIMEOUT_S)
            self._agent = agent
            return agent

    async def close(self) -> None:
        self._closing = True
        for job in list(self._jobs):
            job.cancel()
        agent, self._agent = self._agent, None
        if agent is None:
            return
        proc = agent.process
        await agent.close()
        if proc is not None:
            # Every task has ended by now (or the engine stopped them): the agent exits
            # at EOF; reap it so that no zombie or open transport outlives the sweep.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)

    def _closed(self, agent: AgentChannel, reason: str) -> None:
        """The agent died (killed, crashed). Its tasks do not: its keeper records them.
        A new agent takes them over: each is adopted in its slot, or launched if it
        never started; nothing that runs is started a second time."""
        if self._agent is agent:
            self._agent = None
        runs = [r for r in self._runs.values() if r.agent is agent]
        if self._closing or not runs:
            return
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60.0] + [now]
        if len(self._restarts) > AGENT_RESTARTS_PER_MIN:
            self.log.error("%s: the local agent keeps stopping (%s)", self.name, reason)
            for run in runs:
                self._done(run, TaskState.LOST, error=f"the local agent stopped: {reason}")
            return
        self.log.warning(
            "%s: the local agent stopped (%s); a new one takes its %d tasks over",
            self.name,
            reason,
            len(runs),
        )
        job = asyncio.create_task(self._take_over(runs))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _take_over(self, runs: list[_Held]) -> None:
        try:
            agent = await self._ensure_agent()
        except (SourceError, HsmError, OSError) as exc:
            for run in runs:
                self._done(run, TaskState.LOST, error=f"the local agent stopped: {exc}")
            return
        self._scan(agent, [r for r in runs if self._runs.get(r.id) is r])

    def _scan(self, agent: AgentChannel, runs: list[_Held]) -> None:
        for run in runs:
            run.agent = agent
        tasks: list[ScanTask] = [
            {
                "id": r.id,
                "attempt": r.attempt,
                "dir": str(self.ctx.task_dir(r.task)),
                "timeout": r.task.timeout_s,
            }
            for r in runs
        ]
        if tasks:
            agent.send({"op": "scan", "tasks": tasks})

    # ----------------------------------------------------------------- submit
    async def submit(self, task: TaskSpec, attempt: int) -> str | None:
        agent = await self._ensure_agent()
        slot = self._free_slots.pop(0) if self._free_slots else len(self._runs)
        run = _Held(task, attempt, f"{task.key}:{attempt}", slot, agent)
        self._runs[run.id] = run
        try:
            agent.send(self._launch(run))
        except SourceError:
            self._forget(run)
            raise
        return None

    def _resend(self, run: _Held) -> bool:
        """Launch again an attempt that never started (queued in an agent that died)."""
        agent = self._agent
        if agent is None or not agent.alive:
            return False
        run.agent = agent
        try:
            agent.send(self._launch(run))
        except SourceError:
            return False
        return True

    def _launch(self, run: _Held) -> LaunchOp:
        task, task_dir = run.task, self.ctx.task_dir(run.task)
        env = task_env(task, self.ctx.sweep_id, str(self.ctx.sweep_dir), str(task_dir), run.attempt)
        env.update(self.extra_env)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[run.slot % len(self.gpus)]
        argv = task_argv(task, self.ctx.python, str(self.ctx.sweep_dir), str(task_dir))
        return {
            "op": "launch",
            "id": run.id,
            "attempt": run.attempt,
            "dir": str(task_dir),
            "cwd": str((self.ctx.project_root / task.cwd).resolve()),
            "argv": argv,
            "env": env,
            "timeout": task.timeout_s,
        }

    # ----------------------------------------------------------------- events
    def _on_event(self, ev: Event) -> None:
        if ev["ev"] == "error":
            self.log.warning("agent: %s", ev["msg"])
            return
        if ev["ev"] == "pong":
            return
        run = self._runs.get(ev["id"])
        if run is None:
            return
        if ev["ev"] == "started" or ev["ev"] == "running":
            pid = ev["pid"]
            run.started = True
            self._report(
                TaskEvent(run.task.key, run.attempt, TaskState.RUNNING, self.name, handle=str(pid))
            )
            self.log.debug("started %s attempt %d pid %s", run.task.name, run.attempt, pid)
        elif ev["ev"] == "exit":
            self._exited(run, ev)

    def _exited(self, run: _Held, ev: ExitEvent) -> None:
        record = ev.get("record")
        never = ev.get("never_started") or (record or {}).get("never_started")
        if never and not run.started and self._resend(run):
            return  # queued in an agent that died, or made but never run: launch it now
        if record is None:
            error = str(ev.get("error") or "no exit record")
            state = TaskState.FAILED if ev.get("launch_error") else TaskState.LOST
            self._done(run, state, error=error)
            return
        hydra = run.task.kind is TaskKind.HYDRA
        worker = None
        if hydra:
            legacy = taskdir.is_legacy(record)
            worker = taskdir.read_worker_record(self.ctx.task_dir(run.task), legacy=legacy)
        verdict = taskdir.settle(
            record,
            hydra=hydra,
            worker=worker,
            timeout_s=run.task.timeout_s,
            folder=self.ctx.task_dir(run.task),
        )
        self._done(run, verdict.state, verdict.exit_code, verdict.error)

    def _done(
        self, run: _Held, state: TaskState, code: int | None = None, error: str | None = None
    ) -> None:
        if not self._forget(run):
            return
        self._report(
            TaskEvent(run.task.key, run.attempt, state, self.name, exit_code=code, error=error)
        )

    def _forget(self, run: _Held) -> bool:
        if self._runs.get(run.id) is not run:
            return False
        del self._runs[run.id]
        self._free_slots.append(run.slot)
        if not run.done.done():
            run.done.set_result(None)
        return True

    # ---------------------------------------------------------- cancel, crash
    async def cancel(self, keys: Collection[str] | None = None) -> None:
        targets = [r for r in self._runs.values() if keys is None or r.task.key in keys]
        if not targets:
            return
        agent = self._agent
        if agent is None or not agent.alive:
            for run in targets:
                self._done(run, TaskState.CANCELLED, error="cancelled")
            return
        with contextlib.suppress(SourceError):
            agent.send({"op": "kill", "ids": [r.id for r in targets]})
        # The agent reports each one CANCELLED once its whole group is gone.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(r.done for r in targets)), KILL_GRACE_S + 5.0)

    async def reattach(self, attempts: Collection[tuple[TaskSpec, Attempt]]) -> None:
        """After a crash: the agent that ran them finishes and records them; a new agent
        reports what each became (done, still running and now watched, or lost)."""
        agent = await self._ensure_agent()
        runs = []
        for task, att in attempts:
            slot = self._free_slots.pop(0) if self._free_slots else len(self._runs)
            run = _Held(task, att.attempt, f"{task.key}:{att.attempt}", slot)
            run.started = att.state is TaskState.RUNNING
            self._runs[run.id] = run
            runs.append(run)
        self._scan(agent, runs)

    # ----------------------------------------------------------------- health
    async def health_check(self) -> HealthReport:
        load = os.getloadavg()[0]
        st = os.statvfs(self.ctx.sweep_dir)
        return HealthReport(
            self.name,
            True,
            "local machine",
            load=load,
            cpus=os.cpu_count(),
            disk_free_gb=st.f_bavail * st.f_frsize / 1e9,
            mem_free_gb=_mem_available_gb(),
            gpus=tuple(self.gpus),
        )


def _mem_available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return None
