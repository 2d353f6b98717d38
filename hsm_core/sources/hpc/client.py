"""How the hpc source reaches its login-node half (``backend``): in this process
through ``asyncio.to_thread`` (hsm runs on the login node), or over the ssh transport
(``python -m hsm_core.sources.hpc.backend`` on the login node; payloads staged and task
folders pulled back by SFTP). The source talks to both through :class:`BackendClient`.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import posixpath
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, overload

from hsm_core.errors import CommandError, HsmError, SchedulerError, SourceError
from hsm_core.sources.hpc import backend as hpc_backend
from hsm_core.sources.hpc.options import HPCOptions
from hsm_core.sources.hpc.rpc import (
    CancelOp,
    CheckAnswer,
    CheckOp,
    HealthAnswer,
    HealthOp,
    NoAnswer,
    Op,
    PingAnswer,
    PingOp,
    PollAnswer,
    PollOp,
    SubmitAnswer,
    SubmitOp,
    ThrottleOp,
)

log = logging.getLogger(__name__)

REMOTE_TIMEOUT_S = 120.0


class BackendClient(abc.ABC):
    """The operations of the backend, async, wherever the login node is."""

    def __init__(self, opts: HPCOptions) -> None:
        self.opts = opts

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @overload
    async def call(self, op: SubmitOp) -> SubmitAnswer: ...
    @overload
    async def call(self, op: PollOp) -> PollAnswer: ...
    @overload
    async def call(self, op: CancelOp | ThrottleOp) -> NoAnswer: ...
    @overload
    async def call(self, op: CheckOp) -> CheckAnswer: ...
    @overload
    async def call(self, op: HealthOp) -> HealthAnswer: ...
    @overload
    async def call(self, op: PingOp) -> PingAnswer: ...
    async def call(self, op: Op) -> Any:
        """Run one backend operation; SourceError (infrastructure) or HsmError (user)."""
        return await self.exchange({**op, "options": self.opts.to_json()})

    @abc.abstractmethod
    async def exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request as it travels (the op and the options), its answer unwrapped."""

    async def stage(self, files: Iterable[tuple[Path, str]]) -> None:  # noqa: B027
        """Copy local files to the cluster (nothing to do on the login node itself)."""

    async def fetch(self, remote_dir: str, local_dir: Path) -> None:  # noqa: B027
        """Bring a task folder back (nothing to do on the login node itself)."""


class LocalBackend(BackendClient):
    """hsm runs where the scheduler's commands are: call the backend in a thread."""

    async def exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return dict(await asyncio.to_thread(hpc_backend.handle, request))
        except SchedulerError as exc:
            raise SourceError(str(exc)) from None


class SSHBackend(BackendClient):
    """The login node is reached over ssh: one connection, one command per operation."""

    def __init__(self, opts: HPCOptions, name: str) -> None:
        super().__init__(opts)
        from hsm_core.transport.ssh import SSHTarget, SSHTransport

        assert opts.ssh is not None
        target = SSHTarget.from_options(opts.ssh, where=f"sources.{name}.ssh")
        self.transport = SSHTransport(target, name=name)
        self.python = opts.login_python or opts.python or "python3"
        self.home = "~"

    async def start(self) -> None:
        await self.transport.ensure(window=5.0)
        answer = await self.call({"op": "ping"})
        self.home = str(answer.get("home") or "~")

    async def close(self) -> None:
        await self.transport.close()

    def absolute(self, path: str) -> str:
        """Remote paths as the backend sees them: `~` and relative ones are from $HOME."""
        if path.startswith("~/") or path == "~":
            path = self.home + path[1:]
        return path if posixpath.isabs(path) else posixpath.join(self.home, path)

    async def exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(request).encode()
        argv = [self.python, "-m", "hsm_core.sources.hpc.backend"]
        try:
            done = await self.transport.run(argv, input=data, timeout=REMOTE_TIMEOUT_S)
        except CommandError as exc:
            raise SourceError(
                f"{self.transport.name}: `{self.python} -m hsm_core.sources.hpc.backend` "
                f"exited with {exc.exit_code}: {_last(exc.stderr)} (is hsm installed for "
                "`login_python` on the login node?)"
            ) from None
        try:
            answer: dict[str, Any] = json.loads(done.text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise SourceError(
                f"{self.transport.name}: unreadable answer from the hpc backend: "
                f"{done.text[-200:]!r} {_last(done.stderr.decode('utf-8', 'replace'))}"
            ) from None
        return unwrap(answer)

    async def stage(self, files: Iterable[tuple[Path, str]]) -> None:
        wanted = list(files)
        if not wanted:
            return
        sftp = await self.transport.sftp()
        try:
            for parent in sorted({posixpath.dirname(r) for _, r in wanted}):
                await sftp.makedirs(parent, exist_ok=True)
            for local, remote in wanted:
                await sftp.put(str(local), remote)
        except Exception as exc:  # asyncssh.SFTPError, OSError
            raise SourceError(f"{self.transport.name}: staging failed: {exc}") from None

    async def fetch(self, remote_dir: str, local_dir: Path) -> None:
        sftp = await self.transport.sftp()
        local_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name in await sftp.listdir(remote_dir):
                if name in (".", ".."):
                    continue
                await sftp.get(
                    posixpath.join(remote_dir, name),
                    str(local_dir / name),
                    recurse=True,
                    preserve=True,
                )
        except Exception as exc:
            raise SourceError(
                f"{self.transport.name}: fetching {remote_dir} failed: {exc}"
            ) from None


def unwrap(answer: Mapping[str, Any]) -> dict[str, Any]:
    """An {"error": ...} answer becomes the matching exception."""
    error = answer.get("error") if isinstance(answer, Mapping) else "no answer"
    if error and set(answer) & {"user_error"}:
        raise HsmError(str(error))
    if error and "job_ids" not in answer:
        raise SourceError(str(error))
    return dict(answer)


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output on stderr"
