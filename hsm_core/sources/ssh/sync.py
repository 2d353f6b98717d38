"""Project sync verification: is the remote copy of the project the one we run here?

Per host, before its first task:
1. git: commit and dirty state of both sides (gitpython here, `git` over ssh there).
   Same commit and both clean -> in sync.
2. Otherwise (or where git is missing): sha256 of every tracked file (or, without git,
   every file outside the usual build/output folders) on both sides; the files whose
   content differs or that are missing remotely are the difference.
3. Versions of python, hsm, hydra-core, omegaconf and cloudpickle on both sides. For a
   Hydra sweep a mismatch that would break unpickling the job payloads (python
   major.minor, cloudpickle, hydra-core, omegaconf, hsm itself) is an error whatever the
   policy, naming the package and both versions.

Policy per source (`sync:`): `warn` logs the differences and goes on; `fail` stops the
sweep before any task starts; `push` copies the differing files over SFTP, then checks
again. The report is kept in the sweep metadata (`sources.<name>.sync`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import platform
import posixpath
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncssh

from hsm_core.errors import CommandError, HsmError, SourceError, SourceUnavailable
from hsm_core.transport.ssh import SSHTransport

log = logging.getLogger("hsm.sync")

PACKAGES = ("hsm", "hydra-core", "omegaconf", "cloudpickle")
PICKLE_CRITICAL = ("python", "hsm", "hydra-core", "omegaconf", "cloudpickle")
# Folders never compared when the project has no git (outputs, caches, environments).
SKIP_DIRS = frozenset(
    {".git", ".hsm", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache",
     ".ruff_cache", ".pytest_cache", "outputs", "multirun", "build", "dist"}
)  # fmt: skip
SKIP_SUFFIXES = (".pyc", ".pyo")

# Runs on the host with the task's python (stdlib only): git state, versions and, when
# stdin names files, their sha256. Prints one JSON object.
REMOTE_SCRIPT = r"""
import hashlib, json, os, subprocess, sys
root = os.path.abspath(os.path.expanduser(sys.argv[1]))  # relative: to the login dir
out = {"root": root, "exists": os.path.isdir(root), "python": "%d.%d.%d" % sys.version_info[:3],
       "versions": {}, "git_commit": None, "git_dirty": None, "dirty_files": [],
       "hashes": {}, "git_error": None}
# Installed versions from the *.dist-info folder names (importing importlib.metadata
# alone costs ~30 ms of interpreter start-up on a small host).
wanted = {n.lower().replace("-", "_"): n for n in sys.argv[2:]}
for n in sys.argv[2:]:
    out["versions"][n] = None
for d in sys.path:
    try:
        entries = os.listdir(d or ".")
    except OSError:
        continue
    for e in entries:
        if e.endswith((".dist-info", ".egg-info")) and "-" in e:
            dist, _, ver = e.rsplit(".", 1)[0].partition("-")
            key = wanted.get(dist.lower().replace("-", "_").replace(".", "_"))
            if key and out["versions"][key] is None:
                out["versions"][key] = ver.split("-")[0]
def git(*args):
    return subprocess.run(("git", "-C", root) + args, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=True).stdout.decode("utf-8", "replace")
if out["exists"]:
    try:
        top = git("rev-parse", "--show-toplevel").strip()
        prefix = os.path.relpath(os.path.realpath(root), os.path.realpath(top))
        prefix = "" if prefix == "." else prefix + "/"
        out["git_commit"] = git("rev-parse", "HEAD").strip()
        dirty = []
        for entry in git("status", "--porcelain", "-z", "--untracked-files=no").split("\0"):
            path = entry[3:]
            if len(entry) > 3 and entry[2] == " " and path.startswith(prefix):
                dirty.append(entry[:2] + " " + path[len(prefix):])
        out["dirty_files"] = dirty
        out["git_dirty"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        out["git_error"] = (err.decode("utf-8", "replace").strip() or str(exc))[:200]
names = json.loads(sys.stdin.read() or "[]")
for rel in names:
    try:
        h = hashlib.sha256()
        with open(os.path.join(root, rel), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out["hashes"][rel] = h.hexdigest()
    except OSError:
        out["hashes"][rel] = None
print(json.dumps(out))
"""


class SyncError(HsmError):
    """The policy (or an unpickling-breaking version) stops the sweep; carries the report."""

    def __init__(self, message: str, hint: str | None, report: SyncReport) -> None:
        super().__init__(message, hint)
        self.report = report


@dataclass
class Side:
    root: str = ""  # the project dir, absolute
    exists: bool = True
    python: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    git_commit: str | None = None
    git_dirty: bool | None = None
    dirty_files: list[str] = field(default_factory=list)
    git_error: str | None = None


@dataclass
class SyncReport:
    source: str
    host: str
    policy: str
    remote_dir: str
    status: str = "unknown"  # in_sync | differs | pushed
    method: str = "git"  # git | checksum
    local: Side = field(default_factory=Side)
    remote: Side = field(default_factory=Side)
    differing_files: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)  # of the differing ones
    compared: int = 0  # files compared by content (0: git said in sync)
    version_mismatches: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    pushed_files: int = 0

    @property
    def project_missing(self) -> bool:
        """No project there at all: project_dir missing, or not one of its files in it.
        Every task would fail there (a command's script, a Hydra app's modules)."""
        if not self.remote.exists:
            return True
        return self.compared > 0 and len(self.missing_files) == self.compared

    def missing_text(self) -> str:
        """Why project_missing, in words."""
        if not self.remote.exists:
            return f"{self.remote_dir} does not exist"
        return f"none of the project's {self.compared} files is in {self.remote_dir}"

    def summary(self) -> str:
        if self.status == "in_sync":
            how = "same commit, clean" if self.method == "git" else "same file contents"
            return f"{self.source}: project in sync ({how})"
        if self.status == "pushed":
            return f"{self.source}: pushed {self.pushed_files} file(s); project now in sync"
        bits = []
        if self.project_missing:
            bits.append(self.missing_text())
        if self.remote.git_dirty:
            bits.append(f"remote tree dirty ({', '.join(self.remote.dirty_files[:5])})")
        if self.local.git_commit and self.remote.git_commit != self.local.git_commit:
            bits.append(
                f"commit {_short(self.remote.git_commit)} there, {_short(self.local.git_commit)}"
                " here"
            )
        if self.differing_files and not self.project_missing:
            more = len(self.differing_files) - 5
            shown = ", ".join(self.differing_files[:5]) + (f" (+{more})" if more > 0 else "")
            bits.append(f"{len(self.differing_files)} file(s) differ: {shown}")
        return f"{self.source}: project differs from {self.remote_dir}: " + "; ".join(bits)

    def to_meta(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        data["differing_files"] = self.differing_files[:50]
        data["missing_files"] = self.missing_files[:50]
        data["project_missing"] = self.missing_text() if self.project_missing else None
        return data


def _short(commit: str | None) -> str:
    return commit[:10] if commit else "none"


# ---------------------------------------------------------------------- local side
def local_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def local_state(root: Path) -> tuple[Side, list[str] | None]:
    """Git state of the local project and its tracked files (None: no git here)."""
    side = Side(python=platform.python_version(), versions=local_versions())
    if not _in_git_tree(root):
        # What gitpython would conclude, without importing it (~40 ms of the start-up).
        side.git_error = f"no git repository at or above {root}"
        return side, None
    try:
        import git  # gitpython; raises ImportError when the git binary is missing

        repo = git.Repo(root, search_parent_directories=True)
        top = Path(repo.working_tree_dir or root).resolve()
        prefix = os.path.relpath(root.resolve(), top)
        prefix = "" if prefix == "." else prefix + "/"
        side.git_commit = repo.head.commit.hexsha
        status = repo.git.status("--porcelain", "-z", "--untracked-files=no")
        side.dirty_files = [
            e[:2] + " " + e[3 + len(prefix) :]
            for e in status.split("\0")
            if len(e) > 3 and e[2] == " " and e[3:].startswith(prefix)
        ]
        side.git_dirty = bool(side.dirty_files)
        listed = git.Git(str(root)).ls_files("-z", "--cached").split("\0")
        files = sorted({f for f in listed if f and (root / f).is_file()})
        return side, files
    except Exception as exc:  # no git, not a repo, no commit yet: fall back to a walk
        side.git_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return side, None


def _in_git_tree(root: Path) -> bool:
    """A `.git` (a folder, or a file in a worktree or submodule) at or above `root`, or a
    repository named by GIT_DIR."""
    if os.environ.get("GIT_DIR"):
        return True
    here = root.resolve()
    return any((d / ".git").exists() for d in (here, *here.parents))


def walk_files(root: Path, skip: tuple[Path, ...] = ()) -> list[str]:
    """Files of a project without git, minus the usual output folders and `skip`."""
    out = []
    root = root.resolve()
    skipped = {str(p.resolve()) for p in (root / "sweeps" / "outputs", *skip)}
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and os.path.join(dirpath, d) not in skipped
        )
        rel_dir = os.path.relpath(dirpath, root)
        for n in names:
            if n.endswith(SKIP_SUFFIXES):
                continue
            rel = n if rel_dir == "." else f"{rel_dir}/{n}"
            if os.path.isfile(os.path.join(dirpath, n)):
                out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def hash_files(root: Path, files: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for rel in files:
        h = hashlib.sha256()
        try:
            with open(root / rel, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):  # type: ignore[misc]
                    h.update(block)
            out[rel] = h.hexdigest()
        except OSError:
            out[rel] = None
    return out


# --------------------------------------------------------------------- remote side
def remote_command(python: str, setup: tuple[str, ...], shell: str, argv: list[str]) -> list[str]:
    """argv run with the task's python, after the source's setup lines (as tasks are)."""
    full = [python, *argv]
    if setup:
        return [shell, "-c", "\n".join((*setup, 'exec "$@"')), "hsm-sync", *full]
    return full


async def remote_state(
    transport: SSHTransport,
    remote_dir: str,
    python: str,
    setup: tuple[str, ...] = (),
    shell: str = "/bin/bash",
    hash_names: list[str] | None = None,
) -> tuple[Side, dict[str, str | None]]:
    argv = remote_command(python, setup, shell, ["-c", REMOTE_SCRIPT, remote_dir, *PACKAGES])
    payload = json.dumps(hash_names or []).encode()
    try:
        result = await transport.run(argv, input=payload, timeout=300.0)
    except CommandError as exc:
        raise SourceUnavailable(
            f"ssh {transport.name}: cannot inspect the project with `{python}`: "
            f"{exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else exc.exit_code}",
            "check `python:` and `setup:` of this source in hsm.yaml",
        ) from None
    try:
        data = json.loads(result.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SourceUnavailable(
            f"ssh {transport.name}: unreadable answer while inspecting {remote_dir}",
            "a login or setup script printing to stdout may be the cause",
        ) from None
    side = Side(
        root=str(data["root"]),
        exists=bool(data["exists"]),
        python=data["python"],
        versions=data["versions"],
        git_commit=data["git_commit"],
        git_dirty=data["git_dirty"],
        dirty_files=data["dirty_files"],
        git_error=data["git_error"],
    )
    return side, data["hashes"]


# ------------------------------------------------------------------ comparison
def version_problems(local: Side, remote: Side, hydra: bool) -> tuple[list[str], list[str]]:
    """(all mismatches, the unpickling-breaking ones) as readable lines."""
    mismatches, fatal = [], []
    pairs: list[tuple[str, str | None, str | None]] = [("python", local.python, remote.python)]
    pairs += [(p, local.versions.get(p), remote.versions.get(p)) for p in PACKAGES]
    for name, here, there in pairs:
        if here == there:
            continue
        line = f"{name} {here or 'missing'} here, {there or 'missing'} on the host"
        mismatches.append(line)
        if not hydra or name not in PICKLE_CRITICAL:
            continue
        if name == "python" and here and there and here.split(".")[:2] == there.split(".")[:2]:
            continue  # a different patch release unpickles fine
        fatal.append(line)
    return mismatches, fatal


async def verify(
    transport: SSHTransport,
    *,
    source: str,
    host: str,
    local_root: Path,
    remote_dir: str,
    python: str,
    setup: tuple[str, ...] = (),
    shell: str = "/bin/bash",
    policy: str = "warn",
    hydra: bool = False,
    announce: bool = True,
    skip: tuple[Path, ...] = (),
    local: LocalState | None = None,
) -> SyncReport:
    """Compare, apply the policy, and return the report (HsmError on fail/fatal).

    `local` may be computed ahead (`local_state_ahead`) while the connection opens."""
    report = SyncReport(source, host, policy, remote_dir)
    if local is None:
        local = await local_state_ahead(local_root, skip)
    here, tracked, hashes = local
    # Without git here, the file contents decide anyway: ask for them in the same exec.
    names = tracked if here.git_commit is None else None
    remote, there = await remote_state(transport, remote_dir, python, setup, shell, names)
    report.local, report.remote = here, remote
    remote_dir = report.remote_dir = remote.root  # `~/proj` or `proj` resolved there
    report.version_mismatches, report.fatal = version_problems(here, remote, hydra)
    if report.fatal:
        raise SyncError(
            f"{source}: the host cannot unpickle this sweep's Hydra jobs: "
            + "; ".join(report.fatal),
            f"install the same versions in `{python}` on {host}",
            report,
        )
    same_git = (
        here.git_commit is not None
        and here.git_commit == remote.git_commit
        and here.git_dirty is False
        and remote.git_dirty is False
    )
    if same_git:
        report.status = "in_sync"
    else:
        report.method = "checksum"
        if names is None:
            report.differing_files, report.missing_files = await _compare(
                transport, local_root, remote_dir, python, setup, shell, tracked
            )
        else:
            report.differing_files = [f for f in tracked if _differs(hashes.get(f), there.get(f))]
            report.missing_files = [f for f in tracked if there.get(f) is None]
        report.compared = len(tracked)
        report.status = "differs" if report.differing_files or not remote.exists else "in_sync"
    if report.status == "differs" and policy == "push":
        report.pushed_files = await push_files(
            transport, local_root, remote_dir, report.differing_files
        )
        report.differing_files, report.missing_files = await _compare(
            transport, local_root, remote_dir, python, setup, shell, report.differing_files
        )
        if report.differing_files:
            raise SyncError(f"{source}: files still differ after the push", None, report)
        report.status = "pushed"
    if announce:
        _announce(report, hydra)
    if report.status == "differs" and policy == "fail":
        raise SyncError(
            report.summary(),
            "commit and pull the same revision there, or set `sync: push` (or `warn`) "
            f"for {source} in hsm.yaml",
            report,
        )
    return report


def _announce(report: SyncReport, hydra: bool) -> None:
    if report.status == "differs":
        log.warning("%s", report.summary())
    else:
        log.info("%s", report.summary())
    for line in report.version_mismatches:
        # Versions matter to Hydra jobs (pickles); to a plain command they are information.
        # A patch release of python alone is harmless either way.
        minor = line.startswith("python ") and _same_minor(
            report.local.python, report.remote.python
        )
        level = logging.WARNING if hydra and not minor else logging.INFO
        log.log(level, "%s: version differs: %s", report.source, line)


def _same_minor(a: str | None, b: str | None) -> bool:
    return bool(a and b and a.split(".")[:2] == b.split(".")[:2])


def _differs(here: str | None, there: str | None) -> bool:
    return here is not None and here != there


LocalState = tuple[Side, list[str], dict[str, str | None]]


def _local_full(root: Path, skip: tuple[Path, ...]) -> LocalState:
    side, tracked = local_state(root)
    if tracked is not None:
        return side, tracked, {}
    files = walk_files(root, skip)  # no git here: contents are all we can compare
    return side, files, hash_files(root, files)


# Checks of several hosts that start together share one look at the local project. Many
# sources start a few at a time: a look stays shared this long after it is done.
SHARE_S = 15.0


@dataclass
class _Look:
    loop: asyncio.AbstractEventLoop
    fut: asyncio.Future[LocalState]
    done_at: float | None = None

    def finished(self, _: object) -> None:
        self.done_at = time.monotonic()

    def fresh(self, loop: asyncio.AbstractEventLoop) -> bool:
        if self.loop is not loop:
            return False
        if self.done_at is None:
            return True
        if self.fut.cancelled() or self.fut.exception() is not None:
            return False  # a failed look is never shared
        return time.monotonic() - self.done_at <= SHARE_S


_AHEAD: dict[tuple[str, ...], _Look] = {}


async def local_state_ahead(root: Path, skip: tuple[Path, ...] = ()) -> LocalState:
    """The local half of the check (git state, or file hashes without git), in a thread.

    Callers within SHARE_S of each other share one computation; a later call looks
    again (the tree may have changed since: a source retried minutes later)."""
    loop = asyncio.get_running_loop()
    key = (str(root), *map(str, skip))
    look = _AHEAD.get(key)
    if look is None or not look.fresh(loop):
        for old in [k for k, v in _AHEAD.items() if not v.fresh(loop)]:
            del _AHEAD[old]
        look = _Look(loop, asyncio.ensure_future(asyncio.to_thread(_local_full, root, skip)))
        look.fut.add_done_callback(look.finished)
        _AHEAD[key] = look
    return await asyncio.shield(look.fut)  # one caller giving up must not cancel the others


async def _compare(
    transport: SSHTransport,
    local_root: Path,
    remote_dir: str,
    python: str,
    setup: tuple[str, ...],
    shell: str,
    files: list[str],
) -> tuple[list[str], list[str]]:
    """The files that differ there, and those of them missing there."""
    here = await asyncio.to_thread(hash_files, local_root, files)
    _, there = await remote_state(transport, remote_dir, python, setup, shell, files)
    return (
        [f for f in files if _differs(here.get(f), there.get(f))],
        [f for f in files if there.get(f) is None],
    )


async def push_files(
    transport: SSHTransport, local_root: Path, remote_dir: str, files: list[str]
) -> int:
    """Copy files of the working tree to the host by SFTP (directories made as needed)."""
    sftp = await transport.sftp()
    made: set[str] = set()
    for rel in files:
        target = posixpath.join(remote_dir, rel)
        parent = posixpath.dirname(target)
        try:
            if parent not in made:
                await sftp.makedirs(parent, exist_ok=True)
                made.add(parent)
            await sftp.put(str(local_root / rel), target, preserve=True)
        except (OSError, asyncssh.Error) as exc:
            raise SourceError(f"ssh {transport.name}: pushing {rel} failed: {exc}") from None
    log.info("%s: pushed %d file(s) to %s", transport.name, len(files), remote_dir)
    return len(files)


def sweep_is_hydra(sweep_dir: Path) -> bool:
    from hsm_core.store import SweepStore

    try:
        store = SweepStore.open(sweep_dir, readonly=True)
    except HsmError:
        return False
    try:
        return bool(store.meta("kind") == "hydra")
    finally:
        store.close()
