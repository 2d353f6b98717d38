"""A sweep written by the hsm before the regrouping of issue 14 (its code taken from git)
still completes with today's `hsm complete`: its payloads pickle hsm's classes by their
old module paths, its journal is the old code's."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.hydra.util import EXAMPLE, HSM, ROOT, jobs, run_app

# main just before the regrouping (hsm_core/hydra_payload.py, sources/hpc_job.py, ...)
PREVIOUS = "2c9e13da6bfad5af25be0d7b1dc01db6d5faabc4"


def _old_code(into: Path) -> Path:
    try:
        tar = subprocess.run(
            ["git", "-C", str(ROOT), "archive", PREVIOUS, "hsm_core", "hydra_plugins"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the previous hsm is not in this checkout's git history: {exc}")
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    return into


def test_a_sweep_of_the_previous_version_completes(tmp_path: Path) -> None:
    old = _old_code(tmp_path / "old")
    sweep = tmp_path / "sweep"
    paired = "hydra.sweeper.paired=[[seed,fail]]"
    args = [*HSM, paired, "seed=0,1", "fail=null,'${oc.env:HSM_TEST_FAIL,null}'"]
    env = {"HSM_TEST_FAIL": "exception", "PYTHONPATH": str(old)}
    first = run_app(EXAMPLE, args, sweep_dir=sweep, env=env)
    assert first.returncode == 1, first.stderr  # job 1 failed, job 0 is done
    payload = (sweep / "tasks" / "task_002" / "hydra_job.pkl").read_bytes()
    assert b"hsm_core.hydra_payload" in payload  # written by the old code indeed

    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HSM_TEST_FAIL")}
    done = subprocess.run(
        ["hsm", "complete", str(sweep), "--retry-failed"],
        cwd=EXAMPLE.parent.parent,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = jobs(sweep)
    assert [found[n]["state"] for n in (0, 1)] == ["COMPLETED", "COMPLETED"]
    assert [found[n]["attempts"] for n in (0, 1)] == [1, 2]  # the finished one not again
