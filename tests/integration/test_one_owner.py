"""One owner per sweep folder, as users meet it: two terminals, the same command twice, a
recycled pid, a closed terminal. Real `hsm` processes; each task proves how often it ran
by appending a line to a shared file (O_APPEND: lines never mix)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import yaml

from hsm_core.model import TaskState
from hsm_core.ownership import LOCK_NAME, holder
from hsm_core.store import SweepStore
from tests.sweep_utils import PY, hsm, hsm_popen, wait_for


def _sweep_file(tmp_path: Path, n: int, seconds: float) -> Path:
    ran = tmp_path / "ran.txt"
    ran.touch()
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "grid": {"i": list(range(n))},
                "command": ["sh", "-c", f'echo "$0" >> {ran}; sleep {seconds}', "{i}"],
            }
        )
    )
    return path


def _runs(tmp_path: Path) -> Counter[str]:
    return Counter((tmp_path / "ran.txt").read_text().split())


def _pending_sweep(tmp_path: Path, n: int, seconds: float) -> Path:
    """A sweep whose tasks are all PENDING (made without running it)."""
    from hsm_core.store import SweepStore as Store
    from hsm_core.sweepfile import load_sweep_file

    definition = load_sweep_file(_sweep_file(tmp_path, n, seconds))
    sweep_dir = tmp_path / "sweeps" / "outputs" / "s"
    Store.create(
        sweep_dir,
        sweep_id="s",
        kind="command",
        config=definition.raw,
        project_root=tmp_path,
        tasks=definition.to_tasks(),
    ).close()
    return sweep_dir


def _one_line_naming_the_owner(stderr: str, owner_pid: int) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert f"is in use by pid {owner_pid} on " in lines[0] and "hsm cancel" in lines[0], stderr


def test_two_hsm_complete_at_once_run_each_task_once(tmp_path: Path) -> None:
    """Before: both ran every task (each twice, in the same folders), both exited 0."""
    sweep_dir = _pending_sweep(tmp_path, 12, 0.5)
    procs = [hsm_popen("complete", "s", "-s", "local:3", cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    _one_line_naming_the_owner(outs[loser][1], procs[winner].pid)
    assert "complete s -s local:3" in outs[loser][1]
    assert _runs(tmp_path) == Counter({str(i): 1 for i in range(12)})
    store = SweepStore.open(sweep_dir, readonly=True)
    assert store.counts() == {TaskState.COMPLETED: 12}
    assert all(len(store.attempts(t.key)) == 1 for t in store.tasks())


def test_two_hsm_run_with_one_sweep_id(tmp_path: Path) -> None:
    """Before: in 7 of 20 pairs a traceback, in 4 of 20 both crashed."""
    sweep = _sweep_file(tmp_path, 6, 0.5)
    for round_ in range(3):
        sweep_id = f"twin{round_}"
        argv = ["run", "-c", str(sweep), "-s", "local:3", "--sweep-id", sweep_id]
        procs = [hsm_popen(*argv, cwd=tmp_path) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert sorted(p.returncode for p in procs) == [0, 2], outs
        winner = 0 if procs[0].returncode == 0 else 1
        _one_line_naming_the_owner(outs[1 - winner][1], procs[winner].pid)
        store = SweepStore.open(tmp_path / "sweeps" / "outputs" / sweep_id, readonly=True)
        assert store.counts() == {TaskState.COMPLETED: 6}
        store.close()
    assert _runs(tmp_path) == Counter({str(i): 3 for i in range(6)})


def test_a_recycled_pid_is_not_taken_for_the_orchestrator(tmp_path: Path) -> None:
    """`hsm run` killed with SIGKILL; its pid now belongs to an unrelated process. Before:
    `hsm status` said running, `hsm complete` refused, `hsm cancel` killed that process."""
    sweep = _sweep_file(tmp_path, 8, 0.3)
    proc = hsm_popen("run", "-c", str(sweep), "-s", "local:2", "--sweep-id", "re", cwd=tmp_path)
    wait_for(lambda: len(_runs(tmp_path)) >= 2, timeout=60)
    proc.kill()
    proc.wait()
    sweep_dir = tmp_path / "sweeps" / "outputs" / "re"
    victim = subprocess.Popen(["sleep", "60"])
    try:
        store = SweepStore.open(sweep_dir)
        record = store.meta("orchestrator")
        assert record["pid"] == proc.pid and record["start"] and record["boot"]
        store.set_meta("orchestrator", {**record, "pid": victim.pid})  # the pid, recycled
        store.close()
        status = hsm("status", "re", "--json", cwd=tmp_path)
        assert json.loads(status.stdout)["active"] is False
        cancel = hsm("cancel", "re", cwd=tmp_path)
        assert cancel.returncode == 0 and "settled the journal" in cancel.stdout, cancel.stderr
        assert victim.poll() is None, "hsm cancel signalled an unrelated process"
        done = hsm("complete", "re", "-s", "local:2", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    finally:
        victim.kill()
        victim.wait()
    store = SweepStore.open(sweep_dir, readonly=True)
    assert store.counts() == {TaskState.COMPLETED: 8}


def test_cancel_signals_nobody_when_the_lock_holder_is_not_the_recorded_process(
    tmp_path: Path,
) -> None:
    sweep_dir = _pending_sweep(tmp_path, 2, 0.1)
    # Started first, in another clock tick: a recycled pid never shares the start time.
    victim = subprocess.Popen(["sleep", "60"])
    time.sleep(0.05)
    owner = subprocess.Popen(
        [PY, "-c", "import sys, time; from hsm_core import ownership; "
         "ownership.acquire(sys.argv[1]); print('ok', flush=True); time.sleep(60)",
         str(sweep_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ok"
        path = sweep_dir / LOCK_NAME
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "pid": victim.pid}))
        res = hsm("cancel", str(sweep_dir), cwd=tmp_path)
        assert res.returncode == 2 and f"not by pid {victim.pid} as recorded" in res.stderr
        assert victim.poll() is None and owner.poll() is None
    finally:
        for p in (owner, victim):
            p.kill()
            p.wait()


def test_status_and_monitor_read_while_the_owner_runs(tmp_path: Path) -> None:
    sweep = _sweep_file(tmp_path, 6, 5)
    proc = hsm_popen("run", "-c", str(sweep), "-s", "local:2", "--sweep-id", "ro", cwd=tmp_path)
    try:
        wait_for(lambda: len(_runs(tmp_path)) >= 2, timeout=60)
        sweep_dir = tmp_path / "sweeps" / "outputs" / "ro"
        assert holder(sweep_dir) is not None
        status = hsm("status", "ro", "--json", cwd=tmp_path)
        assert status.returncode == 0 and json.loads(status.stdout)["active"] is True
        watch = hsm("monitor", "watch", "ro", "--once", cwd=tmp_path)
        assert watch.returncode == 0, watch.stderr
        report = hsm("report", "ro", cwd=tmp_path)
        assert report.returncode == 0, report.stderr
        dry = hsm("complete", "ro", "--dry-run", cwd=tmp_path)
        assert dry.returncode == 0 and "running now" in dry.stdout, dry.stdout + dry.stderr
        busy = hsm("complete", "ro", cwd=tmp_path)
        _one_line_naming_the_owner(busy.stderr, proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def test_sighup_ends_hsm_run_like_sigterm(tmp_path: Path) -> None:
    """A closed terminal. Before: exit 129, no summary, tasks left RUNNING."""
    sweep = _sweep_file(tmp_path, 10, 30)
    proc = subprocess.Popen(
        [PY, "-m", "hsm_core.cli.main", "run", "-c", str(sweep), "-s", "local:2",
         "--sweep-id", "hup"],
        cwd=tmp_path,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path / ".state"), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    wait_for(lambda: len(_runs(tmp_path)) >= 2, timeout=60)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "cancelled" in out and "Traceback" not in err
    store = SweepStore.open(tmp_path / "sweeps" / "outputs" / "hup", readonly=True)
    assert store.counts() == {TaskState.CANCELLED: 10}
    assert store.meta("orchestrator") is None


def test_invalid_numbers_are_refused_before_anything_runs(tmp_path: Path) -> None:
    """`--max-parallel 0` used to wait forever."""
    sweep = _sweep_file(tmp_path, 2, 0)
    _pending_sweep(tmp_path, 2, 0)
    for args in (
        ["run", "-c", str(sweep), "--max-parallel", "0", "--sweep-id", "z"],
        ["run", "-c", str(sweep), "--max-parallel", "-1", "--sweep-id", "z"],
        ["complete", "s", "--max-parallel", "0"],
        ["complete", "s", "--max-parallel", "-1"],
        ["complete", "s", "--max-retries", "-1"],
        ["cancel", "s", "--timeout", "0"],
        ["status", "--limit", "0"],
    ):
        res = hsm(*args, cwd=tmp_path)
        flag = next(a for a in args if a.startswith("--max") or a in ("--timeout", "--limit"))
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and flag in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "sweeps" / "outputs" / "z").exists()
    assert _runs(tmp_path) == Counter()
