"""What every scheduler adapter of the hpc source is: the interface (each hook with its
contract), and the one seam to the OS through which hsm runs scheduler commands itself
(``sbatch`` / ``qsub`` are run by submitit's executors).

Runs on the login node (here, or behind ``python -m hsm_core.sources.hpc.backend``).
"""

from __future__ import annotations

import abc
import getpass
import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hsm_core.errors import SchedulerError
from hsm_core.sources.hpc.options import HPCOptions
from hsm_core.sources.hpc.rpc import CheckAnswer, HealthAnswer

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 60.0


def run_command(
    argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run one scheduler command; SchedulerError when it cannot run at all."""
    log.debug("scheduler command: %s", shlex.join(argv))
    try:
        return subprocess.run(
            list(argv),
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise SchedulerError(f"`{argv[0]}` not found on PATH") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SchedulerError(f"`{shlex.join(argv)}` failed: {exc}") from None


def tail_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


class Scheduler(abc.ABC):
    """One scheduler's executor, status query, cancel and health, behind one interface."""

    name: str

    def __init__(self, opts: HPCOptions) -> None:
        self.opts = opts

    @abc.abstractmethod
    def executor(self, folder: str, parallelism: int) -> Any:
        """A submitit executor set up from the options, for arrays of `parallelism`."""

    @abc.abstractmethod
    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        """One query for all these jobs: submitit id -> Slurm-style state name. Jobs the
        scheduler does not mention are left out."""

    @abc.abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> None:
        """One command that cancels exactly these jobs (arrays or elements)."""

    @abc.abstractmethod
    def health(self) -> HealthAnswer:
        """Reachable? Partitions/queues and the user's jobs."""

    def throttle(self, arrays: Mapping[str, int]) -> None:  # noqa: B027 - optional
        """Change the `%` limit of running arrays (where the scheduler can)."""

    def check(self) -> CheckAnswer:
        """Before the first submission: the partition exists (raises HsmError if not)."""
        return {}


def user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (containers)
        return str(Path.home().name)
