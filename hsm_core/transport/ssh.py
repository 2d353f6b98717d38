"""One reusable asyncssh connection per host: commands, long-lived processes and SFTP.

Used by the ssh compute source and by the hpc source for remote login nodes. Everything
that crosses the remote shell is built from argv with shlex quoting; host keys are checked
against known_hosts (the user's, or the one named by the ssh config / the caller). A dead
connection is noticed by keepalives; `ensure()` reconnects with backoff.

Errors: a mistake on this side that retrying cannot fix (unknown or changed host key, an
unusable private key, a bad ssh config) is an HsmError with the fix; a refused login is
a SourceUnavailable (an HsmError with the fix, but a problem of that host: a sweep goes
on without it); a transient failure (refused, timed out, connection lost) is a
SourceError; a remote command that fails is a CommandError(argv, exit code, stderr).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncssh

from hsm_core.errors import CommandError, ConfigError, HsmError, SourceError, SourceUnavailable

log = logging.getLogger(__name__)
# asyncssh logs every channel open/close at INFO; under Hydra (root logger at INFO) that
# floods the job logs. Quiet by default; a level the user set explicitly is kept.
if logging.getLogger("asyncssh").level == logging.NOTSET:
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

# An sshd drops connections still logging in beyond its MaxStartups (10 by default):
# this process logs in to one sshd (address and port, whatever names the sources give
# it) at most this many at a time, as many sources may share a host. Per event loop:
# a semaphore belongs to the loop it first waited in.
LOGINS_PER_HOST = 8
_logins: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _login_slot(sshd: str) -> asyncio.Semaphore:
    per_loop = _logins.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault(sshd, asyncio.Semaphore(LOGINS_PER_HOST))


# Keys of a source's options that describe how to reach the host.
TARGET_KEYS = (
    "host",
    "user",
    "port",
    "key",
    "ssh_config",
    "known_hosts",
    "connect_timeout",
    "keepalive_interval",
    "keepalive_count",
)


@dataclass(frozen=True)
class SSHTarget:
    """Where and how to connect. Unset fields come from the ssh config (then defaults)."""

    host: str
    user: str | None = None
    port: int | None = None
    key: str | None = None
    ssh_config: str | None = None  # default: ~/.ssh/config when it exists
    known_hosts: str | None = None  # default: from the ssh config, else ~/.ssh/known_hosts
    connect_timeout: float = 10.0
    keepalive_interval: float = 5.0
    keepalive_count: int = 3

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, where: str = "") -> SSHTarget:
        """Build from a source's hsm.yaml keys; a bad value is a ConfigError naming the key."""

        def key(name: str) -> str:
            return f"{where}.{name}" if where else name

        host = options.get("host")
        if not isinstance(host, str) or not host:
            raise ConfigError("missing `host` (a name, address or ~/.ssh/config alias)", key=where)
        numbers: dict[str, float] = {}
        for name, default in (
            ("connect_timeout", cls.connect_timeout),
            ("keepalive_interval", cls.keepalive_interval),
            ("keepalive_count", cls.keepalive_count),
        ):
            value = options.get(name, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"must be a positive number, got {value!r}", key=key(name))
            numbers[name] = float(value)
        port = options.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise ConfigError(f"must be an integer port, got {port!r}", key=key("port"))
        paths: dict[str, str | None] = {}
        for name in ("user", "key", "ssh_config", "known_hosts"):
            value = options.get(name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"must be a string, got {value!r}", key=key(name))
            if value and name != "user":
                value = os.path.expanduser(value)
                if not os.path.exists(value):
                    raise ConfigError(f"file not found: {value}", key=key(name))
            paths[name] = value
        return cls(
            host=host,
            user=paths["user"],
            port=port,
            key=paths["key"],
            ssh_config=paths["ssh_config"],
            known_hosts=paths["known_hosts"],
            connect_timeout=numbers["connect_timeout"],
            keepalive_interval=numbers["keepalive_interval"],
            keepalive_count=int(numbers["keepalive_count"]),
        )

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "login_timeout": self.connect_timeout,
            "keepalive_interval": self.keepalive_interval,
            "keepalive_count_max": self.keepalive_count,
        }
        if self.ssh_config:
            kwargs["config"] = [self.ssh_config]
        if self.user:
            kwargs["username"] = self.user
        if self.port:
            kwargs["port"] = self.port
        if self.key:
            kwargs["client_keys"] = [self.key]
        if self.known_hosts:
            kwargs["known_hosts"] = self.known_hosts
        return kwargs

    def resolved(self) -> tuple[str, int, str, list[str]]:
        """(address, port, user, known_hosts files) after applying the ssh config."""
        opts = asyncssh.SSHClientConnectionOptions(
            host=self.host, **{k: v for k, v in self.connect_kwargs().items() if "timeout" not in k}
        )
        config = opts.config
        address = str(config.get("Hostname", self.host))
        port = int(self.port or cast(int, config.get("Port", 22)))
        files: list[str]
        if isinstance(opts.known_hosts, (list, tuple)):
            files = [os.path.expanduser(str(f)) for f in opts.known_hosts]
        elif isinstance(opts.known_hosts, str):
            files = [os.path.expanduser(opts.known_hosts)]
        else:
            files = [os.path.expanduser("~/.ssh/known_hosts")]
        return address, port, str(opts.username), files

    @property
    def label(self) -> str:
        return self.host if not self.port else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def command_line(argv: Sequence[str]) -> bytes:
    """The remote shell command for argv, every word quoted.

    Bytes, so that values holding non-UTF-8 bytes (surrogate-escaped in str) arrive exact;
    asyncssh would encode a str command as strict UTF-8."""
    if not argv:
        raise ValueError("empty argv")
    return os.fsencode(shlex.join(argv))


def shell_path(path: str) -> str:
    """`path` quoted for a shell, with a leading `~/` left outside the quotes so that the
    shell still expands it: a hint must work when pasted."""
    if path == "~":
        return path
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def _known_hosts_entry(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class SSHTransport:
    """A lazily opened, shared connection to one host."""

    def __init__(self, target: SSHTarget, *, name: str | None = None) -> None:
        self.target = target
        self.name = name or target.host
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()
        self._sftp_lock = asyncio.Lock()
        self._lost_callbacks: list[Callable[[Exception | None], None]] = []
        self._watchers: set[asyncio.Task[None]] = set()
        self._closing = False
        self.generation = 0  # bumped on every new connection (lets callers spot a reconnect)
        self._sshd: str | None = None  # address:port the target resolves to

    # -- connection -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def on_lost(self, callback: Callable[[Exception | None], None]) -> None:
        """Call `callback(exc)` whenever an open connection drops (not on close())."""
        self._lost_callbacks.append(callback)

    async def connect(self) -> asyncssh.SSHClientConnection:
        """Return the open connection, opening it (one try) if needed."""
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            self._closing = False
            conn = await self._open()
            self._conn, self._sftp = conn, None
            self.generation += 1
            watcher = asyncio.create_task(self._watch(conn))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)
            return conn

    async def ensure(self, window: float = 0.0) -> asyncssh.SSHClientConnection:
        """Connect, retrying transient failures with backoff for up to `window` seconds."""
        deadline = time.monotonic() + window
        delay = 0.25
        while True:
            try:
                return await self.connect()
            except SourceError:
                if time.monotonic() + delay > deadline:
                    raise
                log.info("%s: reconnecting in %.1f s", self.name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)

    async def _open(self) -> asyncssh.SSHClientConnection:
        t = self.target
        sshd = await self._sshd_key()
        try:
            async with _login_slot(sshd):
                conn = await asyncssh.connect(t.host, **t.connect_kwargs())
        except asyncssh.HostKeyNotVerifiable:
            raise await self._host_key_error() from None
        except asyncssh.PermissionDenied as exc:
            raise SourceUnavailable(
                f"ssh {self.name}: authentication refused by {t.label} ({exc.reason})",
                "check `user`/`key` in hsm.yaml or your ~/.ssh/config, and that the public "
                "key is in the remote ~/.ssh/authorized_keys",
            ) from None
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            raise HsmError(f"ssh {self.name}: cannot use the private key: {exc}") from None
        except asyncssh.ConfigParseError as exc:
            raise HsmError(f"ssh {self.name}: bad ssh config: {exc}") from None
        except (OSError, asyncio.TimeoutError, asyncssh.Error) as exc:
            raise SourceError(
                f"ssh {self.name}: cannot connect to {t.label}: {_why(exc)}"
            ) from None
        log.info("%s: connected to %s", self.name, t.label)
        return conn

    async def _sshd_key(self) -> str:
        """The sshd this target reaches, after the ssh config: two aliases of one host
        share its bound on logins. Resolved once (it reads the config and keys)."""
        if self._sshd is None:
            try:
                address, port, _, _ = await asyncio.to_thread(self.target.resolved)
                self._sshd = f"{address}:{port}"
            except (OSError, ValueError, asyncssh.Error):
                self._sshd = self.target.label  # connect() says what is wrong with it
        return self._sshd

    async def _host_key_error(self) -> HsmError:
        """Say whether the key is unknown or changed, show the offered fingerprint and the fix."""
        try:
            address, port, _, files = await asyncio.to_thread(self.target.resolved)
        except (OSError, ValueError, asyncssh.Error):
            address, port, files = self.target.host, self.target.port or 22, []
        known_file = files[0] if files else "~/.ssh/known_hosts"
        entry = _known_hosts_entry(address, port)
        offered = ""
        try:
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(address, port), self.target.connect_timeout
            )
            if key is not None:
                offered = f"; the server offers {key.get_algorithm()} {key.get_fingerprint()}"
        except (OSError, asyncio.TimeoutError, asyncssh.Error):
            pass
        changed = False
        for path in files:
            try:
                known = await asyncio.to_thread(asyncssh.read_known_hosts, path)
            except (OSError, ValueError):
                continue
            if known.match(address, address, port)[0]:
                changed = True
        target = shell_path(known_file)
        scan = f"ssh-keyscan -p {port} {shlex.quote(address)} >> {target}"
        folder = os.path.dirname(os.path.expanduser(known_file))
        if folder and not os.path.isdir(folder):  # a fresh account has no ~/.ssh yet
            scan = f"mkdir -p -m 700 {shell_path(os.path.dirname(known_file))} && {scan}"
        if changed:
            remove = f"ssh-keygen -R {shlex.quote(entry)} -f {target}"
            return HsmError(
                f"ssh {self.name}: the host key of {entry} CHANGED since it was recorded in "
                f"{known_file}{offered}; refusing to connect (possible man-in-the-middle)",
                f"if the host was really reinstalled, confirm the new fingerprint with its "
                f"admin, then run `{remove} && {scan}`",
            )
        return HsmError(
            f"ssh {self.name}: the host key of {entry} is not in {', '.join(files) or known_file}"
            f"{offered}; refusing to connect",
            f"check that fingerprint with the host's admin, then run `{scan}`",
        )

    async def _watch(self, conn: asyncssh.SSHClientConnection) -> None:
        try:
            await conn.wait_closed()
        except Exception:  # the close reason is reported below
            pass
        if self._closing or conn is not self._conn:
            return
        log.warning("%s: connection to %s lost", self.name, self.target.label)
        self._conn, self._sftp = None, None
        for callback in list(self._lost_callbacks):
            try:
                callback(None)
            except Exception:
                log.exception("%s: connection-lost callback failed", self.name)

    async def close(self) -> None:
        self._closing = True
        conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 2.0)
            except (asyncio.TimeoutError, Exception):
                pass

    def abort(self) -> None:
        """Drop the connection now (a frozen host never answers a polite close)."""
        conn = self._conn
        if conn is not None:
            conn.abort()

    # -- commands ---------------------------------------------------------------------

    async def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: bytes | None = None,
        timeout: float | None = 60.0,
    ) -> RunResult:
        """Run argv on the host (each word shell-quoted); CommandError when check and rc != 0."""
        return await self._exec(command_line(argv), list(argv), check, input, timeout)

    async def run_shell(
        self,
        script: str,
        *,
        check: bool = True,
        input: bytes | None = None,
        timeout: float | None = 60.0,
    ) -> RunResult:
        """Run trusted shell code (from the user's own config, never from parameters)."""
        return await self._exec(os.fsencode(script), ["sh", "-c", script], check, input, timeout)

    async def _exec(
        self,
        command: bytes,
        argv: list[str],
        check: bool,
        input: bytes | None,
        timeout: float | None,
    ) -> RunResult:
        conn = await self.connect()
        try:
            done = await conn.run(
                cast(str, command), input=input, encoding=None, timeout=timeout, check=False
            )
        except asyncssh.TimeoutError:
            raise SourceError(f"ssh {self.name}: `{shlex.join(argv)}` timed out") from None
        except (OSError, asyncssh.Error) as exc:
            raise SourceError(f"ssh {self.name}: `{argv[0]}` failed: {_why(exc)}") from None
        out = cast(bytes, done.stdout or b"")
        err = cast(bytes, done.stderr or b"")
        code = done.exit_status
        if code is None and done.exit_signal:
            code = -1
        if check and code != 0:
            raise CommandError(argv, code, err.decode("utf-8", "replace"), where=self.name)
        return RunResult(code, out, err)

    async def start_process(self, argv: Sequence[str]) -> asyncssh.SSHClientProcess[bytes]:
        """A long-lived remote process on its own channel, binary stdin/stdout."""
        conn = await self.connect()
        try:
            return await conn.create_process(cast(str, command_line(argv)), encoding=None)
        except (OSError, asyncssh.Error) as exc:
            raise SourceError(f"ssh {self.name}: cannot start `{argv[0]}`: {_why(exc)}") from None

    # -- files ------------------------------------------------------------------------

    async def sftp(self) -> asyncssh.SFTPClient:
        """The shared SFTP session of the current connection."""
        conn = await self.connect()
        async with self._sftp_lock:
            if self._sftp is None or self._conn is not conn:
                try:
                    self._sftp = await conn.start_sftp_client()
                except (OSError, asyncssh.Error) as exc:
                    raise SourceError(f"ssh {self.name}: cannot open SFTP: {_why(exc)}") from None
            return self._sftp

    async def put_file(self, local: Path, remote: str) -> None:
        sftp = await self.sftp()
        try:
            await sftp.put(str(local), remote)
        except (OSError, asyncssh.Error) as exc:
            raise SourceError(f"ssh {self.name}: cannot copy {local} to {remote}: {_why(exc)}")


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
