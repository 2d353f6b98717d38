"""Hydra's own launcher test suites with the hsm launcher on a Slurm pool (real Slurm).

The pool comes from a config dir added to Hydra's search path
(tests/integration/hpc_conf/hydra/launcher/pool/slurm.yaml), as a user would add theirs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, LauncherTestSuite

from tests.services import SlurmEnv

pytestmark = pytest.mark.slurm

CONF = Path(__file__).parent / "hpc_conf"
SLURM_POOL = [
    f"hydra.searchpath=[file://{CONF}]",
    "hydra/launcher/pool=slurm",
    "hydra.launcher.progress=false",
]


@pytest.fixture(autouse=True)
def _needs_slurm(slurm_env: SlurmEnv) -> SlurmEnv:
    return slurm_env


@pytest.mark.parametrize("launcher_name, overrides", [("hsm", SLURM_POOL)])
class TestHsmLauncherOnSlurm(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "launcher_name, overrides", [("hsm", [*SLURM_POOL, "hydra.sweeper.max_batch_size=2"])]
)
class TestBatchedOnSlurm(BatchedSweeperTestSuite):
    pass
