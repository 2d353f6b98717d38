"""The hpc source on the real one-node Slurm (with slurmdbd, so sacct works).

Every scheduler command (sbatch, sacct, squeue, scancel, sinfo, scontrol) is counted by a
small logging shim put first on PATH: the real command still runs; the shim only writes
one line per call. Tests poll with deadlines, never sleep to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from hsm_core.model import SourceSpec, TaskState
from hsm_core.orchestrate import RunOptions, RunOutcome, context_for, run_sweep
from hsm_core.sources.hpc.job import EXIT_FILE, START_FILE
from hsm_core.sources.hpc.source import HPCSource
from hsm_core.store import SweepStore
from tests.services import SlurmEnv, SSHEnv
from tests.sweep_utils import (
    LEAVES_BEHIND,
    PY,
    check_nothing_left_behind,
    check_own_results,
    command_tasks,
    hsm,
    hsm_popen,
    make_sweep,
    own_result_tasks,
    states,
    wait_for,
)

pytestmark = pytest.mark.slurm

SCHEDULER_COMMANDS = ("sbatch", "sacct", "squeue", "scancel", "sinfo", "scontrol")
FAST = {"time": 2, "poll_min": 0.5, "poll_interval": 2, "batch_window": 0.2}

# A task that sleeps long on its first attempt and ends at once on a later one (the
# marker file survives the attempt): "lost, then run again" finishes quickly.
FIRST_SLOW = (
    "import os, sys, time\n"
    "m = os.path.join(os.environ['HSM_TASK_DIR'], 'marker')\n"
    "if os.path.exists(m): print('again'); sys.exit(0)\n"
    "open(m, 'w').close(); time.sleep(float(sys.argv[1]))\n"
)


@dataclass
class SchedulerLog:
    path: Path

    def calls(self, name: str | None = None) -> list[list[str]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = [shlex.split(line) for line in lines if line.strip()]
        return [c for c in out if name is None or c[0] == name]

    def count(self, name: str) -> int:
        return len(self.calls(name))


@pytest.fixture
def sched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slurm_env: SlurmEnv) -> SchedulerLog:
    """Count every scheduler command this process (and its children) runs."""
    shims = tmp_path / "shims"
    shims.mkdir()
    log = SchedulerLog(tmp_path / "scheduler_calls.log")
    for name in SCHEDULER_COMMANDS:
        real = shutil.which(name)
        assert real, f"{name} is not installed"
        shim = shims / name
        shim.write_text(
            "#!/bin/sh\n"
            f'printf "%s\\n" "{name} $*" >> {shlex.quote(str(log.path))}\n'
            f'exec {shlex.quote(real)} "$@"\n'
        )
        shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    return log


def hpc_spec(slurm: SlurmEnv, slots: int = 4, **options: Any) -> SourceSpec:
    return SourceSpec("cluster", "hpc", slots, {"partition": slurm.partition, **FAST, **options})


def run_hpc(store: SweepStore, spec: SourceSpec, **opts: Any) -> tuple[RunOutcome, HPCSource]:
    ctx = context_for(store)
    src = HPCSource(spec, ctx)
    out = asyncio.run(
        run_sweep(store, ctx, [spec], RunOptions(**opts), sources=[src], handle_signals=False)
    )
    return out, src


def squeue_ids(name: str) -> list[str]:
    done = subprocess.run(
        ["squeue", "-h", "-r", "-n", name, "-o", "%i"], capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def sacct_states(job_id: str) -> set[str]:
    done = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(done.stdout.split())


def settles_as(job_id: str, state: str) -> None:
    """sacct lags the job's end by a second or so: wait for its final word."""
    wait_for(
        lambda: sacct_states(job_id) == {state},
        timeout=30,
        interval=0.3,
        message=f"sacct to say {state} for job {job_id} (says {sacct_states(job_id)})",
    )


def started_job(task_dir: Path) -> str | None:
    try:
        return str(json.loads((task_dir / START_FILE).read_text())["job_id"])
    except (OSError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------ arrays


def test_sweep_is_one_array_job(tmp_path: Path, slurm_env: SlurmEnv, sched: SchedulerLog) -> None:
    script = (
        "import os, sys\n"
        "print(os.environ['HSM_TASK_ID'], os.environ['HSM_SWEEP_ID'], sys.argv[1])\n"
        "open(os.path.join(os.environ['HSM_TASK_DIR'], 'results', 'r.txt'), 'w').write('ok')\n"
    )
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", script, f"v{i}"] for i in range(12)]))
    out, _ = run_hpc(store, hpc_spec(slurm_env, slots=4))
    assert out.ok, out.counts
    assert sched.count("sbatch") == 1  # twelve tasks, one array
    attempts = store.latest_attempts()
    arrays = {a.handle.split("_")[0] for a in attempts.values() if a.handle}
    assert len(arrays) == 1
    assert sorted(int(a.handle.split("_")[1]) for a in attempts.values() if a.handle) == list(
        range(12)
    )
    script_file = next((store.sweep_dir / "scripts" / "cluster").rglob("*submission.sh"))
    assert "#SBATCH --array=0-11%4" in script_file.read_text()
    for i, task in enumerate(store.tasks()):
        tdir = store.task_dir(task)
        assert (tdir / "stdout.log").read_text().split() == [task.name, "t", f"v{i}"]
        assert (tdir / "results" / "r.txt").read_text() == "ok"
        assert json.loads((tdir / EXIT_FILE).read_text())["exit_code"] == 0
        assert not (tdir / "result.json").exists()  # hsm writes none: the name is the task's
    settles_as(next(iter(arrays)), "COMPLETED")


def test_array_larger_than_the_limit_is_split(
    tmp_path: Path, slurm_env: SlurmEnv, sched: SchedulerLog
) -> None:
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", "pass"]] * 7))
    out, _ = run_hpc(store, hpc_spec(slurm_env, slots=7, array_limit=3))
    assert out.ok, out.counts
    sizes = []
    for call in sched.calls("sbatch"):
        text = Path(call[-1]).read_text()
        array = [ln for ln in text.splitlines() if ln.startswith("#SBATCH --array=")]
        # submitit submits a chunk of one as a plain job (no --array line)
        sizes.append(int(array[0].split("-")[-1].split("%")[0]) + 1 if array else 1)
    assert sorted(sizes) == [1, 3, 3]
    handles = [a.handle or "" for a in store.latest_attempts().values()]
    assert len({h.split("_")[0] for h in handles}) == 3


# ---------------------------------------------------------------- failures


def test_failing_tasks_are_failed_with_their_errors(
    tmp_path: Path, slurm_env: SlurmEnv, sched: SchedulerLog
) -> None:
    argvs = [
        [PY, "-c", "print('fine')"],
        [PY, "-c", "def f():\n    raise ValueError('boom at depth')\nf()"],
        [PY, "-c", "import sys; sys.stderr.write('disk is full\\n'); sys.exit(3)"],
        ["/nonexistent/program", "x"],
    ]
    store = make_sweep(tmp_path, command_tasks(argvs))
    out, _ = run_hpc(store, hpc_spec(slurm_env))
    assert not out.ok
    st = states(store)
    assert st == {
        1: TaskState.COMPLETED,
        2: TaskState.FAILED,
        3: TaskState.FAILED,
        4: TaskState.FAILED,
    }
    tasks = store.tasks()
    latest = store.latest_attempts()
    raised = latest[tasks[1].key]
    assert raised.exit_code == 1 and "ValueError: boom at depth" in (raised.error or "")
    traceback = (store.task_dir(tasks[1]) / "stderr.log").read_text()
    assert "Traceback (most recent call last)" in traceback and "in f" in traceback
    exited = latest[tasks[2].key]
    assert exited.exit_code == 3 and "disk is full" in (exited.error or "")
    missing = latest[tasks[3].key]
    assert missing.exit_code == 127 and "cannot start" in (missing.error or "")
    # sacct agrees with hsm: the failed tasks' jobs failed (the original said COMPLETED).
    settles_as(raised.handle or "", "FAILED")
    settles_as(latest[tasks[0].key].handle or "", "COMPLETED")


def test_what_a_task_leaves_behind_ends_with_it(
    tmp_path: Path, slurm_env: SlurmEnv, sched: SchedulerLog
) -> None:
    store = make_sweep(tmp_path, command_tasks([LEAVES_BEHIND] * 2))
    run_hpc(store, hpc_spec(slurm_env))
    check_nothing_left_behind(store)


def test_a_tasks_own_result_json_neither_forges_nor_fails_it(
    tmp_path: Path, slurm_env: SlurmEnv, sched: SchedulerLog
) -> None:
    """The job wrapper's exit record decides; the task's own result.json stays as it
    wrote it (the wrapper used to overwrite it, and to trust it; issue 11, item 5)."""
    store = make_sweep(tmp_path, own_result_tasks())
    run_hpc(store, hpc_spec(slurm_env))
    check_own_results(store)


@pytest.mark.timeout(240)
# A task over its time limit: tests/integration/test_hpc_resume.py (FAILED once
# max_num_timeout time limits are used up, and resumed before that).


# ------------------------------------------------------ lost and re-queued


def test_job_cancelled_outside_hsm_is_lost_and_run_again(
    tmp_path: Path, slurm_env: SlurmEnv, sched: SchedulerLog
) -> None:
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", FIRST_SLOW, "120"]]))
    tdir = store.task_dir(store.tasks()[0])

    async def scenario() -> tuple[RunOutcome, str]:
        ctx = context_for(store)
        spec = hpc_spec(slurm_env)
        run = asyncio.create_task(
            run_sweep(
                store,
                ctx,
                [spec],
                RunOptions(),
                sources=[HPCSource(spec, ctx)],
                handle_signals=False,
            )
        )
        deadline = time.monotonic() + 60
        # The task itself is under way (its marker made), not just the job's wrapper.
        while (jid := started_job(tdir)) is None or not (tdir / "marker").exists():
            assert time.monotonic() < deadline, "the task never started"
            await asyncio.sleep(0.1)
        scancel = await asyncio.create_subprocess_exec("scancel", jid)
        assert await scancel.wait() == 0
        return await asyncio.wait_for(run, 120), jid

    out, killed = asyncio.run(scenario())
    attempts = store.attempts(store.tasks()[0].key)
    assert [a.state for a in attempts] == [TaskState.LOST, TaskState.COMPLETED]
    assert "cancelled outside hsm" in (attempts[0].error or "")
    assert attempts[0].handle == killed and attempts[1].handle != killed
    assert (tdir / "stdout.log").read_text().strip() == "again"
    assert out.ok


@pytest.mark.timeout(240)
def test_stopped_node_daemon_makes_tasks_lost_and_they_run_again(
    tmp_path: Path, slurm_env: SlurmEnv, sched: SchedulerLog
) -> None:
    if os.geteuid() != 0:
        pytest.skip("stopping slurmd needs root")
    slurmd = int(slurm_env.pid_files["slurmd"].read_text().strip())
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", FIRST_SLOW, "300"]]))
    tdir = store.task_dir(store.tasks()[0])
    frozen = False

    async def freeze_node_while_it_runs() -> None:
        nonlocal frozen
        deadline = time.monotonic() + 60
        while started_job(tdir) is None or not (tdir / "marker").exists():
            assert time.monotonic() < deadline, "the task never started"
            await asyncio.sleep(0.1)
        os.kill(slurmd, signal.SIGSTOP)  # the node stops answering slurmctld
        frozen = True
        # Slurm declares the node down after SlurmdTimeout (10 s here) and ends its
        # jobs as NODE_FAIL; hsm must see LOST and submit the task again. The new
        # attempt can only run once the node is back.
        deadline = time.monotonic() + 120
        while not (tdir / "attempt_1").exists():
            assert time.monotonic() < deadline, "the lost attempt was never re-queued"
            await asyncio.sleep(0.2)
        os.kill(slurmd, signal.SIGCONT)
        frozen = False

    async def scenario() -> RunOutcome:
        ctx = context_for(store)
        spec = hpc_spec(slurm_env, poll_interval=1)
        run = asyncio.create_task(
            run_sweep(
                store,
                ctx,
                [spec],
                RunOptions(),
                sources=[HPCSource(spec, ctx)],
                handle_signals=False,
            )
        )
        await freeze_node_while_it_runs()
        return await asyncio.wait_for(run, 120)

    try:
        out = asyncio.run(scenario())
    finally:
        if frozen:
            os.kill(slurmd, signal.SIGCONT)
        wait_for(_node_ready, timeout=60, message="the node to be back in service")
    attempts = store.attempts(store.tasks()[0].key)
    assert [a.state for a in attempts] == [TaskState.LOST, TaskState.COMPLETED], attempts
    assert "NODE_FAIL" in (attempts[0].error or "")
    assert out.ok


def _node_ready() -> bool:
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return done.stdout.strip() in ("idle", "mix", "alloc")


# ------------------------------------------------------------------ cancel


def _start_long_sweep(
    tmp_path: Path, slurm_env: SlurmEnv, n: int, sweep_id: str
) -> subprocess.Popen[str]:
    """`hsm run` of n tasks that would run for minutes, two at a time, on the cluster."""
    (tmp_path / "hsm.yaml").write_text(
        yaml.safe_dump(
            {"sources": {"cluster": {"type": "hpc", "partition": slurm_env.partition, **FAST}}}
        )
    )
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump(
            {"grid": {"i": list(range(n))}, "command": [PY, "-c", "import time; time.sleep(300)"]}
        )
    )
    return hsm_popen(
        "run", "-c", "s.yaml", "-s", "hpc:cluster:2", "--sweep-id", sweep_id, "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip


def test_hsm_cancel_leaves_no_job_of_the_sweep_in_the_queue(
    tmp_path: Path, slurm_env: SlurmEnv, sched: SchedulerLog
) -> None:
    proc = _start_long_sweep(tmp_path, slurm_env, 6, "cx")
    try:
        name = "hsm-cx"
        # Two run (the `%2` throttle), four wait in the queue.
        wait_for(lambda: len(squeue_ids(name)) >= 3, timeout=60, message="jobs in the queue")
        sweep_dir = tmp_path / "sweeps" / "outputs" / "cx"
        wait_for(
            lambda: len(list(sweep_dir.glob(f"tasks/*/{START_FILE}"))) == 2,
            timeout=60,
            message="two tasks running",
        )
        res = hsm("cancel", "cx", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Running jobs pass through COMPLETING (Slurm's KillWait) before they leave.
    wait_for(lambda: squeue_ids("hsm-cx") == [], timeout=20, message="the queue to empty")
    store = SweepStore.open(tmp_path / "sweeps" / "outputs" / "cx", readonly=True)
    assert set(states(store).values()) == {TaskState.CANCELLED}
    assert sched.count("scancel") == 1  # one call for the whole sweep


# ------------------------------------------------------- scheduler pacing


@pytest.mark.parametrize("n", [3, 30])
def test_one_status_query_per_poll_cycle_whatever_the_sweep_size(
    n: int, tmp_path: Path, slurm_env: SlurmEnv, sched: SchedulerLog
) -> None:
    body = "import time; time.sleep(1.5)"
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", body]] * n))
    out, src = run_hpc(store, hpc_spec(slurm_env, slots=16, poll_min=0.5, poll_interval=1))
    assert out.ok, out.counts
    status_calls = sched.count("sacct") + sched.count("squeue")
    assert status_calls == src.stats["queries"]  # never more than one per query cycle
    assert src.stats["queries"] <= src.stats["scans"]
    assert sched.count("sbatch") == 1
    assert sched.count("scancel") == 0
    # The whole sweep: start-up check (sinfo) + one sbatch + the paced queries.
    assert sched.count("sinfo") == 1
    per_cycle = [len(c) for c in _sacct_id_lists(sched)]
    assert all(k == 1 for k in per_cycle)  # one array id, however many tasks


def test_freed_slots_are_refilled_in_arrays_of_min_refill_not_one_per_poll_cycle(
    tmp_path: Path, slurm_env: SlurmEnv, sched: SchedulerLog
) -> None:
    # 45 tasks, 24 handed out at once, 3 running: each poll cycle frees a few slots.
    # Refilled as they free, that was an sbatch per cycle (9 here; 454 arrays for 3,987
    # tasks at max_queued 1000); held while the scheduler still has 12 waiting, it is
    # the first array and a few refills of about 10.
    store = make_sweep(tmp_path, command_tasks([["true"]] * 45))
    spec = hpc_spec(slurm_env, slots=3, max_queued=24, min_refill=12, poll_interval=1)
    out, src = run_hpc(store, spec)
    assert out.ok, out.counts
    sizes = [len(c) for c in _sbatch_arrays(tmp_path)]
    assert sched.count("sbatch") == src.stats["submits"] <= 5, sizes
    assert sizes[0] == 24 and sum(sizes) == 45, sizes


def _sbatch_arrays(tmp_path: Path) -> list[list[str]]:
    """Task keys of each array the source submitted, from its ledger, in order."""
    ledger = next((tmp_path / "t").rglob("jobs.jsonl"), None)
    assert ledger is not None
    arrays: dict[str, list[str]] = {}
    for line in ledger.read_text().splitlines():
        rec = json.loads(line)
        arrays.setdefault(rec["job"].split("_")[0], []).append(rec["key"])
    return [arrays[k] for k in sorted(arrays, key=int)]


def _sacct_id_lists(sched: SchedulerLog) -> list[list[str]]:
    out = []
    for call in sched.calls("sacct"):
        out.append([call[i + 1] for i, w in enumerate(call) if w == "-j"])
    return out


# A task held until the test opens its gate: "fail" tasks wait for `fail` and exit 1 on
# their first attempt, and wait for `go` on their retry; "hold" tasks wait for `drain`.
# (The wait is bounded, so that a failed test leaves no job behind.)
GATED = (
    "import os, sys, time\n"
    "kind, gates = sys.argv[1], sys.argv[2]\n"
    "retry = os.environ['HSM_ATTEMPT'] != '1'\n"
    "gate = {'fail': 'go' if retry else 'fail', 'hold': 'drain'}[kind]\n"
    "t = time.time()\n"
    "while not os.path.exists(os.path.join(gates, gate)):\n"
    "    if time.time() - t > 300: sys.exit(2)\n"
    "    time.sleep(0.1)\n"
    "sys.exit(1 if gate == 'fail' else 0)\n"
)


def test_a_later_array_gets_the_rest_of_the_cap_and_more_once_others_drain(
    tmp_path: Path, slurm_env: SlurmEnv
) -> None:
    # Cap 4. Tasks 1-4 fail together and are retried as a second array while tasks 5-8 of
    # the first hold the cap: the retries get what the cap leaves (%1). Once the first
    # array drains, the retries are raised to the whole cap. Asserted on Slurm's own
    # state (scontrol, squeue) at each step, the tasks held by gates the test opens.
    gates = tmp_path / "gates"
    gates.mkdir()
    argvs = [[PY, "-c", GATED, kind, str(gates)] for kind in ["fail"] * 4 + ["hold"] * 4]
    store = make_sweep(tmp_path, command_tasks(argvs))
    # A wide batch window: the four failures, read in one or two scans, are one array.
    spec = hpc_spec(slurm_env, slots=4, batch_window=3)
    ledger = tmp_path / "t" / "scripts" / spec.name / "jobs.jsonl"

    def arrays(attempt: int) -> dict[str, int]:
        """Array id -> how many tasks of the given attempt it has, from the source's ledger."""
        out: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in ledger.read_text().splitlines():
                rec = json.loads(line)
                if rec["attempt"] == attempt:
                    array = rec["job"].split("_")[0]
                    out[array] = out.get(array, 0) + 1
        return out

    def until(what: str, check: Any, seen: Any = lambda: "") -> None:
        # Generous: the shared test Slurm's node may be busy with other runs' jobs.
        deadline = time.monotonic() + 180
        while not check():
            assert not run.done(), f"the sweep ended before {what}: {run.result()[0].counts}"
            assert time.monotonic() < deadline, f"not within 180 s: {what} {seen()}"
            time.sleep(0.3)

    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_hpc, store, spec, max_retries=1)
        try:
            # Tasks 1-4 (the lowest indices of the %4 array) run, then fail at once.
            until("the first array submitted", lambda: len(arrays(1)) == 1)
            (first,) = arrays(1)
            in_first = partial(_array_states, first)
            until("tasks 1-4 running", lambda: _running(in_first(), first, 0, 4), in_first)
            (gates / "fail").touch()
            until("4 retries submitted", lambda: sum(arrays(2).values()) == 4, lambda: arrays(2))
            assert len(arrays(2)) == 1, f"the retries were split into arrays: {arrays(2)}"
            (retry,) = arrays(2)
            in_retry = partial(_array_states, retry)
            # Tasks 5-8 run (they hold the cap); the retries wait in Slurm, throttled
            # to what the cap leaves: 1 running, 3 pending.
            until("tasks 5-8 running", lambda: _running(in_first(), first, 4, 8), in_first)
            assert _throttle(retry) == 1
            held = ["PENDING"] * 3 + ["RUNNING"]
            until(
                "one retry running, 3 held", lambda: sorted(in_retry().values()) == held, in_retry
            )
            assert _running(in_first(), first, 4, 8)  # still: the cap is shared
            # The first array drains: the retries get the whole cap.
            (gates / "drain").touch()
            until("all 4 retries running", lambda: _running(in_retry(), retry, 0, 4), in_retry)
            assert _throttle(retry) == 4
        finally:
            for gate in ("fail", "drain", "go"):
                (gates / gate).touch()
            out, _ = run.result(timeout=300)
    assert out.ok, out.counts
    assert [len(store.attempts(t.key)) for t in store.tasks()] == [2] * 4 + [1] * 4


def _array_states(array_id: str) -> dict[str, str]:
    """Slurm's state of each task of the array still in its queue, by job id (A_i)."""
    argv = ["squeue", "-h", "-r", "-j", array_id, "-o", "%i %T"]
    done = subprocess.run(argv, capture_output=True, text=True)
    return dict(line.split() for line in done.stdout.splitlines() if line.strip())


def _running(states: dict[str, str], array_id: str, lo: int, hi: int) -> bool:
    """Tasks lo..hi-1 of the array are RUNNING."""
    return all(states.get(f"{array_id}_{i}") == "RUNNING" for i in range(lo, hi))


def _throttle(array_id: str) -> int:
    """The array's `%` limit, as Slurm holds it."""
    argv = ["scontrol", "show", "job", array_id]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    found = set(re.findall(r"ArrayTaskThrottle=(\d+)", done.stdout))
    assert len(found) == 1, done.stdout
    return int(found.pop())


def test_hsm_cancel_without_its_orchestrator_still_empties_the_queue(
    tmp_path: Path, slurm_env: SlurmEnv, sched: SchedulerLog
) -> None:
    proc = _start_long_sweep(tmp_path, slurm_env, 5, "oc")
    sweep_dir = tmp_path / "sweeps" / "outputs" / "oc"
    try:
        wait_for(
            lambda: len(list(sweep_dir.glob(f"tasks/*/{START_FILE}"))) == 2,
            timeout=60,
            message="two tasks running",
        )
    finally:
        proc.send_signal(signal.SIGKILL)  # gone without cancelling anything
        proc.wait()
    assert len(squeue_ids("hsm-oc")) == 5
    res = hsm("cancel", "oc", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: squeue_ids("hsm-oc") == [], timeout=30, message="the queue to empty")
    store = SweepStore.open(sweep_dir, readonly=True)
    assert set(states(store).values()) == {TaskState.CANCELLED}


# -------------------------------------------------------------- re-attach


def test_restarted_orchestrator_reattaches_instead_of_running_again(
    tmp_path: Path, slurm_env: SlurmEnv, sched: SchedulerLog
) -> None:
    (tmp_path / "hsm.yaml").write_text(
        yaml.safe_dump(
            {"sources": {"cluster": {"type": "hpc", "partition": slurm_env.partition, **FAST}}}
        )
    )
    gate = tmp_path / "gate"
    wait_gate = (
        "import os, sys, time\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.1)\n"
        "print('done', sys.argv[1])\n"
    )
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump({"grid": {"i": [1, 2, 3]}, "command": [PY, "-c", wait_gate, "{i}"]})
    )
    proc = hsm_popen(
        "run",
        "-c",
        "s.yaml",
        "-s",
        "hpc:cluster:2",
        "--sweep-id",
        "ra",
        "--no-progress",
        cwd=tmp_path,
    )
    sweep_dir = tmp_path / "sweeps" / "outputs" / "ra"
    try:
        wait_for(
            lambda: len(list(sweep_dir.glob(f"tasks/*/{START_FILE}"))) == 2,
            timeout=60,
            message="two tasks running",
        )
    finally:
        proc.send_signal(signal.SIGKILL)  # the orchestrator dies; its jobs do not
        proc.wait()
    assert sched.count("sbatch") == 1
    gate.write_text("")
    res = hsm("complete", "ra", "-s", "cluster", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    store = SweepStore.open(sweep_dir, readonly=True)
    assert set(states(store).values()) == {TaskState.COMPLETED}
    for task in store.tasks():
        assert [a.attempt for a in store.attempts(task.key)] == [1]  # nothing ran twice
        assert (store.task_dir(task) / "stdout.log").read_text().split()[0] == "done"
    assert sched.count("sbatch") == 1


# ----------------------------------------------------------------- health


def test_health_check_reports_partitions_and_jobs(tmp_path: Path, slurm_env: SlurmEnv) -> None:
    store = make_sweep(tmp_path, [])
    src = HPCSource(hpc_spec(slurm_env), context_for(store))
    report = asyncio.run(src.health_check())
    assert report.ok, report.detail
    assert f"{slurm_env.partition}*" in report.detail and "your jobs" in report.detail
    bad = HPCSource(hpc_spec(slurm_env, partition="nosuch"), context_for(store))
    report = asyncio.run(bad.health_check())
    assert not report.ok and "'nosuch' not found" in report.detail


# ---------------------------------------------------------- remote login node


def test_cluster_reached_over_ssh_submits_there_and_brings_results_back(
    tmp_path: Path, slurm_env: SlurmEnv, ssh_env: SSHEnv, sched: SchedulerLog
) -> None:
    """hsm here, the login node behind ssh (loopback host h1, user `sweeper`): the same
    backend submits to the Slurm there; the task folders come back by SFTP."""
    host = ssh_env.host("h1")
    project = f"{host.project_dir}/hpc_{uuid.uuid4().hex[:10]}"
    mkdir = subprocess.run(
        ["ssh", "-F", str(ssh_env.ssh_config), "h1", f"mkdir -p {shlex.quote(project)}"],
        capture_output=True,
        text=True,
    )
    assert mkdir.returncode == 0, mkdir.stderr
    script = (
        "import json, os, sys\n"
        "seen = {k: os.environ.get(k) for k in ('HSM_TASK_ID', 'HSM_TASK_DIR', 'USER')}\n"
        "seen['cwd'] = os.getcwd(); seen['arg'] = sys.argv[1]\n"
        "out = os.path.join(os.environ['HSM_TASK_DIR'], 'results', 'e.json')\n"
        "json.dump(seen, open(out, 'w'))\n"
        "print('hello from', sys.argv[1]); sys.exit(0 if sys.argv[1] != 'bad' else 5)\n"
    )
    values = ["a b", "it's", "bad"]
    store = make_sweep(tmp_path, command_tasks([[host.python, "-c", script, v] for v in values]))
    spec = SourceSpec(
        "cluster",
        "hpc",
        4,
        {
            "partition": slurm_env.partition,
            **FAST,
            "ssh": {"host": "h1", "ssh_config": str(ssh_env.ssh_config)},
            "project_dir": project,
            "python": host.python,
        },
    )
    _, src = run_hpc(store, spec, max_retries=1)  # "bad" fails twice: fetched twice
    assert states(store) == {1: TaskState.COMPLETED, 2: TaskState.COMPLETED, 3: TaskState.FAILED}
    assert src.cluster_sweep_dir == f"{project}/sweeps/outputs/t"
    for value, task in zip(values, store.tasks(), strict=True):
        tdir = store.task_dir(task)  # the local copy, fetched by SFTP
        assert (tdir / "stdout.log").read_text() == f"hello from {value}\n"
        seen = json.loads((tdir / "results" / "e.json").read_text())
        assert seen["arg"] == value and seen["USER"] == host.user
        assert seen["cwd"] == project
        assert seen["HSM_TASK_DIR"] == f"{project}/sweeps/outputs/t/tasks/{task.name}"
    bad = store.latest_attempts()[store.tasks()[2].key]
    assert bad.exit_code == 5 and bad.attempt == 2
    first = store.task_dir(store.tasks()[2]) / "attempt_1"
    assert (first / "stdout.log").read_text() == "hello from bad\n"  # kept, and fetched
    # Every scheduler command ran on the login node, none here.
    assert sched.calls() == []


def test_array_limit_follows_the_clusters_max_array_size(
    tmp_path: Path, slurm_env: SlurmEnv
) -> None:
    """An `array_limit` above the cluster's MaxArraySize would have every array refused:
    the source asks the cluster (once, at start) and splits under it."""
    done = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    [size] = [int(ln.split("=")[1]) for ln in done.stdout.splitlines() if "MaxArraySize" in ln]
    store = make_sweep(tmp_path, command_tasks([["true"]]))
    src = HPCSource(hpc_spec(slurm_env, array_limit=size * 10), context_for(store))

    async def start_and_close() -> None:
        await src.start(lambda ev: None)
        await src.close()

    asyncio.run(start_and_close())
    assert src.opts.array_limit == size - 1
    store.close()
