"""`hsm monitor watch|health|errors|collection`: look at sweeps and sources without touching them.

Every sweep is opened read-only: watching from another terminal never gets in the way of
the run, and Ctrl-C leaves the watcher only.
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsm_core.errors import ConfigError
from hsm_core.model import NOT_PLACED

if TYPE_CHECKING:
    from rich.console import Console

    from hsm_core.config import HsmConfig

    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="monitor_command", metavar="WHAT", required=True)
    w = sub.add_parser("watch", help="live view of a sweep (progress, running, failures)")
    w.add_argument("sweep", help="sweep id or folder")
    w.add_argument("--once", action="store_true", help="print one frame and exit")
    w.add_argument("--refresh", type=float, default=2.0, help="seconds between frames")
    h = sub.add_parser("health", help="check every configured source now")
    h.add_argument("--watch", action="store_true", help="check again every --refresh seconds")
    h.add_argument("--refresh", type=float, default=30.0, help="seconds between checks")
    h.add_argument("--sources", help="comma-separated source names (default: all)")
    h.add_argument(
        "--test-recovery",
        action="store_true",
        help="drop an ssh source's connection once and show its detection and recovery; "
        "exit 0 if it recovered within its bound",
    )
    h.add_argument(
        "--project-root", type=Path, default=Path.cwd(), help="where hsm.yaml is (default: cwd)"
    )
    e = sub.add_parser("errors", help="failed and lost tasks grouped by cause")
    e.add_argument("sweep", help="sweep id or folder")
    e.add_argument(
        "--analyze-patterns",
        action="store_true",
        help="which parameter values the failures go with",
    )
    e.add_argument("--limit", type=int, default=10, help="tasks listed per group")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    from hsm_core.cli import collection_cmd

    collection_cmd.add_parser(sub)


def run(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "watch": _watch,
        "health": _health,
        "errors": _errors,
        "collection": _collection,
    }
    return handlers[args.monitor_command](args)


def _collection(args: argparse.Namespace) -> int:
    from hsm_core.cli import collection_cmd

    return collection_cmd.run(args)


def _positive(value: float, key: str) -> float:
    if not value > 0:
        raise ConfigError("must be a number of seconds > 0", key=key)
    return value


# ------------------------------------------------------------------------ watch
def _watch(args: argparse.Namespace) -> int:
    from rich.live import Live

    from hsm_core.cli.monitor_view import frame_view
    from hsm_core.cli.render import console
    from hsm_core.reporting.monitor import snapshot

    refresh = _positive(args.refresh, "--refresh")
    con = console()
    from hsm_core.sweeps import open_sweep

    with open_sweep(args.sweep) as store:
        try:
            frame = snapshot(store)
            if args.once or not frame.active:
                con.print(frame_view(frame))
                return 0
            with Live(frame_view(frame), console=con, auto_refresh=False) as live:
                while frame.active:
                    # A display loop, not synchronisation: wait, then redraw from the journal.
                    time.sleep(refresh)
                    frame = snapshot(store)
                    live.update(frame_view(frame), refresh=True)
        except KeyboardInterrupt:
            pass  # leave the watcher only; the sweep goes on
    return 0


# ----------------------------------------------------------------------- health
def _health(args: argparse.Namespace) -> int:
    import asyncio

    from rich.live import Live

    from hsm_core.cli.monitor_view import health_view
    from hsm_core.cli.render import console
    from hsm_core.config import load_config
    from hsm_core.reporting.source_health import check_sources

    refresh = _positive(args.refresh, "--refresh")
    root = args.project_root.resolve()
    config = load_config(root)
    names = [n.strip() for n in args.sources.split(",") if n.strip()] if args.sources else None
    history: dict[str, int] = {}
    con = console()

    def table() -> Any:
        rows = asyncio.run(check_sources(config, root, names=names, history=history))
        where = config.where if config.path else "no hsm.yaml: local only"
        return rows, health_view(rows, f"sources ({where})")

    if args.test_recovery:
        return _test_recovery(args, config, root, names, con)
    from hsm_core.reporting.health_timeline import Timelines

    timelines = Timelines()

    def watched() -> Any:
        rows = asyncio.run(check_sources(config, root, names=names, history=history))
        timelines.add_round(rows)
        where = config.where if config.path else "no hsm.yaml: local only"
        return health_view(rows, f"sources ({where})", timelines)

    rows, view = table()
    if not args.watch:
        con.print(view)
        return 0 if all(r.ok for r in rows) else 1
    timelines.add_round(rows)
    try:
        with Live(view, console=con, auto_refresh=False) as live:
            while True:
                time.sleep(refresh)
                live.update(watched(), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0


def _test_recovery(
    args: argparse.Namespace,
    config: HsmConfig,
    root: Path,
    names: list[str] | None,
    con: Console,
) -> int:
    import asyncio

    from hsm_core.cli.monitor_view import health_view
    from hsm_core.reporting.health_timeline import Timelines, pick_ssh_source, test_recovery
    from hsm_core.reporting.source_health import check_sources, configured_sources

    entries = configured_sources(config)
    unknown = [n for n in names or () if n not in entries]
    if unknown:
        raise ConfigError(f"unknown source {unknown[0]!r}", key="--sources")
    name = pick_ssh_source(entries, names)
    from hsm_core.drills import quiet_logs

    def say(t: float, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        con.print(f"{stamp}  {t:+5.1f} s  {line}", soft_wrap=True, highlight=False, markup=False)

    con.print(f"recovery test: {name} (ssh) is disconnected once, on purpose")
    with quiet_logs():
        result = asyncio.run(test_recovery(name, entries[name], config.health, root, say))
    rows = asyncio.run(check_sources(config, root, names=names or [name]))
    timelines = Timelines()
    timelines[name] = result.timeline
    timelines.add_round(rows)
    where = config.where if config.path else "no hsm.yaml"
    con.print(health_view(rows, f"sources ({where})", timelines))
    verdict = "[green]PASS[/]" if result.ok else "[red]FAIL[/]"
    con.print(f"{verdict} {name}: {result.detail}", soft_wrap=True)
    return 0 if result.ok else 1


# ----------------------------------------------------------------------- errors
def _errors(args: argparse.Namespace) -> int:
    from hsm_core.cli.render import console
    from hsm_core.reporting.reports import analyze_sweep

    if args.limit < 0:
        raise ConfigError("must be >= 0", key="--limit")
    from hsm_core.sweeps import open_sweep

    with open_sweep(args.sweep) as store:
        analysis = analyze_sweep(store, patterns=args.analyze_patterns)
    if args.json:
        print(json.dumps(_errors_json(analysis, args.analyze_patterns), default=str))
        return 0
    _print_errors(console(), analysis, args.limit, args.analyze_patterns)
    return 0


def _errors_json(analysis: Any, patterns: bool) -> dict[str, Any]:
    err = analysis.errors
    doc: dict[str, Any] = {
        "sweep": analysis.data.sweep_id,
        "failed": err.failed,
        "lost": err.lost,
        "recovered": err.recovered,
        "groups": [
            {
                "label": g.label,
                "category": g.cause.category.value,
                "detail": g.cause.detail,
                "count": g.count,
                "hint": g.cause.hint,
                "tasks": [
                    {
                        "task": f.name,
                        "source": f.source,
                        "state": f.state.value,
                        "exit_code": f.exit_code,
                        "params": dict(f.params),
                        "summary": f.cause.summary,
                        "logs": [str(p) for p in f.logs],
                    }
                    for f in g.failures
                ],
                "representative": {"task": g.representative.name, "tail": g.representative.tail},
                "patterns": [p.to_dict() for p in analysis.group_patterns.get(g.cause.group, [])],
            }
            for g in err.groups
        ],
    }
    if patterns:
        doc["patterns"] = [p.to_dict() for p in analysis.patterns]
    return doc


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _print_errors(con: Console, analysis: Any, limit: int, patterns: bool) -> None:
    from rich.markup import escape
    from rich.text import Text

    def say(text: str, indent: int = 6, style: str = "") -> None:
        # Text, not Padding: no trailing blanks, so the output copies and greps cleanly.
        con.print(Text(textwrap.indent(text, " " * indent), style=style), soft_wrap=True)

    err = analysis.errors
    sweep = analysis.data.sweep_id
    if not err.groups:
        extra = f" ({err.recovered} recovered by a re-run)" if err.recovered else ""
        con.print(f"sweep {escape(sweep)}: no failed or lost task{extra}")
        return
    recovered = f"; {err.recovered} recovered by a re-run" if err.recovered else ""
    con.print(
        f"[bold]sweep {escape(sweep)}[/]: {err.failed} failed and {err.lost} lost tasks "
        f"in {_plural(len(err.groups), 'group')}{recovered}"
    )
    for g in err.groups:
        con.print()
        con.print(f"[bold red]{g.count:>4}[/]  [bold]{escape(g.label)}[/]")
        say(g.cause.hint, style="italic")
        for f in g.failures[:limit]:
            params = " ".join(f"{k}={v}" for k, v in dict(f.params).items())
            say(f"{f.name}  on {f.source or NOT_PLACED}  {params}")
        if g.count > limit:
            say(f"... and {g.count - limit} more")
        rep = g.representative
        say(f"representative {rep.name}:", style="dim")
        say(rep.tail or rep.error or "", indent=8)
        if rep.logs:
            say("logs: " + ", ".join(map(str, rep.logs)), style="dim")
        for p in analysis.group_patterns.get(g.cause.group, []) if patterns else []:
            say(f"pattern: {p.describe()}", style="cyan")
    if patterns:
        con.print()
        if analysis.patterns:
            con.print("[bold]parameter values the failures go with[/]")
            for p in analysis.patterns:
                say(p.describe(), indent=2)
        else:
            con.print("no parameter value goes with the failures more than with the others")
