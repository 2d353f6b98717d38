"""Slurm submit scripts, pinned by golden files (the pattern of submitit's
_sbatch_test_record.txt): what the hpc source's options become in `#SBATCH` lines,
without a cluster. After an intended change, regenerate with HSM_REGEN_GOLDEN=1 and
read the diff.

submitit builds no SlurmExecutor without `srun` on PATH: a stub named srun stands in (it
is never run; the script is only text here). The real sbatch takes these scripts in
tests/integration/test_hpc_slurm.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hsm_core.sources.hpc.options import HPCOptions
from hsm_core.sources.hpc.slurm import Slurm
from tests.helpers import assert_golden

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"
FOLDER = "/shared/sweeps/run 1/scripts/gpu"

ARRAY = HPCOptions(
    partition="gpu",
    account="abc123",
    qos="high",
    time_min=90,
    cpus_per_task=4,
    gpus_per_task=1,
    mem_gb=16,
    python="/opt/py/bin/python",
    setup=("module load cuda/12.1", "source /opt/venv/bin/activate"),
    directives=("--constraint=a100", "--exclusive"),
    job_name="sweep",
)
SINGLE = HPCOptions(time_min=5, mem_gb=1.5, requeue=True, python="python3", job_name="one job")


@pytest.fixture(autouse=True)
def _srun_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = tmp_path / "srun"
    stub.write_text("#!/bin/sh\nexit 99\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")


def _script(opts: HPCOptions, *, parallelism: int, count: int) -> str:
    ex = Slurm(opts).executor(FOLDER, parallelism)
    if count > 1:
        ex.parameters["map_count"] = count  # what submitit sets for an array of `count`
    text: str = ex._make_submission_file_text(ex._submitit_command_str, "uid")
    return text


@pytest.mark.parametrize(
    ("name", "opts", "parallelism", "count"),
    [("array", ARRAY, 4, 10), ("single", SINGLE, 1, 1)],
)
def test_golden_sbatch_script(name: str, opts: HPCOptions, parallelism: int, count: int) -> None:
    text = _script(opts, parallelism=parallelism, count=count)
    golden = DATA / f"golden_{name}.sh"
    assert_golden(golden, text)


def test_what_the_golden_scripts_promise() -> None:
    array = (DATA / "golden_array.sh").read_text()
    # a node failure reaches hsm (LOST, placed again) unless requeue is asked for
    assert "#SBATCH --no-requeue" in array
    assert "no-requeue" not in (DATA / "golden_single.sh").read_text()
    # the early warning is a signal whose default action does not kill the task
    assert "#SBATCH --signal=URG@60" in array and "USR2" not in array.split("# command")[0]
    assert "#SBATCH --array=0-9%4" in array
    assert "#SBATCH --constraint=a100" in array and "#SBATCH --exclusive" in array
    assert "#SBATCH --mem=16G" in array
    assert "#SBATCH --mem=1536M" in (DATA / "golden_single.sh").read_text()
