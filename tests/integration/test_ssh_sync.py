"""Project sync verification against a real remote git copy: in sync by commit, and a
dirty remote tree under each policy (warn runs, fail stops before any task, push fixes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from hsm_core.errors import HsmError
from hsm_core.model import TaskState
from hsm_core.orchestrate import context_for
from hsm_core.sources.ssh.source import SSHSource
from hsm_core.sources.ssh.sync import verify
from hsm_core.transport.ssh import SSHTarget, SSHTransport
from tests.integration.ssh_support import (
    command_tasks,
    make_project,
    new_store,
    remote_project,
    run,
    ssh_spec,
)
from tests.services import SSHEnv

LOCAL_TEXT = "local version\n"


async def _clone_and_dirty(ssh_env: SSHEnv, project: Path, remote_dir: str) -> None:
    """Copy the project with its .git to the host, then edit a tracked file there."""
    async with ssh_env.connect("h1") as conn, conn.start_sftp_client() as sftp:
        await sftp.put(str(project), remote_dir, recurse=True)
        transport = SSHTransport(SSHTarget("h1", ssh_config=str(ssh_env.ssh_config)))
        try:
            report = await verify(
                transport,
                source="h1",
                host="h1",
                local_root=project,
                remote_dir=remote_dir,
                python=ssh_env.host("h1").python,
            )
        finally:
            await transport.close()
        assert (report.status, report.method) == ("in_sync", "git"), report.summary()
        async with sftp.open(f"{remote_dir}/data.txt", "a") as f:
            await f.write("edited on the host\n")


@pytest.mark.parametrize("policy", ["warn", "fail", "push"])
def test_dirty_remote_tree(ssh_env: SSHEnv, tmp_path: Path, policy: str) -> None:
    project = make_project(tmp_path / "proj", {"data.txt": LOCAL_TEXT})
    remote_dir = remote_project(ssh_env, "h1")
    asyncio.run(_clone_and_dirty(ssh_env, project, remote_dir))
    store = new_store(tmp_path / "sweep", project, command_tasks([["cat", "data.txt"]]))
    spec = ssh_spec(ssh_env, "h1", project_dir=remote_dir, sync=policy)
    source = SSHSource(spec, context_for(store))

    if policy == "fail":
        with pytest.raises(HsmError) as err:
            asyncio.run(run(store, [spec], sources=[source]))
        assert "data.txt" in str(err.value) and "dirty" in str(err.value)
        assert "sync: push" in str(err.value)  # says what to do
        assert [a.state for a in store.latest_attempts().values()] == [TaskState.PENDING]
        assert store.meta("source:h1")["sync"]["status"] == "differs"  # kept for later
        assert not asyncio.run(_exists(ssh_env, f"{remote_dir}/.hsm")), "a task started"
        store.close()
        return

    outcome = asyncio.run(run(store, [spec], sources=[source]))

    assert outcome.counts[TaskState.COMPLETED] == 1
    sync = source.metadata["sync"]
    assert store.meta("source:h1")["sync"] == sync  # stored in the sweep metadata
    assert "source:h1:" in (store.sweep_dir / "sweep_metadata.yaml").read_text()
    out = (store.sweep_dir / "tasks" / "task_001" / "stdout.log").read_text()
    assert sync["remote"]["git_dirty"] is True
    assert sync["remote"]["dirty_files"] == [" M data.txt"]
    if policy == "warn":
        assert sync["status"] == "differs"
        assert sync["differing_files"] == ["data.txt"]
        assert "dirty" in sync["summary"]
        assert out == LOCAL_TEXT + "edited on the host\n"  # ran as it is, with a warning
    else:
        assert (sync["status"], sync["pushed_files"]) == ("pushed", 1)
        assert out == LOCAL_TEXT  # the task saw our version
    store.close()


async def _exists(ssh_env: SSHEnv, path: str) -> bool:
    async with ssh_env.connect("h1") as conn, conn.start_sftp_client() as sftp:
        try:
            await sftp.stat(path)
        except asyncssh.SFTPNoSuchFile:
            return False
        return True
