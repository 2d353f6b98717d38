"""Session fixtures for the real services (loopback sshd hosts, one-node Slurm).

A test that asks for ``ssh_env`` or ``slurm_env`` skips with the reason when the service
is not running, and fails instead when ``HSM_REQUIRE_SERVICES=1`` (CI), so that a broken
set-up can never pass as "skipped". Such tests are also marked ``ssh`` / ``slurm``
automatically (``pytest -m "not slurm"``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.services import (
    ServiceUnavailable,
    SlurmEnv,
    SSHEnv,
    SSHHostControl,
    load_slurm_env,
    load_ssh_env,
)

REQUIRE_SERVICES = os.environ.get("HSM_REQUIRE_SERVICES") == "1"


def service_missing(reason: str) -> NoReturn:
    """Skip the test, or fail it when the services are required."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} [HSM_REQUIRE_SERVICES=1]", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ssh_env() -> SSHEnv:
    """The loopback ssh hosts h1, h2, ... (see tests/services.py: SSHEnv)."""
    try:
        return load_ssh_env()
    except ServiceUnavailable as exc:
        service_missing(str(exc))


@pytest.fixture(scope="session")
def slurm_env() -> SlurmEnv:
    """The one-node Slurm with accounting (see tests/services.py: SlurmEnv)."""
    try:
        return load_slurm_env()
    except ServiceUnavailable as exc:
        service_missing(str(exc))


@pytest.fixture
def ssh_host_control(ssh_env: SSHEnv) -> Iterator[SSHHostControl]:
    """Freeze / thaw / kill / revive loopback hosts; all are restored after the test."""
    if os.geteuid() != 0:
        service_missing("freezing or killing the test sshd hosts needs root")
    control = SSHHostControl(ssh_env)
    try:
        yield control
    finally:
        control.restore()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "ssh_env" in names:
            item.add_marker(pytest.mark.ssh)
        if "slurm_env" in names:
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session", autouse=True)
def _private_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the tests' sweeps out of the user's sweep index and away from their
    ~/.config/hsm/hsm.yaml: every process the tests start inherits these."""
    saved = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "XDG_CONFIG_HOME")}
    base = tmp_path_factory.mktemp("xdg")
    os.environ["XDG_STATE_HOME"] = str(base / "state")
    os.environ["XDG_CONFIG_HOME"] = str(base / "config")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
