"""Big grids and wild --tasks: refused in one line, in bounded memory, and Ctrl-C works.

Every command here runs under an address-space limit, so that a command that expands a
grid or a range into memory fails (instead of swapping the machine) and the test with it.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import yaml

from hsm_core.store import SweepStore
from tests.helpers import wait_for
from tests.sweep_utils import PY

LIMIT = 1536 * 1024 * 1024  # bytes of address space for one hsm process


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def _env(cwd: Path) -> dict[str, str]:
    return {**os.environ, "XDG_STATE_HOME": str(cwd / ".state"), "COLUMNS": "200"}


def hsm(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "hsm_core.cli.main", *args],
        cwd=cwd,
        env=_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit,
    )


def popen(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "hsm_core.cli.main", *args],
        cwd=cwd,
        env=_env(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_limit,
    )


def grid(path: Path, axes: int, values: int = 10) -> Path:
    names = [f"p{a}" for a in range(axes)]
    doc = {
        "grid": {n: list(range(values)) for n in names},
        "command": ["true", *(f"{{{n}}}" for n in names)],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsm: error:"), res.stderr
    return lines[0]


def test_a_grid_over_the_cap_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    sweep = grid(tmp_path / "big.yaml", 7)  # 10,000,000 points
    start = time.monotonic()
    line = one_line_error(hsm("run", "-c", str(sweep), cwd=tmp_path))
    assert "10,000,000 points" in line and "--max-points 10000000" in line
    assert "--max-tasks" in line
    assert time.monotonic() - start < 30
    assert not (tmp_path / "sweeps").exists()


def test_max_tasks_expands_only_what_it_runs(tmp_path: Path) -> None:
    sweep = grid(tmp_path / "big.yaml", 9)  # 10**9 points
    res = hsm("run", "-c", str(sweep), "--max-tasks", "3", "--sweep-id", "m", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    store = SweepStore.open(tmp_path / "sweeps" / "outputs" / "m", readonly=True)
    assert [t.params for t in store.tasks()] == [
        {**{f"p{a}": 0 for a in range(8)}, "p8": i} for i in range(3)
    ]
    store.close()


def test_dry_run_of_a_huge_grid_streams_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    sweep = grid(tmp_path / "big.yaml", 7)
    proc = popen("run", "-c", str(sweep), "--dry-run", "--max-points", "10000000", cwd=tmp_path)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("10000000 tasks"), first
    assert proc.stdout.readline().startswith("task_001 ")  # printing, not expanding first
    proc.send_signal(signal.SIGINT)
    proc.stdout.close()
    assert proc.wait(timeout=20) in (130, 0, -signal.SIGINT)


def test_ctrl_c_while_a_big_sweep_is_stored_leaves_nothing(tmp_path: Path) -> None:
    sweep = grid(tmp_path / "big.yaml", 7)
    proc = popen(
        "run", "-c", str(sweep), "--max-points", "10000000", "--sweep-id", "big", cwd=tmp_path
    )
    folder = tmp_path / "sweeps" / "outputs" / "big"
    wait_for(lambda: (folder / ".sweep.db.new").exists(), timeout=60)
    time.sleep(0.5)  # well into the writing
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert not folder.exists()


def _small_sweep(tmp_path: Path) -> None:
    sweep = grid(tmp_path / "s.yaml", 1, 5)
    res = hsm("run", "-c", str(sweep), "--sweep-id", "c", cwd=tmp_path)
    assert res.returncode == 0, res.stderr


def test_tasks_ranges_are_checked_against_the_sweep(tmp_path: Path) -> None:
    _small_sweep(tmp_path)
    start = time.monotonic()
    line = one_line_error(hsm("complete", "c", "--tasks", "1-99999999999", cwd=tmp_path))
    assert "1-99999999999" in line and "numbered 1-5" in line
    assert time.monotonic() - start < 30
    assert "names no task" in one_line_error(hsm("complete", "c", "--tasks", "", cwd=tmp_path))
    assert "names no task" in one_line_error(hsm("complete", "c", "--tasks", " , ", cwd=tmp_path))
    for bad in ("x", "1-", "-3", "1-2-3", "1..3"):
        line = one_line_error(hsm("complete", "c", "--tasks", bad, cwd=tmp_path))
        assert "is not a task number or a range" in line, bad
    assert "runs backwards" in one_line_error(hsm("complete", "c", "--tasks", "4-2", cwd=tmp_path))
    line = one_line_error(hsm("complete", "c", "--tasks", "6", cwd=tmp_path))
    assert "no task number 6" in line and "numbered 1-5" in line
    line = one_line_error(hsm("complete", "c", "--tasks", "7-9", cwd=tmp_path))
    assert "no task in 7-9" in line
    res = hsm("complete", "c", "--tasks", "2-3,5", "--dry-run", cwd=tmp_path)
    assert res.returncode == 0 and "nothing to complete" in res.stdout, res.stderr
