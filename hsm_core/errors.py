"""Errors that reach users. Each says what is wrong and what to do next, in one line."""

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
