"""Local source: each attempt is an asyncio subprocess in its own session (process group).

Output goes straight to the task folder as it is written; the exit record comes from a
tiny sh runner that outlives the orchestrator (see runner.sh). Cancel and timeout kill
the whole process group, so grandchildren die with the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Collection
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hsm_core.model import Attempt, SourceSpec, TaskEvent, TaskSpec, TaskState
from hsm_core.procs import read_pid, runner_alive
from hsm_core.sources.base import ComputeSource, HealthReport, SweepContext, task_argv

RUNNER = str(resources.files("hsm_core.sources") / "runner.sh")
KILL_GRACE_S = 3.0


def task_env(task: TaskSpec, ctx: SweepContext, task_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(dict(task.env))
    env["HSM_SWEEP_ID"] = ctx.sweep_id
    env["HSM_TASK_ID"] = task.name
    env["HSM_TASK_KEY"] = task.key
    env["HSM_TASK_DIR"] = str(task_dir)
    env["HSM_SWEEP_DIR"] = str(ctx.sweep_dir)
    return env


def describe_exit(code: int) -> str:
    """The runner's shell reports a signal death as 128+N."""
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    if code == 127:
        return "exit code 127 (command not found; see stderr.log)"
    return f"exit code {code}"


def read_result(task_dir: Path) -> dict[str, Any] | None:
    """result.json: `{"exit_code": N}` from the runner, or the Hydra worker's own record
    (which adds `error`, a one-line reason). None if absent or unreadable."""
    try:
        data = json.loads((task_dir / "result.json").read_text())
        data["exit_code"] = int(data["exit_code"])
        return data if isinstance(data, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def settle(
    data: dict[str, Any] | None, code: int | None
) -> tuple[TaskState, int | None, str | None]:
    """What a finished attempt's exit record means: (state, exit code, error)."""
    if data is None:
        return TaskState.FAILED, code, f"ended without an exit record ({describe_exit(code or 0)})"
    rc = int(data["exit_code"])
    if rc == 0:
        return TaskState.COMPLETED, 0, None
    return TaskState.FAILED, rc, str(data.get("error") or describe_exit(rc))


@dataclass
class _Running:
    task: TaskSpec
    attempt: int
    proc: asyncio.subprocess.Process | None
    pid: int
    slot: int
    waiter: asyncio.Task[None] | None = None
    stopping: TaskState | None = None  # CANCELLED or FAILED(timeout) once we kill it
    stop_reason: str | None = None


class LocalSource(ComputeSource):
    type = "local"

    def __init__(self, spec: SourceSpec, ctx: SweepContext) -> None:
        super().__init__(spec, ctx)
        gpus = spec.option("gpus") or []
        self.gpus: list[str] = [str(g) for g in gpus]
        # Per-source environment (e.g. a scratch dir or a library path on this machine).
        self.extra_env = {str(k): str(v) for k, v in (spec.option("env") or {}).items()}
        self._running: dict[str, _Running] = {}
        self._free_slots = list(range(spec.max_parallel))
        self.log = logging.getLogger(f"hsm.source.{self.name}")

    def running(self) -> int:
        return len(self._running)

    async def submit(self, task: TaskSpec, attempt: int) -> str | None:
        slot = self._free_slots.pop(0) if self._free_slots else len(self._running)
        task_dir = self.ctx.task_dir(task)
        try:
            (task_dir / "results").mkdir()
        except FileExistsError:
            pass
        except FileNotFoundError:  # a task folder nobody made yet (the store makes them)
            (task_dir / "results").mkdir(parents=True, exist_ok=True)
        env = task_env(task, self.ctx, task_dir)
        env.update(self.extra_env)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        cwd = (self.ctx.project_root / task.cwd).resolve()
        argv = task_argv(task, self.ctx.python, str(self.ctx.sweep_dir), str(task_dir))
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                RUNNER,
                str(task_dir),
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            self._free_slots.append(slot)
            # Cannot even start (cwd missing, ...): the task's own setup is wrong.
            self._report(
                TaskEvent(
                    task.key, attempt, TaskState.FAILED, self.name, error=f"cannot start: {exc}"
                )
            )
            return None
        run = _Running(task, attempt, proc, proc.pid, slot)
        self._running[task.key] = run
        self._report(
            TaskEvent(task.key, attempt, TaskState.RUNNING, self.name, handle=str(proc.pid))
        )
        run.waiter = asyncio.create_task(self._wait(run))
        self.log.debug("started %s attempt %d pid %d slot %d", task.name, attempt, proc.pid, slot)
        return str(proc.pid)

    async def _wait(self, run: _Running) -> None:
        assert run.proc is not None
        timeout = run.task.timeout_s
        try:
            if timeout:
                await asyncio.wait_for(asyncio.shield(run.proc.wait()), timeout)
            else:
                await run.proc.wait()
        except asyncio.TimeoutError:
            run.stopping = TaskState.FAILED
            run.stop_reason = f"timed out after {timeout:g} s"
            await self._kill(run)
        code = run.proc.returncode
        self._finish(run, code)

    def _finish(self, run: _Running, code: int | None) -> None:
        if self._running.get(run.task.key) is not run:
            return
        del self._running[run.task.key]
        self._free_slots.append(run.slot)
        task_dir = self.ctx.task_dir(run.task)
        if run.stopping is not None:
            state, error, exit_code = run.stopping, run.stop_reason, code
        else:
            state, exit_code, error = settle(read_result(task_dir), code)
        self._report(
            TaskEvent(run.task.key, run.attempt, state, self.name, exit_code=exit_code, error=error)
        )

    async def _kill(self, run: _Running) -> None:
        """SIGTERM the process group, SIGKILL it after a grace period."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.pid, signal.SIGTERM)
        if run.proc is not None:
            try:
                await asyncio.wait_for(asyncio.shield(run.proc.wait()), KILL_GRACE_S)
            except asyncio.TimeoutError:
                pass
        # Grandchildren may ignore SIGTERM or outlive the runner: kill the group regardless.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.pid, signal.SIGKILL)
        if run.proc is not None:
            await run.proc.wait()

    async def cancel(self, keys: Collection[str] | None = None) -> None:
        targets = [r for k, r in self._running.items() if keys is None or k in keys]
        for run in targets:
            run.stopping = TaskState.CANCELLED
            run.stop_reason = "cancelled"
        await asyncio.gather(*(self._kill(r) for r in targets))
        # The waiters report CANCELLED once each process is reaped.
        waiters = [r.waiter for r in targets if r.waiter is not None]
        if waiters:
            await asyncio.gather(*waiters, return_exceptions=True)

    async def reattach(self, attempts: Collection[tuple[TaskSpec, Attempt]]) -> None:
        """After a crash: a task whose runner left an exit record is done; one whose runner
        is still alive is watched until it writes it; anything else is LOST."""
        for task, att in attempts:
            task_dir = self.ctx.task_dir(task)
            data = read_result(task_dir)
            pid = read_pid(task_dir)
            if data is None and pid is not None and runner_alive(pid, task_dir):
                slot = self._free_slots.pop(0) if self._free_slots else len(self._running)
                run = _Running(task, att.attempt, None, pid, slot)
                self._running[task.key] = run
                run.waiter = asyncio.create_task(self._watch_orphan(run))
                continue
            if data is None:
                self.report_lost(
                    task.key, att.attempt, "orchestrator stopped while the task ran; no exit record"
                )
            else:
                state, code, err = settle(data, None)
                self._report(
                    TaskEvent(task.key, att.attempt, state, self.name, exit_code=code, error=err)
                )

    async def _watch_orphan(self, run: _Running) -> None:
        # Not our child: we cannot wait() on it, so poll its liveness.
        task_dir = self.ctx.task_dir(run.task)
        while runner_alive(run.pid, task_dir):
            await asyncio.sleep(0.2)
        self._finish(run, None)

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
