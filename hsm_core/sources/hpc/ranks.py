"""Multi-rank jobs (`tasks_per_node` x `nodes` > 1): what each rank sees and where it
writes, and how rank 0 speaks for the job.

srun starts hsm's job wrapper once per rank. Every rank runs the task with the
environment a training script expects (submitit's `JobEnvironment` and torchrun names,
with submitit's values, so `TorchDistributedEnvironment().export(overwrite=True)` agrees).
Rank 0 owns the task folder's records; rank k > 0 writes the same files under
`ranks/<k>/`. Rank 0's exit record is the job's: once its own task ended, it waits for
every rank's exit record and, if one failed on its own, records that rank's error. A
failing rank stops the others at once (`srun --kill-on-bad-exit=1`).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hsm_core.taskdir import HPC_EXIT, RANKS, STDERR, read_json

WAIT_FOR_RANKS_S = 60.0  # after rank 0's own task ended


def rank_and_size(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    env = os.environ if env is None else env
    return int(env.get("SLURM_PROCID") or 0), int(env.get("SLURM_NTASKS") or 1)


def rank_dir(task_dir: Path, rank: int) -> Path:
    return task_dir if rank == 0 else task_dir / RANKS / str(rank)


def rank_env(env: Mapping[str, str]) -> dict[str, str]:
    """RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR,
    MASTER_PORT from Slurm's variables (values the user's set-up gave win)."""
    rank, size = rank_and_size(env)
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    job_id = env.get("SLURM_JOB_ID", "0")
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    values = {
        "RANK": str(rank),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": str(size),
        "LOCAL_WORLD_SIZE": str(max(1, size // max(1, nodes))),
        "NODE_RANK": env.get("SLURM_NODEID", "0"),
        "MASTER_ADDR": _first_host(env),
        # submitit's formula (helpers.TorchDistributedEnvironment): same job, same port.
        "MASTER_PORT": str(random.Random(job_id).randint(20000, 60000)),
    }
    return {k: v for k, v in values.items() if k not in env}


def _first_host(env: Mapping[str, str]) -> str:
    nodelist = env.get("SLURM_JOB_NODELIST")
    if nodelist:
        try:
            from submitit.slurm.slurm import _parse_node_list

            hosts = _parse_node_list(nodelist)
            if hosts:
                return str(hosts[0])
        except Exception:  # an unexpected format: this host (one-node jobs)
            pass
    import socket

    return socket.gethostname()


def gather(task_dir: Path, size: int, attempt: int, wait_s: float) -> dict[int, dict[str, Any]]:
    """The exit records of ranks 1..size-1 of this attempt, waiting up to `wait_s` for
    those not written yet."""
    deadline = time.monotonic() + wait_s
    found: dict[int, dict[str, Any]] = {}
    while True:
        for k in range(1, size):
            if k not in found:
                rec = read_json(rank_dir(task_dir, k) / HPC_EXIT)
                if rec is not None and rec.get("attempt") == attempt:
                    found[k] = rec
        if len(found) == size - 1 or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


def _own_failure(rec: Mapping[str, Any]) -> bool:
    code = int(rec.get("exit_code") or 0)
    return code != 0 and not rec.get("terminated") and rec.get("signal") != "SIGTERM"


def job_record(
    record: dict[str, Any], task_dir: Path, size: int, attempt: int, wait_s: float
) -> dict[str, Any]:
    """Rank 0's exit record with the other ranks taken into account: the first rank that
    failed on its own makes the job FAILED with its error; a rank that left no record
    does too."""
    from hsm_core.sources.hpc.states import describe

    if size <= 1:
        return record
    ranks = gather(task_dir, size, attempt, wait_s)
    for k in range(1, size):
        rec = ranks.get(k)
        if rec is not None and _own_failure(rec):
            tail = _tail(rank_dir(task_dir, k) / STDERR)
            return {
                **record,
                "exit_code": int(rec["exit_code"]),
                "signal": None,
                "terminated": None,
                "error": f"rank {k}: {describe(rec, tail)}",
                "rank": k,
            }
    missing = [k for k in range(1, size) if k not in ranks]
    if missing and int(record.get("exit_code") or 0) == 0:
        return {**record, "exit_code": 1, "error": f"rank {missing[0]} left no exit record"}
    return record


def _tail(path: Path, size: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
