"""The hpc source's decision table and its hsm.yaml checks (no scheduler needed)."""

from __future__ import annotations

from typing import Any

import pytest

from hsm_core import resume
from hsm_core.errors import ConfigError
from hsm_core.model import SourceSpec, TaskEvent, TaskState
from hsm_core.sources.hpc.options import parse_options, parse_time
from hsm_core.sources.hpc.source import _Array, throttle_raises
from hsm_core.sources.hpc.states import Phase, Verdict, decide, phase_of, worker_of

OK = {"attempt": 1, "exit_code": 0}
TERM = {"attempt": 1, "exit_code": 143, "signal": "SIGTERM", "terminated": "SIGTERM"}


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        ("PENDING", Phase.QUEUED),
        ("RUNNING", Phase.RUNNING),
        ("COMPLETING", Phase.RUNNING),
        ("COMPLETED", Phase.ENDED),
        ("FAILED", Phase.FAILED),
        ("TIMEOUT", Phase.TIMEOUT),
        ("OUT_OF_MEMORY", Phase.OUT_OF_MEMORY),
        ("NODE_FAIL", Phase.INFRA),
        ("PREEMPTED", Phase.INFRA),
        ("BOOT_FAIL", Phase.INFRA),
        ("CANCELLED by 1000", Phase.CANCELLED),
        ("CANCELLED+", Phase.CANCELLED),
        ("VANISHED", Phase.VANISHED),
        ("SOMETHING_NEW", Phase.UNKNOWN),
        (None, Phase.UNKNOWN),
    ],
)
def test_scheduler_words_map_through_one_table(state: str | None, phase: Phase) -> None:
    assert phase_of(state) is phase


def test_completed_only_with_an_exit_record() -> None:
    assert decide("COMPLETED", OK) == decide(None, OK)
    assert decide(None, OK).state is TaskState.COMPLETED  # type: ignore[union-attr]
    # The scheduler's COMPLETED (or "left the queue") without the wrapper's exit record
    # is not success.
    verdict = decide("COMPLETED", None, None)
    assert verdict is not None and verdict.state is TaskState.FAILED
    assert "no exit record" in (verdict.error or "")
    vanished = decide("VANISHED", None, None)
    assert vanished is not None and vanished.state is TaskState.LOST


def test_the_tasks_own_failure_is_failed_at_once_with_its_error() -> None:
    rec = {"attempt": 1, "exit_code": 3}
    verdict = decide("RUNNING", rec, rec, stderr_tail="Traceback...\nValueError: boom\n")
    assert verdict is not None
    assert (verdict.state, verdict.exit_code) == (TaskState.FAILED, 3)
    assert verdict.error == "ValueError: boom (exit code 3)"
    hydra = "Traceback (most recent call last):\n  File x\nKeyError: 'a'\n\nSet the " + (
        "environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n"
    )
    verdict = decide("RUNNING", rec, rec, stderr_tail=hydra)
    assert verdict is not None and verdict.error == "KeyError: 'a' (exit code 3)"
    plain = decide("RUNNING", rec, rec, stderr_tail="loading\nno data, giving up\n")
    assert plain is not None and plain.error == "exit code 3: no data, giving up"
    segv = {"attempt": 1, "exit_code": 139, "signal": "SIGSEGV"}
    crashed = decide("RUNNING", segv, segv)
    assert crashed is not None and crashed.error == "killed by SIGSEGV"


def test_killed_from_outside_waits_for_the_schedulers_word() -> None:
    assert decide("RUNNING", TERM, TERM) is None
    cases: dict[str, tuple[TaskState, str]] = {
        "TIMEOUT": (TaskState.FAILED, "time limit reached (TIMEOUT)"),
        "OUT_OF_MEMORY": (TaskState.FAILED, "out of memory (OUT_OF_MEMORY)"),
        "NODE_FAIL": (TaskState.LOST, "infrastructure failure (NODE_FAIL)"),
        "PREEMPTED": (TaskState.LOST, "preempted (PREEMPTED)"),
        "CANCELLED by 0": (TaskState.LOST, "job cancelled outside hsm (CANCELLED by 0)"),
    }
    for state, (want, error) in cases.items():
        verdict = decide(state, TERM, TERM)
        assert verdict is not None and (verdict.state, verdict.error) == (want, error), state
    ours = decide("CANCELLED by 0", TERM, TERM, cancelled_by_us=True)
    assert ours is not None and ours.state is TaskState.CANCELLED


def test_time_limits_and_preemptions_are_reported_as_resumable() -> None:
    resumes = {s: (decide(s, TERM, TERM) or Verdict(TaskState.PENDING)).resume for s in (
        "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "CANCELLED by 0", "FAILED"
    )}  # fmt: skip
    assert resumes == {
        "TIMEOUT": "timeout",
        "PREEMPTED": "preempted",
        "NODE_FAIL": None,
        "OUT_OF_MEMORY": None,
        "CANCELLED by 0": None,
        "FAILED": None,
    }


def test_a_job_killed_after_its_task_started_says_so() -> None:
    before = decide("FAILED", None, None)
    after = decide("FAILED", None, None, started=True, kill_signal="SIGKILL")
    assert before is not None and before.error == "the job failed before the task ran (FAILED)"
    assert after is not None and after.state is TaskState.FAILED
    assert after.error == "the job was killed after its task started (FAILED, SIGKILL)"


def test_resume_rule_counts_time_limits_and_not_preemptions() -> None:
    timeout = TaskEvent("k", 1, TaskState.FAILED, "c", error="x", resume="timeout")
    preempted = TaskEvent("k", 1, TaskState.LOST, "c", error="x", resume="preempted")
    assert resume.decide(timeout, 0, 0, max_num_timeout=1)
    assert not resume.decide(timeout, 1, 0, max_num_timeout=1)
    assert not resume.decide(timeout, 0, 0, max_num_timeout=0)
    assert resume.decide(preempted, 5, 0, max_num_timeout=0)
    assert not resume.decide(preempted, 0, resume.PREEMPT_LIMIT, max_num_timeout=0)
    assert resume.exhausted(timeout, 0, 0).error == (
        "time limit reached (TIMEOUT); to resume, save checkpoints and set "
        "max_num_timeout (hydra.launcher.max_num_timeout)"
    )
    assert "time limit reached 3 times (max_num_timeout=2)" in (
        resume.exhausted(timeout, 2, 2).error or ""
    )


def test_jobs_that_never_ran_the_task() -> None:
    for state, want in (
        ("NODE_FAIL", TaskState.LOST),
        ("BOOT_FAIL", TaskState.LOST),
        ("FAILED", TaskState.FAILED),
        ("TIMEOUT", TaskState.FAILED),
    ):
        verdict = decide(state, None, None, stderr_tail="python: not found")
        assert verdict is not None and verdict.state is want, state
    assert decide("PENDING", None, None) is None
    assert decide("SOMETHING_NEW", None, None) is None


def test_worker_that_exits_without_a_result_is_failed() -> None:
    rec = {"attempt": 1, "exit_code": 1}
    tail = "ModuleNotFoundError: No module named x"
    verdict = decide("RUNNING", rec, None, hydra=True, stderr_tail=tail)
    assert verdict is not None and verdict.state is TaskState.FAILED
    assert "ModuleNotFoundError" in (verdict.error or "")
    # Exit 0 and no worker record: the job left before hsm's worker recorded it.
    early = decide("RUNNING", OK, None, hydra=True)
    assert early is not None and early.state is TaskState.FAILED
    done = decide("RUNNING", OK, {"exit_code": 0, "status": "COMPLETED"}, hydra=True)
    assert done is not None and done.state is TaskState.COMPLETED


def test_a_tasks_own_result_json_decides_nothing() -> None:
    """The wrapper's exit record decides; a result.json the task wrote is its output,
    read as hsm's only for an attempt an older hsm ran (no `layout` in its records)."""
    forged = {"exit_code": 0, "status": "COMPLETED", "job_return": "job_return.pkl"}
    seven = {"attempt": 1, "exit_code": 7, "layout": 2}
    assert worker_of({"exit": seven, "legacy_result": forged}) is None
    failed = decide("RUNNING", seven, None)
    assert failed is not None and failed.state is TaskState.FAILED and failed.exit_code == 7
    old_worker = {"exit_code": 0, "status": "COMPLETED", "job_return": "job_return.pkl"}
    old = {"exit": {"attempt": 1, "exit_code": 0}, "result": old_worker}
    assert worker_of(old) == old_worker
    verdict = decide("RUNNING", old["exit"], worker_of(old), hydra=True)
    assert verdict is not None and verdict.state is TaskState.COMPLETED


def test_hsm_timeout_is_the_tasks_fault() -> None:
    rec = {"attempt": 1, "exit_code": 143, "signal": "SIGTERM", "timed_out": True, "timeout_s": 5}
    verdict = decide("RUNNING", rec, rec)
    assert verdict is not None and verdict.state is TaskState.FAILED
    assert verdict.error == "timed out after 5 s"


# ------------------------------------------------------------------ options


def spec(**options: Any) -> SourceSpec:
    return SourceSpec("cluster", "hpc", 8, options)


def test_defaults_and_time_formats() -> None:
    opts = parse_options(spec())
    assert (opts.scheduler, opts.time_min, opts.array_parallelism) == ("slurm", 60, 8)
    assert opts.max_queued == 1000 and opts.array_limit == 1000
    assert [parse_time(v, "t") for v in (90, "90", "1:30", "04:00:00", "1-00", "0:00:01")] == [
        90,
        90,
        2,
        240,
        1440,
        1,
    ]
    assert parse_options(spec(queue="workq", scheduler="pbs")).partition == "workq"
    assert parse_options(spec(ssh="login1", project_dir="/p")).ssh == {"host": "login1"}


@pytest.mark.parametrize(
    ("options", "key", "text"),
    [
        ({"scheduler": "lsf"}, "sources.cluster.scheduler", "valid: slurm, pbs"),
        ({"time": "soon"}, "sources.cluster.time", "not understood"),
        ({"time": 0}, "sources.cluster.time", "at least 1 minute"),
        ({"cpus_per_task": 0}, "sources.cluster.cpus_per_task", ">= 1"),
        ({"mem_gb": "lots"}, "sources.cluster.mem_gb", "number"),
        ({"partition": "a b"}, "sources.cluster.partition", "plain name"),
        ({"directives": ["-C a100"]}, "sources.cluster.directives", "long sbatch option"),
        ({"setup": ["a\nb"]}, "sources.cluster.setup", "one-line"),
        ({"nodez": 2}, "sources.cluster", "unknown key 'nodez'"),
        ({"ssh": "login1"}, "sources.cluster.project_dir", "needs `project_dir`"),
        ({"remote_dir": "/x"}, "sources.cluster.remote_dir", "only applies with `ssh:`"),
        ({"scheduler": "pbs", "qos": "high"}, "sources.cluster.qos", "PBS, which has no qos"),
        ({"poll_min": 10, "poll_interval": 5}, "sources.cluster.poll_min", "above"),
        ({"partition": "a", "queue": "b"}, "sources.cluster", "not both"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_options(spec(**options))
    assert err.value.key == key
    assert text in str(err.value)
    assert "\n" not in str(err.value)


def test_throttle_raises_wait_until_they_are_worth_a_call() -> None:
    """Cap 16: array 1 drains while refill 2 (20 tasks) waits at %1 and refill 3 (3
    tasks) at %1. A raise comes when it gives at least min(min_refill, cap/2) = 8 slots,
    or all the array can use, or after `wait` s; not for each task that ends."""
    keys = [f"k{i}" for i in range(40)]
    first = _Array(16, set(keys[:16]))
    second, third = _Array(1, set(keys[16:36])), _Array(1, set(keys[36:39]))
    arrays = {"1": first, "2": second}

    def drain_to(n: int) -> None:
        first.unsettled = set(keys[:n])

    def raises(now: float) -> dict[str, int]:
        return throttle_raises(arrays, 16, step=20, wait=30.0, now=now)

    assert raises(0.0) == {}
    drain_to(12)  # 3 slots more for array 2: not yet worth a call
    assert raises(1.0) == {}
    drain_to(7)  # 8 more
    assert raises(2.0) == {"2": 9}
    drain_to(3)  # 4 more: a call only once they have been free for 30 s
    assert raises(3.0) == {} and raises(32.9) == {}
    assert raises(33.0) == {"2": 13} and second.throttle == 13
    drain_to(2)
    arrays["3"] = third  # 1 slot free: 3 can run 1 of its tasks, as it does at %1
    assert raises(34.0) == {}
    drain_to(0)  # 3 slots free: all 3 needs (2 would gain too few)
    assert raises(35.0) == {"3": 3}
    third.unsettled = set()  # 3 is done: 2 gets all it can use
    assert raises(36.0) == {"2": 16}
    assert sum(a.throttle for a in arrays.values() if a.unsettled) == 16
