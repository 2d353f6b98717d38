"""`hsm sources test NAME|--all --simulate-failures`: failure drills on a real source.

Each scenario runs a tiny sweep of its own (a few `sleep` tasks) in a scratch folder, never
near the user's sweeps: locally a temporary folder (hpc: `.hsm-drills/` in the project, which
the compute nodes must see), on an ssh host a project_dir of its own below the source's
(`<project_dir>/.hsm/drills/<id>`, so no project is pushed and nothing of the project is
touched). While tasks run it breaks one thing, then checks what hsm did:

- ssh / local, **agent killed** (SIGKILL): a new agent is started and re-attaches; every
  task finishes exactly once, none is LOST.
- ssh, **connection dropped**: reconnect, re-attach; every task finishes exactly once.
- ssh / local, **task killed** (SIGKILL to one task's process group, as an OOM kill): that
  attempt ends FAILED (killed by SIGKILL: hsm counts a kill on the host as the task's own
  end) and, with the drill's one retry, is placed again and completes; the others finish
  exactly once.
- hpc, **queued job cancelled** (scancel/qdel of a job still waiting): that attempt ends
  LOST and is placed again; the others finish exactly once.

"Exactly once" is read from the journal (one attempt per untouched task) and from the
tasks themselves: each appends its name to a file in the sweep folder when it finishes.
Time to detect: from the break until hsm noticed (a new agent channel, the attempt's end);
time to recover: until it had re-attached (a live new agent) or the task was running
again. Afterwards everything the drill made is removed: the scratch folders, here and on
the host, and it checks that no process of the drill is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import posixpath
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm_core.model import TaskEvent, TaskSpec, TaskState, task_key
from hsm_core.sources.base import ComputeSource

log = logging.getLogger(__name__)

TASKS = {"hpc": 3}  # 2 run, 1 waits in the queue to be cancelled
DEFAULT_TASKS = 4
SLOTS = 2
TASK_S = 2.0  # long enough to break something while tasks run
SCENARIO_TIMEOUT_S = 180.0
LEFTOVER_WAIT_S = 20.0
FINISHED = "finished.txt"

SCENARIOS = {
    "local": ("agent killed", "task killed"),
    "ssh": ("connection dropped", "agent killed", "task killed"),
    "hpc": ("queued job cancelled",),
}


@dataclass
class DrillResult:
    source: str
    scenario: str
    ok: bool
    detect_s: float | None = None
    recover_s: float | None = None
    total_s: float = 0.0
    detail: str = ""
    leftovers: list[str] = field(default_factory=list)
    skipped: bool = False
    drill_id: str = ""  # the scratch sweep's id (HSM_SWEEP_ID of its tasks)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "scenario": self.scenario,
            "ok": self.ok,
            "detect_s": self.detect_s,
            "recover_s": self.recover_s,
            "total_s": round(self.total_s, 2),
            "detail": self.detail,
            "leftovers": self.leftovers,
            "skipped": self.skipped,
            "drill_id": self.drill_id,
        }


class DrillFailed(Exception):
    """The break could not be made or hsm did not do what it should (the reason)."""


@dataclass
class _Run:
    """One scenario's sweep while it runs: its source and what happened, with times."""

    source: ComputeSource
    events: list[tuple[float, TaskEvent]] = field(default_factory=list)
    agents: set[tuple[int, int | None]] = field(default_factory=set)  # (agent, keeper) pids
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, ev: TaskEvent) -> None:
        self.events.append((time.monotonic(), ev))
        self.changed.set()
        self.note_agent()

    def note_agent(self) -> None:
        hello = self.agent_hello()
        if hello.get("pid"):
            keeper = hello.get("keeper")
            self.agents.add((int(hello["pid"]), int(keeper) if keeper else None))

    def agent_hello(self) -> dict[str, Any]:
        # The agent channel of an ssh or local source (hsm_core.sources.agent_channel).
        channel = getattr(self.source, "_agent", None)
        return dict(getattr(channel, "hello", None) or {}) if channel is not None else {}

    def channel(self) -> Any:
        return getattr(self.source, "_agent", None)

    async def until(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait (on events, and a short poll for source state) until `check()` is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise DrillFailed(f"timed out after {timeout:g} s waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.05))

    def running(self) -> list[TaskEvent]:
        latest: dict[str, TaskEvent] = {}
        for _, ev in self.events:
            latest[ev.key] = ev
        return [ev for ev in latest.values() if ev.state is TaskState.RUNNING]

    def first(self, key: str, state: TaskState, attempt: int | None = None) -> float | None:
        for t, ev in self.events:
            if ev.key == key and ev.state is state and (attempt is None or ev.attempt == attempt):
                return t
        return None


# ---------------------------------------------------------------------- the host side
class _Place:
    """Where the drill's sweep runs, to run commands there, read the finished list and
    clean up: this machine, or an ssh host."""

    def __init__(self, transport: Any = None, python: str = sys.executable) -> None:
        self.transport = transport
        self.python = python

    async def sh(self, argv: list[str], check: bool = True) -> str:
        if self.transport is None:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await proc.communicate()
            if check and proc.returncode != 0:
                raise DrillFailed(f"`{' '.join(argv)}` failed: {err.decode().strip()}")
            return out.decode()
        from hsm_core.errors import CommandError

        try:
            done = await self.transport.run(argv, check=check, timeout=60)
        except CommandError as exc:
            raise DrillFailed(
                f"`{' '.join(argv)}` on {self.transport.name} failed: {exc}"
            ) from None
        return str(done.text)

    async def kill(self, pid: int, sig: signal.Signals, group: bool = False) -> None:
        target = -pid if group else pid
        if self.transport is None:
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                raise DrillFailed(f"no process {pid} to kill") from None
            return
        await self.sh(["kill", f"-{sig.name[3:]}", "--", str(target)])

    async def read(self, path: str) -> str:
        if self.transport is None:
            try:
                return Path(path).read_text()
            except FileNotFoundError:
                return ""
        done = await self.transport.run(["cat", path], check=False, timeout=60)
        return str(done.text) if done.exit_code == 0 else ""

    async def remove(self, path: str) -> None:
        if self.transport is None:
            shutil.rmtree(path, ignore_errors=True)
        else:
            await self.sh(["rm", "-rf", "--", path])

    async def alive(self, pids: list[int], marker: str) -> list[str]:
        """Which of `pids` still run, and any process whose environment names the drill."""
        script = (
            "import os,sys\n"
            "pids=[int(p) for p in sys.argv[2:]]\n"
            "m=('HSM_SWEEP_ID='+sys.argv[1]).encode()\n"
            "for p in os.listdir('/proc'):\n"
            "  if not p.isdigit(): continue\n"
            "  try:\n"
            "    st=open('/proc/'+p+'/stat').read().rsplit(')',1)[1].split()[0]\n"
            "    if st in ('Z','X'): continue\n"
            "    env=open('/proc/'+p+'/environ','rb').read()\n"
            "  except OSError:\n"
            "    if int(p) in pids: print(p, 'hsm agent')\n"
            "    continue\n"
            "  if int(p) in pids: print(p, 'hsm agent')\n"
            "  elif m in env.split(b'\\0'): print(p, 'drill task')\n"
        )
        argv = [self.python, "-c", script, marker, *map(str, pids)]
        out = await self.sh(argv)
        return [line.strip() for line in out.splitlines() if line.strip()]

    async def close(self) -> None:
        if self.transport is not None:
            await self.transport.close()


# ------------------------------------------------------------------------- scenarios
Breaker = Callable[[_Run, _Place, dict[str, Any]], Coroutine[Any, Any, None]]


async def _wait_running(run: _Run, n: int) -> list[TaskEvent]:
    running: list[TaskEvent] = await run.until(
        lambda: len(run.running()) >= n and run.running(), 60, "tasks running"
    )
    return running


async def _new_agent(run: _Run, old: Any, info: dict[str, Any], t0: float) -> None:
    await run.until(lambda: run.channel() is not old or not old.alive, 60, "hsm to notice")
    info["detect"] = time.monotonic() - t0
    await run.until(
        lambda: run.channel() is not None and run.channel() is not old and run.channel().alive,
        120,
        "a new agent",
    )
    run.note_agent()
    info["recover"] = time.monotonic() - t0


async def _drop_connection(run: _Run, place: _Place, info: dict[str, Any]) -> None:
    await _wait_running(run, 1)
    old = run.channel()
    t0 = time.monotonic()
    run.source.transport.abort()  # type: ignore[attr-defined]
    await _new_agent(run, old, info, t0)


async def _kill_agent(run: _Run, place: _Place, info: dict[str, Any]) -> None:
    await _wait_running(run, 1)
    old = run.channel()
    pid = int(run.agent_hello().get("pid") or 0)
    if not pid:
        raise DrillFailed("the source has no agent to kill")
    await place.kill(pid, signal.SIGKILL)
    # From when the kill is known done (a command on a busy host takes a while to run).
    await _new_agent(run, old, info, time.monotonic())


async def _kill_task(run: _Run, place: _Place, info: dict[str, Any]) -> None:
    ev = (await _wait_running(run, 1))[0]
    pid = int(str(ev.handle or "").rsplit(":", 1)[-1] or 0)
    if not pid:
        raise DrillFailed(f"no pid known for {ev.key}")
    info["victim"] = ev.key
    t0 = time.monotonic()
    await place.kill(pid, signal.SIGKILL, group=True)
    await run.until(lambda: run.first(ev.key, TaskState.FAILED, ev.attempt), 60, "its end")
    info["detect"] = (run.first(ev.key, TaskState.FAILED, ev.attempt) or t0) - t0
    again = ev.attempt + 1
    await run.until(lambda: run.first(ev.key, TaskState.RUNNING, again), 120, "a new attempt")
    info["recover"] = (run.first(ev.key, TaskState.RUNNING, again) or t0) - t0


async def _cancel_queued(run: _Run, place: _Place, info: dict[str, Any]) -> None:
    src: Any = run.source
    await _wait_running(run, 1)

    def queued() -> tuple[str, int, str] | None:
        from hsm_core.sources.hpc.states import Phase, phase_of

        running = {ev.key for ev in run.running()}
        # Not started by what we saw; waiting in the queue by the scheduler's last word
        # if it said so already (its word comes at the source's pace).
        waiting = [j for j in list(src._jobs.values()) if j.job_id and j.task.key not in running]
        waiting.sort(key=lambda j: phase_of(j.state) is not Phase.QUEUED)
        return (waiting[0].task.key, waiting[0].attempt, waiting[0].job_id) if waiting else None

    key, attempt, job_id = await run.until(queued, 60, "a queued job")
    info["victim"] = key
    log.info("drill: cancelling job %s (%s)", job_id, key)
    t0 = time.monotonic()
    await src.client.call({"op": "cancel", "job_ids": [job_id]})
    await run.until(lambda: run.first(key, TaskState.LOST, attempt), 120, "its end as LOST")
    info["detect"] = (run.first(key, TaskState.LOST, attempt) or t0) - t0
    again = attempt + 1
    await run.until(lambda: run.first(key, TaskState.RUNNING, again), 180, "a new attempt")
    info["recover"] = (run.first(key, TaskState.RUNNING, again) or t0) - t0


BREAKERS: dict[str, Breaker] = {
    "connection dropped": _drop_connection,
    "agent killed": _kill_agent,
    "task killed": _kill_task,
    "queued job cancelled": _cancel_queued,
}


# ---------------------------------------------------------------------------- a drill
def _tasks(n: int) -> list[TaskSpec]:
    script = f'sleep {TASK_S:g}; echo "$HSM_TASK_ID" >> "$HSM_SWEEP_DIR/{FINISHED}"'
    out = []
    for i in range(n):
        params = {"drill": i}
        out.append(TaskSpec(task_key(params), i + 1, params, argv=("sh", "-c", script)))
    return out


def _drill_entry(entry: Mapping[str, Any], drill_id: str) -> tuple[dict[str, Any], str | None]:
    """The source's entry for the drill, and its scratch project_dir on an ssh host."""
    e = dict(entry)
    e["max_parallel"] = SLOTS
    remote = None
    if e.get("type") == "ssh":
        base = str(e.get("project_dir") or "~").rstrip("/") or "/"
        remote = posixpath.join(base, ".hsm", "drills", drill_id)
        e["project_dir"] = remote
        e["sync"] = "warn"  # nothing is pushed, and no project is needed there
    return e, remote


async def run_drill(name: str, entry: Mapping[str, Any], root: Path, scenario: str) -> DrillResult:
    from hsm_core import orchestrate
    from hsm_core.config import source_spec
    from hsm_core.sources import make_source
    from hsm_core.store import SweepStore

    t_start = time.monotonic()
    drill_id = f"drill-{uuid.uuid4().hex[:10]}"
    stype = str(entry.get("type"))
    if stype == "hpc" and entry.get("ssh"):
        # The cluster's side of such a drill (its sweep folder there) is not cleaned up yet.
        why = "skipped: drills of an hpc source over ssh are not done yet"
        return DrillResult(name, scenario, True, detail=why, skipped=True)
    if stype == "hpc":
        scratch = root / ".hsm-drills" / drill_id
        scratch.mkdir(parents=True)
    else:
        scratch = Path(tempfile.mkdtemp(prefix=f"hsm-{drill_id}-"))
    result = DrillResult(name, scenario, False, drill_id=drill_id)
    drill_entry, remote = _drill_entry(entry, drill_id)
    spec = source_spec(name, drill_entry)
    place = _Place()
    if stype == "ssh":
        from hsm_core.sources.ssh.options import SSHOptions
        from hsm_core.transport.ssh import SSHTransport

        opts = SSHOptions.parse(name, spec.options)
        place = _Place(SSHTransport(opts.target, name=name), opts.agent_python)
    store = SweepStore.create(
        scratch / "sweep",
        sweep_id=drill_id,
        kind="command",
        config={},
        metadata={"drill": scenario},
        project_root=root,
    )
    info: dict[str, Any] = {}
    run: _Run | None = None
    try:
        store.add_tasks(_tasks(TASKS.get(stype, DEFAULT_TASKS)))
        ctx = orchestrate.context_for(store)
        src = make_source(spec, ctx)
        run = _Run(src)

        def hook(engine: Any) -> None:
            if run is not None and run.on_event not in engine.listeners:
                engine.listeners.append(run.on_event)

        breaker = asyncio.create_task(BREAKERS[scenario](run, place, info))
        sweep = asyncio.create_task(
            orchestrate.run_sweep(
                store,
                ctx,
                [spec],
                orchestrate.RunOptions(max_retries=1),
                sources=[src],
                progress=hook,
                handle_signals=False,
            )
        )
        try:
            done, _ = await asyncio.wait(
                {breaker, sweep}, timeout=SCENARIO_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if breaker in done:
                breaker.result()  # DrillFailed: the break could not be made, or went wrong
                left = SCENARIO_TIMEOUT_S - (time.monotonic() - t_start)
                await asyncio.wait_for(sweep, max(1.0, left))
            elif sweep in done:
                sweep.result()
                raise DrillFailed("the sweep ended before the break was made (too fast)")
            else:
                raise DrillFailed(f"not over after {SCENARIO_TIMEOUT_S:g} s")
        finally:
            for job in (breaker, sweep):
                if not job.done():
                    job.cancel()
                    with contextlib.suppress(BaseException):
                        await job
        sweep_dir = (
            posixpath.join(remote, ".hsm", "sweeps", drill_id) if remote else str(store.sweep_dir)
        )
        finished = (await place.read(posixpath.join(sweep_dir, FINISHED))).split()
        result.detect_s, result.recover_s = info.get("detect"), info.get("recover")
        result.detail = _judge(store, finished, info.get("victim"), scenario)
        result.ok = True
    except (DrillFailed, asyncio.TimeoutError) as exc:
        result.detail = str(exc) or "timed out"
    except Exception as exc:  # a drill reports, it never takes the command down
        log.debug("drill %s/%s", name, scenario, exc_info=True)
        result.detail = f"{type(exc).__name__}: {exc}"
    finally:
        store.close()
        result.leftovers = await _clean_up(place, scratch, remote, drill_id, _agent_pids(run))
        if result.leftovers:
            result.ok = False
        result.total_s = time.monotonic() - t_start
    return result


def _agent_pids(run: _Run | None) -> list[int]:
    if run is None:
        return []
    run.note_agent()
    return sorted({p for pair in run.agents for p in pair if p})


def _judge(store: Any, finished: list[str], victim: str | None, scenario: str) -> str:
    """What happened, in one line; DrillFailed if it is not what should have happened."""
    attempts = store.attempts()
    by_key: dict[str, list[Any]] = {}
    for a in attempts:
        by_key.setdefault(a.key, []).append(a)
    names = {t.key: t.name for t in store.tasks()}
    problems = []
    for key, atts in sorted(by_key.items(), key=lambda kv: names[kv[0]]):
        name = names[key]
        states = [a.state for a in atts]
        done = finished.count(name)
        if key == victim:
            want_first = TaskState.LOST if scenario == "queued job cancelled" else TaskState.FAILED
            if states[0] is not want_first or states[-1] is not TaskState.COMPLETED:
                problems.append(f"{name}: {'/'.join(s.value for s in states)}, "
                                f"expected {want_first.value} then COMPLETED")  # fmt: skip
            elif done != 1:
                problems.append(f"{name} finished {done} times")
        elif states != [TaskState.COMPLETED] or done != 1:
            why = "; ".join(f"{a.state.value}: {a.error}" for a in atts if a.error)
            problems.append(
                f"{name}: attempts {'/'.join(s.value for s in states)}, finished {done} times "
                f"(expected one COMPLETED attempt, finished once){': ' + why if why else ''}"
            )
    if problems:
        raise DrillFailed("; ".join(problems))
    n = len(by_key)
    if victim:
        first = by_key[victim][0]
        return (
            f"{names[victim]} {first.state.value} ({first.error or ''}), placed again, "
            f"COMPLETED; the other {n - 1} tasks finished exactly once"
        )
    return f"re-attached; all {n} tasks finished exactly once, none LOST"


async def _clean_up(
    place: _Place, scratch: Path, remote: str | None, drill_id: str, agents: list[int]
) -> list[str]:
    """Remove what the drill made; return what is still left (processes, folders)."""
    left: list[str] = []
    try:
        deadline = time.monotonic() + LEFTOVER_WAIT_S
        while True:  # agents end once their tasks are recorded; give them a moment
            alive = await place.alive(agents, drill_id)
            if not alive or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        left += [f"process {a}" for a in alive]
        if remote:
            await place.remove(remote)
            parent = posixpath.dirname(remote)
            # Gone already (the source never started) or still used: both are fine.
            await place.sh(["rmdir", "--ignore-fail-on-non-empty", "--", parent], check=False)
    except Exception as exc:
        left.append(f"cleaning up failed: {exc}")
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
        with contextlib.suppress(OSError):
            scratch.parent.rmdir() if scratch.parent.name == ".hsm-drills" else None
        await place.close()
    if scratch.exists():
        left.append(f"folder {scratch}")
    return left


async def drill_sources(
    sources: Mapping[str, Mapping[str, Any]],
    root: Path,
    on_result: Callable[[DrillResult], None] | None = None,
) -> list[DrillResult]:
    """Every scenario of every source, one after the other (a break on one source must not
    disturb another's drill). The warnings hsm logs about the breaks it is made to see
    are the drill's own doing: the results say what happened."""
    results = []
    with quiet_logs():
        for name, entry in sources.items():
            for scenario in SCENARIOS.get(str(entry.get("type")), ()):
                res = await run_drill(name, entry, root, scenario)
                results.append(res)
                if on_result is not None:
                    on_result(res)
    return results


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Keep hsm's warnings about breaks made on purpose off the terminal: a filter on
    the root logger's handlers (a run sets the levels of the sweep's own logs)."""
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(_quiet)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(_quiet)


def _quiet(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL or not record.name.startswith(("hsm", "asyncssh"))


def results_json(results: list[DrillResult]) -> str:
    return json.dumps([r.to_json() for r in results])
