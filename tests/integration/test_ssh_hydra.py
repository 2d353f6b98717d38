"""Hydra's own launcher test suites with the hsm launcher on an ssh pool: one loopback
host whose remote project dir differs from the local one (real sshd)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, LauncherTestSuite

from tests.integration.ssh_support import remote_project
from tests.services import SSHEnv

pytestmark = pytest.mark.ssh

CONF = Path(__file__).parent / "ssh_conf"
SSH_POOL = [
    f"hydra.searchpath=[file://{CONF}]",
    "hydra/launcher/pool=loopback",
    "hydra.launcher.progress=false",
]


@pytest.fixture(autouse=True)
def _ssh_pool_env(ssh_env: SSHEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSM_TEST_SSH_CONFIG", str(ssh_env.ssh_config))
    monkeypatch.setenv("HSM_TEST_REMOTE_PYTHON", ssh_env.host("h1").python)
    monkeypatch.setenv("HSM_TEST_REMOTE_PROJECT", remote_project(ssh_env, "h1"))


@pytest.mark.parametrize("launcher_name, overrides", [("hsm", SSH_POOL)])
class TestHsmLauncherOnSSH(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "launcher_name, overrides", [("hsm", [*SSH_POOL, "hydra.sweeper.max_batch_size=2"])]
)
class TestBatchedOnSSH(BatchedSweeperTestSuite):
    pass


def test_example_app_runs_on_the_ssh_host_and_comes_back(tmp_path: Path) -> None:
    """The launcher suites above cannot see where jobs ran: check it on the example app."""
    import subprocess
    import sys

    from hsm_core.model import TaskState
    from hsm_core.store import SweepStore

    app = Path(__file__).resolve().parents[2] / "example_app" / "train.py"
    sweep_dir = tmp_path / "multirun"
    res = subprocess.run(
        [sys.executable, str(app), "-m", "hydra/launcher=hsm", *SSH_POOL,
         "seed=1,2", "epochs=2", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    store = SweepStore.open(sweep_dir, readonly=True)
    latest = store.latest_attempts()
    assert {(a.source, a.state) for a in latest.values()} == {("h1", TaskState.COMPLETED)}
    for job in ("0", "1"):  # Hydra's job dirs are here, on the launching machine
        assert (sweep_dir / job / "metrics.json").is_file()
        assert (sweep_dir / job / ".hydra" / "overrides.yaml").is_file()
    # Each task folder came back as its host recorded it (issue 16), the job's pickle
    # (sent, never collected) not counted as extra.
    check = subprocess.run(
        [sys.executable, "-m", "hsm_core.cli.main", "monitor", "collection", str(sweep_dir),
         "--verify-integrity", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    doc = json.loads(check.stdout)
    assert doc["checked"] == 2 and doc["hosts"]["h1"]["reachable"] is True, doc


def test_many_jobs_on_several_hosts_all_find_their_payload(
    ssh_env: SSHEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several slots on each of three hosts (plus local), 56 jobs, the CPU busy: every
    job finds the shared payload on its host. A launch message that overtook the one
    carrying the shared payload failed its job with FileNotFoundError (issue 11, item 1)."""
    import subprocess
    import sys

    from hsm_core.model import TaskState
    from hsm_core.store import SweepStore
    from tests.helpers import CPUHog

    for alias in ("h1", "h2", "h3"):
        project = remote_project(ssh_env, alias)
        monkeypatch.setenv(f"HSM_TEST_REMOTE_PROJECT_{alias.upper()}", project)
    app = Path(__file__).resolve().parents[1] / "hydra" / "apps" / "tiny.py"
    sweep_dir = tmp_path / "multirun"
    with CPUHog():
        res = subprocess.run(
            [sys.executable, str(app), "-m", "hydra/launcher=hsm",
             f"hydra.searchpath=[file://{CONF}]", "hydra/launcher/pool=three_hosts",
             "hydra.launcher.progress=false", "x=range(0,56)",
             f"hydra.sweep.dir={sweep_dir}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
    store = SweepStore.open(sweep_dir, readonly=True)
    latest = store.latest_attempts()
    done = TaskState.COMPLETED
    failed = {k: (a.source, a.error) for k, a in latest.items() if a.state is not done}
    assert not failed, f"{len(failed)} of {len(latest)} jobs did not complete: {failed}"
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert len(latest) == 56
    assert {a.source for a in latest.values()} >= {"h1", "h2", "h3"}
