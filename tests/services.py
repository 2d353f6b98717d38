"""The real test services (loopback sshd hosts, one-node Slurm) as seen by the tests.

``scripts/services/*.sh`` start them and describe them in ``env.json`` files under
``$HSM_SERVICES_DIR`` (default /tmp/hsm-test-services); this module reads those files,
checks that the daemons still run, and drives the "host failure" controls.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import wait_for

SERVICES_DIR = Path(os.environ.get("HSM_SERVICES_DIR", "/tmp/hsm-test-services"))
START_HINT = "start them as root with scripts/services/start-all.sh (scripts/test.sh does)"


class ServiceUnavailable(Exception):
    """A service the test needs is not there; the message says why."""


def _pid_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _tcp_open(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _read_env(name: str) -> dict[str, Any]:
    path = SERVICES_DIR / name / "env.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ServiceUnavailable(f"{name} test service not set up ({path} missing); {START_HINT}")
    return data


@dataclass(frozen=True)
class SSHHost:
    """One loopback "remote host": its own sshd on its own 127.0.0.N address."""

    alias: str  # Host entry in the generated ssh_config (h1, h2, ...)
    address: str
    port: int
    user: str  # non-root login user
    python: str  # interpreter on the remote side, with hsm installed (readable by user)
    home: str
    project_dir: str  # remote project dir owned by the user (empty until a test fills it)
    pid_file: Path
    log_file: Path


@dataclass(frozen=True)
class SSHEnv:
    hosts: list[SSHHost]
    user: str
    ssh_config: Path  # Host h1... entries: HostName, Port, User, IdentityFile, known hosts
    known_hosts: Path  # every host's key: host-key checking stays ON
    identity_file: Path
    remote_python: str
    remote_venv: str
    control_script: Path

    def host(self, alias: str) -> SSHHost:
        for host in self.hosts:
            if host.alias == alias:
                return host
        raise KeyError(alias)

    @property
    def aliases(self) -> list[str]:
        return [h.alias for h in self.hosts]

    def connect(self, alias: str, **kwargs: Any) -> Any:
        """``asyncssh.connect`` through the generated ssh_config (host keys checked).

        Use as ``async with ssh_env.connect("h1") as conn:``.
        """
        import asyncssh

        return asyncssh.connect(alias, config=[str(self.ssh_config)], **kwargs)


def load_ssh_env() -> SSHEnv:
    raw = _read_env("sshd")
    # A second checkout runs its own code on the hosts through its own remote venv
    # (`HSM_REMOTE_VENV=DIR scripts/services/sshd.sh venv`; scripts/test.sh does it).
    own_venv = os.environ.get("HSM_REMOTE_VENV")
    if own_venv:
        raw["remote_venv"] = own_venv
        raw["remote_python"] = f"{own_venv}/bin/python"
        for h in raw["hosts"]:
            h["python"] = raw["remote_python"]
    hosts = [
        SSHHost(
            alias=h["alias"],
            address=h["address"],
            port=int(h["port"]),
            user=h["user"],
            python=h["python"],
            home=h["home"],
            project_dir=h["project_dir"],
            pid_file=Path(h["pid_file"]),
            log_file=Path(h["log_file"]),
        )
        for h in raw["hosts"]
    ]
    down = [h.alias for h in hosts if not _tcp_open(h.address, h.port)]
    if down:
        raise ServiceUnavailable(f"sshd test hosts not running: {', '.join(down)}; {START_HINT}")
    return SSHEnv(
        hosts=hosts,
        user=raw["user"],
        ssh_config=Path(raw["ssh_config"]),
        known_hosts=Path(raw["known_hosts"]),
        identity_file=Path(raw["identity_file"]),
        remote_python=raw["remote_python"],
        remote_venv=raw["remote_venv"],
        control_script=Path(raw["control_script"]),
    )


@dataclass(frozen=True)
class SlurmEnv:
    """The one-node Slurm (with slurmdbd: sacct works). Jobs run as the submitting user."""

    cluster: str
    partition: str
    node: str
    cpus: int
    slurm_conf: Path
    state_dir: Path
    log_dir: Path
    pid_files: dict[str, Path]  # munged, mariadbd, slurmdbd, slurmctld, slurmd
    control_script: Path


def load_slurm_env() -> SlurmEnv:
    raw = _read_env("slurm")
    pid_files = {name: Path(p) for name, p in raw["pid_files"].items()}
    down = [name for name, pid_file in pid_files.items() if not _pid_alive(pid_file)]
    if down:
        raise ServiceUnavailable(f"Slurm test daemons not running: {', '.join(down)}; {START_HINT}")
    # The test cluster's own config, never /etc/slurm's: every sbatch/sacct the tests
    # (and the hsm processes they start) run must reach it.
    os.environ["SLURM_CONF"] = raw["slurm_conf"]
    return SlurmEnv(
        cluster=raw["cluster"],
        partition=raw["partition"],
        node=raw["node"],
        cpus=int(raw["cpus"]),
        slurm_conf=Path(raw["slurm_conf"]),
        state_dir=Path(raw["state_dir"]),
        log_dir=Path(raw["log_dir"]),
        pid_files=pid_files,
        control_script=Path(raw["control_script"]),
    )


@dataclass
class SSHHostControl:
    """Make a loopback host hang, come back, or die, through ``sshd.sh``.

    - ``freeze``: SIGSTOP its sshd and every session under it: new connections hang
      (TCP accepted, no SSH banner), open ones stop answering.
    - ``thaw``: SIGCONT them.
    - ``kill``: SIGKILL its sshd and sessions: connections refused at once. Detached
      remote processes (their own session, reparented to init) are NOT killed.
    - ``revive``: start a killed host again (same address, port and host key).

    Blocking calls (~10-50 ms): from async code use ``await asyncio.to_thread(...)``.
    Every host touched is thawed/revived when the test ends.
    """

    env: SSHEnv
    _touched: set[str] = field(default_factory=set)

    def _run(self, action: str, alias: str) -> None:
        self.env.host(alias)  # unknown alias -> KeyError before anything happens
        self._touched.add(alias)
        subprocess.run(
            ["bash", str(self.env.control_script), action, alias],
            check=True,
            capture_output=True,
            env={**os.environ, "HSM_SERVICES_DIR": str(SERVICES_DIR)},
        )

    def freeze(self, alias: str) -> None:
        self._run("freeze", alias)

    def thaw(self, alias: str) -> None:
        self._run("thaw", alias)

    def kill(self, alias: str) -> None:
        self._run("kill", alias)

    def revive(self, alias: str) -> None:
        self._run("revive", alias)

    def restore(self) -> None:
        """Bring every touched host back: thawed and running, accepting connections."""
        for alias in sorted(self._touched):
            host = self.env.host(alias)
            if _pid_alive(host.pid_file):
                self._run("thaw", alias)
            else:
                self._run("revive", alias)
            wait_for(
                lambda h=host: _tcp_open(h.address, h.port),  # type: ignore[misc]
                timeout=10,
                message=f"{alias} to accept connections again",
            )
        self._touched.clear()
