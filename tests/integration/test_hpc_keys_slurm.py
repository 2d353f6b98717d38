"""A Hydra app written for hydra-submitit-launcher, run with only `hydra/launcher=hsm`
changed: its submitit overrides reach the real Slurm's job scripts.

The app (tests/hydra/apps/submitit_example) has the shape of the submitit plugin's example:
its config says `override hydra/launcher: submitit_slurm` and the task asks
`submitit.JobEnvironment()` where it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.hydra.util import APPS, job_return, jobs, run_app
from tests.integration.test_hpc_hydra import SLURM_POOL
from tests.services import SlurmEnv

pytestmark = pytest.mark.slurm

APP = APPS / "submitit_example" / "my_app.py"


def test_submitit_overrides_run_unchanged_on_the_hsm_launcher(
    tmp_path: Path, slurm_env: SlurmEnv
) -> None:
    sweep = tmp_path / "multirun"
    overrides = [
        "task=1,2,3",
        "hydra/launcher=hsm",
        *SLURM_POOL,
        # What the submitit plugin's docs show, typed as a submitit user types it.
        "hydra.launcher.timeout_min=3",
        f"hydra.launcher.partition={slurm_env.partition}",
        "hydra.launcher.tasks_per_node=null",
        f"hydra.launcher.python={sys.executable}",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.name=my_app",
        "hydra.launcher.signal_delay_s=30",
        "+hydra.launcher.additional_parameters.comment=from-submitit-keys",
    ]
    done = run_app(APP, overrides, sweep_dir=sweep, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    got = jobs(sweep)
    assert {n: j["state"] for n, j in got.items()} == dict.fromkeys(range(3), "COMPLETED")
    assert sorted(job_return(j["dir"]).return_value for j in got.values()) == [10, 20, 30]
    logs = sorted((sweep).glob("*/my_app.log"))
    assert len(logs) == 3
    assert all("with JobEnvironment(job_id=" in p.read_text() for p in logs)
    scripts = list((sweep / "scripts" / "cluster").glob("*_submission.sh"))
    assert scripts, "no job script"
    text = scripts[0].read_text()
    for line in (
        "#SBATCH --time=3",
        f"#SBATCH --partition={slurm_env.partition}",
        "#SBATCH --mem=1G",
        "#SBATCH --job-name=my_app",
        "#SBATCH --signal=URG@30",
        "#SBATCH --comment=from-submitit-keys",
    ):
        assert line in text.splitlines(), (line, text)
    assert "ntasks-per-node" not in text
