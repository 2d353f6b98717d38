"""A Python task that dies of an exception is listed with that exception, not with "exit
code 1": in `hsm run`'s summary, `hsm status --tasks` and the journal, on every source."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import yaml

from hsm_core.model import TaskState
from hsm_core.store import SweepStore
from tests.integration.ssh_support import command_tasks, make_project, new_store, run, ssh_spec
from tests.services import SSHEnv
from tests.sweep_utils import PY, hsm

RAISES = "import sys; print('working', flush=True); raise ValueError('boom ' + sys.argv[1])"
KEY_ERROR = "raise KeyError(['a'])"  # brackets: not rich markup


def test_hsm_run_and_status_name_the_exception(tmp_path: Path) -> None:
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "grid": {"v": ["x", "y", "k", "q"]},
                "command": [PY, "-c", RAISES, "{v}"],
            }
        )
    )
    res = hsm("run", "-c", str(sweep_file), "-s", "local:2", "--sweep-id", "e", cwd=tmp_path)
    assert res.returncode == 1
    assert "task_001 on local: ValueError: boom x (exit code 1)" in res.stdout, res.stdout
    assert not re.search(r"exit code 1$", res.stdout, re.M)  # no bare exit code left
    status = hsm("status", "e", "--tasks", cwd=tmp_path)
    assert "ValueError: boom y (exit code 1)" in status.stdout, status.stdout
    store = SweepStore.open(tmp_path / "sweeps" / "outputs" / "e", readonly=True)
    errors = sorted(a.error or "" for a in store.latest_attempts().values())
    assert errors[0] == "ValueError: boom k (exit code 1)"


def test_markup_like_errors_are_printed_as_they_are(tmp_path: Path) -> None:
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({"grid": {"v": [1]}, "command": [PY, "-c", KEY_ERROR]}))
    res = hsm("run", "-c", str(sweep_file), "-s", "local:1", "--sweep-id", "k", cwd=tmp_path)
    assert res.returncode == 1
    assert "KeyError: ['a'] (exit code 1)" in res.stdout, res.stdout


def test_exit_codes_without_a_traceback_stay_as_they_are(tmp_path: Path) -> None:
    sweep_file = tmp_path / "s.yaml"
    code = "import sys; print('ValueError: only a line of output', file=sys.stderr); " + (
        "print('more', file=sys.stderr); print('and more', file=sys.stderr); sys.exit(3)"
    )
    sweep_file.write_text(yaml.safe_dump({"grid": {"v": [1]}, "command": [PY, "-c", code]}))
    res = hsm("run", "-c", str(sweep_file), "-s", "local:1", "--sweep-id", "c", cwd=tmp_path)
    assert res.returncode == 1
    assert re.search(r"task_001 on local: exit code 3$", res.stdout, re.M), res.stdout


@pytest.mark.ssh
def test_ssh_command_failure_names_the_exception(ssh_env: SSHEnv, tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    tasks = command_tasks([["python3", "-c", RAISES, "ssh"]])
    store = new_store(tmp_path / "sweep", project, tasks)
    outcome = asyncio.run(run(store, [ssh_spec(ssh_env, "h1")]))
    assert not outcome.ok
    (att,) = store.latest_attempts().values()
    assert att.state is TaskState.FAILED
    assert att.error == "ValueError: boom ssh (exit code 1)"


@pytest.mark.ssh
def test_hydra_job_on_ssh_names_the_exception(
    ssh_env: SSHEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.hydra.util import APPS, jobs, run_app
    from tests.integration.ssh_support import remote_project

    conf = Path(__file__).parent / "ssh_conf"
    monkeypatch.setenv("HSM_TEST_SSH_CONFIG", str(ssh_env.ssh_config))
    monkeypatch.setenv("HSM_TEST_REMOTE_PYTHON", ssh_env.host("h1").python)
    monkeypatch.setenv("HSM_TEST_REMOTE_PROJECT", remote_project(ssh_env, "h1"))
    args = [
        "hydra/launcher=hsm",
        "hydra/sweeper=hsm",
        f"hydra.searchpath=[file://{conf}]",
        "hydra/launcher/pool=loopback",
        "hydra.launcher.progress=false",
        "x=1,2",
    ]
    sweep = tmp_path / "sweep"
    res = run_app(APPS / "noisy.py", args, sweep_dir=sweep, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    found = jobs(sweep)
    assert found[1]["state"] == "FAILED"
    assert "#1 FAILED x=2 ValueError: boom" in res.stdout, res.stdout
    errors_log = (sweep / "logs" / "errors.log").read_text()
    assert "FAILED (x=2): ValueError: boom" in errors_log
