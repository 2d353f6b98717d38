"""The task folder's one module: names (the agent's copies pinned equal), the exit record
-> state rule, and records left by an older hsm."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hsm_core import remote_agent, taskdir
from hsm_core.hydra.payload import JOB_FILE
from hsm_core.model import TaskEvent, TaskKind, TaskSpec, TaskState, task_key
from hsm_core.taskdir import TaskPaths, Verdict, settle
from tests.sweep_utils import make_sweep, run_local


def test_the_agents_copies_of_the_names_are_the_same() -> None:
    assert remote_agent.LAYOUT == taskdir.LAYOUT
    assert remote_agent.STDOUT == taskdir.STDOUT
    assert remote_agent.STDERR == taskdir.STDERR
    assert remote_agent.RESULTS == taskdir.RESULTS
    assert remote_agent.WORKER_RECORD == taskdir.WORKER_RECORD
    assert remote_agent.HSM_RECORDS == taskdir.HSM_RECORDS
    assert remote_agent.OWN_FILES == taskdir.LEGACY_AGENT_FILES
    assert remote_agent.FILES_RECORD == taskdir.FILES_RECORD
    assert JOB_FILE == taskdir.JOB_PAYLOAD


def test_paths_of_a_task_folder(tmp_path: Path) -> None:
    p = TaskPaths(tmp_path)
    assert p.stdout == tmp_path / "stdout.log" and p.stderr == tmp_path / "stderr.log"
    assert p.worker_record == tmp_path / ".hsm_result.json"
    assert p.hpc_exit == tmp_path / ".hsm_exit.json" and p.attempt(2) == tmp_path / "attempt_2"
    assert "result.json" not in taskdir.HSM_RECORDS  # the name is the task's own now


WORKER_OK = {"exit_code": 0, "status": "COMPLETED", "error": None, "job_return": "job_return.pkl"}
WORKER_FAILED = {"exit_code": 1, "status": "FAILED", "error": "ValueError: boom"}
NEW = {"layout": 2}


@pytest.mark.parametrize(
    ("record", "hydra", "worker", "want"),
    [
        ({**NEW, "exit_code": 0}, False, None, Verdict(TaskState.COMPLETED, 0)),
        ({**NEW, "exit_code": 7}, False, None, Verdict(TaskState.FAILED, 7, "exit code 7")),
        ({**NEW, "exit_code": 139, "signal": 11}, False, None,
         Verdict(TaskState.FAILED, 139, "killed by SIGSEGV")),
        ({**NEW, "exit_code": 143, "signal": "SIGTERM"}, False, None,
         Verdict(TaskState.FAILED, 143, "killed by SIGTERM")),
        ({**NEW, "exit_code": 143, "cancelled": True}, False, None,
         Verdict(TaskState.CANCELLED, 143, "cancelled")),
        ({**NEW, "exit_code": 137, "timed_out": True}, False, None,
         Verdict(TaskState.FAILED, 137, "timed out")),
        ({**NEW, "exit_code": 0}, True, WORKER_OK, Verdict(TaskState.COMPLETED, 0)),
        ({**NEW, "exit_code": 1}, True, WORKER_FAILED,
         Verdict(TaskState.FAILED, 1, "ValueError: boom")),
        # A forged worker record does not outvote the parent's exit status.
        ({**NEW, "exit_code": 7}, True, WORKER_OK, Verdict(TaskState.FAILED, 7, "exit code 7")),
        (None, False, None, Verdict(TaskState.LOST, None, "ended without an exit record")),
    ],
)  # fmt: skip
def test_the_one_rule(record: dict | None, hydra: bool, worker: dict | None, want: Verdict) -> None:
    assert settle(record, hydra=hydra, worker=worker) == want


def test_a_hydra_job_that_left_with_0_before_its_record_is_failed() -> None:
    verdict = settle({**NEW, "exit_code": 0}, hydra=True, worker=None)
    assert verdict.state is TaskState.FAILED and "before hsm's worker" in str(verdict.error)
    assert settle({**NEW, "exit_code": 0, "timed_out": True}, timeout_s=5).error == (
        "timed out after 5 s"
    )


def test_an_older_hsms_worker_record_is_read_only_in_its_shape(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text(json.dumps(WORKER_OK))
    assert taskdir.read_worker_record(tmp_path) is None
    assert taskdir.read_worker_record(tmp_path, legacy=True) == WORKER_OK
    (tmp_path / "result.json").write_text(json.dumps({"exit_code": 0}))  # a task's own
    assert taskdir.read_worker_record(tmp_path, legacy=True) is None
    (tmp_path / ".hsm_result.json").write_text(json.dumps(WORKER_FAILED))
    assert taskdir.read_worker_record(tmp_path, legacy=True) == WORKER_FAILED
    assert taskdir.is_legacy({"exit_code": 0}) and not taskdir.is_legacy({**NEW})


def _crashed_hydra_sweep(tmp_path: Path, exit_record: dict, result: dict) -> tuple:
    """A Hydra job that an earlier orchestrator saw RUNNING; its agent journaled the
    exit (as `exit_record`) and left `result` as result.json."""
    task = TaskSpec(
        key=task_key({"x": 1}),
        num=1,
        params={"x": 1},
        kind=TaskKind.HYDRA,
        payload="tasks/task_001/hydra_job.pkl",
    )
    store = make_sweep(tmp_path, [task])
    for state in (TaskState.ASSIGNED, TaskState.RUNNING):
        store.apply(TaskEvent(task.key, 1, state, "local"))
    tdir = store.task_dir(task)
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / "result.json").write_text(json.dumps(result))
    journal = store.sweep_dir / remote_agent.JOURNAL_DIR
    journal.mkdir()
    start = {"e": "start", "dir": str(tdir), "attempt": 1, "pid": 1, "pid_start": "0"}
    exit_line = {"e": "exit", "dir": str(tdir), "attempt": 1, "record": exit_record}
    lines = [json.dumps({**start, "start": time.time()}), json.dumps(exit_line)]
    (journal / "agent-00000000-1-0.jsonl").write_text("\n".join(lines) + "\n")
    return store, task


def test_a_sweep_an_older_hsm_started_completes_from_its_result_json(tmp_path: Path) -> None:
    """Its agent's exit record has no layout mark: result.json is that hsm's worker
    record, and the job is COMPLETED without running again."""
    store, task = _crashed_hydra_sweep(tmp_path, {"exit_code": 0, "attempt": 1}, WORKER_OK)
    run_local(store)
    att = store.attempts(task.key)
    assert [(a.attempt, a.state) for a in att] == [(1, TaskState.COMPLETED)]


def test_a_result_json_never_speaks_for_an_attempt_of_this_hsm(tmp_path: Path) -> None:
    record = {"exit_code": 0, "attempt": 1, "layout": 2}
    store, task = _crashed_hydra_sweep(tmp_path, record, WORKER_OK)
    run_local(store)
    first = store.attempts(task.key)[0]
    assert first.state is TaskState.FAILED and "before hsm's worker" in str(first.error)
