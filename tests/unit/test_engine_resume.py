"""The engine's resume rule (hsm_core.resume) with scripted sources on a virtual clock:
a time limit resumes on the same source up to max_num_timeout, with results/ kept and
the logs moved aside; a preemption resumes without counting; a resume waits for its
source even when another one is free. The real Slurm runs are in
tests/integration/test_hpc_resume.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hsm_core.model import SourceSpec, TaskEvent, TaskSpec, TaskState
from hsm_core.orchestrate import context_for
from hsm_core.store import Reopen, SweepStore
from tests.fakes.clock import run_virtual
from tests.fakes.scripted import Script, ScriptedSource, Step, holds
from tests.sweep_utils import command_tasks, make_sweep
from tests.unit.test_engine_branches import Run, _until


def _setup(
    tmp_path: Path, max_num_timeout: int
) -> tuple[SweepStore, ScriptedSource, ScriptedSource]:
    store = make_sweep(tmp_path, command_tasks([["true"]]))
    ctx = context_for(store)
    a = ScriptedSource(SourceSpec("a", "scripted", 1), ctx, lambda t, n: holds())
    b = ScriptedSource(SourceSpec("b", "scripted", 1), ctx, lambda t, n: holds())
    a.max_num_timeout = max_num_timeout
    return store, a, b


def _stopped(src: ScriptedSource, key: str, attempt: int, resume: str) -> None:
    state = TaskState.FAILED if resume == "timeout" else TaskState.LOST
    why = "time limit reached (TIMEOUT)" if resume == "timeout" else "preempted (PREEMPTED)"
    src._timers.pop((key, attempt), None)
    src._report(TaskEvent(key, attempt, state, src.name, error=why, resume=resume))


def test_time_limits_resume_until_max_num_timeout_with_results_kept(tmp_path: Path) -> None:
    store, a, _ = _setup(tmp_path, max_num_timeout=2)
    (task,) = store.tasks()
    tdir = store.task_dir(task)
    run = Run(store, [a])

    async def scenario() -> None:
        job = asyncio.create_task(run.engine.run())
        for n in (1, 2, 3):
            await _until(lambda n=n: (task.key, n) in a.submitted, f"attempt {n}")
            (tdir / "results").mkdir(parents=True, exist_ok=True)
            (tdir / "results" / "ckpt").write_text(str(n))
            (tdir / "stdout.log").write_text(f"attempt {n}\n")
            _stopped(a, task.key, n, "timeout")
        await job

    run_virtual(scenario())
    atts = store.attempts(task.key)
    assert [x.state for x in atts] == [TaskState.FAILED] * 3
    assert atts[2].error == (
        "time limit reached 3 times (max_num_timeout=2): "
        "save checkpoints more often or raise timeout_min"
    )
    # results/ stayed for the resumed attempts; each attempt's log moved aside.
    assert (tdir / "results" / "ckpt").read_text() == "3"
    assert (tdir / "attempt_1" / "stdout.log").read_text() == "attempt 1\n"
    assert (tdir / "attempt_2" / "stdout.log").read_text() == "attempt 2\n"
    assert not (tdir / "attempt_1" / "results").exists()
    # Each resume is journaled with its attempt: a later `hsm complete` knows them.
    assert store.resumes() == {task.key: [(2, "timeout", "a"), (3, "timeout", "a")]}


def test_without_max_num_timeout_a_time_limit_says_how_to_resume(tmp_path: Path) -> None:
    store, a, _ = _setup(tmp_path, max_num_timeout=0)
    (task,) = store.tasks()
    run = Run(store, [a])

    async def scenario() -> None:
        job = asyncio.create_task(run.engine.run())
        await _until(lambda: a.submitted == [(task.key, 1)], "attempt 1")
        _stopped(a, task.key, 1, "timeout")
        await job

    run_virtual(scenario())
    (att,) = store.attempts(task.key)
    assert att.state is TaskState.FAILED
    assert att.error == (
        "time limit reached (TIMEOUT); to resume, save checkpoints and set "
        "max_num_timeout (hydra.launcher.max_num_timeout)"
    )


def test_preemptions_resume_without_counting_on_their_source(tmp_path: Path) -> None:
    store, a, b = _setup(tmp_path, max_num_timeout=0)
    b.max_num_timeout = 0
    (task,) = store.tasks()
    tdir = store.task_dir(task)
    run = Run(store, [a, b])  # b (or a) stays free: a resume must not go there

    async def scenario() -> ScriptedSource:
        job = asyncio.create_task(run.engine.run())
        await _until(lambda: len(a.submitted) + len(b.submitted) == 1, "attempt 1")
        first = a if a.submitted else b
        for n in (1, 2, 3):
            await _until(lambda n=n: (task.key, n) in first.submitted, f"attempt {n}")
            (tdir / "results").mkdir(parents=True, exist_ok=True)
            (tdir / "results" / "seen").write_text(str(n))
            _stopped(first, task.key, n, "preempted")
        await _until(lambda: (task.key, 4) in first.submitted, "attempt 4")
        first.report(task.key, 4, TaskState.COMPLETED)
        await job
        return first

    first, _ = run_virtual(scenario())
    other = b if first is a else a
    atts = store.attempts(task.key)
    assert [x.state for x in atts] == [TaskState.LOST] * 3 + [TaskState.COMPLETED]
    assert all(x.error == "preempted (PREEMPTED)" for x in atts[:3])
    assert other.submitted == []  # never placed away from its checkpoint
    assert (tdir / "results" / "seen").read_text() == "3"


def test_a_resume_decided_before_a_kill_survives_into_hsm_complete(tmp_path: Path) -> None:
    """The journal as `kill -9` leaves it between a time limit and the resubmit: the
    next orchestrator resumes on the source with the checkpoint, with HSM_RESUME=1 and
    results/ kept, and counts the time limit already spent against max_num_timeout."""
    store = make_sweep(tmp_path, command_tasks([["true"]]))
    (task,) = store.tasks()
    tdir = store.task_dir(task)
    # What the killed orchestrator wrote, in the one transaction the engine uses.
    assert store.apply_many([TaskEvent(task.key, 1, TaskState.ASSIGNED, "a")]) == [True]
    stopped = TaskEvent(
        task.key, 1, TaskState.FAILED, "a", error="time limit reached (TIMEOUT)", resume="timeout"
    )
    assert store.apply_many([stopped, Reopen(task.key, 2, "timeout", "a")]) == [True, True]
    (tdir / "results").mkdir(parents=True, exist_ok=True)
    (tdir / "results" / "ckpt").write_text("1")

    seen: list[tuple[str, int, dict[str, str]]] = []
    ctx = context_for(store)

    def script(name: str) -> Script:
        def steps(t: TaskSpec, n: int) -> list[Step]:
            seen.append((name, n, dict(t.env)))
            return list(holds())

        return steps

    a = ScriptedSource(SourceSpec("a", "scripted", 1), ctx, script("a"))
    b = ScriptedSource(SourceSpec("b", "scripted", 4), ctx, script("b"))  # the emptier one
    a.max_num_timeout = 1
    run = Run(store, [a, b])

    async def scenario() -> None:
        job = asyncio.create_task(run.engine.run())
        await _until(lambda: bool(seen), "attempt 2 placed")
        _stopped(a if seen[0][0] == "a" else b, task.key, 2, "timeout")
        await job

    run_virtual(scenario())
    assert [(name, n) for name, n, _ in seen] == [("a", 2)]
    assert seen[0][2].get("HSM_RESUME") == "1"
    assert (tdir / "results" / "ckpt").read_text() == "1"
    atts = store.attempts(task.key)
    assert [x.state for x in atts] == [TaskState.FAILED, TaskState.FAILED]
    assert atts[1].error == (
        "time limit reached 2 times (max_num_timeout=1): "
        "save checkpoints more often or raise timeout_min"
    )
