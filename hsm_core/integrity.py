"""Proof that a task's collected files are the ones it wrote, byte for byte.

When a task ends, the agent on its host lists the task folder with each file's size and
sha256 (remote_agent `checksums`). The collector checks every file against that list as
it arrives (a mismatch is pulled again, then fails loudly: the attempt is never
COMPLETED on a bad copy) and keeps the list beside the files, in the task folder's
`.hsm_files.json` (the record). `hsm monitor collection --verify-integrity` later
re-reads the local copies against the records and, where a host is reachable, the
host's copies too (see hsm_core.collection_check).

The record is the local side's own file: never collected from a host, never counted
as one of the task's files.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm_core.errors import SourceError
from hsm_core.remote_agent import file_sha256
from hsm_core.taskdir import FILES_RECORD, JOB_PAYLOAD, LOCAL_OWNED, read_json
from hsm_core.yamlio import write_atomic, write_fd

RECORD_VERSION = 1
# Files of a local task folder that are not the task's: the orchestrator's views, the
# record itself, a Hydra job's pickle (shipped to the host, never collected back).
LOCAL_ONLY = frozenset({*LOCAL_OWNED, JOB_PAYLOAD})

Sum = tuple[int, str]  # (size, sha256 hex)


class IntegrityError(SourceError):
    """A collected file is not what the host recorded, even after pulling it again."""


@dataclass
class FilesRecord:
    """What a task's host said of its folder when the attempt ended."""

    attempt: int
    source: str
    remote_dir: str
    files: dict[str, Sum]
    excluded: dict[str, int] = field(default_factory=dict)  # rel -> size (-1: a folder)
    recorded: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "attempt": self.attempt,
            "source": self.source,
            "remote_dir": self.remote_dir,
            "recorded": self.recorded or time.time(),
            "files": {rel: list(s) for rel, s in sorted(self.files.items())},
            "excluded": dict(sorted(self.excluded.items())),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FilesRecord | None:
        try:
            return cls(
                attempt=int(data["attempt"]),
                source=str(data.get("source") or ""),
                remote_dir=str(data.get("remote_dir") or ""),
                files={str(k): (int(v[0]), str(v[1])) for k, v in dict(data["files"]).items()},
                excluded={str(k): int(v) for k, v in dict(data.get("excluded") or {}).items()},
                recorded=float(data.get("recorded") or 0.0),
            )
        except (KeyError, TypeError, ValueError, IndexError):
            return None


def sums_of(event_sums: Any) -> dict[str, Sum] | None:
    """The `sums` of an agent's exit event; None when it carries none (checksums off)."""
    if not isinstance(event_sums, Mapping):
        return None
    out: dict[str, Sum] = {}
    for rel, value in event_sums.items():
        try:
            out[str(rel)] = (int(value[0]), str(value[1]))
        except (TypeError, ValueError, IndexError):
            continue
    return out


def excluded_of(entries: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in entries or ():
        try:
            out[str(entry[0])] = int(entry[1])
        except (TypeError, ValueError, IndexError):
            continue
    return out


_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def write_record(local_dir: Path, record: FilesRecord) -> None:
    """A first record is written in place (as collect.write_inline writes new files: the
    folder is trusted only once the journal says the attempt ended, and a rename per
    task is a real share of a pull's cost); one that replaces another, atomically."""
    data = (json.dumps(record.to_json()) + "\n").encode()
    path = local_dir / FILES_RECORD
    try:
        fd = os.open(path, _NEW, 0o644)
    except FileExistsError:
        write_atomic(path, data)
        return
    try:
        write_fd(fd, data)
    finally:
        os.close(fd)


def read_record(local_dir: Path) -> FilesRecord | None:
    data = read_json(local_dir / FILES_RECORD)
    return FilesRecord.from_json(data) if data else None


def sha256_of(path: Path | str) -> Sum:
    size, digest = file_sha256(os.fspath(path))
    return int(size), str(digest)


def matches(path: Path | str, want: Sum) -> bool:
    """The file holds exactly what the record says (size first: no read if it differs)."""
    try:
        if os.stat(path).st_size != want[0]:
            return False
        return sha256_of(path) == want
    except OSError:
        return False


def local_files(local_dir: Path) -> Iterator[str]:
    """The task's files in a local task folder, as relative posix paths: not hsm's local
    views and record, not temp files, not earlier attempts moved aside (attempt_N/)."""
    root = os.fspath(local_dir)
    for here, dirs, names in os.walk(root):
        rel_root = os.path.relpath(here, root)
        if rel_root == ".":
            dirs[:] = [d for d in dirs if not _attempt_dir(d)]
        for name in names:
            rel = name if rel_root == "." else f"{rel_root.replace(os.sep, '/')}/{name}"
            if rel in LOCAL_ONLY or ".tmp" in name:  # as the agent's listing: no temp files
                continue
            yield rel


def _attempt_dir(name: str) -> bool:
    return name.startswith("attempt_") and name[8:].isdigit()


@dataclass
class Comparison:
    missing: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.differing or self.extra)


def compare(
    want: Mapping[str, Sum], have: Mapping[str, Sum], *, extra_ok: bool = False
) -> Comparison:
    out = Comparison()
    for rel in sorted(want):
        got = have.get(rel)
        if got is None:
            out.missing.append(rel)
        elif tuple(got) != tuple(want[rel]):
            out.differing.append(rel)
    if not extra_ok:
        out.extra = sorted(set(have) - set(want))
    return out


def local_sums(local_dir: Path, names: Sequence[str] | None = None) -> dict[str, Sum]:
    """[size, sha256] of the task's files here (all, or those of `names` that exist)."""
    out: dict[str, Sum] = {}
    for rel in names if names is not None else list(local_files(local_dir)):
        try:
            out[rel] = sha256_of(local_dir / rel)
        except OSError:
            continue
    return out
