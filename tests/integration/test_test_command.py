"""The test command itself on a machine that already runs a Slurm: the project's Slurm
keeps off the other one's files and ports, a service that does not start is named, and
skipped tests say why.

The shared one-node Slurm of the test services plays the machine's own Slurm here: a
second one is started beside it, in a services folder of its own, and stopped again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import service_missing
from tests.services import SlurmEnv

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "scripts" / "services"


def _files(folder: Path) -> dict[str, str]:
    """name -> content hash of every file below `folder` (what must stay untouched)."""
    if not folder.is_dir():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _ping(conf: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["scontrol", "ping"],
        env={**os.environ, "SLURM_CONF": conf},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def second_services() -> Iterator[Path]:
    if os.geteuid() != 0:
        service_missing("starting a second test Slurm needs root")
    # Not under pytest's tmp_path (mode 700): MariaDB runs as user mysql.
    folder = Path(f"/tmp/hsm-test-second-{uuid.uuid4().hex[:8]}")
    folder.mkdir(mode=0o755)
    try:
        yield folder
    finally:
        env = {**os.environ, "HSM_SERVICES_DIR": str(folder)}
        subprocess.run(["bash", str(SERVICES / "slurm.sh"), "stop"], env=env, timeout=180)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(600)
def test_a_second_slurm_keeps_off_the_running_ones_files_and_ports(
    slurm_env: SlurmEnv, second_services: Path
) -> None:
    before = _files(Path("/etc/slurm"))
    assert _ping(str(slurm_env.slurm_conf)).returncode == 0
    env = {**os.environ, "HSM_SERVICES_DIR": str(second_services)}
    env.pop("SLURM_CONF", None)  # a user's shell: nothing set
    start = subprocess.run(
        ["bash", str(SERVICES / "slurm.sh"), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert start.returncode == 0, start.stderr[-3000:]
    assert _files(Path("/etc/slurm")) == before  # not one byte of the other Slurm's files
    mine = json.loads((second_services / "slurm" / "env.json").read_text())
    conf = mine["slurm_conf"]
    assert conf == str(second_services / "slurm" / "etc" / "slurm.conf")
    ports = (second_services / "slurm" / "ports").read_text().split()
    assert "6817" not in ports  # the running Slurm holds 6817-6819: the next free ones
    text = Path(conf).read_text()
    assert f"SlurmctldPort={ports[0]}" in text and f"AccountingStoragePort={ports[2]}" in text
    assert _ping(conf).returncode == 0, "the second Slurm answers through its own config"
    printed = subprocess.run(
        ["bash", str(SERVICES / "slurm.sh"), "conf"], env=env, capture_output=True, text=True
    )
    assert printed.stdout.strip() == conf
    link = second_services / "slurm" / "slurm.conf"  # what the ssh test hosts' sessions use
    assert link.resolve() == Path(conf)
    assert _ping(str(slurm_env.slurm_conf)).returncode == 0, "the first one is untouched"


def _no_slurm_path(tmp_path: Path) -> str:
    """PATH of a machine without Slurm's daemons (every other sbin program is there)."""
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    for prog in Path("/usr/sbin").iterdir():
        if not prog.name.startswith("slurm"):
            (sbin / prog.name).symlink_to(prog)
    return f"{sbin}:/usr/local/bin:/usr/bin:/bin"


@pytest.mark.timeout(600)
def test_test_sh_names_the_service_that_did_not_start_and_prints_skip_reasons(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        service_missing("scripts/test.sh starts the test services only as root")
    demo = tmp_path / "test_demo.py"
    demo.write_text(
        "import pytest\n\n"
        "def test_runs():\n    pass\n\n"
        "def test_needs_slurm():\n    pytest.skip('hsm-demo-reason: no slurm here')\n"
    )
    env = {
        **os.environ,
        "PATH": _no_slurm_path(tmp_path),
        "HSM_KEEP_SERVICES": "1",
        "HSM_TEST_SERVICES": "slurm",  # the ssh hosts are not what this is about
    }
    env.pop("HSM_REQUIRE_SERVICES", None)
    run = subprocess.run(
        ["bash", str(REPO / "scripts" / "test.sh"), str(demo), "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "slurmctld is not installed" in run.stderr  # why, from the service itself
    assert "test service(s) did not start: slurm;" in run.stderr  # named, not "the services"
    assert "[sshd]" not in run.stderr  # HSM_TEST_SERVICES: only what was asked for
    assert "SKIPPED [1]" in run.stdout and "hsm-demo-reason: no slurm here" in run.stdout

    required = subprocess.run(
        ["bash", str(REPO / "scripts" / "test.sh"), str(demo), "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env={**env, "HSM_REQUIRE_SERVICES": "1"},
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert required.returncode == 1
    assert "did not start: slurm (HSM_REQUIRE_SERVICES=1)" in required.stderr
