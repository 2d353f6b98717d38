"""The orchestrator's end of one agent (see hsm_core/remote_agent.py), over any pair of
pipes: an ssh channel for a remote host, a local subprocess for this machine.

Ops go out as JSON lines on the agent's stdin, events come back on its stdout and are
handed to a callback in arrival order. When the channel ends (agent exit, connection
lost) `on_closed` is called once with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from hsm_core import remote_agent
from hsm_core.errors import HsmError, SourceError, SourceUnavailable
from hsm_core.remote_agent import ConfigOp, Event, HelloEvent, Op

log = logging.getLogger(__name__)


class AgentChannel:
    def __init__(
        self,
        name: str,
        spawn: Callable[[], Awaitable[Any]],
        on_event: Callable[[Event], None],
        on_closed: Callable[[str], None],
        *,
        errors: tuple[type[BaseException], ...] = (OSError,),
        python: str = "",
        python_hint: str = "",
    ) -> None:
        """`spawn()` starts the agent and returns its process (stdin/stdout/stderr
        streams); `errors` are the exceptions its streams raise when the channel fails."""
        self.name = name
        self._spawn = spawn
        self._on_event = on_event
        self._on_closed = on_closed
        self._errors: tuple[type[BaseException], ...] = (OSError, *errors)
        self._python = python
        self._python_hint = python_hint
        self._proc: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.hello: HelloEvent | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self._closed

    @property
    def process(self) -> Any:
        return self._proc

    async def start(self, config: ConfigOp, timeout: float) -> HelloEvent:
        """Start the agent, wait for its hello, send its config; return the hello."""
        proc = await self._spawn()
        self._proc = proc
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            self._abort(proc)
            raise SourceError(f"{self.name}: the hsm agent did not answer in {timeout:g} s")
        except self._errors as exc:
            raise SourceError(f"{self.name}: the hsm agent channel failed: {exc}") from None
        if not line:
            err = b""
            with contextlib.suppress(asyncio.TimeoutError, *self._errors):
                err = await asyncio.wait_for(proc.stderr.read(), 2.0)
            last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            how = f" with `{self._python}`" if self._python else ""
            raise SourceUnavailable(
                f"{self.name}: cannot start the hsm agent{how}: {last[0]}", self._python_hint
            )
        try:
            hello: HelloEvent = json.loads(line)
        except ValueError:
            raise SourceUnavailable(
                f"{self.name}: the hsm agent printed {line[:80]!r} instead of its greeting",
                "a login script that prints to stdout confuses the agent; make it quiet "
                "for non-interactive shells",
            ) from None
        if hello.get("protocol") != remote_agent.PROTOCOL:
            raise HsmError(f"{self.name}: agent protocol {hello.get('protocol')} is unsupported")
        self.hello = hello
        self.send(config)
        self._reader = asyncio.create_task(self._read_loop(proc))
        return hello

    def send(self, msg: Op) -> None:
        """Queue one op; raises SourceError when the channel is gone."""
        proc = self._proc
        if proc is None or self._closed:
            raise SourceError(f"{self.name}: no agent channel")
        # ensure_ascii: lone surrogates (non-UTF-8 bytes in argv) travel as \\udcXX escapes.
        data = json.dumps(msg, ensure_ascii=True, separators=(",", ":")).encode("ascii")
        try:
            proc.stdin.write(data + b"\n")
        except self._errors as exc:
            raise SourceError(f"{self.name}: agent channel: {exc}") from None

    async def _read_loop(self, proc: Any) -> None:
        reason = "the agent exited"
        try:
            while True:
                line = await proc.stdout.readline()
                if not line:
                    break
                try:
                    event: Event = json.loads(line)
                except ValueError:
                    log.warning("%s: unreadable agent line %r", self.name, line[:200])
                    continue
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("%s: handling agent event %s failed", self.name, event)
        except self._errors as exc:
            reason = f"agent channel failed: {exc}"
        except asyncio.CancelledError:
            return
        status = _exit_status(proc)
        if status not in (None, 0):
            reason = f"the agent exited with {status}"
        if not self._closed:
            self._closed = True
            self._on_closed(reason)

    async def close(self) -> None:
        """End the agent (EOF on its stdin); its tasks keep running until they end."""
        self._closed = True
        proc, self._proc = self._proc, None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if proc is not None:
            with contextlib.suppress(*self._errors):
                proc.stdin.write_eof()
            self._abort(proc)

    @staticmethod
    def _abort(proc: Any) -> None:
        close = getattr(proc, "close", None)  # an ssh channel; a local pipe just ends
        if close is not None:
            close()


def _exit_status(proc: Any) -> int | None:
    status = getattr(proc, "exit_status", None)  # asyncssh
    if status is None:
        status = getattr(proc, "returncode", None)  # asyncio
    return status if isinstance(status, int) else None
