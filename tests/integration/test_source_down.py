"""A source that cannot start is a dead host, not the end of the sweep: the sweep runs on
the sources that started and keeps trying the others. Real loopback sshd hosts; a "dead"
source is an ssh source pointed at a port where nothing listens (refused at once), or a
host whose sshd was killed (SSHHostControl). Sources that must be up are on h1, under
names of their own: other tests stop h2 (and this one h3) at times."""

from __future__ import annotations

import asyncio
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hsm_core.model import SourceSpec, TaskEvent, TaskState
from hsm_core.store import SweepStore
from tests.helpers import async_wait_for, wait_for
from tests.hydra.util import APPS, job_return, jobs, run_app
from tests.integration.ssh_support import (
    FAST_SSH,
    command_tasks,
    make_project,
    new_store,
    run,
    ssh_entry,
    ssh_spec,
)
from tests.services import SSHEnv
from tests.sweep_utils import hsm, hsm_popen


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every host's login user can write to (pytest's tmp is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="hsm-down-", dir="/tmp"))
    d.chmod(0o777)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _closed_port(address: str) -> int:
    """A port on `address` where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _on_h1(ssh_env: SSHEnv, name: str, slots: int = 2, **options: Any) -> SourceSpec:
    """A source named `name` on the loopback host h1 (a project dir of its own)."""
    base = ssh_spec(ssh_env, "h1", slots, **FAST_SSH, **options)
    return SourceSpec(name, "ssh", slots, options=dict(base.options))


def _dead_entry(ssh_env: SSHEnv, alias: str) -> dict[str, Any]:
    """An ssh source whose host refuses every connection."""
    return ssh_entry(ssh_env, alias, port=_closed_port(ssh_env.host(alias).address))


def _project(
    tmp_path: Path, shared: Path, sources: dict[str, Any], n: int = 12, **top: Any
) -> Path:
    ran = shared / "ran.txt"
    ran.touch()
    ran.chmod(0o666)
    project = make_project(tmp_path / "proj")
    (project / "hsm.yaml").write_text(yaml.safe_dump({"sources": sources, **top}))
    (project / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "grid": {"i": list(range(n))},
                "command": ["sh", "-c", f'echo "$0" >> {ran}; sleep 0.2', "{i}"],
            }
        )
    )
    git = ["git", "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "cfg"], cwd=project, check=True)
    return project


def _runs(shared: Path) -> Counter[str]:
    return Counter((shared / "ran.txt").read_text().split())


def _store(project: Path, sweep_id: str) -> SweepStore:
    return SweepStore.open(project / "sweeps" / "outputs" / sweep_id, readonly=True)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_one_refused_source_of_three_the_sweep_runs_on_the_other_two(
    ssh_env: SSHEnv, tmp_path: Path, shared_dir: Path
) -> None:
    sources = {
        "a": ssh_entry(ssh_env, "h1"),
        "b": ssh_entry(ssh_env, "h1"),
        "dead": _dead_entry(ssh_env, "h3"),
    }
    project = _project(tmp_path, shared_dir, sources)
    res = hsm("run", "-c", "sweep.yaml", "-s", "a,b,dead", "--sweep-id", "s", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    # One warning line, with the reason, while the sweep goes on.
    lines = _warnings(res.stderr)
    assert len(lines) == 1, res.stderr
    assert "dead: disabled: could not start" in lines[0] and "Connect call failed" in lines[0]
    # The summary names it and why.
    assert "never started dead: " in res.stdout and "Connect call failed" in res.stdout
    store = _store(project, "s")
    latest = store.latest_attempts()
    assert {a.state for a in latest.values()} == {TaskState.COMPLETED}
    assert {a.source for a in latest.values()} == {"a", "b"}
    assert _runs(shared_dir) == Counter({str(i): 1 for i in range(12)})
    assert "dead" in (store.meta("not_started") or {})
    # Disabled in the health log, so `hsm monitor` shows it.
    health = (store.sweep_dir / "logs" / "health_status.log").read_text()
    assert "dead: disabled: could not start" in health
    watch = hsm("monitor", "watch", "--once", "s", cwd=project)
    row = next(line for line in watch.stdout.splitlines() if line.startswith("dead "))
    assert "disabled" in row, watch.stdout


def test_all_sources_down_is_one_line_and_exit_2(
    ssh_env: SSHEnv, tmp_path: Path, shared_dir: Path
) -> None:
    sources = {"dead1": _dead_entry(ssh_env, "h2"), "dead2": _dead_entry(ssh_env, "h3")}
    project = _project(tmp_path, shared_dir, sources)
    res = hsm("run", "-c", "sweep.yaml", "-s", "dead1,dead2", "--sweep-id", "s", cwd=project)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = _warnings(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("hsm: error: no source could start"), lines
    assert "dead1: " in lines[0] and "dead2: " in lines[0] and "Traceback" not in res.stderr
    assert not (project / "sweeps" / "outputs" / "s").exists()  # nothing began: nothing left
    assert _runs(shared_dir) == Counter()


@pytest.mark.parametrize("where", ["flag", "hsm.yaml"])
def test_require_all_sources_fails_fast(
    ssh_env: SSHEnv, tmp_path: Path, shared_dir: Path, where: str
) -> None:
    sources = {"h1": ssh_entry(ssh_env, "h1"), "dead": _dead_entry(ssh_env, "h3")}
    top = {"require_all_sources": True} if where == "hsm.yaml" else {}
    project = _project(tmp_path, shared_dir, sources, **top)
    flag = ["--require-all-sources"] if where == "flag" else []
    t0 = time.monotonic()
    res = hsm("run", "-c", "sweep.yaml", "-s", "h1,dead", "--sweep-id", "s", *flag, cwd=project)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = _warnings(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("hsm: error: source dead could not start")
    assert "--require-all-sources" in lines[0]
    assert time.monotonic() - t0 < 30
    assert _runs(shared_dir) == Counter()  # no task ran, not even on h1
    assert not (project / "sweeps" / "outputs" / "s").exists()


def test_a_mistake_on_one_source_stays_fatal(
    ssh_env: SSHEnv, tmp_path: Path, shared_dir: Path
) -> None:
    """An unknown host key is a decision for the user, not an outage: the run stops
    before any task, even though h1 could run them."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    # Both on h1 (one host that must be up: other users' tests stop hosts at times).
    sources = {"good": ssh_entry(ssh_env, "h1"), "unknown": ssh_entry(ssh_env, "h1")}
    sources["unknown"]["known_hosts"] = str(empty)
    project = _project(tmp_path, shared_dir, sources)
    res = hsm("run", "-c", "sweep.yaml", "-s", "good,unknown", "--sweep-id", "s", cwd=project)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = _warnings(res.stderr)
    assert len(lines) == 1 and "is not in" in lines[0] and "ssh-keyscan" in lines[0], lines
    assert _runs(shared_dir) == Counter()


def test_complete_runs_on_the_sources_that_start(
    ssh_env: SSHEnv, tmp_path: Path, shared_dir: Path
) -> None:
    """`hsm complete` degrades the same way (and --require-all-sources keeps it strict)."""
    gate = shared_dir / "go"
    sources = {"h1": ssh_entry(ssh_env, "h1"), "dead": _dead_entry(ssh_env, "h3")}
    project = _project(tmp_path, shared_dir, sources, n=6)
    sweep = yaml.safe_load((project / "sweep.yaml").read_text())
    sweep["command"] = ["sh", "-c", f'test -f {gate} && echo "$0" >> {shared_dir}/ran.txt', "{i}"]
    (project / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    first = hsm("run", "-c", "sweep.yaml", "-s", "local:2", "--sweep-id", "s", cwd=project)
    assert first.returncode == 1, first.stdout + first.stderr  # every task FAILED: no gate
    gate.touch()
    gate.chmod(0o666)

    strict = hsm("complete", "s", "--retry-failed", "-s", "h1,dead", "--require-all-sources",
                 cwd=project)  # fmt: skip
    assert strict.returncode == 2, strict.stdout + strict.stderr
    lines = _warnings(strict.stderr)
    assert len(lines) == 1 and lines[0].startswith("hsm: error: source dead could not start")
    assert _runs(shared_dir) == Counter()

    res = hsm("complete", "s", "--retry-failed", "-s", "h1,dead", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = _warnings(res.stderr)
    assert len(lines) == 1 and "dead: disabled: could not start" in lines[0], lines
    assert "never started dead: " in res.stdout
    store = _store(project, "s")
    latest = store.latest_attempts()
    assert {(a.source, a.state) for a in latest.values()} == {("h1", TaskState.COMPLETED)}
    assert _runs(shared_dir) == Counter({str(i): 1 for i in range(6)})
    store.close()


def test_complete_with_every_source_down_is_one_line_and_exit_2(
    ssh_env: SSHEnv, tmp_path: Path, shared_dir: Path
) -> None:
    """`hsm complete` on sources that are all down: one line, exit 2, and the journal as
    it was (the tasks to retry are still FAILED, no attempt was added)."""
    sources = {"dead1": _dead_entry(ssh_env, "h2"), "dead2": _dead_entry(ssh_env, "h3")}
    project = _project(tmp_path, shared_dir, sources, n=4)
    sweep = yaml.safe_load((project / "sweep.yaml").read_text())
    sweep["command"] = ["sh", "-c", "exit 1"]
    (project / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    first = hsm("run", "-c", "sweep.yaml", "-s", "local:2", "--sweep-id", "s", cwd=project)
    assert first.returncode == 1, first.stdout + first.stderr  # every task FAILED
    store = _store(project, "s")
    before = {k: (a.attempt, a.state) for k, a in store.latest_attempts().items()}
    store.close()

    res = hsm("complete", "s", "--retry-failed", "-s", "dead1,dead2", cwd=project)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = _warnings(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("hsm: error: no source could start"), lines
    assert "dead1: " in lines[0] and "dead2: " in lines[0] and "Traceback" not in res.stderr
    store = _store(project, "s")
    after = {k: (a.attempt, a.state) for k, a in store.latest_attempts().items()}
    store.close()
    assert after == before and len(before) == 4


def test_a_source_that_comes_up_mid_sweep_receives_tasks(
    ssh_env: SSHEnv, ssh_host_control: Any, tmp_path: Path
) -> None:
    """h3's sshd is down when the sweep starts (refused); it comes back a few seconds
    later, is started in the background and takes tasks."""
    project = make_project(tmp_path / "proj")
    tasks = command_tasks([["sh", "-c", "sleep 1", str(i)] for i in range(30)])
    store = new_store(tmp_path / "sweep", project, tasks)
    specs = [ssh_spec(ssh_env, "h1", 1, **FAST_SSH), ssh_spec(ssh_env, "h3", 2, **FAST_SSH)]
    ssh_host_control.kill("h3")
    on_h3: set[str] = set()
    engine_ref: list[Any] = []
    lines: list[str] = []

    def listener(ev: TaskEvent) -> None:
        if ev.state is TaskState.RUNNING and ev.source == "h3":
            on_h3.add(ev.key)

    def hook(engine: Any) -> None:
        engine.notify = lines.append
        engine_ref.append(engine)

    async def scenario() -> Any:
        job = asyncio.create_task(run(store, specs, listener=listener, engine_hook=hook))
        await async_wait_for(
            lambda: engine_ref and "h3" in engine_ref[0].not_started,
            timeout=30,
            message="h3 not started",
        )
        assert not on_h3
        await asyncio.to_thread(ssh_host_control.revive, "h3")
        await async_wait_for(lambda: on_h3, timeout=60, message="a task on h3")
        return await asyncio.wait_for(job, 180)

    outcome = asyncio.run(scenario())
    assert outcome.counts[TaskState.COMPLETED] == 30, outcome.counts
    assert outcome.not_started == {}  # it did start, in the end
    latest = store.latest_attempts()
    assert {a.source for a in latest.values()} == {"h1", "h3"}
    health = (store.sweep_dir / "logs" / "health_status.log").read_text()
    assert "h3: disabled: could not start" in health and "h3: re-enabled" in health
    assert any("joins the sweep" in line for line in lines), lines
    store.close()


def test_hydra_launcher_runs_on_the_sources_that_start(ssh_env: SSHEnv, tmp_path: Path) -> None:
    project = tmp_path / "app"
    project.mkdir()
    (project / "hsm.yaml").write_text(
        yaml.safe_dump({"sources": {"dead": _dead_entry(ssh_env, "h3")}})
    )
    sweep = project / "sweep"
    args = [
        "hydra/launcher=hsm",
        "hydra.launcher.sources='local:2,dead:2'",
        "hydra.launcher.progress=false",
        "x=1,2,3",
    ]
    res = run_app(APPS / "tiny.py", args, sweep_dir=sweep)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "source dead could not start" in out and "Connect call failed" in out, out
    assert "source dead never started" in out, out
    found = jobs(sweep)
    assert [job_return(found[n]["dir"]).return_value["x"] for n in range(3)] == [2, 4, 6]
    assert {j["state"] for j in found.values()} == {"COMPLETED"}

    strict = project / "strict"
    res = run_app(
        APPS / "tiny.py", [*args, "hydra.launcher.require_all_sources=true"], sweep_dir=strict
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "source dead could not start" in res.stderr and "Traceback" not in res.stderr
    assert not any(
        j["state"] == "COMPLETED" for j in (jobs(strict).values() if strict.exists() else [])
    )


def test_hydra_launcher_with_every_source_down_is_one_line(ssh_env: SSHEnv, tmp_path: Path) -> None:
    project = tmp_path / "app"
    project.mkdir()
    (project / "hsm.yaml").write_text(
        yaml.safe_dump({"sources": {"dead": _dead_entry(ssh_env, "h3")}})
    )
    args = ["hydra/launcher=hsm", "hydra.launcher.sources=dead:2", "x=1,2"]
    res = run_app(APPS / "tiny.py", args, sweep_dir=project / "sweep")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no source could start: dead: " in res.stderr and "Traceback" not in res.stderr


def test_many_sources_start_a_few_at_a_time_and_all_take_work(
    ssh_env: SSHEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More ssh sources on one host than start at once (each its own connection, agent
    and project dir) x 1 slot, half of them naming it by its ssh config alias and half by
    address and port: every one starts and runs tasks; never more than the engine's bound
    start at once, and never more than the bound per sshd log in at once, whatever the
    sources call it (a bound lowered here, so that it binds whatever the engine's is)."""
    from hsm_core.engine import START_AT_ONCE
    from hsm_core.orchestrate import context_for
    from hsm_core.sources import make_source
    from hsm_core.transport import ssh

    logins = 3
    assert 2 * logins < START_AT_ONCE  # either name alone could take more
    monkeypatch.setattr(ssh, "LOGINS_PER_HOST", logins)
    n_sources = START_AT_ONCE + 4
    n_tasks = 3 * n_sources
    project = make_project(tmp_path / "proj")
    tasks = command_tasks([["sh", "-c", "sleep 0.3", str(i)] for i in range(n_tasks)])
    store = new_store(tmp_path / "sweep", project, tasks)
    h1 = ssh_env.host("h1")
    by_address = {
        "host": h1.address,
        "port": h1.port,
        "user": h1.user,
        "key": str(ssh_env.identity_file),
        "known_hosts": str(ssh_env.known_hosts),
        "ssh_config": None,
    }
    specs = [
        _on_h1(ssh_env, f"s{i:02d}", 1, **(by_address if i % 2 else {})) for i in range(n_sources)
    ]
    ctx = context_for(store, sys.executable)
    sources = [make_source(spec, ctx) for spec in specs]
    now = {"starts": 0, "logins": 0}
    most = {"starts": 0, "logins": 0}

    def counted(what: str, real: Any) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            now[what] += 1
            most[what] = max(most[what], now[what])
            try:
                return await real(*args, **kwargs)
            finally:
                now[what] -= 1

        return wrapper

    for src in sources:
        src.start = counted("starts", src.start)  # type: ignore[method-assign]
    import asyncssh

    monkeypatch.setattr(asyncssh, "connect", counted("logins", asyncssh.connect))
    outcome = asyncio.run(run(store, specs, sources=sources))
    assert outcome.counts[TaskState.COMPLETED] == n_tasks, outcome.counts
    assert most["starts"] == START_AT_ONCE, most
    assert 1 < most["logins"] <= logins, most
    per_source = Counter(a.source for a in store.latest_attempts().values())
    assert set(per_source) == {s.name for s in specs}, per_source
    store.close()


def test_attempts_left_on_a_source_that_cannot_start_run_again_elsewhere(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    """A previous orchestrator died while two tasks ran on `dead`; now `dead` refuses:
    they cannot be asked after, so they are LOST there and run on h1 (as when a host dies
    mid-sweep), instead of the whole completion being refused."""
    project = make_project(tmp_path / "proj")
    tasks = command_tasks([["true", str(i)] for i in range(4)])
    store = new_store(tmp_path / "sweep", project, tasks)
    left = [t.key for t in tasks[:2]]
    store.apply_many(
        [TaskEvent(k, 1, s, "dead") for k in left for s in (TaskState.ASSIGNED, TaskState.RUNNING)]
    )
    dead = ssh_spec(ssh_env, "h3", 2, **FAST_SSH, port=_closed_port(ssh_env.host("h3").address))
    specs = [_on_h1(ssh_env, "up"), SourceSpec("dead", "ssh", 2, options=dict(dead.options))]
    outcome = asyncio.run(run(store, specs))
    assert outcome.counts[TaskState.COMPLETED] == 4, outcome.counts
    for key in left:
        first, second = store.attempts(key)
        assert (first.state, first.source) == (TaskState.LOST, "dead")
        assert "dead could not start" in (first.error or "")
        assert (second.state, second.source) == (TaskState.COMPLETED, "up")
    store.close()


def _slow_python(ssh_env: SSHEnv, shared_dir: Path, seconds: int) -> Path:
    """h1's python behind a wrapper that first sleeps: an agent on a busy host."""
    slow = shared_dir / "slow-python"
    slow.write_text(f'#!/bin/sh\nsleep {seconds}\nexec {ssh_env.host("h1").python} "$@"\n')
    slow.chmod(0o755)
    return slow


def test_an_agent_that_answers_late_gets_longer_at_the_next_try(
    ssh_env: SSHEnv, tmp_path: Path, shared_dir: Path
) -> None:
    """A busy host: its agent needs 3 s to answer, agent_timeout is 2 s. The first start
    fails ("did not answer"), the sweep runs on `fast`, the retry allows 4 s and `slow`
    joins."""
    slow = _slow_python(ssh_env, shared_dir, 3)
    project = make_project(tmp_path / "proj")
    tasks = command_tasks([["sh", "-c", "sleep 1", str(i)] for i in range(30)])
    store = new_store(tmp_path / "sweep", project, tasks)
    specs = [
        _on_h1(ssh_env, "fast", 1),
        _on_h1(ssh_env, "slow", 2, agent_python=str(slow), agent_timeout=2),
    ]
    outcome = asyncio.run(run(store, specs))
    assert outcome.counts[TaskState.COMPLETED] == 30, outcome.counts
    assert outcome.not_started == {}
    assert "slow" in {a.source for a in store.latest_attempts().values()}
    health = (store.sweep_dir / "logs" / "health_status.log").read_text()
    assert "slow: disabled: could not start" in health and "did not answer in 2 s" in health
    assert "slow: re-enabled: started at try " in health  # try 2, or later on a busy machine
    store.close()


def test_a_slow_start_does_not_hold_up_the_sweep(
    ssh_env: SSHEnv, tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`slow`'s agent takes 15 s to answer (within its agent_timeout): 2 s (the grace
    period, here) after `fast` is up the sweep begins on it, and `slow` joins when its
    start completes."""
    from hsm_core import engine

    monkeypatch.setattr(engine, "START_GRACE_S", 2.0)
    slow = _slow_python(ssh_env, shared_dir, 15)
    project = make_project(tmp_path / "proj")
    tasks = command_tasks([["sh", "-c", "sleep 1", str(i)] for i in range(30)])
    store = new_store(tmp_path / "sweep", project, tasks)
    specs = [
        _on_h1(ssh_env, "fast", 1),
        _on_h1(ssh_env, "slow", 2, agent_python=str(slow)),
    ]
    first_running: dict[str, float] = {}

    def listener(ev: TaskEvent) -> None:
        if ev.state is TaskState.RUNNING and ev.source:
            first_running.setdefault(ev.source, time.monotonic())

    outcome = asyncio.run(run(store, specs, listener=listener))
    assert outcome.counts[TaskState.COMPLETED] == 30, outcome.counts
    assert outcome.not_started == {}
    assert first_running["fast"] < first_running["slow"], first_running
    health = (store.sweep_dir / "logs" / "health_status.log").read_text()
    assert "slow: disabled: still starting after 2 s" in health
    assert "slow: re-enabled: started at try 1" in health
    store.close()


def test_the_summary_says_how_to_use_a_source_once_it_is_back(
    ssh_env: SSHEnv, tmp_path: Path, shared_dir: Path
) -> None:
    """A run stopped with tasks left names the source that never started and the
    `hsm complete` line to finish on it; pasted once the host is back, that line does."""
    sources = {"a": ssh_entry(ssh_env, "h1", 1), "dead": _dead_entry(ssh_env, "h3")}
    project = _project(tmp_path, shared_dir, sources, n=6)
    sweep = yaml.safe_load((project / "sweep.yaml").read_text())
    sweep["command"] = ["sh", "-c", f'echo "$0" >> {shared_dir}/ran.txt; sleep 2', "{i}"]
    (project / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    proc = hsm_popen("run", "-c", "sweep.yaml", "-s", "a,dead", "--sweep-id", "s", cwd=project)
    wait_for(lambda: _runs(shared_dir), timeout=60, message="a first task on a")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "never started dead: " in out
    hints = [line for line in out.splitlines() if line.startswith("once they are back: ")]
    assert len(hints) == 1, out
    argv = shlex.split(hints[0].removeprefix("once they are back: "))
    assert argv[:2] == ["hsm", "complete"] and argv[-2:] == ["--sources", "dead"], argv
    # The host is back: its entry now reaches h1's sshd.
    sources["dead"] = ssh_entry(ssh_env, "h1", 2)
    (project / "hsm.yaml").write_text(yaml.safe_dump({"sources": sources}))
    res = hsm(*argv[1:], cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    store = _store(project, "s")
    latest = store.latest_attempts()
    assert {a.state for a in latest.values()} == {TaskState.COMPLETED}
    assert "dead" in {a.source for a in latest.values()}
    store.close()
