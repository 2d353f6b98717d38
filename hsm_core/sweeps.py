"""Naming and finding sweeps: ids, default folders, and a small per-user index.

A sweep is named by its id or its folder. The index (one line per sweep) lets
`hsm status <id>` find a Hydra sweep that lives anywhere, and `hsm status` list recent
sweeps without scanning the disk.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hsm_core.errors import HsmError, SweepNotFound
from hsm_core.store import SweepStore, is_sweep_dir

OUTPUTS = Path("sweeps") / "outputs"


def new_sweep_id() -> str:
    return time.strftime("%Y%m%d_%H%M%S") + "_" + secrets.token_hex(2)


def index_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hsm" / "sweeps.tsv"


def project_root_for(cwd: Path) -> Path:
    """The nearest folder up from `cwd` with hsm.yaml, else with .git, else `cwd`."""
    for marker in ("hsm.yaml", ".git"):
        for folder in (cwd, *cwd.parents):
            if (folder / marker).exists():
                return folder
    return cwd


def register(sweep_id: str, sweep_dir: Path, project_root: Path | None = None) -> None:
    """Append to the index; a lost line only costs a slower lookup, so errors are ignored.

    Fields: id, folder, created, host, project root (older lines stop after the host)."""
    try:
        path = index_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        root = Path(project_root).resolve() if project_root else ""
        line = (
            f"{sweep_id}\t{Path(sweep_dir).resolve()}\t{time.time():.0f}"
            f"\t{socket.gethostname()}\t{root}\n"
        )
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError:
        pass


@dataclass(frozen=True)
class SweepRef:
    sweep_id: str
    path: Path
    created: float
    project_root: str = ""  # as the index recorded it; "" for lines written before it did

    def project(self) -> Path | None:
        """The sweep's project root: from the index, else from its journal."""
        if self.project_root:
            return Path(self.project_root)
        from hsm_core.store import SweepStore

        try:
            store = SweepStore.open(self.path, readonly=True)
        except Exception:
            return None
        try:
            root = store.meta("project_root")
        except Exception:
            root = None
        finally:
            store.close()
        return Path(root) if root else None


def belongs_to(ref: SweepRef, project: Path) -> bool:
    """Whether a sweep belongs to `project` (a project root): its own project root is that
    folder or below it, or its folder lies inside the project."""
    if project == ref.path or project in ref.path.parents:
        return True
    root = ref.project()
    return root is not None and (root == project or project in root.parents)


def recent(
    limit: int = 20, project_root: Path | None = None, *, only_project: bool = False
) -> list[SweepRef]:
    """The newest sweeps first: every one in the index (and under this project's
    sweeps/outputs), or with `only_project` those of `project_root` (default: the
    project around the current directory)."""
    seen: dict[Path, SweepRef] = {}
    try:
        lines = index_path().read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        path = Path(parts[1])
        if is_sweep_dir(path):
            root = parts[4] if len(parts) > 4 else ""
            seen[path] = SweepRef(parts[0], path, float(parts[2] or 0), root)
    cwd = Path.cwd().resolve()
    project = (project_root or project_root_for(cwd)).resolve()
    for base in dict.fromkeys((cwd, project)):  # `hsm run` in a subfolder writes there
        outputs = base / OUTPUTS
        if not outputs.is_dir():
            continue
        for child in outputs.iterdir():
            if child.resolve() not in seen and is_sweep_dir(child):
                seen[child.resolve()] = SweepRef(
                    child.name, child.resolve(), child.stat().st_mtime, str(base)
                )
    newest = sorted(seen.values(), key=lambda r: r.created, reverse=True)
    if not only_project:
        return newest[:limit]
    out: list[SweepRef] = []
    for ref in newest:  # stops at `limit`: old index lines cost a journal read each
        if len(out) >= limit:
            break
        if belongs_to(ref, project):
            out.append(ref)
    return out


def find_sweep(ref: str, project_root: Path | None = None) -> Path:
    """A folder (absolute or relative) or an id; one clear error if neither."""
    as_path = Path(ref).expanduser()
    if as_path.exists():
        if is_sweep_dir(as_path):
            return as_path.resolve()
        raise SweepNotFound(
            f"{ref} is not a sweep folder (it has no sweep.db)",
            "pass the folder `hsm run` printed, or a sweep id from `hsm status`",
        )
    candidate = (project_root or Path.cwd()) / OUTPUTS / ref
    if is_sweep_dir(candidate):
        return candidate.resolve()
    for r in recent(limit=10_000, project_root=project_root):
        if r.sweep_id == ref:
            return r.path
    raise SweepNotFound(f"no sweep {ref!r} found", "`hsm status` lists recent sweeps")


@contextmanager
def open_sweep(ref: str) -> Iterator[SweepStore]:
    """The sweep's journal, read-only; a damaged one is one clear line, not a traceback."""
    path = find_sweep(ref)
    store = SweepStore.open(path, readonly=True)
    try:
        yield store
    except sqlite3.DatabaseError as exc:
        raise HsmError(
            f"{path}: the sweep journal cannot be read ({exc})",
            "the folder is damaged or not an hsm sweep",
        ) from None
    finally:
        store.close()
