"""The fork server's wire messages (JSON lines, see forkserver.py), one TypedDict per kind.

The launcher's ForkSource (fork.py) writes the ops and reads the events; the server
(forkserver.py) the other way round. Both import these, so a key renamed on one side
is a type error on the other.
"""

from __future__ import annotations

from typing import Literal, TypedDict


class JobRequest(TypedDict):
    """What the launcher asks the server to fork; the job process's runner reads it."""

    key: str
    num: int
    journal: str  # the agents' journal folder: the server journals the job like a task
    attempt: int
    layout: int
    task_dir: str
    stdout: str
    stderr: str
    env: dict[str, str]


# launcher -> server
class RunOp(TypedDict):
    op: Literal["run"]
    id: str
    job: JobRequest


class GoOp(TypedDict):
    """A slot is free: the job waiting at its gate starts, with this slot's environment."""

    op: Literal["go"]
    id: str
    env: dict[str, str]


class KillOp(TypedDict):
    op: Literal["kill"]
    id: str
    sig: int
    grace: float
    why: Literal["cancel", "timeout"]  # journaled: a cancel is no outcome of the job's


Op = RunOp | GoOp | KillOp


# server -> launcher
class StartedEvent(TypedDict):
    ev: Literal["started"]
    id: str
    pid: int


class ExitEvent(TypedDict):
    ev: Literal["exit"]
    id: str
    status: int  # the wait status


class ErrorEvent(TypedDict):
    ev: Literal["error"]
    id: str
    msg: str


Event = StartedEvent | ExitEvent | ErrorEvent
