"""Bringing finished task folders back from remote sources, while the sweep runs.

A remote task folder arrives in two ways: small files inline in the agent's exit event
(no extra round trip), the rest by SFTP. Either way the pull is incremental (a file
already here with the same size and content/mtime is skipped) and idempotent (pulling a
folder twice changes nothing), and `result.json` is written last: its presence locally
is the proof that the whole folder arrived, so a task counts COMPLETED only then.

Files the local side owns (`params.yaml`, `status.yaml`) are never overwritten, and
paths that would leave the task folder are refused.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import logging
import os
import posixpath
import stat
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from hsm_core.sources.base import SourceError

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
LOCAL_OWNED = frozenset({"params.yaml", "status.yaml"})
# Remote bookkeeping of the agent: never copied back.
REMOTE_ONLY = frozenset({".hsm_pid.json", ".hsm_exit.json"})


@dataclass
class CollectStats:
    written: int = 0
    skipped: int = 0
    bytes: int = 0

    def add(self, other: CollectStats) -> None:
        self.written += other.written
        self.skipped += other.skipped
        self.bytes += other.bytes


def excluded(rel: str, patterns: Sequence[str]) -> bool:
    name = posixpath.basename(rel)
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _safe_target(local_dir: Path, rel: str) -> Path | None:
    """The local path for a remote relative path, or None if it is not ours to write."""
    norm = posixpath.normpath(rel)
    if norm.startswith(("/", "../")) or norm in ("..", ".") or "\x00" in norm:
        return None
    if norm in LOCAL_OWNED or posixpath.basename(norm) in REMOTE_ONLY:
        return None
    return local_dir / norm


def _write_atomic(path: Path, data: bytes, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def _same_content(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def _same_meta(path: Path, size: int, mtime: float) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == size and abs(st.st_mtime - mtime) < 1e-3


def write_inline(
    local_dir: Path, files: Mapping[str, str], exclude: Sequence[str] = ()
) -> CollectStats:
    """Write the base64 files of an exit event (result.json last). Blocking: use a thread."""
    stats = CollectStats()
    local_dir.mkdir(parents=True, exist_ok=True)
    (local_dir / "results").mkdir(exist_ok=True)
    ordered = sorted(files, key=lambda rel: (posixpath.normpath(rel) == RESULT_FILE, rel))
    for rel in ordered:
        target = _safe_target(local_dir, rel)
        if target is None or excluded(rel, exclude):
            continue
        data = base64.b64decode(files[rel])
        if _same_content(target, data):
            stats.skipped += 1
            continue
        _write_atomic(target, data)
        stats.written += 1
        stats.bytes += len(data)
    return stats


async def pull_files(
    sftp: asyncssh.SFTPClient,
    remote_dir: str,
    local_dir: Path,
    entries: Iterable[Sequence[Any]],
    exclude: Sequence[str] = (),
) -> CollectStats:
    """SFTP the listed files ([rel, size, mtime]); those already here unchanged are skipped."""
    stats = CollectStats()
    for entry in entries:
        rel, size, mtime = str(entry[0]), int(entry[1]), float(entry[2])
        target = _safe_target(local_dir, rel)
        if target is None or excluded(rel, exclude):
            continue
        if await asyncio.to_thread(_same_meta, target, size, mtime):
            stats.skipped += 1
            continue
        await _get(sftp, posixpath.join(remote_dir, rel), target, mtime)
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
    before_result: Callable[[bytes | None], Awaitable[None]] | None = None,
) -> tuple[CollectStats, bytes | None]:
    """One finished folder from an exit event: inline files, then SFTP for the large
    ones, then `before_result(result bytes)` (more to pull, e.g. a Hydra job's output
    dir), and result.json strictly last. Returns the stats and result.json's bytes."""

    def is_result(rel: str) -> bool:
        return posixpath.normpath(rel) == RESULT_FILE

    result = {k: v for k, v in inline.items() if is_result(k)}
    data = base64.b64decode(next(iter(result.values()))) if result else None
    if not large and before_result is None:
        # The usual case: everything came inline; one trip to a thread (result.json last).
        return await asyncio.to_thread(write_inline, local_dir, inline, exclude), data
    stats = await asyncio.to_thread(
        write_inline, local_dir, {k: v for k, v in inline.items() if not is_result(k)}, exclude
    )
    rest = [e for e in large if not is_result(str(e[0]))]
    if rest:
        stats.add(await pull_files(await sftp(), remote_dir, local_dir, rest, exclude))
    if before_result is not None:
        await before_result(data)
    if result:
        stats.add(await asyncio.to_thread(write_inline, local_dir, result, exclude))
    last = [e for e in large if is_result(str(e[0]))]
    if last:
        stats.add(await pull_files(await sftp(), remote_dir, local_dir, last, exclude))
        data = await asyncio.to_thread(_read_or_none, local_dir / RESULT_FILE)
    return stats, data


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


async def _get(sftp: asyncssh.SFTPClient, remote: str, target: Path, mtime: float) -> None:
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        await sftp.get(remote, str(tmp))
        await asyncio.to_thread(os.utime, tmp, (mtime, mtime))
        await asyncio.to_thread(os.replace, tmp, target)
    except (OSError, asyncssh.Error) as exc:
        await asyncio.to_thread(_unlink, tmp)
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
    """Mirror a whole remote folder by SFTP (no agent needed), result.json last.

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
    entries.sort(key=lambda e: (e[0] == RESULT_FILE, e[0]))
    await asyncio.to_thread(local_dir.mkdir, parents=True, exist_ok=True)
    return await pull_files(sftp, remote_dir, local_dir, entries, exclude)
