"""The orchestrator's end of one host's agent channel (see hsm_core/remote_agent.py).

The agent is started as `PYTHON -c <source of remote_agent.py>` on the shared ssh
connection; ops go out as JSON lines on its stdin, events come back on its stdout and
are handed to a callback in arrival order. When the channel ends (agent exit, connection
lost) `on_closed` is called once with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any

import asyncssh

from hsm_core import remote_agent
from hsm_core.errors import HsmError
from hsm_core.sources.base import SourceError
from hsm_core.transport.ssh import SshTransport

log = logging.getLogger(__name__)

Event = dict[str, Any]


@functools.cache
def agent_source() -> str:
    return (resources.files("hsm_core") / "remote_agent.py").read_text(encoding="utf-8")


class AgentChannel:
    def __init__(
        self,
        transport: SshTransport,
        python: str,
        on_event: Callable[[Event], None],
        on_closed: Callable[[str], None],
    ) -> None:
        self.transport = transport
        self.python = python
        self._on_event = on_event
        self._on_closed = on_closed
        self._proc: asyncssh.SSHClientProcess[bytes] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.hello: Event = {}

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self._closed

    async def start(self, config: dict[str, Any], timeout: float) -> Event:
        """Start the agent, wait for its hello, send its config; return the hello."""
        name = self.transport.name
        proc = await self.transport.start_process([self.python, "-c", agent_source()])
        self._proc = proc
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            proc.close()
            raise SourceError(f"ssh {name}: the hsm agent did not answer in {timeout:g} s")
        except (OSError, asyncssh.Error) as exc:
            raise SourceError(f"ssh {name}: the hsm agent channel failed: {exc}") from None
        if not line:
            err = b""
            with contextlib.suppress(asyncio.TimeoutError, OSError, asyncssh.Error):
                err = await asyncio.wait_for(proc.stderr.read(), 2.0)
            last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise HsmError(
                f"ssh {name}: cannot start the hsm agent with `{self.python}`: {last[0]}",
                "set `python:` (or `agent_python:`) of this source in hsm.yaml to a "
                "Python >= 3.7 that exists on that host",
            )
        try:
            hello = json.loads(line)
        except ValueError:
            raise HsmError(
                f"ssh {name}: the hsm agent printed {line[:80]!r} instead of its greeting",
                "a login script that prints to stdout confuses the agent; make it quiet "
                "for non-interactive shells",
            ) from None
        if hello.get("protocol") != remote_agent.PROTOCOL:
            raise HsmError(f"ssh {name}: agent protocol {hello.get('protocol')} is unsupported")
        self.hello = hello
        self.send({"op": "config", **config})
        self._reader = asyncio.create_task(self._read_loop(proc))
        return hello

    def send(self, msg: dict[str, Any]) -> None:
        """Queue one op; raises SourceError when the channel is gone."""
        proc = self._proc
        if proc is None or self._closed:
            raise SourceError(f"ssh {self.transport.name}: no agent channel")
        # ensure_ascii: lone surrogates (non-UTF-8 bytes in argv) travel as \\udcXX escapes.
        data = json.dumps(msg, ensure_ascii=True, separators=(",", ":")).encode("ascii")
        try:
            proc.stdin.write(data + b"\n")
        except (OSError, asyncssh.Error) as exc:
            raise SourceError(f"ssh {self.transport.name}: agent channel: {exc}") from None

    async def _read_loop(self, proc: asyncssh.SSHClientProcess[bytes]) -> None:
        reason = "the agent exited"
        try:
            while True:
                line = await proc.stdout.readline()
                if not line:
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("%s: unreadable agent line %r", self.transport.name, line[:200])
                    continue
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("%s: handling agent event %s failed", self.transport.name, event)
        except (OSError, asyncssh.Error) as exc:
            reason = f"agent channel failed: {exc}"
        except asyncio.CancelledError:
            return
        if proc.exit_status not in (None, 0):
            reason = f"the agent exited with {proc.exit_status}"
        if not self._closed:
            self._closed = True
            self._on_closed(reason)

    async def close(self) -> None:
        """End the agent (EOF on its stdin); its tasks keep running on the host."""
        self._closed = True
        proc, self._proc = self._proc, None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if proc is not None:
            with contextlib.suppress(OSError, asyncssh.Error):
                proc.stdin.write_eof()
            proc.close()
