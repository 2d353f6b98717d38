"""`hsm sources test --all --simulate-failures` on a real loopback ssh host, the one-node
Slurm and this machine: every drill scenario passes, with times, and leaves nothing
behind (no scratch folder here or on the host, no process, no sweep of the user's)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.integration.ssh_support import make_project, ssh_entry
from tests.services import SlurmEnv, SSHEnv
from tests.sweep_utils import hsm


def _drill_processes(ids: set[str]) -> list[str]:
    """Processes of this machine (the loopback hosts share it) started by these drills
    (other developers' test runs may be drilling at the same time)."""
    marks = [f"HSM_SWEEP_ID={i}".encode() for i in ids]
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if any(m in env.split(b"\0") for m in marks):
            found.append(pid)
    return found


def test_every_drill_passes_and_leaves_nothing_behind(
    ssh_env: SSHEnv, slurm_env: SlurmEnv, tmp_path: Path
) -> None:
    h1 = ssh_entry(ssh_env, "h1")
    sources = {
        "h1": h1,
        "cluster": {
            "type": "hpc",
            "scheduler": "slurm",
            "partition": slurm_env.partition,
            "time": 2,
            "max_parallel": 2,
            "poll_interval": 1,
            "poll_min": 0.5,
            "batch_window": 0.2,
            "vanish_after": 10,  # a cancelled job sacct does not show yet is LOST by then
        },
    }
    project = make_project(tmp_path / "proj")
    project.chmod(0o755)  # Slurm's jobs write the drill's sweep below it
    (project / "hsm.yaml").write_text(yaml.safe_dump({"sources": sources}))

    res = hsm("sources", "test", "--all", "--simulate-failures", "--json", cwd=project,
              timeout=600)  # fmt: skip

    assert res.returncode == 0, res.stdout + res.stderr
    results = json.loads(res.stdout)
    got = {(r["source"], r["scenario"]): r for r in results}
    assert set(got) == {
        ("cluster", "queued job cancelled"),
        ("h1", "connection dropped"),
        ("h1", "agent killed"),
        ("h1", "task killed"),
        ("local", "agent killed"),
        ("local", "task killed"),
    }
    for r in results:
        assert r["ok"], r
        assert r["leftovers"] == [], r
        assert 0 <= r["detect_s"] <= r["recover_s"], r  # times: reported, not judged
    assert "LOST" in got[("cluster", "queued job cancelled")]["detail"]
    assert "FAILED (killed by SIGKILL)" in got[("h1", "task killed")]["detail"]
    assert "none LOST" in got[("h1", "agent killed")]["detail"]

    # Nothing left: no scratch folder here, in the project or on the host, no process,
    # no job, and no sweep where the user's go.
    ids = {r["drill_id"] for r in results}
    assert len(ids) == len(results) and all(i.startswith("drill-") for i in ids)
    tmp = tempfile.gettempdir()
    assert [p for i in ids for p in glob.glob(os.path.join(tmp, f"hsm-{i}-*"))] == []
    assert not (project / ".hsm-drills").exists()
    assert not (project / "sweeps").exists()
    assert not Path(h1["project_dir"], ".hsm", "drills").exists()
    assert _drill_processes(ids) == []
    jobs = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True)
    assert not {f"hsm-{i}" for i in ids} & set(jobs.stdout.split())

    # The human form: one line per scenario with its times.
    text = hsm("sources", "test", "local", "--simulate-failures", cwd=project, timeout=600)
    assert text.returncode == 0, text.stdout + text.stderr
    lines = [ln for ln in text.stdout.splitlines() if ln.startswith(("PASS", "FAIL"))]
    assert len(lines) == 2 and all(ln.startswith("PASS  local") for ln in lines), text.stdout
    assert "detected" in lines[0] and "recovered" in lines[0]
    assert "2 of 2 scenarios passed; nothing left behind" in text.stdout


def test_health_watch_test_recovery_shows_detection_and_re_enabling(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    """`hsm monitor health --watch --test-recovery`: h1's connection is dropped once; with
    `consecutive_failures: 1` the first failed check disables it, and it is re-enabled
    once it reconnected, well within reconnect_window + timeout_s."""
    project = make_project(tmp_path / "proj")
    config = {"sources": {"h1": ssh_entry(ssh_env, "h1")}, "health": {"consecutive_failures": 1}}
    (project / "hsm.yaml").write_text(yaml.safe_dump(config))

    res = hsm("monitor", "health", "--watch", "--test-recovery", "--sources", "h1", cwd=project)

    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    steps = [ln.split("s  ", 1)[-1] for ln in out.splitlines() if " s  " in ln]
    assert steps[0].startswith("h1 healthy") and "dropping its connection now" in steps[0]
    disabled = next(i for i, s in enumerate(steps) if s.startswith("h1 disabled: unreachable"))
    enabled = next(i for i, s in enumerate(steps) if s == "h1 re-enabled")
    assert 0 < disabled < enabled, steps
    assert any(s.startswith("check passed: h1") for s in steps[enabled:]), steps
    header = next(ln for ln in out.splitlines() if "last failure" in ln)
    assert "disabled" in header and "re-enabled" in header
    assert "PASS h1: detected after" in out and "(bound 22 s: reconnect_window 2 s" in out

    # Nothing to disconnect: one clear line, exit 2.
    (project / "hsm.yaml").write_text(yaml.safe_dump({"sources": {}}))
    bad = hsm("monitor", "health", "--test-recovery", cwd=project)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--test-recovery disconnects an ssh source, and none is selected" in bad.stderr


def test_a_killed_ssh_agent_ends_its_channel_while_its_task_runs(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    """The keeper must not hold the channel open: sshd ends a channel's output only once
    stdout and stderr are both closed, and a keeper that kept stderr hid a killed agent
    until its last task ended (the drill saw detection take as long as the tasks)."""
    import asyncio
    import contextlib
    import posixpath
    import signal

    from hsm_core.sources.ssh.agent import ssh_agent_channel
    from hsm_core.transport.ssh import SSHTarget, SSHTransport
    from tests.integration.ssh_support import remote_project

    remote = remote_project(ssh_env, "h1")
    task_dir = posixpath.join(remote, "tasks", "task_001")

    async def scenario() -> float:
        transport = SSHTransport(SSHTarget("h1", ssh_config=str(ssh_env.ssh_config)), name="h1")
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        closed = asyncio.Event()

        def on_event(ev: dict[str, Any]) -> None:
            if ev.get("ev") == "started" and not started.done():
                started.set_result(int(ev["pid"]))

        agent = ssh_agent_channel(
            transport, ssh_env.host("h1").python, on_event, lambda why: closed.set()
        )
        task = 0
        try:
            config = {"op": "config", "journal": posixpath.join(remote, ".agents")}
            hello = await agent.start(config, 60)
            launch = {"op": "launch", "id": "t", "attempt": 1, "dir": task_dir, "cwd": "/"}
            agent.send({**launch, "argv": ["sleep", "60"], "env": {}, "timeout": None})
            task = await asyncio.wait_for(started, 30)
            os.kill(int(hello["pid"]), signal.SIGKILL)
            t0 = asyncio.get_running_loop().time()
            await asyncio.wait_for(closed.wait(), 30)  # before the fix: only after 60 s
            return asyncio.get_running_loop().time() - t0
        finally:
            if task:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(task, signal.SIGKILL)
            await agent.close()
            await transport.close()

    noticed = asyncio.run(scenario())
    assert noticed < 10, noticed
