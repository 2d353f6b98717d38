"""`hsm monitor collection SWEEP [--verify-integrity] [--repair]`: is every file each task
wrote on a remote host here, byte for byte?

Per task whose newest attempt ended (COMPLETED or FAILED: both are collected) on an ssh
source, the local copies are compared with the task's record (hsm_core.integrity: the
host's sizes and sha256 when the task ended), and, where the host is reachable, the
host's copies too (one `remote_agent --sums` command per host, which hashes there: only
the answers cross the network). Without a record (collected by an hsm before records,
or `checksums: false`), the host's copies are the reference; with neither, the task is
*unverified*. Files kept back by the source's `exclude:` are listed as excluded, never
as missing. `--repair` pulls each missing or differing file again from its host when
the host still holds what the record says, checked on arrival.

A task counts as matching when its local files are exactly the recorded ones. A host
copy that changed after the task ended, or a host folder cleaned up since, is shown but
does not count against the collection: the record proves the local copy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm_core import integrity
from hsm_core.errors import HsmError, SourceError
from hsm_core.integrity import FilesRecord, Sum
from hsm_core.model import TaskState
from hsm_core.store import SweepStore

log = logging.getLogger(__name__)

COLLECTED_STATES = (TaskState.COMPLETED.value, TaskState.FAILED.value)
COLLECTED_TYPES = ("ssh",)  # sources whose tasks' files are copied here
HOST_TIMEOUT_S = 3600.0  # hashing a host's copies of a big sweep takes a while


@dataclass
class TaskCheck:
    name: str
    num: int
    source: str
    state: str
    attempt: int
    remote_dir: str = ""
    record: bool = False  # a record of this attempt
    files: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    host: str = "not checked"  # reachable | unreachable | not checked | folder gone
    host_changed: list[str] = field(default_factory=list)  # host copy != record
    repaired: list[str] = field(default_factory=list)
    not_repaired: dict[str, str] = field(default_factory=dict)  # rel -> why
    note: str = ""
    details: dict[str, str] = field(default_factory=dict)  # rel -> here vs recorded
    # kept for --repair: what each file must be, and where its host copy is
    want: dict[str, Sum] = field(default_factory=dict, repr=False)
    host_files: dict[str, Sum] | None = field(default=None, repr=False)

    @property
    def unverified(self) -> bool:
        return not self.record and self.host_files is None

    @property
    def ok(self) -> bool:
        return not (self.missing or self.differing or self.extra or self.unverified)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "source": self.source,
            "state": self.state,
            "attempt": self.attempt,
            "ok": self.ok,
            "record": self.record,
            "unverified": self.unverified,
            "files": self.files,
            "bytes": self.bytes,
            "missing": self.missing,
            "differing": self.differing,
            "extra": self.extra,
            "excluded": self.excluded,
            "host": self.host,
            "host_changed": self.host_changed,
            "repaired": self.repaired,
            "not_repaired": self.not_repaired,
            "note": self.note,
            "details": self.details,
        }


@dataclass
class HostState:
    name: str
    tasks: int = 0
    reachable: bool | None = None  # None: not asked
    error: str = ""
    seconds: float = 0.0


@dataclass
class CollectionReport:
    sweep_id: str
    sweep_dir: Path
    verify: bool
    tasks: list[TaskCheck]
    hosts: dict[str, HostState]
    in_place: dict[str, int]  # source -> tasks whose files were written here directly
    not_ended: int  # tasks whose newest attempt did not end with files to collect
    hashed_bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tasks)

    def to_json(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep_id,
            "folder": str(self.sweep_dir),
            "verify_integrity": self.verify,
            "ok": self.ok,
            "checked": len(self.tasks),
            "matching": sum(t.ok for t in self.tasks),
            "hashed_bytes": self.hashed_bytes,
            "seconds": round(self.seconds, 3),
            "hosts": {
                n: {"tasks": h.tasks, "reachable": h.reachable, "error": h.error}
                for n, h in self.hosts.items()
            },
            "in_place": self.in_place,
            "not_ended": self.not_ended,
            "tasks": [t.to_json() for t in self.tasks],
        }


class _Host:
    """One ssh source of the sweep, as recorded in its journal, reached on demand."""

    def __init__(self, name: str, options: Mapping[str, Any], sweep_id: str) -> None:
        from hsm_core.sources.ssh.options import SSHOptions
        from hsm_core.transport.ssh import SSHTransport

        self.name = name
        self.opts = SSHOptions.parse(name, options)
        self.sweep_id = sweep_id
        self.transport = SSHTransport(self.opts.target, name=name)
        self.state = HostState(name)

    def default_dir(self, task_name: str) -> str:
        """Where the task folder is on the host (relative: from the home folder)."""
        return posixpath.join(
            self.opts.project_dir, ".hsm", "sweeps", self.sweep_id, "tasks", task_name
        )

    async def sums(self, dirs: Sequence[str]) -> dict[str, Any] | None:
        """{dir: {"files", "excluded"} | None} from the host; None if it is unreachable."""
        from hsm_core.sources.ssh.agent import agent_source

        t0 = time.monotonic()
        argv = [self.opts.agent_python, "-I", "-c", agent_source(), "--sums"]
        request = json.dumps({"dirs": list(dirs), "exclude": list(self.opts.exclude)})
        try:
            done = await self.transport.run(argv, input=request.encode(), timeout=HOST_TIMEOUT_S)
            answer = json.loads(done.text.strip().splitlines()[-1])
        except (SourceError, HsmError, ValueError, IndexError) as exc:
            self.state.reachable = False
            self.state.error = str(exc).splitlines()[0][:300]
            return None
        finally:
            self.state.seconds = time.monotonic() - t0
        self.state.reachable = True
        out = answer.get("dirs") if isinstance(answer, dict) else None
        return out if isinstance(out, dict) else {}

    async def close(self) -> None:
        await self.transport.close()


def _attempt_rows(store: SweepStore) -> list[tuple[str, int, str, str | None]]:
    return [(k, a, s, src) for k, a, s, src, _st, _en in store.latest_rows()]


def _plan(
    store: SweepStore, tasks: str | None
) -> tuple[list[TaskCheck], dict[str, dict[str, Any]], dict[str, int], int]:
    from hsm_core.complete import check_task_ranges, parse_task_ranges

    ranges = None
    if tasks is not None:
        ranges = parse_task_ranges(tasks)
        check_task_ranges(ranges, store.task_numbers())
    nums = dict(store.task_nums())
    recorded = {str(d.get("name")): d for d in store.meta("sources") or [] if isinstance(d, dict)}
    checks: list[TaskCheck] = []
    in_place: dict[str, int] = {}
    not_ended = 0
    for key, attempt, state, source in _attempt_rows(store):
        num = nums[key]
        if ranges is not None and not any(lo <= num <= hi for lo, hi in ranges):
            continue
        if state not in COLLECTED_STATES or not source:
            not_ended += 1
            continue
        entry = recorded.get(source) or {}
        stype = str(entry.get("type") or ("local" if source == "local" else ""))
        if stype not in COLLECTED_TYPES:
            # An hpc source over ssh copies its folders back too, without records yet.
            remote = stype == "hpc" and (entry.get("options") or {}).get("ssh")
            label = f"{source} (copied back by hpc over ssh, without records)" if remote else source
            in_place[label] = in_place.get(label, 0) + 1
            continue
        checks.append(TaskCheck(f"task_{num:03d}", num, source, state, attempt))
    checks.sort(key=lambda c: c.num)
    return checks, recorded, in_place, not_ended


def _check_local(check: TaskCheck, folder: Path, verify: bool) -> int:
    """Compare the local copies with the record (sizes only unless `verify`); returns
    the bytes hashed."""
    rec: FilesRecord | None = integrity.read_record(folder)
    if rec is not None and rec.attempt != check.attempt:
        check.note = f"the record is of attempt {rec.attempt}, the task's is {check.attempt}"
        rec = None
    if rec is not None:
        check.record = True
        check.remote_dir = rec.remote_dir
        check.want = dict(rec.files)
        check.excluded = dict(rec.excluded)
    check.files = len(check.want)
    check.bytes = sum(s[0] for s in check.want.values())
    return _compare_here(check, folder, verify) if rec is not None else 0


def _compare_here(check: TaskCheck, folder: Path, verify: bool) -> int:
    hashed = 0
    here: dict[str, Sum] = {}
    names = [
        rel
        for rel in integrity.local_files(folder)
        if rel not in check.excluded
        and not any(rel.startswith(e) for e in check.excluded if e.endswith("/"))
    ]
    for rel in names:
        try:
            size = (folder / rel).stat().st_size
        except OSError:
            continue
        want = check.want.get(rel)
        if verify or want is None or size != want[0]:
            here[rel] = integrity.sha256_of(folder / rel) if verify else (size, "")
            hashed += size if verify else 0
        else:
            here[rel] = want  # sizes only: same size counts as the same
    if not verify:
        want_sizes = {r: (s[0], "") for r, s in check.want.items()}
        have = {r: (s[0], "") for r, s in here.items()}
        cmp = integrity.compare(want_sizes, have)
    else:
        cmp = integrity.compare(check.want, here)
    check.missing, check.differing, check.extra = cmp.missing, cmp.differing, cmp.extra
    check.details = {
        rel: f"here {here[rel][0]} B sha256 {here[rel][1][:12]}, "
        f"recorded {check.want[rel][0]} B sha256 {check.want[rel][1][:12]}"
        for rel in cmp.differing
    }
    return hashed


def _apply_host(check: TaskCheck, folder: Path, listing: Any, verify: bool) -> int:
    """Fold the host's answer for this task's folder in; returns the bytes hashed here."""
    if not isinstance(listing, dict):
        check.host = "folder gone"
        return 0
    check.host = "reachable"
    host_files = integrity.sums_of(listing.get("files")) or {}
    check.host_files = host_files
    if check.record:
        check.host_changed = sorted(
            rel for rel, want in check.want.items() if host_files.get(rel) != want
        )
        return 0
    # No record: the host's copies are the reference.
    check.want = dict(host_files)
    check.excluded = integrity.excluded_of(listing.get("excluded"))
    check.files = len(check.want)
    check.bytes = sum(s[0] for s in check.want.values())
    return _compare_here(check, folder, verify)


async def _repair(check: TaskCheck, host: _Host, folder: Path) -> int:
    from hsm_core.sources.ssh import collect

    hashed = 0
    todo = [*check.missing, *check.differing]
    if not todo:
        return 0
    if check.host_files is None:
        for rel in todo:
            check.not_repaired[rel] = f"host {host.name} not reachable"
        return 0
    remote_dir = check.remote_dir or host.default_dir(check.name)
    sftp = await host.transport.sftp()
    if not posixpath.isabs(remote_dir):
        remote_dir = posixpath.join(await sftp.realpath("."), remote_dir.removeprefix("~/"))
    for rel in todo:
        want = check.want[rel]
        if check.host_files.get(rel) != want:
            why = (
                "gone on the host"
                if rel not in check.host_files
                else "the host's copy differs from the record too"
            )
            check.not_repaired[rel] = why
            continue
        target = collect._safe_target(folder, rel)
        if target is None:
            check.not_repaired[rel] = "not a path inside the task folder"
            continue
        try:
            await collect._get(sftp, posixpath.join(remote_dir, rel), target, 0.0, want)
        except SourceError as exc:
            check.not_repaired[rel] = str(exc)
            continue
        hashed += want[0]
        check.repaired.append(rel)
    fixed = set(check.repaired)
    check.missing = [r for r in check.missing if r not in fixed]
    check.differing = [r for r in check.differing if r not in fixed]
    for rel in fixed:
        check.details.pop(rel, None)
    return hashed


async def check_collection(
    store: SweepStore,
    *,
    verify: bool,
    repair: bool = False,
    offline: bool = False,
    tasks: str | None = None,
) -> CollectionReport:
    t0 = time.monotonic()
    checks, recorded, in_place, not_ended = _plan(store, tasks)
    sweep_dir = store.sweep_dir
    report = CollectionReport(
        store.sweep_id, sweep_dir, verify or repair, checks, {}, in_place, not_ended
    )
    verify = verify or repair

    def local_pass() -> int:
        return sum(_check_local(c, sweep_dir / "tasks" / c.name, verify) for c in checks)

    report.hashed_bytes += await asyncio.to_thread(local_pass)
    by_source: dict[str, list[TaskCheck]] = {}
    for c in checks:
        by_source.setdefault(c.source, []).append(c)

    async def one_host(name: str, group: list[TaskCheck]) -> int:
        state = report.hosts[name]
        entry = recorded.get(name) or {}
        try:
            host = _Host(name, dict(entry.get("options") or {}), store.sweep_id)
        except HsmError as exc:
            state.reachable, state.error = False, str(exc)
            return 0
        host.state = state
        hashed = 0
        try:
            dirs = [c.remote_dir or host.default_dir(c.name) for c in group]
            answer = await host.sums(dirs)
            for c, d in zip(group, dirs, strict=True):
                if answer is None:
                    c.host = "unreachable"
                    continue
                folder = sweep_dir / "tasks" / c.name
                hashed += await asyncio.to_thread(_apply_host, c, folder, answer.get(d), verify)
                if repair:
                    hashed += await _repair(c, host, folder)
        finally:
            await host.close()
        return hashed

    for name, group in by_source.items():
        report.hosts[name] = HostState(name, tasks=len(group))
    if verify and not offline:
        # Every host hashes its copies at the same time.
        done = await asyncio.gather(*(one_host(n, g) for n, g in by_source.items()))
        report.hashed_bytes += sum(done)
    report.seconds = time.monotonic() - t0
    return report
