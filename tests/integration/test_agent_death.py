"""A killed agent costs at most a delay (issue 11, item 4): under `hsm run`, SIGKILL the
agent that started the running tasks, here and on a loopback ssh host. Its tasks are
adopted, not run again while they live, and never counted outside their slot.

The tasks prove it by their own side effects: each appends `start <i> <time>` and
`end <i> <time>` to a shared file (the loopback hosts share this filesystem).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hsm_core.model import TaskState
from hsm_core.remote_agent import JOURNAL_DIR
from hsm_core.store import SweepStore
from tests.integration.ssh_support import make_project, ssh_entry
from tests.services import SSHEnv
from tests.sweep_utils import hsm_popen, wait_for

N = 6
SLOTS = 2
SECONDS = 3


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every host's login user can write to (pytest's tmp is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="hsm-agent-death-", dir="/tmp"))
    d.chmod(0o777)
    (d / "ran.txt").touch()
    (d / "ran.txt").chmod(0o666)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _project(tmp_path: Path, shared: Path, sources: dict[str, Any]) -> Path:
    ran = shared / "ran.txt"
    project = make_project(tmp_path / "proj")
    (project / "hsm.yaml").write_text(yaml.safe_dump({"sources": sources}))
    script = (
        f'echo "start $0 $(date +%s.%N)" >> {ran}; sleep {SECONDS}; '
        f'echo "end $0 $(date +%s.%N)" >> {ran}'
    )
    (project / "sweep.yaml").write_text(
        yaml.safe_dump({"grid": {"i": list(range(N))}, "command": ["sh", "-c", script, "{i}"]})
    )
    return project


def _events(shared: Path) -> list[tuple[str, str, float]]:
    out = []
    for line in (shared / "ran.txt").read_text().splitlines():
        what, task, when = line.split()
        out.append((what, task, float(when)))
    return out


def _max_running(events: list[tuple[str, str, float]]) -> int:
    cur = best = 0
    for what, _, _ in sorted(events, key=lambda e: (e[2], e[0] == "start")):
        cur += 1 if what == "start" else -1
        best = max(best, cur)
    return best


def _journal_owners(journals: Path) -> list[int]:
    """Pids of the agents that started tasks (agent-<boot>-<pid>-<start>.jsonl)."""
    try:
        names = os.listdir(journals)
    except OSError:
        return []
    return [int(n.split("-")[2]) for n in names if n.endswith(".jsonl")]


def _keeper_of(agent: int) -> int:
    """The agent's keeper (its parent, running the same program), or the agent itself
    when it has none."""
    parent = int(Path(f"/proc/{agent}/stat").read_text().rsplit(")", 1)[1].split()[1])
    try:
        same = Path(f"/proc/{parent}/cmdline").read_bytes() == (
            Path(f"/proc/{agent}/cmdline").read_bytes()
        )
    except OSError:
        return agent
    return parent if same else agent


def _run_and_kill(
    project: Path, shared: Path, journals: Callable[[], Path], victim: str, source: str
) -> None:
    proc = hsm_popen("run", "-c", "sweep.yaml", "-s", source, "--sweep-id", "s", cwd=project)
    try:
        # Both slots busy: kill the agent that started them.
        wait_for(
            lambda: (
                sum(e[0] == "start" for e in _events(shared)) >= SLOTS
                and _journal_owners(journals())
            ),
            timeout=60,
            message="two tasks running",
        )
        agent = _journal_owners(journals())[0]
        keeper = _keeper_of(agent)
        if victim == "keeper":  # with no keeper, the process the orchestrator started
            os.kill(keeper, signal.SIGKILL)
        elif victim == "agent":
            os.kill(agent, signal.SIGKILL)
        else:
            os.kill(keeper, signal.SIGKILL)
            if keeper != agent:
                os.kill(agent, signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-2000:] + err[-2000:]


def _check(project: Path, shared: Path, *, reruns_allowed: bool) -> None:
    events = _events(shared)
    starts = Counter(t for what, t, _ in events if what == "start")
    runs = f"{sum(starts.values())} runs of {N} tasks, at most {_max_running(events)} at once"
    assert _max_running(events) <= SLOTS, runs  # never more tasks than slots
    if not reruns_allowed:
        assert starts == Counter({str(i): 1 for i in range(N)}), runs
    else:  # a task may run again, but only after its first run ended
        for task in starts:
            mine = sorted((w, when) for w, t, when in events if t == task)
            assert _max_running([(w, task, when) for w, when in mine]) == 1, mine
    store = SweepStore.open(project / "sweeps" / "outputs" / "s", readonly=True)
    assert store.counts() == {TaskState.COMPLETED: N}


@pytest.mark.parametrize("victim", ["agent", "keeper"])
def test_a_killed_local_agent_costs_no_rerun_and_no_extra_slot(
    tmp_path: Path, shared_dir: Path, victim: str
) -> None:
    project = _project(tmp_path, shared_dir, {})
    journals = project / "sweeps" / "outputs" / "s" / JOURNAL_DIR
    _run_and_kill(project, shared_dir, lambda: journals, victim, f"local:{SLOTS}")
    _check(project, shared_dir, reruns_allowed=False)


def test_agent_and_keeper_killed_together_never_overlap(tmp_path: Path, shared_dir: Path) -> None:
    """With both gone the exit status of a running task is lost: it may run again, but
    only once it has ended, and the slots still hold."""
    project = _project(tmp_path, shared_dir, {})
    journals = project / "sweeps" / "outputs" / "s" / JOURNAL_DIR
    _run_and_kill(project, shared_dir, lambda: journals, "both", f"local:{SLOTS}")
    _check(project, shared_dir, reruns_allowed=True)


def test_a_killed_ssh_agent_costs_no_rerun_and_no_extra_slot(
    ssh_env: SSHEnv, tmp_path: Path, shared_dir: Path
) -> None:
    entry = ssh_entry(ssh_env, "h1", slots=SLOTS)
    project = _project(tmp_path, shared_dir, {"h1": entry})
    remote_sweeps = Path(entry["project_dir"]) / ".hsm" / "sweeps"

    def journals() -> Path:
        found = list(remote_sweeps.glob(f"*/{JOURNAL_DIR}"))
        return found[0] if found else remote_sweeps / "none"

    _run_and_kill(project, shared_dir, journals, "agent", f"h1:{SLOTS}")
    _check(project, shared_dir, reruns_allowed=False)
