"""Multi-rank jobs on the real one-node Slurm (`tasks_per_node: 2`): each rank runs the
task with the rank environment a training script expects; the ranks talk over a socket
at MASTER_ADDR:MASTER_PORT (no torch); rank 0's result is the job's; a failing rank
fails the job with its own error and stops the others at once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hsm_core.model import Attempt, TaskState
from hsm_core.store import SweepStore
from tests.hydra.util import APPS, job_return, jobs, run_app
from tests.integration.test_hpc_hydra import SLURM_POOL
from tests.integration.test_hpc_slurm import hpc_spec, run_hpc
from tests.services import SlurmEnv
from tests.sweep_utils import PY, command_tasks, make_sweep

pytestmark = pytest.mark.slurm

NAMES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR")

EXCHANGE = f"""
import json, os, socket, sys, time
env = {{k: os.environ[k] for k in {NAMES!r}}}
port = int(os.environ["MASTER_PORT"])
if env["RANK"] == "0":
    srv = socket.create_server(("", port))
    srv.settimeout(60)
    conn, _ = srv.accept()
    got = conn.makefile().readline().strip()
    print(json.dumps({{"env": env, "received": got, "dir": os.environ["HSM_TASK_DIR"]}}))
else:
    deadline = time.monotonic() + 60
    while True:
        try:
            s = socket.create_connection((env["MASTER_ADDR"], port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    s.sendall(f"hello from rank {{env['RANK']}} of {{env['WORLD_SIZE']}}\\n".encode())
    print(json.dumps({{"env": env}}))
"""


def _last_attempt(store: SweepStore) -> Attempt:
    """The shared test Slurm's node may fail meanwhile (other tests stop slurmd): such
    attempts are LOST and run again; the last one is the test's."""
    *lost, last = store.attempts(store.tasks()[0].key)
    assert all(a.state is TaskState.LOST and "NODE_FAIL" in (a.error or "") for a in lost)
    return last


RANK1_FAILS = (
    "import os, sys, time\n"
    "if os.environ['RANK'] == '1':\n"
    "    print('rank one broke', file=sys.stderr); sys.exit(3)\n"
    "time.sleep(300)\n"
)


def test_two_ranks_exchange_a_value_and_rank_0_speaks_for_the_job(
    tmp_path: Path, slurm_env: SlurmEnv
) -> None:
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", EXCHANGE]]))
    out, _ = run_hpc(store, hpc_spec(slurm_env, tasks_per_node=2))
    att = _last_attempt(store)
    tdir = store.task_dir(store.tasks()[0])
    assert att.state is TaskState.COMPLETED, att
    rank0 = json.loads((tdir / "stdout.log").read_text())
    rank1 = json.loads((tdir / "ranks" / "1" / "stdout.log").read_text())
    assert rank0["received"] == "hello from rank 1 of 2"
    assert rank0["env"]["RANK"] == "0" and rank1["env"]["RANK"] == "1"
    assert rank1["env"]["LOCAL_RANK"] == "1" and rank0["env"]["WORLD_SIZE"] == "2"
    assert rank0["env"]["LOCAL_WORLD_SIZE"] == "2" and rank0["env"]["NODE_RANK"] == "0"
    assert rank0["env"]["MASTER_ADDR"] == slurm_env.node
    assert rank0["dir"] == str(tdir)  # one task folder for every rank
    assert (tdir / "ranks" / "1" / ".hsm_exit.json").exists()
    assert out.ok


def test_a_failing_rank_fails_the_job_with_its_own_error_at_once(
    tmp_path: Path, slurm_env: SlurmEnv
) -> None:
    # Before: a --ntasks-per-node=2 directive ran both ranks into one folder, and rank
    # 0's success was the job's.
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", RANK1_FAILS]]))
    t0 = time.monotonic()
    run_hpc(store, hpc_spec(slurm_env, tasks_per_node=2))
    took = time.monotonic() - t0
    att = _last_attempt(store)
    assert att.state is TaskState.FAILED
    assert att.error == "rank 1: exit code 3: rank one broke", att
    assert att.exit_code == 3
    assert took < 120  # rank 0 (300 s of sleep) was stopped with rank 1


def test_every_rank_runs_the_hydra_job_and_rank_0s_return_is_the_jobs(
    tmp_path: Path, slurm_env: SlurmEnv
) -> None:
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    args = ["x=1,2", "hydra/launcher=hsm", *SLURM_POOL, "hydra.launcher.tasks_per_node=2"]
    done = run_app(APPS / "tiny.py", args, sweep_dir=sweep, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    for job in jobs(sweep).values():
        assert job["state"] == "COMPLETED"
        x = int(job["params"]["x"])
        ret0 = job_return(job["dir"]).return_value
        ret1 = job_return(job["dir"] / "ranks" / "1").return_value
        assert ret0["x"] == ret1["x"] == 2 * x
        assert ret0["pid"] != ret1["pid"]  # two processes ran it
