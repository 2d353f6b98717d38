"""Puts the FAKE PBS commands (tests/fakes/pbs: qsub, qstat, qdel emulated from recorded
real output; no PBS server can run here) in front of PATH for one test, and kills what
they started when it ends. Shared by the PBS executor tests, the hpc source's PBS tests
and the source contract suite."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from hsm_core.sources.hpc.pbs.executor import PBSInfoWatcher, PBSJob, TorqueJob
from hsm_core.sources.hpc.pbs.watcher import SERVERS

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "fakes" / "pbs"
DIALECTS = ("pro", "torque")


@dataclass
class FakePBS:
    dialect: str
    state_file: Path
    folder: Path  # submitit's job folder

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def task(self, job_id: str) -> dict[str, Any]:
        seq, _, index = job_id.partition("_")
        return self.state()["jobs"][seq]["tasks"][index]


@contextmanager
def fake_pbs(dialect: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePBS]:
    """The FAKE PBS of `dialect` ("pro": PBS Pro / OpenPBS, "torque") for this test."""
    names = {ep.name for ep in metadata.entry_points(group="submitit")}
    assert {"executor", "job_environment"} <= names, "hsm is not installed: pip install -e ."
    fake = FakePBS(dialect, tmp_path / "spool" / "state.json", tmp_path / "jobs")
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PBS_STATE", str(fake.state_file))
    monkeypatch.setenv("FAKE_PBS_DIALECT", dialect)
    monkeypatch.setenv("FAKE_PBS_SERVER", f"{dialect}-server.example.org")
    # The jobs import test modules' functions by name, as users' jobs import their code.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    # Job ids restart at 1000 in every test: give each test fresh watchers.
    monkeypatch.setattr(PBSJob, "watcher", PBSInfoWatcher("pro"))
    monkeypatch.setattr(TorqueJob, "watcher", PBSInfoWatcher("torque"))
    SERVERS.clear()
    workdir = tmp_path / "submit dir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    try:
        yield fake
    finally:
        SERVERS.clear()
        _kill_leftovers(fake)


def _kill_leftovers(fake: FakePBS) -> None:
    """Kill the fake MoMs and job process groups this test started, by their ids."""
    if not fake.state_file.exists():
        return
    for job in fake.state()["jobs"].values():
        pids = [(job.get("mom_pid"), os.kill)]
        pids += [(task.get("pgid"), os.killpg) for task in job["tasks"].values()]
        for pid, kill in pids:
            if pid:
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
