"""One sweep over several kinds of sources, and finishing sweeps after SIGKILL of the
orchestrator: real local processes, real loopback sshd hosts, the real one-node Slurm.

Tasks prove "exactly once" by their own side effect: each appends its id to a shared
file (the loopback hosts share this machine's filesystem), so a second run shows up.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hsm_core.model import TaskState
from hsm_core.store import SweepStore
from tests.integration.ssh_support import FAST_SSH, make_project, ssh_entry
from tests.services import SlurmEnv, SSHEnv
from tests.sweep_utils import PY, hsm, hsm_popen, wait_for


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every host's login user can write to (pytest's tmp is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="hsm-dist-", dir="/tmp"))
    d.chmod(0o777)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _project(tmp_path: Path, shared: Path, n: int, seconds: float, extra: dict[str, Any]) -> Path:
    ran = shared / "ran.txt"
    ran.touch()
    ran.chmod(0o666)
    project = make_project(tmp_path / "proj")
    (project / "hsm.yaml").write_text(yaml.safe_dump({"sources": extra}))
    (project / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "grid": {"i": list(range(n))},
                "command": ["sh", "-c", f'echo "$0" >> {ran}; sleep {seconds}', "{i}"],
            }
        )
    )
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(
        ["git", "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "cfg"],
        cwd=project,
        check=True,
    )
    return project


def _runs(shared: Path) -> Counter[str]:
    return Counter((shared / "ran.txt").read_text().split())


def _store(project: Path, sweep_id: str) -> SweepStore:
    return SweepStore.open(project / "sweeps" / "outputs" / sweep_id, readonly=True)


def test_one_sweep_over_local_two_ssh_hosts_and_slurm(
    ssh_env: SSHEnv, slurm_env: SlurmEnv, tmp_path: Path, shared_dir: Path
) -> None:
    sources = {
        "h1": ssh_entry(ssh_env, "h1"),
        "h2": ssh_entry(ssh_env, "h2"),
        "cluster": {
            "type": "hpc",
            "scheduler": "slurm",
            "partition": slurm_env.partition,
            "time": 2,
            "max_parallel": 2,
            "poll_interval": 1,
            "poll_min": 0.5,
            "batch_window": 0.2,
        },
    }
    project = _project(tmp_path, shared_dir, 16, 1.0, sources)
    res = hsm(
        "run",
        "-c",
        "sweep.yaml",
        "-s",
        "local:2,ssh:h1:2,ssh:h2:2,hpc:cluster:2",
        "--strategy",
        "round_robin",
        "--sweep-id",
        "mix",
        cwd=project,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    store = _store(project, "mix")
    per_source = Counter(a.source for a in store.latest_attempts().values())
    assert set(per_source) == {"local", "h1", "h2", "cluster"}, per_source
    assert store.counts() == {TaskState.COMPLETED: 16}
    assert _runs(shared_dir) == Counter({str(i): 1 for i in range(16)})
    for t in store.tasks():  # every log is here, whoever ran it
        assert (store.task_dir(t) / "stdout.log").is_file(), t.name


def test_sweep_started_on_ssh_is_completed_on_local(
    ssh_env: SSHEnv, tmp_path: Path, shared_dir: Path
) -> None:
    project = _project(tmp_path, shared_dir, 10, 0.8, {"h1": ssh_entry(ssh_env, "h1")})
    proc = subprocess.Popen(
        [PY, "-m", "hsm_core.cli.main", "run", "-c", "sweep.yaml", "-s", "ssh:h1:2",
         "--sweep-id", "move"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(lambda: len(_runs(shared_dir)) >= 3, timeout=60)
    proc.send_signal(signal.SIGINT)  # stop it: the rest is CANCELLED
    assert proc.wait(timeout=60) == 130
    res = hsm("complete", "move", "--sources", "local:2", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    store = _store(project, "move")
    latest = store.latest_attempts()
    assert {a.state for a in latest.values()} == {TaskState.COMPLETED}
    assert {a.source for a in latest.values()} == {"h1", "local"}
    # Cancelled tasks ran again locally; nothing that completed on h1 ran twice.
    runs = _runs(shared_dir)
    completed_on_h1 = {
        str(store.task(k).params["i"]) for k, a in latest.items() if a.source == "h1"
    }
    assert all(runs[i] == 1 for i in completed_on_h1)


@pytest.mark.parametrize(
    "seed", [int(x) for x in os.environ.get("HSM_STRESS_SEEDS", "1,2,3").split(",")]
)
def test_orchestrators_killed_and_doubled_at_random_run_each_task_once(
    ssh_env: SSHEnv, tmp_path: Path, shared_dir: Path, seed: int
) -> None:
    """The kill harness, as a hostile user runs it: `hsm run` SIGKILLed at a random
    moment; two `hsm complete` started together, the owner SIGKILLed at a random moment;
    one `hsm complete` whose local agent is SIGKILLed at a random moment (it goes on);
    another pair with the owner killed; then a last pair that finishes. Every task runs
    exactly once (its own side effect says so), wherever it ran; the second of a pair is
    refused (exit 2, naming the owner) or finds nothing left to do."""
    n = 24
    project = _project(
        tmp_path,
        shared_dir,
        n,
        0.8,
        {"h1": ssh_entry(ssh_env, "h1"), "h2": ssh_entry(ssh_env, "h2")},
    )
    rng = random.Random(seed)
    sources = "local:2,ssh:h1:2,ssh:h2:2"
    complete = ["complete", "crash", "-s", sources]
    # (commands started together, what is SIGKILLed at a random moment)
    steps = [
        ([["run", "-c", "sweep.yaml", "-s", sources, "--sweep-id", "crash"]], "owner"),
        ([complete, complete], "owner"),
        ([complete], "agent"),  # its local agent: the tasks are adopted, the run goes on
        ([complete, complete], "owner"),
        ([complete, complete], None),
    ]
    sweep_dir = project / "sweeps" / "outputs" / "crash"
    history: list[str] = []  # what happened, for the assertion messages
    for argvs, kill in steps:
        before = sum(_runs(shared_dir).values())
        procs = [hsm_popen(*argv, cwd=project) for argv in argvs]
        # A random number of new task starts (0 = while still starting up), once the
        # sweep exists (killed before that, `hsm run` leaves no sweep at all).
        target = before + rng.randint(0, 8)

        def reached(t: int = target, ps: list[subprocess.Popen[str]] = procs) -> bool:
            if all(p.poll() is not None for p in ps):
                return True
            return (sweep_dir / "sweep.db").exists() and sum(_runs(shared_dir).values()) >= t

        wait_for(reached, 60)
        killed = _kill_owner(sweep_dir, procs) if kill == "owner" else None
        if kill == "agent":
            _kill_local_agent(procs[0], history)
        for p in procs:
            out, err = p.communicate(timeout=120)
            what = "SIGKILL" if p is killed else f"exit {p.returncode}"
            history.append(f"{p.args[3]} after {sum(_runs(shared_dir).values())} starts: {what}")
            if p is killed:
                continue
            assert p.returncode in (0, 2), (history, out + err)
            if p.returncode == 2:  # the second comer: one line naming the owner
                assert "is in use by pid" in err and len(err.strip().splitlines()) == 1, err
    res = hsm("complete", "crash", "-s", sources, cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    store = _store(project, "crash")
    assert store.counts() == {TaskState.COMPLETED: n}, history
    assert _runs(shared_dir) == Counter({str(i): 1 for i in range(n)}), history
    for t in store.tasks():
        assert (store.task_dir(t) / "stdout.log").is_file(), t.name


def _kill_local_agent(proc: subprocess.Popen[str], history: list[str]) -> None:
    """SIGKILL the agent that runs `proc`'s local tasks (below its keeper, if any)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"remote_agent" in cmd:
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    agents = children.get(proc.pid, [])
    agents = [c for a in agents for c in children.get(a, [a])]  # below a keeper
    assert agents or proc.poll() is not None, f"no local agent under pid {proc.pid}"
    for pid in agents:
        os.kill(pid, signal.SIGKILL)
    history.append(f"killed local agent(s) {agents}")


def _kill_owner(
    sweep_dir: Path, procs: list[subprocess.Popen[str]]
) -> subprocess.Popen[str] | None:
    """SIGKILL the command that owns the sweep now (one of `procs`), if any still runs."""
    from hsm_core.ownership import holder

    try:
        owner = holder(sweep_dir)
    except LookupError:  # no lock file yet: `hsm run` is still starting
        owner = None
    by_pid = {p.pid: p for p in procs if p.poll() is None}
    target = by_pid.get(owner.pid) if owner and owner.pid else None
    if target is None and len(procs) == 1:
        target = by_pid.get(procs[0].pid)
    if target is not None:
        target.kill()
    return target


def _health_test_store(tmp_path: Path, n: int, seconds: float) -> SweepStore:
    from tests.integration.ssh_support import command_tasks, new_store

    project = make_project(tmp_path / "hproj")
    tasks = command_tasks([["sh", "-c", f"sleep {seconds}", str(i)] for i in range(n)])
    return new_store(tmp_path / "hsweep", project, tasks)


@pytest.mark.parametrize("failure", ["kill", "freeze"])
def test_dead_host_is_disabled_in_the_health_log_and_a_frozen_one_comes_back(
    ssh_env: SSHEnv, ssh_host_control: Any, tmp_path: Path, failure: str
) -> None:
    """h2's sshd killed or frozen mid-sweep: its tasks run elsewhere, the sweep succeeds,
    and the health log shows h2 disabled. A frozen host that is thawed while the sweep
    still runs is re-enabled."""
    import asyncio

    from hsm_core.model import TaskEvent
    from tests.helpers import async_wait_for
    from tests.integration.ssh_support import run, ssh_spec

    store = _health_test_store(tmp_path, 16, 1.0)
    specs = [ssh_spec(ssh_env, alias, **FAST_SSH) for alias in ("h1", "h2")]
    health = {"interval_s": 1, "consecutive_failures": 2, "timeout_s": 2}
    running_on_h2: set[str] = set()
    engine_ref: list[Any] = []

    def listener(ev: TaskEvent) -> None:
        if ev.state is TaskState.RUNNING and ev.source == "h2":
            running_on_h2.add(ev.key)

    async def scenario() -> Any:
        job = asyncio.create_task(
            run(store, specs, listener=listener, engine_hook=engine_ref.append, health=health)
        )
        await async_wait_for(lambda: running_on_h2, timeout=30, message="a task on h2")
        await asyncio.to_thread(getattr(ssh_host_control, failure), "h2")
        await async_wait_for(
            lambda: engine_ref and not engine_ref[0].enabled["h2"], timeout=30, message="h2 off"
        )
        if failure == "freeze":
            await asyncio.to_thread(ssh_host_control.thaw, "h2")
            await async_wait_for(
                lambda: engine_ref[0].enabled["h2"], timeout=30, message="h2 re-enabled"
            )
        return await asyncio.wait_for(job, 120)

    outcome = asyncio.run(scenario())
    assert outcome.counts[TaskState.COMPLETED] == 16, outcome.counts
    log = (store.sweep_dir / "logs" / "health_status.log").read_text()
    assert "h2: disabled: unreachable" in log
    if failure == "freeze":
        assert "h2: re-enabled" in log
    assert not [a for a in store.attempts() if a.state is TaskState.FAILED]
    store.close()
