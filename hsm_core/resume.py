"""When an attempt that a scheduler stopped goes on where it was, instead of again.

A scheduler ends a job at its time limit (TIMEOUT) or to make room (PREEMPTED). The hpc
source reports the attempt with ``resume`` set ("timeout" / "preempted"); the engine asks
:func:`decide` whether the next attempt resumes: same source (the checkpoint lives on its
filesystem), same task folder with ``results/`` in place, ``HSM_RESUME=1`` in the task's
environment. Time limits count against the source's ``max_num_timeout`` (submitit's
rule); preemptions do not count, up to a cap against a requeue storm.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from hsm_core.model import TaskEvent, TaskSpec, TaskState
from hsm_core.taskdir import RESULTS

Resume = Literal["timeout", "preempted"]
# Preemptions one task may go through; more is a partition that never lets it finish.
PREEMPT_LIMIT = 20
# What a resumed attempt finds of the attempt before it (the rest moves to attempt_N/).
KEPT = (RESULTS,)
RESUME_ENV = "HSM_RESUME"


def decide(ev: TaskEvent, timeouts: int, preemptions: int, max_num_timeout: int) -> bool:
    """Does this terminal report open a resumed attempt? (`timeouts` / `preemptions`:
    how many the task went through before this one.)"""
    if ev.resume == "timeout":
        return ev.state is TaskState.FAILED and timeouts < max_num_timeout
    if ev.resume == "preempted":
        return ev.state is TaskState.LOST and preemptions < PREEMPT_LIMIT
    return False


def exhausted(ev: TaskEvent, timeouts: int, max_num_timeout: int) -> TaskEvent:
    """The last time limit of a task that may not resume again: say why, in one line."""
    if ev.resume != "timeout" or ev.state is not TaskState.FAILED:
        return ev
    if max_num_timeout == 0:
        text = (
            "time limit reached (TIMEOUT); to resume, save checkpoints and set "
            "max_num_timeout (hydra.launcher.max_num_timeout)"
        )
    else:
        text = (
            f"time limit reached {timeouts + 1} times (max_num_timeout={max_num_timeout}): "
            "save checkpoints more often or raise timeout_min"
        )
    return replace(ev, error=text)


def resumed(task: TaskSpec) -> TaskSpec:
    """The task as a resumed attempt runs it: told so in its environment."""
    env = tuple(kv for kv in task.env if kv[0] != RESUME_ENV)
    return replace(task, env=(*env, (RESUME_ENV, "1")))
