"""Hints and checks that must work as a user meets them: a fix that runs when pasted, an
error that names the interpreter instead of pasting a script, unknown keys listed with
the valid ones, and configured GPUs checked against the machine."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hsm_core.errors import HsmError
from hsm_core.transport.ssh import SSHTarget, SSHTransport
from tests.integration.ssh_support import remote_project
from tests.services import SSHEnv
from tests.sweep_utils import hsm


def _connect(target: SSHTarget) -> None:
    async def attempt() -> None:
        transport = SSHTransport(target)
        try:
            await transport.connect()
        finally:
            await transport.close()

    asyncio.run(attempt())


def test_unknown_host_key_fix_runs_as_pasted_in_a_fresh_account(
    ssh_env: SSHEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ssh config, no ~/.ssh at all: the hint's command must create what it needs and
    append to the file the check reads (a quoted '~' would name a folder called '~')."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    h3 = ssh_env.host("h3")
    target = SSHTarget(h3.address, user=h3.user, port=h3.port, key=str(ssh_env.identity_file))
    with pytest.raises(HsmError) as err:
        _connect(target)
    message = str(err.value)
    assert "~/.ssh/known_hosts" in message and "\n" not in message
    fix = re.search(r"then run `([^`]+)`", message)
    assert fix is not None, message
    assert "'~" not in fix.group(1)
    done = subprocess.run(
        ["bash", "-c", fix.group(1)], env={**os.environ, "HOME": str(home)}, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    assert (home / ".ssh" / "known_hosts").stat().st_size > 0
    _connect(target)  # the pasted fix is all it took


def _project(root: Path, sources: dict[str, object]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "hsm.yaml").write_text(yaml.safe_dump({"sources": sources}))
    return root


def test_a_python_that_does_not_run_is_named_without_the_probe_script(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    project = _project(
        tmp_path / "p",
        {
            "bad": {
                "type": "ssh",
                "host": "h1",
                "ssh_config": str(ssh_env.ssh_config),
                "project_dir": remote_project(ssh_env, "h1"),
                "python": "/no/such/python3",
            }
        },
    )
    res = hsm("sources", "test", "bad", cwd=project)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("bad:")]
    assert len(lines) == 1, res.stdout
    assert "`/no/such/python3` does not run on h1" in lines[0]
    assert "No such file or directory" in lines[0] and "set `python:`" in lines[0]
    assert "import json" not in res.stdout and "json.dumps" not in res.stdout


SSH_TYPO = {"type": "ssh", "host": "h1", "project_dir": "p", "pyhton": "python3"}
LOGIN_TYPO = {"type": "hpc", "ssh": {"host": "h1", "usr": "bob"}, "project_dir": "p"}


@pytest.mark.parametrize(
    ("entry", "key", "valid"),
    [(SSH_TYPO, "s.pyhton", "python"), (LOGIN_TYPO, "s.ssh.usr", "user")],
)
def test_unknown_key_of_an_ssh_source_lists_the_valid_keys(
    tmp_path: Path, entry: dict[str, object], key: str, valid: str
) -> None:
    project = _project(tmp_path, {"s": entry})
    res = hsm("sources", "list", cwd=project)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert f"hsm.yaml:sources.{key}: unknown key" in res.stderr
    allowed = res.stderr.split("allowed: ", 1)[1]
    assert re.search(rf"\b{valid}\b", allowed) and "host" in allowed


def _fake_nvidia_smi(folder: Path, lines: list[str]) -> Path:
    """A FAKE nvidia-smi (no GPU can exist on the test machine), printing `lines` as the
    real one prints `--query-gpu=... --format=csv,noheader`."""
    folder.mkdir()
    exe = folder / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + "".join(f"echo '{ln}'\n" for ln in lines))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return folder


def test_sources_test_checks_configured_gpus_against_the_machine(tmp_path: Path) -> None:
    no_gpu = {"PATH": "/usr/bin:/bin:" + str(Path(sys.executable).parent)}
    project = _project(tmp_path / "p", {"gpubox": {"type": "local", "gpus": [0, 1]}})
    res = hsm("sources", "test", "gpubox", cwd=project, env=no_gpu)
    assert res.returncode == 1 and "FAILED" in res.stdout
    assert "gpubox: gpus: [0, 1] configured, but this machine has no nvidia-smi" in res.stdout
    assert "GPU 0" not in res.stdout  # nothing reported as present

    fake = _fake_nvidia_smi(tmp_path / "bin", ["0, GPU-1234abcd, Fake GPU, 1 MiB, 100 MiB"])
    with_gpu = {"PATH": f"{fake}:{no_gpu['PATH']}"}
    res = hsm("sources", "test", "gpubox", cwd=project, env=with_gpu)
    assert res.returncode == 1 and "GPU 1 configured but not present" in res.stdout
    project = _project(tmp_path / "q", {"gpubox": {"type": "local", "gpus": ["GPU-1234abcd"]}})
    res = hsm("sources", "test", "gpubox", cwd=project, env=with_gpu)
    assert res.returncode == 0, res.stdout
    assert "gpubox: GPU 0, GPU-1234abcd, Fake GPU" in res.stdout


def test_sources_test_checks_the_gpus_of_an_ssh_host(ssh_env: SSHEnv, tmp_path: Path) -> None:
    project = _project(
        tmp_path / "p",
        {
            "h1": {
                "type": "ssh",
                "host": "h1",
                "ssh_config": str(ssh_env.ssh_config),
                "project_dir": remote_project(ssh_env, "h1"),
                "python": ssh_env.host("h1").python,
                "gpus": [0],
            }
        },
    )
    res = hsm("sources", "test", "h1", cwd=project)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "h1: gpus: [0] configured, but nvidia-smi found none there" in res.stdout
