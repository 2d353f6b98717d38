"""One owner per sweep folder: the lock every command that writes the journal takes.

`hsm run`, `hsm complete`, the Hydra launcher (and the hsm sweeper around it) and the
offline settling of `hsm cancel` take it before they read what to do from the journal;
`hsm status`, `monitor` and `report` never need it. A second comer is refused at once
with the owner's name (pid, host, since when, command), never queued behind it.

The lock is a Linux open-file-description lock (`F_OFD_SETLK`) on `sweep.lock`:
- the kernel drops it when its holder dies, however it dies: no PID check-then-act;
- it belongs to the open file, not to the process: a second command in the same process
  is refused like one in another process, and closing some other descriptor of the file
  (a walk that reads every file of the folder) does not drop it, as it would a classic
  fcntl lock;
- a forked child inherits the descriptor (the launcher's fork server, every forked job,
  a task's own forks); an at-fork hook closes it in each child, so a job never keeps a
  sweep locked once its orchestrator is gone. Closing does not release: the parent still
  holds the open file;
- to the filesystem it is a POSIX byte-range lock, the kind fcntl() takes and SQLite
  relies on for sweep.db: on NFS v4, Lustre (mounted with `flock`) and GPFS it holds
  across machines (docs/distributed.md says what each needs).
Kernels without OFD locks (before 3.15) get flock(), whose ownership is the same.

The file's content names the owner, for the second comer's message and for the signal of
`hsm cancel`; whether anybody owns the sweep is the lock's word, never the record's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsm_core import remote_agent
from hsm_core.errors import HsmError

LOCK_NAME = "sweep.lock"
_OFD_SETLK: int = getattr(fcntl, "F_OFD_SETLK", 0)
_OFD_GETLK: int = getattr(fcntl, "F_OFD_GETLK", 0)
# struct flock {short l_type, l_whence; off_t l_start, l_len; pid_t l_pid;} on 64-bit Linux.
_FLOCK = "hhqqi4x"
# The filesystem cannot lock at all (Lustre mounted `noflock`, some FUSE filesystems).
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}
_BUSY = {errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK}


@dataclass(frozen=True)
class Owner:
    """Who holds a sweep: enough to name it, and to tell it from a process that has
    since been given the same pid (start time in clock ticks + boot id)."""

    pid: int | None = None
    start: str | None = None
    boot: str | None = None
    host: str | None = None
    since: float | None = None
    command: str | None = None

    @classmethod
    def here(cls, command: str | None = None) -> Owner:
        pid = os.getpid()
        st = remote_agent.proc_stat(pid)
        return cls(
            pid,
            st[1] if st else None,
            remote_agent.boot_id() or None,
            socket.gethostname(),
            time.time(),
            command or command_line(),
        )

    @classmethod
    def from_json(cls, doc: Any) -> Owner | None:
        if not isinstance(doc, dict):
            return None
        try:
            pid = int(doc["pid"]) if doc.get("pid") is not None else None
            since = float(doc["since"]) if doc.get("since") is not None else None
        except (TypeError, ValueError):
            return None
        text = {
            k: (str(doc[k]) if doc.get(k) is not None else None)
            for k in ("start", "boot", "host", "command")
        }
        return cls(pid, since=since, **text)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start": self.start,
            "boot": self.boot,
            "host": self.host,
            "since": self.since,
            "command": self.command,
        }

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def alive_here(self) -> bool:
        """This very process still runs on this machine (not a recycled pid). False when
        the record lacks what it takes to be sure."""
        if not (self.pid and self.start and self.boot) or not self.on_this_host():
            return False
        return self.boot == remote_agent.boot_id() and remote_agent.same_process(
            self.pid, self.start
        )

    def describe(self) -> str:
        if self.pid is None:
            return "another hsm command (it has not written its name yet)"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since or 0))
        what = f" ({_short(self.command)})" if self.command else ""
        return f"pid {self.pid} on {self.host or '?'} since {when}{what}"


class SweepBusy(HsmError):
    """Another command owns the sweep folder."""

    def __init__(self, sweep_dir: Path, owner: Owner) -> None:
        self.sweep_dir = sweep_dir
        self.owner = owner
        super().__init__(
            f"sweep {sweep_dir} is in use by {owner.describe()}",
            f"wait for it to end, or stop it with `hsm cancel {sweep_dir}`",
        )


class SweepLock:
    """This process's hold on one sweep folder.

    `release(keep=True)` leaves the lock with the process, idle: the next command of this
    process takes it over, other processes stay out (the launcher between two batches of
    one multirun)."""

    def __init__(self, sweep_dir: Path, key: str, fd: int, owner: Owner) -> None:
        self.sweep_dir = sweep_dir
        self._key = key
        self._fd: int | None = fd
        self.owner = owner
        self.active = True
        self._write_owner()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _write_owner(self) -> None:
        if self._fd is None:
            return
        data = json.dumps(self.owner.to_json()).encode()
        with contextlib.suppress(OSError):  # only a name: the lock stands without it
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))

    def _take_over(self, command: str | None) -> None:
        self.active = True
        self.owner = Owner.here(command)
        self._write_owner()

    def release(self, *, keep: bool = False) -> None:
        with _REGISTRY:
            if keep:
                self.active = False
                return
            if _HELD.get(self._key) is self:
                del _HELD[self._key]
            fd, self._fd = self._fd, None
            self.active = False
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # nobody's name stays in a file nobody holds
        os.close(fd)  # the last descriptor of the open file: the kernel drops the lock

    def __enter__(self) -> SweepLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_REGISTRY = threading.Lock()
_HELD: dict[str, SweepLock] = {}
_USE_FLOCK = not _OFD_SETLK or not sys.platform.startswith("linux")


def _forget_in_child() -> None:
    """In a forked child: close the inherited lock descriptors (the parent keeps the
    locks) and forget them. One thread runs here: no registry lock to take."""
    for lock in list(_HELD.values()):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def command_line() -> str:
    argv = list(sys.argv) or ["python"]
    head = Path(argv[0]).name or "python"
    return _short(shlex.join([head, *argv[1:]]), 300)


def _short(text: str | None, limit: int = 120) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(sweep_dir: Path) -> str:
    return str((sweep_dir / LOCK_NAME).resolve())


def acquire(sweep_dir: Path, command: str | None = None, *, make_dir: bool = False) -> SweepLock:
    """Take the sweep folder for a command of this process, or raise SweepBusy at once.

    `make_dir`: create the folder first (a new sweep); the lock is then taken before
    anything else is written in it, so two commands creating the same sweep never both
    start building it."""
    sweep_dir = Path(sweep_dir).absolute()
    for _ in range(10):
        if make_dir:
            sweep_dir.mkdir(parents=True, exist_ok=True)
        key = _key(sweep_dir)
        with _REGISTRY:
            mine = _HELD.get(key)
            if mine is not None and mine.held:
                if mine.active:
                    raise SweepBusy(sweep_dir, mine.owner)
                mine._take_over(command)
                return mine
            fd = _open(sweep_dir, os.O_RDWR | os.O_CREAT)
            if fd is None:
                if make_dir:
                    continue  # the folder was removed meanwhile: make it again
                raise HsmError(f"{sweep_dir} does not exist", "check the sweep folder")
            try:
                _lock(fd, sweep_dir)
            except BaseException:
                os.close(fd)
                raise
            # Locked, but is it still the file of this folder? A failed `hsm run` removes
            # its folder; a file locked just before that is nobody's.
            if not _same_file(fd, Path(key)):
                os.close(fd)
                continue
            lock = SweepLock(sweep_dir, key, fd, Owner.here(command))
            _HELD[key] = lock
            return lock
    raise HsmError(f"could not lock {sweep_dir}: it keeps being removed", "try again")


def _open(sweep_dir: Path, flags: int) -> int | None:
    path = sweep_dir / LOCK_NAME
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise HsmError(
            f"cannot open {path} for writing: permission denied",
            "run hsm as the user who owns the sweep folder",
        ) from None


def _lock(fd: int, sweep_dir: Path) -> None:
    global _USE_FLOCK
    try:
        if not _USE_FLOCK:
            try:
                fcntl.fcntl(fd, _OFD_SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, 0, 0, 0, 0))
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                _USE_FLOCK = True  # a kernel older than 3.15
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _BUSY:
            raise SweepBusy(sweep_dir, _read_owner(fd) or Owner()) from None
        if exc.errno in _NO_LOCKS:
            raise HsmError(
                f"the filesystem of {sweep_dir} does not support file locks ({exc.strerror})",
                "put the sweep on a filesystem that does (Lustre: mount with -o flock; "
                "NFS: without nolock); SQLite's journal needs them too",
            ) from None
        raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_owner(fd: int) -> Owner | None:
    """The owner record; a record being rewritten is read again a moment later."""
    for _ in range(20):
        try:
            data = os.pread(fd, 4096, 0)
        except OSError:
            return None
        if data:
            try:
                return Owner.from_json(json.loads(data))
            except ValueError:
                pass
        time.sleep(0.01)
    return None


def holder(sweep_dir: Path) -> Owner | None:
    """Who owns the sweep right now, or None. Never takes the lock: safe while a command
    runs (`hsm status`). Raises LookupError when it cannot tell (no lock file: a sweep
    no hsm with this lock has run; or no OFD locks here), so that the caller falls back
    on the journal's record."""
    sweep_dir = Path(sweep_dir).absolute()
    with _REGISTRY:
        mine = _HELD.get(_key(sweep_dir))
        if mine is not None and mine.held:
            return mine.owner
    if _USE_FLOCK:
        raise LookupError("no open-file-description locks here")
    try:
        fd = os.open(sweep_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        raise LookupError("no lock file") from None
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, 0, 0, 0, 0)
        try:
            got = fcntl.fcntl(fd, _OFD_GETLK, probe)
        except OSError as exc:
            raise LookupError(str(exc)) from None
        if struct.unpack(_FLOCK, got)[0] == fcntl.F_UNLCK:
            return None
        return _read_owner(fd) or Owner()
    finally:
        os.close(fd)


def held_here(sweep_dir: Path) -> bool:
    """A command of this process holds the sweep now."""
    with _REGISTRY:
        mine = _HELD.get(_key(Path(sweep_dir).absolute()))
        return mine is not None and mine.held and mine.active


def running(sweep_dir: Path, recorded: Any = None) -> bool:
    """Is a command running this sweep? The lock says; only where it cannot (see
    `holder`), the journal's orchestrator record, checked by pid + start time + boot id."""
    try:
        return holder(sweep_dir) is not None
    except LookupError:
        pass
    owner = Owner.from_json(recorded)
    if owner is None:
        return False
    if not owner.on_this_host():
        return True  # cannot tell from here; trust the journal
    if owner.start and owner.boot:
        return owner.alive_here()
    from hsm_core.procs import pid_alive

    return bool(owner.pid) and pid_alive(int(owner.pid or 0))
