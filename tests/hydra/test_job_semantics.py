"""What a job's own code may do and how hsm takes it, compared with Hydra's basic launcher:
sys.exit(), the global random generators, threads plus unpicklable globals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hsm_core.taskdir import WORKER_RECORD
from tests.hydra.util import APPS, HSM, ctrl_c_when, job_return, jobs, run_app, start_app


def _values(sweep: Path) -> list[dict]:
    return [job_return(j["dir"]).return_value for _, j in sorted(jobs(sweep).items())]


# ------------------------------------------------------------------- sys.exit
def test_sys_exit_zero_is_success_and_nonzero_a_clear_failure(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = run_app(APPS / "exits.py", [*HSM, "x=0,3"], sweep_dir=sweep)
    assert res.returncode == 1, res.stderr  # job x=3 failed, x=0 did not
    found = jobs(sweep)
    assert found[0]["state"] == "COMPLETED", found[0]
    assert found[0]["result"]["exit_code"] == 0
    assert job_return(found[0]["dir"]).return_value is None
    assert found[1]["state"] == "FAILED"
    assert found[1]["result"]["error"] == "JobExit: the job called sys.exit(3)"
    assert "1 of 2 jobs failed" in res.stderr
    assert "the job called sys.exit(3)" in res.stdout  # the summary's line for job #1


def test_sys_exit_zero_in_a_cold_worker(tmp_path: Path) -> None:
    """The worker (ssh, hpc, `hsm complete`) runs the same job from its payload."""
    sweep = tmp_path / "sweep"
    res = run_app(APPS / "exits.py", [*HSM, "x=0,3"], sweep_dir=sweep)
    assert res.returncode == 1, res.stderr
    codes = {}
    for num, job in jobs(sweep).items():
        task = job["dir"]
        (task / WORKER_RECORD).unlink()
        run = subprocess.run(
            [sys.executable, "-m", "hsm_core.hydra.worker", str(task / "hydra_job.pkl"), str(task)],
            cwd=APPS,
            capture_output=True,
            text=True,
            timeout=60,
        )
        codes[num] = (run.returncode, json.loads((task / WORKER_RECORD).read_text())["status"])
    assert codes == {0: (0, "COMPLETED"), 1: (1, "FAILED")}


# --------------------------------------------------------------- random state
def test_forked_jobs_draw_fresh_random_numbers(tmp_path: Path) -> None:
    """The app drew from the global generators before the sweep; every job then draws
    without seeding. Hydra's basic launcher gives each job other numbers; so must hsm."""
    sweep = tmp_path / "sweep"
    res = run_app(APPS / "draws.py", [*HSM, "x=1,2,3,4"], sweep_dir=sweep)
    assert res.returncode == 0, res.stderr
    values = _values(sweep)
    assert len({v["random"] for v in values}) == 4, values
    if values[0]["numpy"] is not None:
        assert len({v["numpy"] for v in values}) == 4, values


def test_numpy_global_generator_is_reseeded_per_job(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    sweep = tmp_path / "sweep"
    res = run_app(APPS / "draws.py", [*HSM, "x=1,2,3,4"], sweep_dir=sweep)
    assert res.returncode == 0, res.stderr
    assert len({v["numpy"] for v in _values(sweep)}) == 4


def test_a_job_that_seeds_keeps_its_numbers(tmp_path: Path) -> None:
    """Seeding in the task function wins: the same seed, the same numbers, as in a fresh
    interpreter."""
    sweep = tmp_path / "sweep"
    res = run_app(APPS / "draws.py", [*HSM, "x=1,2", "+seed=7"], sweep_dir=sweep)
    assert res.returncode == 0, res.stderr
    first, second = _values(sweep)
    assert first == second


# ------------------------------------------ threads + an unpicklable global
def test_threads_and_unpicklable_global_run_in_process_like_basic(tmp_path: Path) -> None:
    """Neither a fork nor a fresh interpreter can run these jobs: they run one after
    another in the launcher's process, as under the basic launcher, after one warning."""
    sweep = tmp_path / "sweep"
    res = run_app(APPS / "threaded_locked.py", [*HSM, "x=1,2,3,4"], sweep_dir=sweep)
    assert res.returncode == 1, res.stderr  # x=3 raises
    log = res.stdout + res.stderr
    assert log.count("one after another inside this process") == 1
    assert "background-poller" in log and "cannot pickle the global 'LOCK'" in log
    found = jobs(sweep)
    assert [found[n]["state"] for n in range(4)] == ["COMPLETED"] * 2 + ["FAILED", "COMPLETED"]
    assert found[2]["result"]["error"] == "ValueError: three"
    values = [job_return(found[n]["dir"]).return_value for n in (0, 1, 3)]
    assert [v["x"] for v in values] == [2, 4, 8]
    assert len({v["pid"] for v in values}) == 1  # the launcher's own process
    assert [v["attempt"] for v in values] == ["1"] * 3  # the task env, as in a fork
    assert (sweep / "0" / ".hydra" / "overrides.yaml").is_file()
    assert "#2 FAILED x=3 ValueError: three" in res.stdout


def test_ctrl_c_interrupts_the_in_process_job_and_cancels_the_rest(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = start_app(APPS / "threaded_locked.py", [*HSM, "x=1,2,3", "+sleep=30"], sweep_dir=sweep)
    out, err = ctrl_c_when(proc, lambda: jobs(sweep)[0]["state"] == "RUNNING", "job #0 runs")
    assert proc.returncode == 130, err
    assert {j["state"] for j in jobs(sweep).values()} == {"CANCELLED"}
    assert "interrupted: 3 jobs did not complete" in out
    assert "without Hydra: hsm complete" not in out  # no payload: it could not finish them
