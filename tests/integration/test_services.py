"""The real test services work as the other integration tests expect them to.

If one of these fails, the failures of the ssh/slurm tests are about the set-up
(scripts/services/), not about hsm.
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
from pathlib import Path

import asyncssh
import pytest
import submitit

from tests.helpers import wait_for
from tests.services import SlurmEnv, SSHEnv, SSHHostControl

pytestmark = pytest.mark.timeout(60)


def test_every_host_answers_as_itself_with_host_keys_checked(ssh_env: SSHEnv) -> None:
    async def check(alias: str) -> tuple[str, str]:
        async with ssh_env.connect(alias) as conn:
            result = await conn.run("echo $HSM_TEST_HOST; id -un", check=True)
            host, user = str(result.stdout).split()
            return host, user

    async def main() -> list[tuple[str, str]]:
        return list(await asyncio.gather(*(check(a) for a in ssh_env.aliases)))

    assert len(ssh_env.hosts) >= 2
    assert asyncio.run(main()) == [(alias, ssh_env.user) for alias in ssh_env.aliases]
    assert ssh_env.user != "root"


def test_remote_python_imports_hsm_and_project_dirs_are_writable(ssh_env: SSHEnv) -> None:
    async def main() -> None:
        for host in ssh_env.hosts:
            async with ssh_env.connect(host.alias) as conn:
                code = "import hsm_core, sys; print(sys.prefix)"
                result = await conn.run(f"{shlex.quote(host.python)} -c {shlex.quote(code)}")
                assert result.exit_status == 0, result.stderr
                assert str(result.stdout).strip() == ssh_env.remote_venv
                result = await conn.run(f"test -d {host.project_dir} -a -w {host.project_dir}")
                assert result.exit_status == 0, f"{host.alias}:{host.project_dir} not writable"

    asyncio.run(main())


@pytest.mark.parametrize("known_hosts", ["other key", "empty"])
def test_unknown_or_changed_host_key_is_refused(
    ssh_env: SSHEnv, tmp_path: Path, known_hosts: str
) -> None:
    host = ssh_env.hosts[0]
    bad = tmp_path / "known_hosts"
    if known_hosts == "other key":
        key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
        bad.write_text(f"[{host.address}]:{host.port} {key}")
    else:
        bad.write_text("")
    # The same ssh_config, pointing at the wrong known_hosts: the config's
    # UserKnownHostsFile is what asyncssh checks against.
    config = tmp_path / "ssh_config"
    config.write_text(ssh_env.ssh_config.read_text().replace(str(ssh_env.known_hosts), str(bad)))

    async def connect() -> None:
        async with asyncssh.connect(host.alias, config=[str(config)]):
            pass

    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        asyncio.run(connect())


def test_host_control_freeze_thaw_kill_revive(
    ssh_env: SSHEnv, ssh_host_control: SSHHostControl
) -> None:
    alias = ssh_env.hosts[-1].alias

    async def whoami(timeout: float = 5) -> str:
        async with ssh_env.connect(alias, connect_timeout=timeout) as conn:
            return str((await conn.run("echo $HSM_TEST_HOST", check=True)).stdout).strip()

    ssh_host_control.freeze(alias)
    with pytest.raises(asyncio.TimeoutError):  # TCP accepted, no banner
        asyncio.run(whoami(timeout=1))
    ssh_host_control.thaw(alias)
    assert asyncio.run(whoami()) == alias

    ssh_host_control.kill(alias)
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(whoami())
    ssh_host_control.revive(alias)
    assert asyncio.run(whoami()) == alias


def _sacct_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().splitlines()[0] if out.strip() else ""


def test_submitit_job_completes_on_slurm_and_sacct_records_it(
    slurm_env: SlurmEnv, tmp_path: Path
) -> None:
    def add(a: int, b: int) -> tuple[int, str]:
        import os

        return a + b, os.environ["SLURM_JOB_ID"]

    executor = submitit.SlurmExecutor(folder=tmp_path / "%j")
    executor.update_parameters(partition=slurm_env.partition, time=2, cpus_per_task=1)
    job = executor.submit(add, 2, 3)
    assert job.result() == (5, job.job_id)
    wait_for(
        lambda: _sacct_state(job.job_id) == "COMPLETED",
        timeout=20,
        message=f"sacct to report job {job.job_id} COMPLETED",
    )
