"""End to end: plain submitit drives the PBS plugin against the FAKE PBS commands.

No PBS server can run here, so tests/fakes/pbs/{qsub,qstat,qdel} (named as fakes) stand
in: they really run the submitted scripts in the background with the PBS variables set
and print qstat in the formats recorded in tests/data/pbs/, for both dialects. Everything
else is real: submitit's AutoExecutor finds the plugin through the installed entry
points, the job runs submitit's own compute side in a separate Python process, results
and tracebacks come back through the shared folder.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import submitit
from submitit.core import utils

from hsm_core.sources.hpc.pbs.executor import (
    PBSExecutor,
    PBSInfoWatcher,
    PBSJob,
    PBSJobEnvironment,
)
from tests.fakes.pbs_env import DIALECTS, FakePBS, fake_pbs
from tests.helpers import wait_for

DEADLINE_S = 30.0


@pytest.fixture(params=DIALECTS)
def pbs(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakePBS]:
    with fake_pbs(request.param, tmp_path, monkeypatch) as fake:
        yield fake


# Functions the jobs run (imported by name on the "compute node").


def add(a: int, b: int) -> int:
    return a + b


def square(x: int) -> int:
    return x * x


def where_am_i() -> dict[str, Any]:
    env = submitit.JobEnvironment()
    return {
        "environment": type(env).__name__,
        "job_id": env.job_id,
        "hostnames": env.hostnames,
        "cwd": os.getcwd(),
        "setup": os.environ.get("SETUP_RAN"),
        "pbs": {k: v for k, v in os.environ.items() if k.startswith("PBS_")},
    }


def fail() -> None:
    raise ValueError("boom from the job")


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def wait_done(job: submitit.Job[Any]) -> None:
    wait_for(lambda: job.done(), timeout=DEADLINE_S, message=f"job {job.job_id} not done")


def wait_all(ex: PBSExecutor, job_ids: list[str], state: str) -> None:
    """The result file comes before the job's exit: wait for PBS to report the end too."""
    wait_for(
        lambda: set(ex.poll_states(job_ids).values()) == {state},
        timeout=DEADLINE_S,
        message=f"jobs {job_ids} never all {state}",
    )


def wait_state(ex: PBSExecutor, job_id: str, *states: str) -> str:
    def reached() -> str | None:
        state = ex.poll_states([job_id])[job_id]
        return state if state in states else None

    state = wait_for(reached, timeout=DEADLINE_S, message=f"job {job_id} never reached {states}")
    assert state is not None
    return state


# ------------------------------------------------------------------ tests


def test_autoexecutor_submit_and_map_array(pbs: FakePBS) -> None:
    ex = submitit.AutoExecutor(pbs.folder, cluster="pbs", pbs_dialect=pbs.dialect)
    ex.update_parameters(
        timeout_min=10,
        cpus_per_task=2,
        mem_gb=1,
        name="e2e",
        pbs_setup=["export SETUP_RAN=yes"],
        pbs_directives=["-r n"],  # PBS Pro refuses it for arrays: left out there
        slurm_partition="ignored-on-pbs",
    )
    job = ex.submit(add, 1, 2)
    where = ex.submit(where_am_i)
    jobs = ex.map_array(square, [1, 2, 3, 4])
    for j in (job, where, *jobs):
        wait_done(j)
    assert job.result() == 3
    assert [j.result() for j in jobs] == [1, 4, 9, 16]
    seq = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{seq}_{i}" for i in range(4)]
    info = where.result()
    assert info["environment"] == "PBSJobEnvironment" and info["job_id"] == where.job_id
    assert info["cwd"] == os.getcwd()  # the submission directory, as under Slurm
    assert info["setup"] == "yes" and info["hostnames"]
    assert info["pbs"]["PBS_JOBID"] == f"{where.job_id}.{pbs.dialect}-server.example.org"
    index_var = "PBS_ARRAY_INDEX" if pbs.dialect == "pro" else "PBS_ARRAYID"
    assert index_var not in info["pbs"]
    script = (pbs.folder / f"{seq}_submission.sh").read_text()
    assert ("#PBS -J 0-3" if pbs.dialect == "pro" else "#PBS -t 0-3") in script
    assert (pbs.folder / f"{jobs[2].job_id}_0_log.out").exists()
    pbs_ex = ex._executor
    assert isinstance(pbs_ex, PBSExecutor)
    wait_all(pbs_ex, [job.job_id, *(j.job_id for j in jobs)], "COMPLETED")


def test_a_raising_function_is_failed_with_its_traceback(pbs: FakePBS) -> None:
    ex = PBSExecutor(pbs.folder, dialect=pbs.dialect)
    job = ex.submit(fail)
    wait_done(job)
    error = job.exception()
    assert isinstance(error, utils.FailedJobError)
    assert "ValueError: boom from the job" in str(error)
    # The result pickle is written before the job's last stderr lines: read the log once
    # the job has ended.
    assert wait_state(ex, job.job_id, "FAILED", "COMPLETED") == "FAILED"
    assert "boom from the job" in (job.stderr() or "")
    assert pbs.task(job.job_id)["exit_status"] == 1


def test_qdel_cancels_a_running_job(pbs: FakePBS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PBSJob, "_results_timeout_s", 1)  # no result file will come
    ex = PBSExecutor(pbs.folder, dialect=pbs.dialect)
    ex.update_parameters(array_parallelism=1)
    jobs = ex.map_array(sleep, [60, 60])  # one runs, one waits for its slot
    wait_state(ex, jobs[0].job_id, "RUNNING")
    assert ex.poll_states([jobs[1].job_id]) == {jobs[1].job_id: "PENDING"}
    jobs[0].cancel()
    ex.cancel([jobs[1].job_id])
    assert wait_state(ex, jobs[0].job_id, "CANCELLED") == "CANCELLED"
    assert wait_state(ex, jobs[1].job_id, "CANCELLED") == "CANCELLED"
    pgid = pbs.task(jobs[0].job_id)["pgid"]
    wait_for(lambda: not _alive(pgid), timeout=DEADLINE_S, message="the job survived qdel")
    assert jobs[0].done() and isinstance(jobs[0].exception(), utils.UncompletedJobError)
    jobs[0].cancel()  # cancelling a finished job again is not an error


def test_walltime_kill_is_timeout(pbs: FakePBS) -> None:
    ex = PBSExecutor(pbs.folder, dialect=pbs.dialect)
    ex.update_parameters(directives=["-l walltime=00:00:02"])  # a later directive wins
    job = ex.submit(sleep, 60)
    assert wait_state(ex, job.job_id, "TIMEOUT", "CANCELLED", "FAILED") == "TIMEOUT"


def test_without_job_history_a_finished_job_vanishes_but_keeps_its_result(
    pbs: FakePBS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PBS_HISTORY", "0")
    ex = PBSExecutor(pbs.folder, dialect=pbs.dialect)
    job = ex.submit(add, 2, 2)
    wait_done(job)
    assert job.result() == 4
    assert wait_state(ex, job.job_id, "VANISHED") == "VANISHED"


def test_one_qstat_per_poll_however_many_jobs(pbs: FakePBS) -> None:
    ex = PBSExecutor(pbs.folder, dialect=pbs.dialect)
    jobs = [ex.submit(add, 1, 1), ex.submit(add, 2, 2), *ex.map_array(square, range(6))]
    ids = [j.job_id for j in jobs]
    before = ex.watcher.num_calls
    states = ex.poll_states(ids)
    assert ex.watcher.num_calls == before + 1 and set(states) == set(ids)
    wait_all(ex, ids, "COMPLETED")


def test_dialect_is_detected_from_qstat_version(pbs: FakePBS) -> None:
    assert PBSExecutor(pbs.folder).dialect == pbs.dialect
    assert type(PBSExecutor(pbs.folder).watcher) is PBSInfoWatcher


@pytest.mark.parametrize(
    "fault",
    [
        "FAKE_PBS_JSON_FIRST_ONLY",  # OpenPBS issue #2672: JSON for the first job only
        "FAKE_PBS_NO_JSON",  # PBS Pro before 14.1: no -F at all
    ],
)
def test_json_trouble_falls_back_to_text(
    pbs: FakePBS, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    if pbs.dialect != "pro":
        pytest.skip("JSON output is PBS Pro's")
    monkeypatch.setenv(fault, "1")
    ex = PBSExecutor(pbs.folder, dialect="pro")
    jobs = [ex.submit(add, 1, 1), ex.submit(add, 2, 2)]
    wait_all(ex, [j.job_id for j in jobs], "COMPLETED")
    assert not ex.watcher.json_output


def test_plugin_is_what_submitit_finds() -> None:
    from submitit.core import plugins

    assert plugins.get_executors()["pbs"] is PBSExecutor
    assert isinstance(plugins.get_job_environments()["pbs"], PBSJobEnvironment)
    assert sys.modules["hsm_core.sources.hpc.pbs.executor"].PBSExecutor is PBSExecutor


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
