"""The hint printed after Ctrl-C or failed jobs is a command that, pasted into a shell,
finishes the same sweep: with Hydra's default timestamped sweep dirs, "the same command
again" would start over in a new dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.hydra.util import APPS, EXAMPLE, HSM, ctrl_c_when, jobs, run_app


def _hint(out: str, marker: str) -> str:
    lines = out.splitlines()
    i = next(i for i, line in enumerate(lines) if marker in line)
    return lines[i + 1].strip()


def _sweep_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("multirun/*/*/sweep.db"))


def test_ctrl_c_prints_the_command_that_resumes_the_timestamped_sweep(tmp_path: Path) -> None:
    # Hydra's default sweep dir (multirun/<date>/<time>), as a new user has it
    args = [*HSM, "seed=range(0,4)", "sleep='${oc.env:HSM_TEST_SLEEP,0}'", "epochs=2"]
    env = {**os.environ, "HSM_TEST_SLEEP": "30"}
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "-m", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def two_running() -> bool:
        dirs = _sweep_dirs(tmp_path)
        return bool(dirs) and sum(j["state"] == "RUNNING" for j in jobs(dirs[0]).values()) == 2

    out, err = ctrl_c_when(proc, two_running, "two running jobs")
    assert proc.returncode == 130, err
    (sweep,) = _sweep_dirs(tmp_path)
    command = _hint(out, "To finish them:")
    assert f"hydra.sweep.dir={sweep}" in command
    assert f"or without Hydra: hsm complete {sweep}" in out

    env.pop("HSM_TEST_SLEEP")  # the pasted command, now with quick jobs
    again = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert _sweep_dirs(tmp_path) == [sweep]  # no new sweep dir: the same sweep finished
    assert {j["state"] for j in jobs(sweep).values()} == {"COMPLETED"}


def test_failed_jobs_print_the_rerun_command_and_hsm_complete(tmp_path: Path) -> None:
    sweep = tmp_path / "my sweep"  # a space: the command must still paste
    res = run_app(APPS / "noisy.py", [*HSM, "x=1,2"], sweep_dir=sweep)
    assert res.returncode == 1
    command = _hint(res.stdout, "that did not complete again")
    assert "hsm complete" in res.stdout and "--retry-failed" in res.stdout
    again = subprocess.run(
        ["bash", "-c", command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1  # x=2 fails again, in the same sweep
    found = jobs(sweep)
    assert (found[0]["attempts"], found[1]["attempts"]) == (1, 2)


def test_basic_sweeper_ctrl_c_names_hsm_complete(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [
        "hydra/launcher=hsm",
        "hydra.launcher.sources=local:2",
        "hydra.launcher.progress=false",
        "seed=range(0,4)",
        "sleep=30",
        "epochs=2",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "-m", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def running() -> bool:
        return sum(j["state"] == "RUNNING" for j in jobs(sweep).values()) == 2

    out, err = ctrl_c_when(proc, running, "two running jobs")
    said = out + err
    assert f"To finish the others: hsm complete {sweep} (without Hydra)" in said, said
    assert f"hydra/sweeper=hsm hydra.sweep.dir={sweep}" in said
