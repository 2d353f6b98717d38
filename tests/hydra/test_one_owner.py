"""One owner per Hydra sweep dir, and interrupts under any sweeper: a real Hydra app
(apps/marker.py) run as a subprocess. Each job appends its x to a log when it finishes,
so a job that finished twice shows up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm_core.hydra.job import read_info
from hsm_core.ownership import holder
from hsm_core.store import SweepStore
from hsm_core.taskdir import WORKER_RECORD
from tests.helpers import wait_for
from tests.hydra.util import APPS, pid_alive, run_app, start_app
from tests.sweep_utils import hsm, hsm_popen

MARKER = APPS / "marker.py"


def _args(log: Path, n: int, sleep: float, sweeper: str, *extra: str) -> list[str]:
    return [
        "hydra/launcher=hsm",
        f"hydra/sweeper={sweeper}",
        "hydra.launcher.sources=local:2",
        "hydra.launcher.progress=false",
        f"x=range({n})",
        f"sleep={sleep}",
        f"log={log}",
        *extra,
    ]


def _finished(log: Path) -> Counter[str]:
    return Counter(log.read_text().split()) if log.exists() else Counter()


def _owned(sweep: Path) -> bool:
    try:
        return holder(sweep) is not None
    except LookupError:
        return False


@contextlib.contextmanager
def _app(args: list[str], sweep: Path) -> Iterator[subprocess.Popen[str]]:
    """The marker app running a multirun into `sweep`; killed (its whole session) if it
    still runs when the test leaves."""
    proc = start_app(MARKER, args, sweep_dir=sweep)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _refused(res: subprocess.CompletedProcess[str], owner_pid: int) -> None:
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Traceback" not in out, out
    assert f"is in use by pid {owner_pid} on " in out and "hsm cancel" in out, out


@pytest.mark.parametrize("sweeper", ["basic", "hsm"])
def test_the_same_multirun_twice_on_one_sweep_dir(tmp_path: Path, sweeper: str) -> None:
    """Before: every job ran twice (basic sweeper: 16 of 16; hsm sweeper: 16 of 16)."""
    sweep, log, go = tmp_path / "sweep", tmp_path / "finished.txt", tmp_path / "go"
    args = _args(log, 6, 0, sweeper, f"hold={go}")  # no job finishes before `go` exists
    with _app(args, sweep) as first:
        wait_for(lambda: _owned(sweep), timeout=60, message="the first owns the sweep")
        second = run_app(MARKER, args, sweep_dir=sweep)
        _refused(second, first.pid)
        go.touch()
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    assert _finished(log) == Counter({str(x): 1 for x in range(6)})
    store = SweepStore.open(sweep, readonly=True)
    assert all(len(store.attempts(t.key)) == 1 for t in store.tasks())


def test_hsm_complete_and_a_multirun_never_share_a_sweep(tmp_path: Path) -> None:
    """`hsm complete D` while the multirun runs, and the multirun while `hsm complete D`
    runs: the second comer is refused, nothing runs twice."""
    sweep, log, go = tmp_path / "sweep", tmp_path / "finished.txt", tmp_path / "go"
    args = _args(log, 6, 0, "hsm", f"hold={go}")  # no job finishes before `go` exists
    with _app(args, sweep) as first:
        wait_for(
            lambda: _owned(sweep) and (sweep / "sweep.db").exists(),
            timeout=60,
            message="the multirun owns the sweep",
        )
        busy = hsm("complete", str(sweep), cwd=tmp_path)
        _refused(busy, first.pid)
        os.killpg(first.pid, signal.SIGINT)
        first.communicate(timeout=60)
        assert first.returncode == 130
    completing = hsm_popen("complete", str(sweep), "-s", "local:2", cwd=tmp_path)
    try:
        wait_for(lambda: _owned(sweep), timeout=60, message="hsm complete owns the sweep")
        again = run_app(MARKER, args, sweep_dir=sweep)
        _refused(again, completing.pid)
        go.touch()
        out, err = completing.communicate(timeout=120)
        assert completing.returncode == 0, out + err
    finally:
        if completing.poll() is None:
            completing.kill()
            completing.wait()
    assert _finished(log) == Counter({str(x): 1 for x in range(6)})


@pytest.mark.parametrize("how", ["INT", "TERM", "HUP", "hsm cancel"])
def test_interrupt_under_the_basic_sweeper_prints_the_summary_and_exits_130(
    tmp_path: Path, how: str
) -> None:
    """Before: INT and TERM printed a 30-line SweepInterrupted traceback and exited 1;
    HUP exited 129 with no summary."""
    sweep, log = tmp_path / "sweep", tmp_path / "finished.txt"
    with _app(_args(log, 8, 1.0, "basic"), sweep) as proc:
        wait_for(lambda: len(_finished(log)) >= 2, timeout=60, message="two jobs done")
        if how == "hsm cancel":
            res = hsm("cancel", str(sweep), cwd=tmp_path)
            assert res.returncode == 0 and "orchestrator stopped" in res.stdout, res.stderr
        elif how == "INT":
            os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C
        else:
            os.kill(proc.pid, getattr(signal, f"SIG{how}"))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err and "SweepInterrupted" not in out + err
    assert "hsm sweep: 8 jobs:" in out and "cancelled" in out
    assert f"hsm complete {sweep}" in out  # what finishes it
    store = SweepStore.open(sweep, readonly=True)
    states = {a.state.value for a in store.latest_attempts().values()}
    assert states <= {"COMPLETED", "CANCELLED"}, states
    store.close()
    done = hsm("complete", str(sweep), "-s", "local:2", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # A job cancelled after its last line but before it returned runs again (it did not
    # finish); nothing runs after it completed, and no attempt runs twice.
    store = SweepStore.open(sweep, readonly=True)
    finished = _finished(log)
    for task in store.tasks():
        attempts = store.attempts(task.key)
        assert attempts[-1].state.value == "COMPLETED", attempts
        assert 1 <= finished[str(task.params["x"])] <= len(attempts), (task.params, attempts)


def test_batches_of_a_sweeper_keep_the_sweep_owned_between_them(tmp_path: Path) -> None:
    """Hydra's basic sweeper with max_batch_size calls the launcher once per batch: the
    sweep stays owned from the first batch to the end, never free in between."""
    sweep, log = tmp_path / "sweep", tmp_path / "finished.txt"
    args = _args(log, 6, 0.3, "basic", "hydra.sweeper.max_batch_size=2")
    proc = start_app(MARKER, args, sweep_dir=sweep)
    samples: list[bool] = []  # owned or not, from the first time it is owned

    def watch() -> None:
        while proc.poll() is None:
            owned = _owned(sweep)
            if owned or samples:
                samples.append(owned)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        watcher.join()
    assert proc.returncode == 0, err
    assert samples and samples[0]
    # Free once the multirun is over, never free and then owned again (between batches).
    first_free = samples.index(False) if False in samples else len(samples)
    assert all(not owned for owned in samples[first_free:]), samples
    assert _finished(log) == Counter({str(x): 1 for x in range(6)})


def test_a_job_cancelled_after_it_finished_is_completed_not_run_again(tmp_path: Path) -> None:
    """The job returned and hsm's worker recorded it; Ctrl-C reaches it while its process
    ends. Before: CANCELLED, and run a second time by `hsm complete`."""
    sweep, log = tmp_path / "sweep", tmp_path / "finished.txt"
    with _app(_args(log, 1, 0, "hsm", "linger=20"), sweep) as proc:
        record = sweep / "tasks" / "task_001" / WORKER_RECORD  # written once the job returned
        wait_for(record.exists, timeout=60, message="the job returned")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    store = SweepStore.open(sweep, readonly=True)
    assert [a.state.value for a in store.latest_attempts().values()] == ["COMPLETED"]
    store.close()
    again = hsm("complete", str(sweep), cwd=tmp_path)
    assert again.returncode == 0 and "nothing to complete" in again.stdout
    assert _finished(log) == Counter({"0": 1})


@pytest.mark.parametrize("then", ["hsm complete", "the same multirun"])
def test_jobs_that_finished_as_their_launcher_died_never_run_again(
    tmp_path: Path, then: str
) -> None:
    """The launcher is frozen while its jobs finish (the fork server reaps them), then
    SIGKILLed: the journal still says RUNNING (or ASSIGNED). Before: `hsm complete` and the same
    multirun ran all 4 finished jobs again (in 9 of 10 random kills, 1 to 4 jobs)."""
    sweep, log, go = tmp_path / "sweep", tmp_path / "finished.txt", tmp_path / "go"
    args = _args(log, 4, 0, "hsm", f"hold={go}", "hydra.launcher.sources=local:4")
    with _app(args, sweep) as proc:
        folders = [sweep / "tasks" / f"task_{n:03d}" for n in range(1, 5)]

        def job_pids() -> list[int]:
            infos = [read_info(f) for f in folders]
            return [int(i["pid"]) for i in infos if i and i.get("pid")]

        def ended() -> bool:
            done = all((f / WORKER_RECORD).exists() for f in folders)
            return done and not any(pid_alive(p) for p in job_pids())

        wait_for(lambda: len(job_pids()) == 4, timeout=60, message="4 jobs started")
        os.kill(proc.pid, signal.SIGSTOP)  # it can no longer journal anything
        go.touch()
        wait_for(ended, timeout=60, message="the jobs finished and exited")
        proc.kill()
        proc.communicate(timeout=30)
    store = SweepStore.open(sweep, readonly=True)
    assert {a.state.value for a in store.latest_attempts().values()} <= {"ASSIGNED", "RUNNING"}
    store.close()
    if then == "hsm complete":
        res = hsm("complete", str(sweep), "-s", "local:4", cwd=tmp_path)
    else:
        res = run_app(MARKER, args, sweep_dir=sweep)
    assert res.returncode == 0, res.stdout + res.stderr
    store = SweepStore.open(sweep, readonly=True)
    assert {a.state.value for a in store.latest_attempts().values()} == {"COMPLETED"}
    assert all(len(store.attempts(t.key)) == 1 for t in store.tasks())
    assert _finished(log) == Counter({str(x): 1 for x in range(4)})


def test_a_job_being_recorded_when_its_launcher_dies_is_not_run_again(tmp_path: Path) -> None:
    """The job returned; Hydra's on_job_end callbacks and hsm's records are still being
    written when the launcher is SIGKILLed and its fork server stops the job. Before: the
    stop killed it there, nothing said it had finished, and `hsm complete` ran it again."""
    sweep, log = tmp_path / "sweep", tmp_path / "finished.txt"
    slow = ["end_delay=1", "+hydra.callbacks.slow._target_=__main__.SlowEnd"]
    with _app(_args(log, 1, 0, "hsm", *slow), sweep) as proc:
        wait_for(lambda: _finished(log), timeout=60, message="the job returned")
        proc.kill()
        proc.communicate(timeout=30)
    done = hsm("complete", str(sweep), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    store = SweepStore.open(sweep, readonly=True)
    assert [len(store.attempts(t.key)) for t in store.tasks()] == [1]
    assert _finished(log) == Counter({"0": 1})
