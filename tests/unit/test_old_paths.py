"""Module paths that are wire contracts still resolve after the regrouping (issue 14):
what a queued job, a payload, a login node or an installed entry point names by the old
path is the same object as at the new one."""

from __future__ import annotations

import importlib
import json
import pickle
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

# old module -> (new module, names that cross the wire by the old path)
OLD_PATHS = {
    "hsm_core.worker": ("hsm_core.hydra.worker", ["main", "run"]),
    "hsm_core.hydra_payload": ("hsm_core.hydra.payload", ["SweepPart", "JobPart"]),
    "hsm_core.sources.hpc_backend": ("hsm_core.sources.hpc.backend", ["main", "handle"]),
    "hsm_core.sources.hpc_job": ("hsm_core.sources.hpc.job", ["run_task", "main"]),
    "hsm_core.sources.pbs.executor": (
        "hsm_core.sources.hpc.pbs.executor",
        ["PBSExecutor", "PBSJobEnvironment"],
    ),
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_path_resolves_to_the_same_objects(old: str) -> None:
    new, names = OLD_PATHS[old]
    old_mod, new_mod = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(old_mod, name) is getattr(new_mod, name), f"{old}.{name}"


@pytest.mark.parametrize(
    ("old", "name"),
    [
        ("hsm_core.sources.hpc_job", "run_task"),  # submitit's pickled DelayedSubmission
        ("hsm_core.hydra_payload", "SweepPart"),  # a sweep's shared payload part
        ("hsm_core.hydra_payload", "JobPart"),  # each job's payload part
    ],
)
def test_a_pickle_that_names_the_old_path_loads(old: str, name: str) -> None:
    # protocol 0 GLOBAL: exactly the reference an older hsm's pickles hold
    found = pickle.loads(f"c{old}\n{name}\n.".encode())
    new, _ = OLD_PATHS[old]
    assert found is getattr(importlib.import_module(new), name)


def test_old_worker_entry_point_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hsm_core.worker", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "usage: python -m hsm_core" in done.stderr


def test_old_backend_entry_point_answers_a_request() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hsm_core.sources.hpc_backend"],
        input=json.dumps({"op": "ping", "options": {}}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["python"] == sys.version.split()[0]


def test_submitit_entry_points_name_the_pbs_executor() -> None:
    from hsm_core.sources.hpc.pbs.executor import PBSExecutor, PBSJobEnvironment

    found = {ep.name: ep.load() for ep in entry_points(group="submitit")}
    assert found["executor"] is PBSExecutor
    assert found["job_environment"] is PBSJobEnvironment
