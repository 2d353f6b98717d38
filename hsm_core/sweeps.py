"""Naming and finding sweeps: ids, default folders, and a small per-user index.

A sweep is named by its id or its folder. The index (one line per sweep) lets
`hsm status <id>` find a Hydra sweep that lives anywhere, and `hsm status` list recent
sweeps without scanning the disk.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from hsm_core.errors import SweepNotFound
from hsm_core.store import is_sweep_dir

OUTPUTS = Path("sweeps") / "outputs"


def new_sweep_id() -> str:
    return time.strftime("%Y%m%d_%H%M%S") + "_" + secrets.token_hex(2)


def index_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hsm" / "sweeps.tsv"


def register(sweep_id: str, sweep_dir: Path) -> None:
    """Append to the index; a lost line only costs a slower lookup, so errors are ignored."""
    try:
        path = index_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        line = (
            f"{sweep_id}\t{Path(sweep_dir).resolve()}\t{time.time():.0f}\t{socket.gethostname()}\n"
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


def recent(limit: int = 20, project_root: Path | None = None) -> list[SweepRef]:
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
            seen[path] = SweepRef(parts[0], path, float(parts[2] or 0))
    root = (project_root or Path.cwd()) / OUTPUTS
    if root.is_dir():
        for child in root.iterdir():
            if child.resolve() not in seen and is_sweep_dir(child):
                seen[child.resolve()] = SweepRef(child.name, child.resolve(), child.stat().st_mtime)
    return sorted(seen.values(), key=lambda r: r.created, reverse=True)[:limit]


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
