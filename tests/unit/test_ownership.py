"""One owner per sweep folder: the lock itself, with real processes (fork, SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm_core import ownership
from hsm_core.ownership import LOCK_NAME, Owner, SweepBusy, acquire, holder
from tests.helpers import wait_for

# A process that takes the sweep, forks a child that outlives it, then waits to be killed.
OWNER = textwrap.dedent(
    """
    import os, sys, time
    from hsm_core import ownership
    lock = ownership.acquire(sys.argv[1], "owner under test", make_dir=True)
    pid = os.fork()
    if pid == 0:  # a forked job: it lives on after its parent dies
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def owner_proc(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "sweep")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    yield proc, child
    for pid in (proc.pid, child):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _acquire_elsewhere(sweep: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from hsm_core import ownership; ownership.acquire(sys.argv[1])"
    return subprocess.run([sys.executable, "-c", code, str(sweep)], capture_output=True, text=True)


def _alive(pid: int) -> bool:
    from hsm_core.procs import pid_alive

    return pid_alive(pid)


def test_a_second_owner_in_the_same_process_is_refused(tmp_path: Path) -> None:
    lock = acquire(tmp_path, "first")
    try:
        with pytest.raises(SweepBusy) as info:
            acquire(tmp_path, "second")
        assert info.value.owner.pid == os.getpid()
        assert "first" in str(info.value) and "hsm cancel" in str(info.value)
    finally:
        lock.release()
    with acquire(tmp_path, "third") as again:
        assert again.owner.command == "third"
    assert holder(tmp_path) is None


def test_another_process_sees_the_owner_and_is_refused(
    tmp_path: Path, owner_proc: tuple[subprocess.Popen[str], int]
) -> None:
    proc, _ = owner_proc
    sweep = tmp_path / "sweep"
    found = holder(sweep)
    assert found is not None and found.pid == proc.pid and found.command == "owner under test"
    assert found.alive_here()
    with pytest.raises(SweepBusy, match=f"pid {proc.pid} on .* since .*owner under test"):
        acquire(sweep)


def test_the_kernel_drops_the_lock_when_the_owner_dies_even_with_a_forked_child_alive(
    tmp_path: Path, owner_proc: tuple[subprocess.Popen[str], int]
) -> None:
    """A forked job (fork server, Hydra job, a task's own fork) inherits the descriptor;
    it must not keep the sweep locked once its orchestrator is gone."""
    proc, child = owner_proc
    sweep = tmp_path / "sweep"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _alive(child)
    wait_for(lambda: holder(sweep) is None, timeout=5, message="the lock dropped")
    with acquire(sweep, "next") as lock:
        assert lock.owner.pid == os.getpid()


def test_closing_another_descriptor_of_the_file_keeps_the_lock(tmp_path: Path) -> None:
    """A classic fcntl lock would be dropped by any close() of the file in its process
    (a walk that reads every file of the folder)."""
    lock = acquire(tmp_path, "owner")
    try:
        with open(tmp_path / LOCK_NAME, "rb") as f:
            f.read()
        probe = _acquire_elsewhere(tmp_path)
        assert probe.returncode != 0 and "SweepBusy" in probe.stderr
    finally:
        lock.release()


def test_an_idle_lock_is_taken_over_in_this_process_only(tmp_path: Path) -> None:
    """The launcher between two batches: its process keeps the sweep."""
    lock = acquire(tmp_path, "batch 1")
    lock.release(keep=True)
    assert not ownership.held_here(tmp_path)
    probe = _acquire_elsewhere(tmp_path)
    assert probe.returncode != 0 and "batch 1" in probe.stderr
    again = acquire(tmp_path, "batch 2")
    assert again is lock and again.owner.command == "batch 2" and ownership.held_here(tmp_path)
    again.release()
    assert holder(tmp_path) is None


def test_a_recycled_pid_is_not_the_recorded_process() -> None:
    me = Owner.here("x")
    assert me.alive_here()
    other = subprocess.Popen(["sleep", "30"])
    try:
        recycled = Owner(other.pid, me.start, me.boot, me.host, me.since, me.command)
        assert not recycled.alive_here()  # alive, but not the process that was recorded
        assert not ownership.running(Path("/nonexistent"), recycled.to_json())
    finally:
        other.kill()
        other.wait()


def test_status_of_a_sweep_without_a_lock_file_falls_back_on_the_record(tmp_path: Path) -> None:
    assert ownership.running(tmp_path, Owner.here().to_json())
    assert not ownership.running(tmp_path, None)
