"""`hsm status [SWEEP]`: counts per state and per source; without SWEEP, recent sweeps.

Reads the journal read-only, so it is safe (and fast) while the sweep runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from hsm_core.cli import render
from hsm_core.model import NOT_PLACED, TaskState

if TYPE_CHECKING:
    from hsm_core.store import SweepStore


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sweep", nargs="?", help="sweep id or folder (default: list this project's sweeps)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--tasks", action="store_true", help="also list every task")
    p.add_argument("--limit", type=int, default=20, help="recent sweeps to list")
    p.add_argument(
        "--all", action="store_true", help="list the sweeps of every project, not only this one"
    )


def run(args: argparse.Namespace) -> int:
    from hsm_core.config import check_at_least
    from hsm_core.store import SweepStore
    from hsm_core.sweeps import find_sweep

    check_at_least(args.limit, 1, "--limit")
    if not args.sweep:
        return _list(args)
    path = find_sweep(args.sweep)
    store = SweepStore.open(path, readonly=True)
    try:
        return _show(store, args)
    finally:
        store.close()


def _list(args: argparse.Namespace) -> int:
    """Recent sweeps as plain aligned columns: ids are never cut (they are what the other
    commands take), and the folder comes last, whole, so that it copies cleanly."""
    from pathlib import Path

    from hsm_core.store import SweepStore
    from hsm_core.sweeps import project_root_for, recent

    project = project_root_for(Path.cwd().resolve())
    refs = recent(args.limit, project, only_project=not args.all)
    if args.json:
        print(json.dumps([{"id": r.sweep_id, "path": str(r.path)} for r in refs]))
        return 0
    out = sys.stdout
    if not refs:
        others = [] if args.all else recent(1)
        if others:
            out.write(f"no sweeps of {project} yet; `hsm status --all` lists other projects'\n")
        else:
            out.write("no sweeps yet: start one with `hsm run --config SWEEP.yaml`\n")
        return 0
    rows = [("id", "created", "tasks", "done", "failed", "running", "folder")]
    for r in refs:
        try:
            st = SweepStore.open(r.path, readonly=True)
            c = st.counts()
            st.close()
        except Exception:
            continue
        rows.append(
            (
                r.sweep_id,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)),
                str(sum(c.values())),
                str(c.get(TaskState.COMPLETED, 0)),
                str(c.get(TaskState.FAILED, 0) + c.get(TaskState.LOST, 0)),
                str(c.get(TaskState.RUNNING, 0) + c.get(TaskState.ASSIGNED, 0)),
                str(r.path),
            )
        )
    title = "recent sweeps, every project" if args.all else f"recent sweeps of {project}"
    out.write(f"{title} (--all: every project)\n" if not args.all else f"{title}\n")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    numeric = (False, False, True, True, True, True)
    for row in rows:
        cells = [
            cell.rjust(w) if num and row is not rows[0] else cell.ljust(w)
            for cell, w, num in zip(row, widths, numeric, strict=False)
        ]
        out.write("  ".join([*cells, row[-1]]) + "\n")
    return 0


def _show(store: SweepStore, args: argparse.Namespace) -> int:
    by_source = render.per_source(store)
    # The totals from the per-source counts: one pass over the journal, not two.
    counts: dict[TaskState, int] = {}
    for per in by_source.values():
        for state, n in per.items():
            counts[TaskState(state)] = counts.get(TaskState(state), 0) + n
    from hsm_core.ownership import running

    active = running(store.sweep_dir, store.meta("orchestrator"))
    if args.json:
        doc = {
            "id": store.sweep_id,
            "path": str(store.sweep_dir),
            "counts": {s.value: counts.get(s, 0) for s in TaskState},
            "sources": {k: dict(v) for k, v in by_source.items()},
            "active": active,
        }
        print(json.dumps(doc))
        return 0
    from rich.markup import escape

    con = render.console()
    state = "running" if active else "not running"
    con.print(render.counts_table(f"sweep {store.sweep_id} ({state})", counts, by_source))
    if args.tasks:
        latest = store.latest_attempts()
        for t in store.tasks():
            a = latest[t.key]
            con.print(
                f"{t.name}  [{render.STATE_STYLE[a.state]}]{a.state.value:9}[/] "
                f"{escape(a.source or NOT_PLACED):12} attempt {a.attempt}  "
                f"{escape(a.error or '')}".rstrip(),
                soft_wrap=True,
            )
    con.print(f"folder: {escape(str(store.sweep_dir))}", soft_wrap=True)
    return 0
