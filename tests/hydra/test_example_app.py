"""The example app swept end to end through the hsm launcher and sweeper (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from functools import partial
from pathlib import Path

from tests.helpers import wait_for
from tests.hydra.util import EXAMPLE, HSM, job_return, jobs, pid_alive, run_app, start_app

PAIRED_FAILS = "hydra.sweeper.paired=[[seed,fail]]"


def _gone(pid: int) -> bool:
    return not pid_alive(pid)


def test_outputs_and_return_values(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = run_app(EXAMPLE, [*HSM, "seed=0,1", "model=linear,mlp", "epochs=3"], sweep_dir=sweep)
    assert res.returncode == 0, res.stderr
    found = jobs(sweep)
    assert sorted(found) == [0, 1, 2, 3]
    pids = set()
    for num, job in found.items():
        out = sweep / str(num)
        metrics = json.loads((out / "metrics.json").read_text())
        assert (out / ".hydra" / "config.yaml").is_file()
        assert "final loss" in (out / "train.log").read_text()
        ret = job_return(job["dir"])
        assert ret.return_value == metrics["loss"]
        assert job["state"] == "COMPLETED"
        pids.add(job["result"]["pid"])
    assert len(pids) == 4  # one fresh process per job
    # hsm's own view of the same folder
    status = subprocess.run(
        ["hsm", "status", str(sweep), "--json"], capture_output=True, text=True, timeout=30
    )
    assert status.returncode == 0, status.stderr
    assert "4 jobs: 4 completed" in res.stdout


def test_failures_stay_alone(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*HSM, PAIRED_FAILS, "seed=0,1,2,3", "fail=null,exception,exit,segfault", "epochs=2"]
    res = run_app(EXAMPLE, args, sweep_dir=sweep)
    assert res.returncode == 1
    assert "3 of 4 jobs failed" in res.stderr
    assert "Traceback" not in res.stderr  # one line for the user
    found = jobs(sweep)
    assert [found[n]["state"] for n in range(4)] == ["COMPLETED", "FAILED", "FAILED", "FAILED"]
    assert (sweep / "0" / "metrics.json").is_file()  # the good result is kept
    logs = {n: (sweep / str(n) / "train.log").read_text() for n in range(1, 4)}
    assert "RuntimeError: deliberate failure (fail=exception)" in logs[1]
    assert "Traceback" in logs[1]
    assert "exited with code 3" in logs[2]
    assert "SIGSEGV" in logs[3]
    errors = (sweep / "logs" / "errors.log").read_text()
    for text in ("deliberate failure", "exited with code 3", "SIGSEGV"):
        assert text in errors
    # the summary names each failed job with its log
    for n in (1, 2, 3):
        assert str(sweep / str(n) / "train.log") in res.stdout


def test_resume_after_partial_failure(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # job 1 fails while HSM_TEST_FAIL is set: the same command, run again without it, passes
    args = [*HSM, PAIRED_FAILS, "seed=0,1,2", "fail=null,'${oc.env:HSM_TEST_FAIL,null}',null"]
    first = run_app(EXAMPLE, args, sweep_dir=sweep, env={"HSM_TEST_FAIL": "exception"})
    assert first.returncode == 1, first.stdout
    before = {n: (sweep / str(n) / "metrics.json").stat().st_mtime_ns for n in (0, 2)}
    second = run_app(EXAMPLE, args, sweep_dir=sweep)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 done before" in second.stdout
    found = jobs(sweep)
    assert {n: j["state"] for n, j in found.items()} == {
        0: "COMPLETED",
        1: "COMPLETED",
        2: "COMPLETED",
    }
    assert found[1]["attempts"] == 2  # same task, same job number, a new attempt
    assert found[0]["attempts"] == found[2]["attempts"] == 1
    after = {n: (sweep / str(n) / "metrics.json").stat().st_mtime_ns for n in (0, 2)}
    assert after == before  # completed jobs were not run again
    assert (sweep / "1" / "metrics.json").is_file()


def test_ctrl_c_cancels_and_resume_finishes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # the jobs sleep only while HSM_TEST_SLEEP is set: the same command resumes quickly
    args = [*HSM, "seed=range(0,6)", "sleep='${oc.env:HSM_TEST_SLEEP,0}'", "epochs=2"]
    proc = start_app(EXAMPLE, args, sweep_dir=sweep, env={"HSM_TEST_SLEEP": "30"})
    try:
        wait_for(
            lambda: (
                (sweep / "sweep.db").is_file()
                and sum(j["state"] == "RUNNING" for j in jobs(sweep).values()) == 2
            ),
            timeout=30,
            message="two running jobs",
            retry_on=(Exception,),
        )
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    found = jobs(sweep)
    states = {j["state"] for j in found.values()}
    assert states <= {"COMPLETED", "CANCELLED"}, found
    assert "CANCELLED" in states
    for num in range(6):  # every job process is gone
        info = sweep / "tasks" / f"task_{num + 1:03d}" / "hydra_job.json"
        if info.is_file():
            pid = int(json.loads(info.read_text())["pid"])
            wait_for(partial(_gone, pid), timeout=10, message=f"pid {pid} gone")
    assert "cancelled" in out.lower()

    done_before = {n for n, j in found.items() if j["state"] == "COMPLETED"}
    again = run_app(EXAMPLE, args, sweep_dir=sweep)
    assert again.returncode == 0, again.stderr
    found = jobs(sweep)
    assert sorted(found) == list(range(6))  # the same numbers
    assert all(j["state"] == "COMPLETED" for j in found.values())
    assert all(found[n]["attempts"] == 1 for n in done_before)


def test_hsm_complete_finishes_a_hydra_sweep(tmp_path: Path) -> None:
    """Without Hydra: the failed job runs again from its stored payload (cold worker)."""
    sweep = tmp_path / "sweep"
    args = [*HSM, PAIRED_FAILS, "seed=0,1", "fail=null,'${oc.env:HSM_TEST_FAIL,null}'"]
    first = run_app(EXAMPLE, args, sweep_dir=sweep, env={"HSM_TEST_FAIL": "exception"})
    assert first.returncode == 1
    done = subprocess.run(
        ["hsm", "complete", str(sweep), "--retry-failed"],
        cwd=EXAMPLE.parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = jobs(sweep)
    assert [found[n]["state"] for n in (0, 1)] == ["COMPLETED", "COMPLETED"]
    metrics = json.loads((sweep / "1" / "metrics.json").read_text())
    assert job_return(found[1]["dir"]).return_value == metrics["loss"]
