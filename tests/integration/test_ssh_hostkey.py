"""Host keys are checked: a changed or unknown key is refused with one clear error that
says how to fix it, before any task starts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hsm_core.errors import HsmError
from hsm_core.model import TaskState
from hsm_core.transport.ssh import SSHTarget, SSHTransport
from tests.integration.ssh_support import command_tasks, make_project, new_store, run, ssh_spec
from tests.services import SSHEnv


def test_changed_host_key_is_refused_before_any_task(ssh_env: SSHEnv, tmp_path: Path) -> None:
    h1, h2 = ssh_env.host("h1"), ssh_env.host("h2")
    lines = ssh_env.known_hosts.read_text().splitlines()
    other_key = next(line for line in lines if line.startswith(f"[{h2.address}]:"))
    entry = f"[{h1.address}]:{h1.port}"
    # h1's name with h2's key: what a man in the middle (or a reinstalled host) looks like.
    wrong = tmp_path / "known_hosts"
    wrong.write_text(entry + " " + other_key.split(" ", 1)[1] + "\n")
    project = make_project(tmp_path / "proj")
    store = new_store(tmp_path / "sweep", project, command_tasks([["true"]]))
    spec = ssh_spec(ssh_env, "h1", known_hosts=str(wrong))

    with pytest.raises(HsmError) as err:
        asyncio.run(run(store, [spec]))

    message = str(err.value)
    assert "CHANGED" in message and entry in message
    assert f"ssh-keygen -R '{entry}' -f {wrong}" in message
    assert f"ssh-keyscan -p {h1.port} {h1.address} >> {wrong}" in message
    assert "SHA256:" in message  # the offered fingerprint, to check with the admin
    assert "\n" not in message
    assert [a.state for a in store.latest_attempts().values()] == [TaskState.PENDING]
    store.close()


def test_unknown_host_key_is_refused_with_the_fix(ssh_env: SSHEnv, tmp_path: Path) -> None:
    h3 = ssh_env.host("h3")
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    target = SSHTarget("h3", ssh_config=str(ssh_env.ssh_config), known_hosts=str(empty))

    async def attempt() -> None:
        transport = SSHTransport(target)
        try:
            await transport.connect()
        finally:
            await transport.close()

    with pytest.raises(HsmError) as err:
        asyncio.run(attempt())

    message = str(err.value)
    assert f"[{h3.address}]:{h3.port} is not in {empty}" in message
    assert f"ssh-keyscan -p {h3.port} {h3.address} >> {empty}" in message
