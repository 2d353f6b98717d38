"""The agent of one ssh host: `PYTHON -c <source of remote_agent.py>` on the shared
connection, spoken to through the generic AgentChannel."""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources

import asyncssh

from hsm_core.remote_agent import Event
from hsm_core.sources.agent_channel import AgentChannel
from hsm_core.transport.ssh import SSHTransport

__all__ = ["AgentChannel", "Event", "agent_source", "ssh_agent_channel"]


@functools.cache
def agent_source() -> str:
    return (resources.files("hsm_core") / "remote_agent.py").read_text(encoding="utf-8")


def ssh_agent_channel(
    transport: SSHTransport,
    python: str,
    on_event: Callable[[Event], None],
    on_closed: Callable[[str], None],
) -> AgentChannel:
    async def spawn() -> asyncssh.SSHClientProcess[bytes]:
        # -I: the agent needs the standard library only, and a `json.py` in the login
        # folder (the cwd, first on sys.path for -c) must not shadow it.
        return await transport.start_process([python, "-I", "-c", agent_source()])

    return AgentChannel(
        f"ssh {transport.name}",
        spawn,
        on_event,
        on_closed,
        errors=(asyncssh.Error,),
        python=python,
        python_hint="set `python:` (or `agent_python:`) of this source in hsm.yaml to a "
        "Python >= 3.7 that exists on that host",
    )
