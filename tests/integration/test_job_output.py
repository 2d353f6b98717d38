"""Jobs' output on the terminal: every line prefixed by its job while it runs (`all`), each
failed job's last lines (`failed`, the default), rate-limited, on every source."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hsm_core.job_output import JobOutput
from hsm_core.model import SourceSpec, TaskSpec, TaskState
from hsm_core.orchestrate import RunOptions, context_for, run_sweep
from hsm_core.store import SweepStore
from tests.helpers import async_wait_for
from tests.hydra.util import APPS, HSM, run_app
from tests.integration.ssh_support import make_project, new_store, remote_project, ssh_spec
from tests.services import SSHEnv
from tests.sweep_utils import PY, command_tasks, hsm, make_sweep

# Prints a line, then waits for a flag file before its last line: the first line must be
# on the terminal while the task still runs.
WAITER = (
    "import os, sys, time\n"
    "print('first line', flush=True)\n"
    "print('to stderr', file=sys.stderr, flush=True)\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.05)\n"
    "print('last line', flush=True)\n"
)


# --------------------------------------------------------------- Hydra jobs
def test_hydra_output_all_streams_every_job_prefixed(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*HSM, "hydra.launcher.output=all", "x=1,2,3"]
    res = run_app(APPS / "noisy.py", args, sweep_dir=sweep)
    assert res.returncode == 1, res.stderr  # x=2 raises
    out = res.stdout
    for num, x in ((0, 1), (1, 2), (2, 3)):
        assert f"[#{num}] epoch 1 loss {1 / (1 + x):.2f}" in out
        assert f"[#{num}] a warning from job x={x}" in out  # stderr too
    assert "[#1] FAILED: ValueError: boom" in out
    assert out.index("[#1] epoch 3") < out.index("[#1] FAILED")  # its lines first
    assert "held back" not in out


def test_hydra_default_prints_only_the_failed_jobs_last_lines(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = run_app(APPS / "noisy.py", [*HSM, "x=1,2,3"], sweep_dir=sweep)
    assert res.returncode == 1
    out = res.stdout
    assert "epoch 1" not in out  # nothing streamed
    assert "[#1] FAILED: ValueError: boom" in out
    assert "[#1] last lines of stderr.log:" in out
    assert "[#1]   ValueError: boom" in out  # the traceback's end
    assert f"[#1] full output: {sweep}/tasks/task_002/stdout.log and stderr.log" in out
    assert "[#0]" not in out and "[#2]" not in out


def test_hydra_output_none_and_a_bad_mode(tmp_path: Path) -> None:
    res = run_app(
        APPS / "noisy.py", [*HSM, "hydra.launcher.output=none", "x=2"], sweep_dir=tmp_path / "a"
    )
    assert res.returncode == 1 and "[#0]" not in res.stdout
    bad = run_app(
        APPS / "noisy.py", [*HSM, "hydra.launcher.output=loud", "x=2"], sweep_dir=tmp_path / "b"
    )
    assert bad.returncode == 1
    assert (
        "hydra.launcher.output: unknown output mode 'loud' (valid: failed, all, none)" in bad.stderr
    )
    assert "Traceback" not in bad.stderr


# -------------------------------------------------------------- hsm run (local agent)
def test_hsm_run_rate_limit_holds_lines_back_and_says_so(tmp_path: Path) -> None:
    """200 tasks of 50 lines each: the terminal gets a bounded share, fairly spread, and
    a count of the rest that adds up."""
    sweep_file = tmp_path / "s.yaml"
    script = 'for i in $(seq 1 50); do echo "line $i of $0"; done'
    sweep_file.write_text(
        yaml.safe_dump({"grid": {"n": list(range(200))}, "command": ["sh", "-c", script, "{n}"]})
    )
    res = hsm(
        "run", "-c", str(sweep_file), "-s", "local:8", "--sweep-id", "r",
        "--output", "all", "--output-rate", "20", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    shown = re.findall(r"^\[task_(\d+)\] line \d+ of \d+$", res.stdout, re.M)
    m = re.search(r"\[hsm\] (\d+) lines of (\d+) jobs were held back", res.stdout)
    assert m, res.stdout[-2000:]
    assert len(shown) + int(m.group(1)) == 200 * 50
    assert len(shown) < 2000  # bounded: not 10,000 lines
    assert len(set(shown)) >= 10  # shared between jobs, not one job's lines only
    assert f"{tmp_path}/sweeps/outputs/r/tasks/task_NNN/stdout.log" in res.stdout


def test_hsm_run_default_shows_failed_tasks_last_lines(tmp_path: Path) -> None:
    code = "import sys; print('step', flush=True); raise ValueError('bad ' + sys.argv[1])"
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(
        yaml.safe_dump({"grid": {"v": ["a"]}, "command": [PY, "-c", code, "{v}"]})
    )
    res = hsm("run", "-c", str(sweep_file), "-s", "local:1", "--sweep-id", "f", cwd=tmp_path)
    assert res.returncode == 1
    assert "[task_001] FAILED: ValueError: bad a (exit code 1)" in res.stdout
    assert "[task_001]   ValueError: bad a" in res.stdout
    assert "[task_001] step" not in res.stdout  # not streamed by default


async def _stream_until_first_line(
    store: SweepStore, spec: SourceSpec, tasks: list[TaskSpec], flag: Path
) -> tuple[list[str], Any]:
    """Run with --output all; once the first line is on the 'terminal' while the task
    runs, let it finish. Returns the terminal's lines and the outcome."""
    out: list[str] = []
    output = JobOutput("all", store.sweep_dir, {t.key: t for t in tasks}, write=out.append)
    run = asyncio.ensure_future(
        run_sweep(
            store,
            context_for(store),
            [spec],
            RunOptions(),
            handle_signals=False,
            observers=[output],
        )
    )

    async def first_line() -> bool:
        if run.done():
            run.result()
        return any("[task_001] first line" in chunk for chunk in out)

    await async_wait_for(first_line, timeout=60, message="the first line while it runs")
    assert store.latest_attempts()[tasks[0].key].state is not TaskState.COMPLETED
    flag.touch()
    outcome = await run
    return "".join(out).splitlines(), outcome


def test_local_agent_lines_arrive_while_the_task_runs(tmp_path: Path) -> None:
    flag = tmp_path / "go"
    tasks = command_tasks([[PY, "-c", WAITER, str(flag)]])
    store = make_sweep(tmp_path, tasks)
    spec = SourceSpec("local", "local", 1, {})
    lines, outcome = asyncio.run(_stream_until_first_line(store, spec, tasks, flag))
    assert outcome.ok
    assert lines == ["[task_001] first line", "[task_001] to stderr", "[task_001] last line"]


@pytest.mark.ssh
def test_ssh_agent_forwards_lines_while_the_task_runs(ssh_env: SSHEnv, tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", {"waiter.py": WAITER})
    remote = remote_project(ssh_env, "h1")
    flag = Path(remote) / "go"  # the loopback host shares this filesystem (not our /tmp)
    tasks = command_tasks([["python3", "waiter.py", str(flag)]])
    store = new_store(tmp_path / "sweep", project, tasks)
    spec = ssh_spec(ssh_env, "h1", slots=1, project_dir=remote)
    lines, outcome = asyncio.run(_stream_until_first_line(store, spec, tasks, flag))
    assert outcome.ok
    assert lines == ["[task_001] first line", "[task_001] to stderr", "[task_001] last line"]
