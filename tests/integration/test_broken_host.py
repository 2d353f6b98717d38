"""A host that cannot run the sweep's tasks although it answers (issue 11, item 7): its
project_dir lacks the project, or its `python:` does not exist. The failure-rate rule
disables it and the tasks it failed run elsewhere; `hsm sources test` and `hsm monitor
health` call it failing, not ok. Real loopback sshd hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hsm_core.model import TaskState
from hsm_core.store import SweepStore
from tests.integration.ssh_support import make_project, ssh_entry
from tests.services import SSHEnv
from tests.sweep_utils import hsm

N = 12


def _project(tmp_path: Path, sources: dict[str, Any]) -> Path:
    project = make_project(tmp_path / "proj")
    (project / "hsm.yaml").write_text(yaml.safe_dump({"sources": sources}))
    (project / "sweep.yaml").write_text(
        yaml.safe_dump({"grid": {"i": list(range(N))}, "command": ["python3", "echo.py", "{i}"]})
    )
    return project


def test_tasks_a_host_without_the_project_failed_run_elsewhere(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    h1 = ssh_entry(ssh_env, "h1", slots=3, sync="warn")  # its project_dir stays empty
    project = _project(tmp_path, {"h1": h1})
    res = hsm("run", "-c", "sweep.yaml", "-s", "local:1,h1:3", "--sweep-id", "b", cwd=project)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    store = SweepStore.open(project / "sweeps" / "outputs" / "b", readonly=True)
    assert store.counts() == {TaskState.COMPLETED: N}
    failed = [a for a in store.attempts() if a.state is TaskState.FAILED]
    assert failed and {a.source for a in failed} == {"h1"}  # they ran there, then here
    assert {a.source for a in store.latest_attempts().values()} <= {"local", "h1"}
    health = (project / "sweeps" / "outputs" / "b" / "logs" / "health_status.log").read_text()
    assert "h1: disabled: failure rate" in health


def test_sources_test_and_monitor_health_call_such_a_host_failing(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    empty = ssh_entry(ssh_env, "h1", sync="warn")
    # The agent runs (its own interpreter), the tasks' `python:` does not exist.
    real = ssh_env.host("h2").python
    no_python = ssh_entry(ssh_env, "h2", sync="warn", python="/no/such/python3", agent_python=real)
    project = _project(tmp_path, {"empty": empty, "nopy": no_python})

    res = hsm("sources", "test", "empty", cwd=project)
    assert res.returncode == 1, res.stdout + res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("empty:"))
    assert "does not exist" in line and "every task would fail there" in line

    for name, why in (("empty", "every task would fail there"), ("nopy", "/no/such/python3")):
        res = hsm(
            "monitor", "health", "--sources", name, "--project-root", str(project), cwd=project
        )
        assert res.returncode == 1, res.stdout + res.stderr
        row = next(ln for ln in res.stdout.splitlines() if ln.split()[:1] == [name])
        assert "failing" in row, res.stdout
        assert why in res.stdout.replace("\n", " "), res.stdout
