"""Every error hsm raises on purpose, in one tree. Each says what is wrong and what to do
next, in one line.

    HsmError                 the user's to act on: the CLI prints it, exit 2
      ConfigError            a bad key or value (names the file and the key)
      SweepNotFound
      CommandError           a command that failed (argv, exit code, stderr)
      SourceUnavailable      a source down at start: the sweep runs on the others
      InfrastructureError    not the task's fault: the attempt is LOST, placed elsewhere
        SourceError          a source lost a connection, an agent, a job
        SchedulerError       Slurm/PBS could not be asked or refused
        ForkServerError      the Hydra launcher's fork server is gone

Only the standard library here: the fork server and the hpc job wrapper import it.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence


class HsmError(Exception):
    """A user-facing error: the CLI prints `str(err)` as one line, no traceback."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} ({hint})")


class ConfigError(HsmError):
    """Bad configuration: names the file and the key, and lists what is allowed."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ":".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message, hint)
        self.file = file
        self.key = key


class SourceUnavailable(HsmError):
    """A source that cannot be used right now for a reason on its side (login refused, no
    interpreter there, an agent that does not answer): an outage for the sweep, like a
    refused connection, not a mistake in it. A run goes on without that source and keeps
    trying it; every other HsmError raised while a source starts stops the run."""


class SweepNotFound(HsmError):
    pass


class CommandError(HsmError):
    """A command (local or remote) that failed: carries argv, exit code and stderr."""

    def __init__(
        self,
        argv: Sequence[str],
        exit_code: int | None,
        stderr: str,
        *,
        where: str = "",
        hint: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.exit_code = exit_code
        self.stderr = stderr
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no output on stderr"
        place = f" on {where}" if where else ""
        super().__init__(f"`{shlex.join(self.argv)}`{place} exited with {exit_code}: {last}", hint)


class InfrastructureError(HsmError):
    """Trouble on the way to a task, not in it: the engine marks the attempt LOST and
    places the task elsewhere; at the start of a sweep it is an outage of that source."""


class SourceError(InfrastructureError):
    """A source lost what runs the task (connection, agent, job): not the task's fault."""


class SchedulerError(InfrastructureError):
    """The scheduler could not be asked, or refused (not the task's fault)."""


class ForkServerError(InfrastructureError):
    """The launcher's fork server cannot fork, or is gone."""
