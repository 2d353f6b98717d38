"""Bringing finished task folders back from remote sources, while the sweep runs.

A remote task folder arrives in two ways: small files inline in the agent's exit event
(no extra round trip), the rest by SFTP. Either way the pull is incremental (a file
already here with the same size and content/mtime is skipped) and idempotent (pulling a
folder twice changes nothing). The source reports a task COMPLETED only once its
folder is here: the journal saying so is the proof, no file in the folder is (a task's
own `result.json` is collected like any other file of it).

Files the local side owns (`params.yaml`, `status.yaml`) are never overwritten, and
paths that would leave the task folder are refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fnmatch
import hashlib
import logging
import os
import posixpath
import stat
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from hsm_core import integrity
from hsm_core.errors import SourceError
from hsm_core.taskdir import LEGACY_AGENT_FILES, LOCAL_OWNED, RESULTS
from hsm_core.yamlio import write_fd

log = logging.getLogger(__name__)

# Bookkeeping files of older agents in a task folder: never copied back.
REMOTE_ONLY = frozenset(LEGACY_AGENT_FILES)


@dataclass
class CollectStats:
    written: int = 0
    skipped: int = 0
    bytes: int = 0
    # Inline files whose bytes are not what the host's sums say: pulled again by SFTP.
    suspect: list[str] = field(default_factory=list)

    def add(self, other: CollectStats) -> None:
        self.written += other.written
        self.skipped += other.skipped
        self.bytes += other.bytes
        self.suspect += other.suspect


def excluded(rel: str, patterns: Sequence[str]) -> bool:
    name = posixpath.basename(rel)
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _safe_rel(rel: str) -> str | None:
    """A remote relative path, normalized, or None if it is not ours to write."""
    norm = posixpath.normpath(rel)
    if norm.startswith(("/", "../")) or norm in ("..", ".") or "\x00" in norm:
        return None
    if norm in LOCAL_OWNED or posixpath.basename(norm) in REMOTE_ONLY:
        return None
    return norm


def _safe_target(local_dir: Path, rel: str) -> Path | None:
    """The local path for a remote relative path, or None if it is not ours to write."""
    norm = _safe_rel(rel)
    return None if norm is None else local_dir / norm


# O_NOFOLLOW: a symlink in the local folder is replaced, never written through to
# wherever it points (as the rename of a temp file did).
_WRITE_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_TRUNC
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)
)


def _open_for_write(path: str) -> int:
    try:
        return os.open(path, _WRITE_FLAGS, 0o666)
    except FileNotFoundError:
        # Only a file in a subfolder can get here (the task folder exists by now).
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        os.unlink(path)
    return os.open(path, _WRITE_FLAGS, 0o666)


def _write_direct(path: str, data: bytes) -> None:
    fd = _open_for_write(path)
    try:
        write_fd(fd, data)
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.part")
    try:
        _write_direct(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _same_content(path: str, data: bytes) -> bool | None:
    """True: the file holds `data`; False: it differs; None: there is no such file.

    One open + read, no stat first: a missing file (the usual case) costs one failed
    open. Reading one byte more than expected tells a longer file apart."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError:
        return False
    try:
        chunks = []
        want = len(data) + 1
        while want > 0:
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            want -= len(chunk)
        return b"".join(chunks) == data
    except OSError:
        return False
    finally:
        os.close(fd)


def _ensure_results(local_dir: Path) -> None:
    # The seed layout has tasks/task_NNN/results/ in every folder; one mkdir that
    # usually fails with EEXIST (cheap) also proves the task folder exists.
    results = local_dir / RESULTS
    try:
        os.mkdir(results)
    except FileExistsError:
        pass
    except FileNotFoundError:
        results.mkdir(parents=True, exist_ok=True)


def _same_meta(path: Path, size: int, mtime: float) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == size and abs(st.st_mtime - mtime) < 1e-3


def write_inline(
    local_dir: Path,
    files: Mapping[str, str],
    exclude: Sequence[str] = (),
    sums: Mapping[str, integrity.Sum] | None = None,
) -> CollectStats:
    """Write the base64 files of an exit event. Blocking: use a thread.

    A new file is written in place: nobody trusts the folder before the journal says
    the attempt is over, and file-system metadata calls (renames above all) are most of
    the CPU of a pull. A file that is already here is replaced atomically, as a reader
    may be looking at it."""
    stats = CollectStats()
    _ensure_results(local_dir)
    root = os.fspath(local_dir)
    for rel in sorted(files):
        norm = _safe_rel(rel)
        if norm is None or excluded(rel, exclude):
            continue
        path = os.path.join(root, norm)
        data = base64.b64decode(files[rel])
        want = sums.get(rel) if sums is not None else None
        if want is not None and (len(data), hashlib.sha256(data).hexdigest()) != tuple(want):
            stats.suspect.append(rel)
            continue
        same = _same_content(path, data)
        if same:
            stats.skipped += 1
            continue
        if same is None:
            _write_direct(path, data)
        else:
            _write_atomic(path, data)
        stats.written += 1
        stats.bytes += len(data)
    return stats


async def pull_files(
    sftp: asyncssh.SFTPClient,
    remote_dir: str,
    local_dir: Path,
    entries: Iterable[Sequence[Any]],
    exclude: Sequence[str] = (),
    sums: Mapping[str, integrity.Sum] | None = None,
) -> CollectStats:
    """SFTP the listed files ([rel, size, mtime]); those already here unchanged are
    skipped. With the host's `sums`, every file is checked against them (one here
    already too: same size and mtime is not proof)."""
    stats = CollectStats()
    for entry in entries:
        rel, size, mtime = str(entry[0]), int(entry[1]), float(entry[2])
        target = _safe_target(local_dir, rel)
        if target is None or excluded(rel, exclude):
            continue
        want = sums.get(rel) if sums is not None else None
        if await asyncio.to_thread(_same_meta, target, size, mtime) and (
            want is None or await asyncio.to_thread(integrity.matches, target, want)
        ):
            stats.skipped += 1
            continue
        await _get(sftp, posixpath.join(remote_dir, rel), target, mtime, want)
        stats.written += 1
        stats.bytes += size
    return stats


async def collect_folder(
    local_dir: Path,
    remote_dir: str,
    inline: Mapping[str, str],
    large: Sequence[Sequence[Any]],
    sftp: Callable[[], Awaitable[asyncssh.SFTPClient]],
    exclude: Sequence[str] = (),
    sums: Mapping[str, integrity.Sum] | None = None,
) -> CollectStats:
    """One finished folder from an exit event: the inline files (one trip to a thread),
    then SFTP for the large ones (and for an inline one that does not match its sum).
    IntegrityError if a file still differs from the host's sums after a second pull."""
    stats = await asyncio.to_thread(write_inline, local_dir, inline, exclude, sums)
    again = [[rel, (sums or {})[rel][0], 0.0] for rel in stats.suspect]
    if large or again:
        pulled = await pull_files(
            await sftp(), remote_dir, local_dir, [*large, *again], exclude, sums
        )
        stats.add(pulled)
    return stats


# Pulls of one file before a copy that differs from the host's sum is an error.
PULLS = 2


async def _get(
    sftp: asyncssh.SFTPClient,
    remote: str,
    target: Path,
    mtime: float,
    want: integrity.Sum | None = None,
) -> None:
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        for pull in range(1, PULLS + 1):
            await sftp.get(remote, str(tmp))
            if want is None or await asyncio.to_thread(integrity.matches, tmp, want):
                break
            got = await asyncio.to_thread(integrity.sha256_of, tmp)
            log.warning(
                "%s arrived as %d bytes, sha256 %.12s, but the host recorded %d bytes, "
                "sha256 %.12s (pull %d of %d)",
                remote, got[0], got[1], want[0], want[1], pull, PULLS,
            )  # fmt: skip
        else:
            raise integrity.IntegrityError(
                f"{remote} differs from what its host recorded when the task ended, "
                f"pulled {PULLS} times (something on the host still writing it? a "
                "failing disk or network?)"
            )
        if mtime:
            await asyncio.to_thread(os.utime, tmp, (mtime, mtime))
        await asyncio.to_thread(os.replace, tmp, target)
    except (OSError, asyncssh.Error, integrity.IntegrityError) as exc:
        await asyncio.to_thread(_unlink, tmp)
        if isinstance(exc, integrity.IntegrityError):
            raise
        if isinstance(exc, asyncssh.SFTPError) and not isinstance(exc, asyncssh.SFTPFailure):
            # The file vanished or cannot be read: a task-side problem, not a lost host.
            log.warning("cannot pull %s: %s", remote, exc)
            return
        raise SourceError(f"pulling {remote} failed: {exc}") from None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


async def pull_tree(
    sftp: asyncssh.SFTPClient,
    remote_dir: str,
    local_dir: Path,
    exclude: Sequence[str] = (),
) -> CollectStats:
    """Mirror a whole remote folder by SFTP (no agent needed).

    Used where no exit event carries the listing (a source without the agent, a late
    collection); incremental by size and mtime."""
    entries: list[tuple[str, int, float]] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            names = await sftp.readdir(
                posixpath.join(remote_dir, rel_dir) if rel_dir else remote_dir
            )
        except (OSError, asyncssh.Error) as exc:
            if rel_dir:
                continue
            raise SourceError(f"cannot list {remote_dir}: {exc}") from None
        for item in names:
            name = str(item.filename)
            if name in (".", ".."):
                continue
            rel = posixpath.join(rel_dir, name) if rel_dir else name
            if excluded(rel, exclude):
                continue
            attrs = item.attrs
            mode = attrs.permissions or 0
            if stat.S_ISDIR(mode):
                pending.append(rel)
            elif stat.S_ISREG(mode) and ".tmp" not in name:
                entries.append((rel, int(attrs.size or 0), float(attrs.mtime or 0)))
    entries.sort()
    await asyncio.to_thread(local_dir.mkdir, parents=True, exist_ok=True)
    return await pull_files(sftp, remote_dir, local_dir, entries, exclude)
