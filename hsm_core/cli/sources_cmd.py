"""`hsm sources list` and `hsm sources test [NAME|--all]`: configured sources as tables."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsm_core.cli import render
from hsm_core.errors import ConfigError

if TYPE_CHECKING:
    from hsm_core.drills import DrillResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    lst = sub.add_parser("list", help="configured sources and their limits")
    t = sub.add_parser("test", help="connect and check python, hsm, disk, load, GPUs, sync")
    t.add_argument("name", nargs="?", help="source to test (default: all)")
    t.add_argument("--all", action="store_true", help="test every configured source")
    t.add_argument(
        "--simulate-failures",
        action="store_true",
        help="failure drills: run a tiny sweep there and break it (dropped connection, "
        "killed agent, killed task, cancelled job); check recovery; clean up",
    )
    t.add_argument("--json", action="store_true", help="drill results as JSON")
    for q in (lst, t):
        q.add_argument(
            "--project-root", type=Path, default=Path.cwd(), help="project root (default: cwd)"
        )


def run(args: argparse.Namespace) -> int:
    from hsm_core.config import load_config

    root = args.project_root.resolve()
    config = load_config(root)
    sources: dict[str, Any] = dict(config.sources)
    sources.setdefault("local", {"type": "local"})
    if args.action == "list":
        _list(sources, config.where)
        return 0
    if args.name and args.name not in sources:
        raise ConfigError(
            f"unknown source {args.name!r}",
            key="sources",
            hint=f"configured in {config.where}: {', '.join(sorted(sources))}",
        )
    names = [args.name] if args.name and not args.all else sorted(sources)
    if args.simulate_failures:
        return _drills({n: sources[n] for n in names}, root, args.json)
    results = asyncio.run(_test_all({n: sources[n] for n in names}, root))
    _show_tests(results)
    return 0 if all(r["ok"] for r in results) else 1


def _drills(sources: dict[str, Any], root: Path, as_json: bool) -> int:
    from hsm_core.drills import drill_sources, results_json

    con = render.console()
    if not as_json:
        con.print(
            "failure drills: a tiny sweep in a scratch folder per scenario, broken while "
            "it runs (your sweeps are not touched)"
        )

    def t(s: float | None) -> str:
        return f"{s:.1f} s" if s is not None else "-"

    def show(r: DrillResult) -> None:
        if as_json:
            return
        verdict = "[yellow]SKIP[/]" if r.skipped else "[green]PASS[/]" if r.ok else "[red]FAIL[/]"
        con.print(
            f"{verdict}  {r.source:<10} {r.scenario:<22} detected {t(r.detect_s):>7}  "
            f"recovered {t(r.recover_s):>7}  ({r.total_s:.0f} s)",
            soft_wrap=True,
        )
        con.print(f"      {r.detail}", soft_wrap=True, highlight=False, markup=False)
        if r.leftovers:
            con.print(f"      left behind: {', '.join(r.leftovers)}", soft_wrap=True)

    results = asyncio.run(drill_sources(sources, root, show))
    if as_json:
        print(results_json(results))
    elif results:
        skipped = sum(r.skipped for r in results)
        passed = sum(r.ok and not r.skipped for r in results)
        line = f"{passed} of {len(results) - skipped} scenarios passed"
        line += f", {skipped} skipped" if skipped else ""
        line += "; nothing left behind" if all(not r.leftovers for r in results) else ""
        con.print(line)
    else:
        con.print("no drill for these sources")
    return 0 if results and all(r.ok for r in results) else 1


def _list(sources: dict[str, Any], where: str) -> None:
    from rich.table import Table

    from hsm_core.config import source_spec

    table = Table(title=f"sources ({where})")
    for col in ("name", "type", "max parallel", "where", "details"):
        table.add_column(col)
    for name in sorted(sources):
        entry = sources[name]
        spec = source_spec(name, entry)
        stype = str(entry.get("type"))
        if stype == "ssh":
            where_ = str(entry.get("host"))
            details = f"project_dir={entry.get('project_dir')} sync={entry.get('sync', 'warn')}"
        elif stype == "hpc":
            where_ = str(entry.get("ssh") or "this machine")
            details = " ".join(
                f"{k}={entry[k]}" for k in ("scheduler", "partition", "queue") if k in entry
            )
        else:
            where_, details = "this machine", ""
        if entry.get("gpus"):
            details += f" gpus={entry['gpus']}"
        table.add_row(name, stype, str(spec.max_parallel), where_, details.strip())
    render.console().print(table)


async def _test_all(sources: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(_test_one(n, e, root) for n, e in sources.items())))


async def _test_one(name: str, entry: dict[str, Any], root: Path) -> dict[str, Any]:
    stype = entry.get("type")
    if stype == "ssh":
        from dataclasses import asdict

        from hsm_core.sources.ssh.probe import probe_ssh

        return asdict(await probe_ssh(name, entry, root))
    if stype == "local":
        import platform

        from hsm_core import __version__
        from hsm_core.sources.ssh.probe import check_gpus

        st = os.statvfs(root)
        configured = [str(g) for g in entry.get("gpus") or []]
        found, why_none = await _local_gpus() if configured else ([], "")
        gpu_error = check_gpus(configured, found, why_none)
        return {
            "name": name,
            "ok": not gpu_error,
            "error": gpu_error,
            "host": "this machine",
            "python": platform.python_version(),
            "hsm": __version__,
            "disk_free_gb": st.f_bavail * st.f_frsize / 1e9,
            "load": os.getloadavg()[0],
            "cpus": os.cpu_count(),
            "gpus": found,
            "sync": "local project",
        }
    return await _test_generic(name, entry)


async def _local_gpus() -> tuple[list[str], str]:
    """nvidia-smi's lines for this machine's GPUs (index, uuid, name, memory), and why
    the list is empty when it is."""
    import shutil

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "this machine has no nvidia-smi (no NVIDIA driver)"
    query = "--query-gpu=index,uuid,name,memory.used,memory.total"
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            query,
            "--format=csv,noheader",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    except (OSError, asyncio.TimeoutError) as exc:
        return [], f"nvidia-smi failed here ({exc or 'timed out'})"
    lines = [ln.strip() for ln in out.decode(errors="replace").splitlines() if ln.strip()]
    if proc.returncode != 0:
        why = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        return [], f"nvidia-smi failed here (exit code {proc.returncode}: {why})"
    return lines, "nvidia-smi lists no GPU here"


async def _test_generic(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Other source types: start one, ask its health check, close it."""
    import sys
    import tempfile

    from hsm_core.config import source_spec
    from hsm_core.errors import HsmError, SourceError
    from hsm_core.sources import make_source
    from hsm_core.sources.base import SweepContext

    with tempfile.TemporaryDirectory(prefix="hsm-sources-test-") as tmp:
        ctx = SweepContext("sources-test", Path(tmp), Path.cwd(), sys.executable)
        try:
            src = make_source(source_spec(name, entry), ctx)
            await src.start(lambda ev: None)
            try:
                health = await src.health_check()
            finally:
                await src.close()
        except (HsmError, SourceError, OSError) as exc:
            return {"name": name, "ok": False, "error": str(exc)}
    return {
        "name": name,
        "ok": health.ok,
        "error": None if health.ok else health.detail,
        "host": health.detail,
        "load": health.load,
        "cpus": health.cpus,
        "disk_free_gb": health.disk_free_gb,
        "gpus": list(health.gpus),
    }


def _show_tests(results: list[dict[str, Any]]) -> None:
    """A narrow table of facts, then one line per source for sync state and errors (long
    texts wrap badly inside table cells)."""
    from rich.table import Table

    con = render.console()
    table = Table(title="source tests")
    for col in ("name", "status", "host", "connect", "python", "hsm", "disk free", "load", "GPUs"):
        table.add_column(col)
    for r in results:
        ok = r.get("ok")
        ms, disk, load = r.get("connect_ms"), r.get("disk_free_gb"), r.get("load")
        table.add_row(
            r["name"],
            "[green]ok[/]" if ok else "[red]FAILED[/]",
            r.get("host") or "",
            f"{ms:.0f} ms" if ms is not None else "",
            str(r.get("python") or "").split(" ")[0],
            r.get("hsm") or ("[yellow]missing[/]" if r.get("python") else ""),
            f"{disk:.1f} GB" if disk is not None else "",
            f"{load:.2f}" if load is not None else "",
            str(len(r.get("gpus") or [])),
        )
    con.print(table)
    for r in results:
        if r.get("error"):
            con.print(f"[red]{r['name']}[/]: {r['error']}", soft_wrap=True)
        elif r.get("sync"):
            con.print(f"{r['name']}: {r['sync']}", soft_wrap=True)
        for gpu in r.get("gpus") or []:
            con.print(f"{r['name']}: GPU {gpu}", soft_wrap=True)
