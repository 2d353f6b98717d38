"""The engine on the local source, with real processes and a real sweep folder."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import yaml

from hsm_core.model import TaskState
from hsm_core.procs import pid_alive
from hsm_core.store import SweepStore
from tests.sweep_utils import (
    LEAVES_BEHIND,
    PY,
    check_nothing_left_behind,
    check_own_results,
    command_tasks,
    make_sweep,
    own_result_tasks,
    run_local,
    states,
    wait_for,
)

# A task that records when it started and ended (monotonic clock shared by all processes).
TIMED = (
    "import os, time, json, sys\n"
    "t0 = time.monotonic(); time.sleep(float(sys.argv[1])); t1 = time.monotonic()\n"
    "out = os.path.join(os.environ['HSM_TASK_DIR'], 'results', 't.json')\n"
    "json.dump({'start': t0, 'end': t1, 'gpu': os.environ.get('CUDA_VISIBLE_DEVICES'),\n"
    "           'task': os.environ['HSM_TASK_ID']}, open(out, 'w'))\n"
)


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    cur = best = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def _spans(store: SweepStore) -> list[dict[str, object]]:
    return [
        json.loads((store.task_dir(t) / "results" / "t.json").read_text()) for t in store.tasks()
    ]


def test_slots_are_honoured_and_used(tmp_path: Path) -> None:
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", TIMED, "0.3"]] * 8))
    out = run_local(store, slots=3)
    assert out.ok
    spans = [(d["start"], d["end"]) for d in _spans(store)]
    assert _max_overlap(spans) == 3  # never more than 3, and the 3 slots were really used


def test_global_max_parallel_caps_all_sources(tmp_path: Path) -> None:
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", TIMED, "0.2"]] * 6))
    assert run_local(store, slots=4, max_parallel=2).ok
    assert _max_overlap([(d["start"], d["end"]) for d in _spans(store)]) <= 2


def test_each_running_task_gets_its_own_gpu(tmp_path: Path) -> None:
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", TIMED, "0.3"]] * 4))
    assert run_local(store, slots=2, options={"gpus": [0, 1]}).ok
    spans = sorted(_spans(store), key=lambda d: d["start"])  # type: ignore[arg-type,return-value]
    for a in spans:
        for b in spans:
            overlap = a is not b and a["start"] < b["end"] and b["start"] < a["end"]  # type: ignore[operator]
            if overlap:
                assert a["gpu"] != b["gpu"]
    assert {d["gpu"] for d in spans} == {"0", "1"}


def test_failure_does_not_stop_others_and_is_recorded(tmp_path: Path) -> None:
    argvs = [[PY, "-c", "pass"]] * 5
    argvs[2] = [PY, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(7)"]
    store = make_sweep(tmp_path, command_tasks(argvs))
    out = run_local(store)
    assert not out.ok
    st = states(store)
    assert st[3] is TaskState.FAILED
    assert [st[n] for n in (1, 2, 4, 5)] == [TaskState.COMPLETED] * 4
    bad = store.tasks()[2]
    assert (store.task_dir(bad) / "stderr.log").read_text() == "boom\n"
    status = yaml.safe_load((store.task_dir(bad) / "status.yaml").read_text())
    assert status["state"] == "FAILED" and status["exit_code"] == 7


def test_retries_open_new_attempts_and_keep_old_ones(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    flaky = (
        "import os, sys\n"
        f"m = {str(marker)!r}\n"
        "n = int(open(m).read()) if os.path.exists(m) else 0\n"
        "open(m, 'w').write(str(n + 1)); print('try', n)\n"
        "sys.exit(0 if n >= 2 else 1)\n"
    )
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", flaky]]))
    assert run_local(store, max_retries=2).ok
    task = store.tasks()[0]
    attempts = store.attempts(task.key)
    assert [a.state for a in attempts] == [TaskState.FAILED, TaskState.FAILED, TaskState.COMPLETED]
    tdir = store.task_dir(task)
    assert (tdir / "attempt_1" / "stdout.log").read_text() == "try 0\n"
    assert (tdir / "attempt_2" / "stdout.log").read_text() == "try 1\n"
    assert (tdir / "stdout.log").read_text() == "try 2\n"


def test_timeout_kills_the_task_and_fails_it(tmp_path: Path) -> None:
    store = make_sweep(
        tmp_path, command_tasks([[PY, "-c", "import time; time.sleep(60)"]], timeout_s=0.5)
    )
    out = run_local(store)
    assert out.seconds < 15
    att = store.attempts(store.tasks()[0].key)[-1]
    assert att.state is TaskState.FAILED
    assert "timed out after 0.5 s" in (att.error or "")


def test_environment_of_a_task(tmp_path: Path) -> None:
    code = (
        "import os, json; print(json.dumps({k: v for k, v in os.environ.items()"
        " if k.startswith('HSM_')}))"
    )
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", code]]))
    assert run_local(store).ok
    task = store.tasks()[0]
    env = json.loads((store.task_dir(task) / "stdout.log").read_text())
    assert env["HSM_SWEEP_ID"] == "t"
    assert env["HSM_TASK_ID"] == "task_001"
    assert env["HSM_TASK_DIR"] == str(store.task_dir(task))


# Code written for Hydra's submitit launchers asks submitit where it runs.
SUBMITIT_ENV = (
    "import submitit; e = submitit.JobEnvironment(); "
    "print(type(e).__name__, e.job_id, e.global_rank, e.local_rank, e.num_tasks, e.num_nodes, "
    "e.paths.folder.name)"
)


def test_submitit_job_environment_works_in_a_local_task(tmp_path: Path) -> None:
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", SUBMITIT_ENV]]))
    assert run_local(store).ok
    task = store.tasks()[0]
    out = (store.task_dir(task) / "stdout.log").read_text().split()
    assert out == ["LocalJobEnvironment", "task_001", "0", "0", "1", "1", "task_001"]


def test_seed_layout_is_written(tmp_path: Path) -> None:
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", "print('hi')"]] * 2))
    assert run_local(store).ok
    d = store.sweep_dir
    for name in ("sweep_config.yaml", "sweep_metadata.yaml", "task_mapping.yaml"):
        assert (d / name).is_file(), name
    for name in (
        "sweep_aggregated.log",
        "task_assignments.log",
        "health_status.log",
        "source_utilization.log",
        "sources/local.log",
    ):
        assert (d / "logs" / name).is_file(), name
    for sub in ("scripts", "reports"):
        assert (d / sub).is_dir()
    t1 = d / "tasks" / "task_001"
    for name in ("params.yaml", "status.yaml", "stdout.log", "stderr.log", "results"):
        assert (t1 / name).exists(), name
    meta = yaml.safe_load((d / "sweep_metadata.yaml").read_text())
    assert meta["counts"]["COMPLETED"] == 2 and meta["sweep_id"] == "t"
    mapping = yaml.safe_load((d / "task_mapping.yaml").read_text())["tasks"]
    assert mapping["task_002"]["state"] == "COMPLETED"
    assert mapping["task_002"]["source"] == "local"
    assert "task_001 -> local (attempt 1)" in (d / "logs" / "task_assignments.log").read_text()
    # No stray temp files from the atomic writes.
    assert not list(d.rglob("*.tmp"))


def test_store_refuses_backward_moves(tmp_path: Path) -> None:
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", "pass"]]))
    assert run_local(store).ok
    from hsm_core.model import TaskEvent

    key = store.tasks()[0].key
    assert not store.apply(TaskEvent(key, 1, TaskState.RUNNING, "local"))
    assert not store.apply(TaskEvent(key, 1, TaskState.FAILED, "local"))
    assert store.attempts(key)[-1].state is TaskState.COMPLETED


def test_cancel_kills_grandchildren(tmp_path: Path) -> None:
    """A task that forks a grandchild (which ignores nothing): cancel kills the whole group."""
    code = (
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        "open(os.path.join(os.environ['HSM_TASK_DIR'], 'grandchild'), 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", code]] * 3))
    import asyncio

    from hsm_core.engine import SweepEngine
    from hsm_core.model import SourceSpec
    from hsm_core.orchestrate import context_for
    from hsm_core.sources.local import LocalSource

    ctx = context_for(store)
    engine = SweepEngine(store, ctx, [LocalSource(SourceSpec("local", "local", 2), ctx)])
    files = [store.task_dir(t) / "grandchild" for t in store.tasks()[:2]]

    async def go() -> dict[TaskState, int]:
        run = asyncio.create_task(engine.run())
        while not all(f.exists() and f.read_text() for f in files):
            await asyncio.sleep(0.05)
        engine.cancel()
        return await asyncio.wait_for(run, 30)

    counts = asyncio.run(go())
    assert counts[TaskState.CANCELLED] == 3
    for f in files:
        pid = int(f.read_text())
        wait_for(lambda pid=pid: not pid_alive(pid), timeout=10)


def test_sigkill_mid_sweep_leaves_a_consistent_journal(tmp_path: Path) -> None:
    """kill -9 of `hsm run` while it writes: the database is intact, no state is invalid,
    and every task that finished has its exit record."""
    import subprocess

    from tests.sweep_utils import hsm

    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "grid": {"i": list(range(30))},
                "command": [PY, "-c", "import time; time.sleep(0.1)", "{i}"],
            }
        )
    )
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / ".state")}
    proc = subprocess.Popen(
        [PY, "-m", "hsm_core.cli.main", "run", "-c", str(sweep), "-s", "local:3",
         "--sweep-id", "k"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    db = tmp_path / "sweeps" / "outputs" / "k" / "sweep.db"

    def some_done() -> bool:
        if not db.exists():
            return False
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                return bool(
                    c.execute("SELECT COUNT(*) FROM attempts WHERE state='COMPLETED'").fetchone()[0]
                    >= 5
                )
        except sqlite3.Error:
            return False

    wait_for(some_done, timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = SweepStore.open(db.parent, readonly=True)
    latest = store.latest_attempts()
    assert len(latest) == 30
    for t in store.tasks():
        att = latest[t.key]
        assert att.state in TaskState
        if att.state is TaskState.COMPLETED:
            assert att.exit_code == 0
    # And the sweep can be finished without running anything twice.
    done_before = {k for k, a in latest.items() if a.state is TaskState.COMPLETED}
    res = hsm("complete", "k", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    store2 = SweepStore.open(db.parent, readonly=True)
    for key in done_before:
        assert len(store2.attempts(key)) == 1
    assert set(store2.counts()) == {TaskState.COMPLETED}


def test_submit_handle_is_journaled_without_overwriting_a_reported_one(tmp_path: Path) -> None:
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", "pass"]] * 2))
    assert run_local(store).ok
    first, second = store.tasks()
    pid = store.attempts(first.key)[-1].handle
    assert pid and pid.isdigit()  # the pid the source returned and reported
    store.set_handle(first.key, 1, "other")
    assert store.attempts(first.key)[-1].handle == pid
    n = store.new_attempt(second.key)
    store.set_handle(second.key, n, "job_7")
    assert store.attempts(second.key)[-1].handle == "job_7"


def test_a_tasks_own_result_json_neither_forges_nor_fails_it(tmp_path: Path) -> None:
    """The exit status the agent saw decides: a task's `{"exit_code": 0}` with exit 7 or
    a segfault is FAILED, its own `{"acc": 0.9}` with exit 0 COMPLETED (issue 11, item 5)."""
    store = make_sweep(tmp_path, own_result_tasks())
    run_local(store, slots=4)
    check_own_results(store)


def test_what_a_task_leaves_behind_ends_with_it(tmp_path: Path) -> None:
    """A background child in the task's group and one that called setsid are stopped
    when the task exits 0 (issue 11, item 8)."""
    store = make_sweep(tmp_path, command_tasks([LEAVES_BEHIND] * 2))
    assert run_local(store, slots=2).ok
    check_nothing_left_behind(store)
