"""Benchmark: one sweep over many ssh sources (50 by default) against the same sweep on 3.

Not a test. The sources are hsm.yaml entries `s01`..`sNN` spread over the loopback test
hosts (h1, h2, h3 in turn), each with a project dir of its own on its host (so each is
a source of its own: its own connection, agent and sync check). In each round, in an
order that rotates, it times whole `hsm run` processes (wall clock, medians):

- MANY: TASKS `true` tasks on all N sources x SLOTS slots;
- MANY fixed: 1 task on the same N sources (every source is still started and closed);
- anchor: the same TASKS tasks on 3 sources (s01..s03, one per host) x SLOTS, and its
  fixed cost on 1 task.

After each run it checks the journal: every task COMPLETED (a source that could not
start is reported, and the sweep ran without it), and (for TASKS runs) when each source
ran its first task, counted from the moment the command was started.

Columns:
    wall            median wall time
    fixed           median wall time for 1 task (start and close every source)
    overhead/task   (wall - fixed) / (TASKS - 1): what each further task costs
    first task      seconds from the command's start to the first task RUNNING on the
                    first source, the median source and the last one (every source busy)
    sources used    sources that ran at least one task (median over rounds)
    vs anchor       the overhead/task ratio to the 3-source anchor of the same rounds

`--baseline CMD` times the MANY runs with a second hsm command too (another checkout,
e.g. before a change), alternating with this one in every round: the same load for both.

    python bench/bench_sources.py [--sources 50] [--tasks 2000] [--rounds 3]
    python bench/bench_sources.py --baseline "/path/to/other/venv/bin/hsm"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from _timing import Series, Timing, add_place_args, hsm_argv, ssh_hosts, timed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

REMOTE_DIR = "hsm-bench-sources"  # relative to the login user's home on every host
ANCHOR = 3


@dataclass
class Starts:
    """Per TASKS run: seconds from the command's start to each source's first task."""

    firsts: list[list[float]] = field(default_factory=list)  # one sorted list per run

    def at(self, which: str) -> float:
        pick = {
            "first": lambda xs: xs[0],
            "median": statistics.median,
            "last": lambda xs: xs[-1],
        }[which]
        return statistics.median(pick(xs) for xs in self.firsts)

    def used(self) -> int:
        return int(statistics.median(len(xs) for xs in self.firsts))


async def prepare_remote(
    ssh_config: str, host: str, dirs: list[str], project: Path | None, clean: bool = False
) -> None:
    """Copy the project's files into each of `dirs` on the host (a user's copies, in sync),
    or remove REMOTE_DIR there when clean."""
    import asyncssh

    for wait in (1, 2, 4, 8, 16, 32, 0):  # another user's test may stop a host a while
        try:
            conn = await asyncssh.connect(host, config=[ssh_config])
            break
        except OSError:
            if not wait:
                raise
            await asyncio.sleep(wait)
    async with conn:
        if clean:
            await conn.run(shlex.join(["rm", "-rf", REMOTE_DIR]), check=True)
            return
        await conn.run(shlex.join(["mkdir", "-p", *dirs]), check=True)
        assert project is not None
        async with conn.start_sftp_client() as sftp:
            for d in dirs:
                for path in project.iterdir():
                    if path.is_file():
                        await sftp.put(str(path), f"{d}/{path.name}")


def check_sweep(sweep_dir: Path, n: int, began: float, sources: list[str]) -> list[float]:
    """Every task COMPLETED, every source started; seconds from `began` to each source's
    first RUNNING task, sorted."""
    db = sqlite3.connect(f"file:{sweep_dir / 'sweep.db'}?mode=ro", uri=True)
    try:
        latest = db.execute(
            "SELECT a.state FROM attempts a JOIN (SELECT key, MAX(attempt) m FROM attempts "
            "GROUP BY key) l ON a.key = l.key AND a.attempt = l.m"
        ).fetchall()
        firsts = db.execute(
            "SELECT source, MIN(time) FROM events WHERE state = 'RUNNING' GROUP BY source"
        ).fetchall()
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    finally:
        db.close()
    done = sum(1 for (state,) in latest if state == "COMPLETED")
    if done != n or len(latest) != n:
        raise SystemExit(f"benchmark aborted: {done}/{n} tasks COMPLETED in {sweep_dir}")
    missing = json.loads(meta.get("not_started") or "{}")
    if missing:
        # The sweep went on without them (another user's test may have stopped a host):
        # the round still counts, and the table says how many sources ran tasks.
        Console(stderr=True).print(f"[yellow]sources that never started: {missing}")
    used = {src for src, _ in firsts}
    if not used <= set(sources):
        raise SystemExit(f"benchmark aborted: tasks ran on {sorted(used - set(sources))}")
    return sorted(t - began for _, t in firsts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=50)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--python", default="/usr/bin/python3", help="interpreter on the hosts")
    parser.add_argument("--hsm", help='command that starts hsm (default: the installed "hsm")')
    parser.add_argument("--baseline", help="a second hsm command, timed on the MANY runs too")
    add_place_args(parser)
    args = parser.parse_args(argv)
    if args.dir is not None and not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: no such folder")
    if args.sources <= ANCHOR or args.tasks < 2 or args.rounds < 1 or args.slots < 1:
        parser.error(f"need --sources > {ANCHOR}, --tasks >= 2, --rounds >= 1, --slots >= 1")
    ssh_config, hosts = ssh_hosts(args.services_dir)
    if len(hosts) < ANCHOR:
        raise SystemExit(f"need {ANCHOR} ssh hosts in env.json")
    console = Console(stderr=True)
    hsm = {"": shlex.split(args.hsm) if args.hsm else hsm_argv()}
    if args.baseline:
        hsm["baseline"] = shlex.split(args.baseline)
    names = [f"s{i:02d}" for i in range(1, args.sources + 1)]
    where = {name: hosts[i % ANCHOR] for i, name in enumerate(names)}
    series = Series()
    starts: dict[str, Starts] = {"many": Starts(), "anchor": Starts(), "baseline": Starts()}
    try:
        with tempfile.TemporaryDirectory(prefix="hsm-bench-sources-", dir=args.dir) as tmp:
            run_rounds(args, Path(tmp), ssh_config, where, hsm, series, starts, console)
    finally:
        for host in hosts[:ANCHOR]:
            asyncio.run(prepare_remote(ssh_config, host, [], None, clean=True))
    report(series, starts, args)
    load = os.getloadavg()
    console.print(
        f"{args.rounds} rounds, medians; {os.cpu_count()} CPUs shared by the orchestrator, "
        f"the hosts' sshd and agents and all tasks; load {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}; Python {sys.version.split()[0]}"
    )
    return 0


def run_rounds(
    args: argparse.Namespace,
    tmp: Path,
    ssh_config: str,
    where: dict[str, str],
    hsm: dict[str, list[str]],
    series: Series,
    starts: dict[str, Starts],
    console: Console,
) -> None:
    project, outputs = tmp / "project", tmp / "out"
    project.mkdir()
    outputs.mkdir()
    names = list(where)
    sources = {
        name: {
            "type": "ssh",
            "host": host,
            "ssh_config": ssh_config,
            "project_dir": f"{REMOTE_DIR}/{name}",
            "python": args.python,
            "max_parallel": args.slots,
            "sync": "warn",
        }
        for name, host in where.items()
    }
    (project / "hsm.yaml").write_text(yaml.safe_dump({"sources": sources}))
    by_host: dict[str, list[str]] = {}
    for name, host in where.items():
        by_host.setdefault(host, []).append(f"{REMOTE_DIR}/{name}")
    for host, dirs in by_host.items():
        asyncio.run(prepare_remote(ssh_config, host, dirs, project))
    sweeps = {}
    for n in (args.tasks, 1):
        sweeps[n] = tmp / f"true_{n}.yaml"
        sweeps[n].write_text(
            yaml.safe_dump({"grid": {"i": list(range(n))}, "command": ["true", "{i}"]})
        )
    chosen = {"many": names, "anchor": names[:ANCHOR], "baseline": names}
    counter = iter(range(1_000_000))
    env = {"XDG_STATE_HOME": str(tmp / "state")}  # keep the user's sweep index clean

    def run(kind: str, n: int) -> Timing:
        out = outputs / f"s{next(counter)}"
        command = hsm["baseline" if kind == "baseline" else ""]
        argv = [*command, "run", "--config", str(sweeps[n]), "--sources", ",".join(chosen[kind])]
        began = time.time()
        timing = timed([*argv, "--output-dir", str(out), "--no-progress"], cwd=project, env=env)
        firsts = check_sweep(out, n, began, chosen[kind])
        if n == args.tasks:
            starts[kind].firsts.append(firsts)
        return timing

    kinds = ["many", "anchor", *(["baseline"] if "baseline" in hsm else [])]
    plan = [(kind, n) for kind in kinds for n in (args.tasks, 1)]
    progress = Progress(
        TextColumn("{task.description:<30}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        bar = progress.add_task("warming up", total=args.rounds * len(plan))
        for kind in kinds[::2]:  # untimed: bytecode caches, the hosts' page cache
            run(kind, 1)
        for r in range(args.rounds):
            shift = r % len(plan)
            for kind, n in plan[shift:] + plan[:shift]:
                progress.update(bar, description=f"round {r + 1}: {kind} x {n}")
                series.add(f"{kind}:{n}", run(kind, n))
                progress.advance(bar)


def report(series: Series, starts: dict[str, Starts], args: argparse.Namespace) -> None:
    n = args.tasks
    table = Table(
        title=f"{n} `true` tasks on {args.sources} ssh sources x {args.slots} slots (over 3 "
        f"loopback hosts) vs on {ANCHOR} sources; {args.rounds} rounds (medians)"
    )
    cols = ("sources", "slots", "wall s", "range s", "CPU s", "fixed s", "overhead/task ms",
            "first task s: first / median / last source", "sources used", "vs anchor")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    kinds = [k for k in ("many", "baseline", "anchor") if f"{k}:{n}" in series.runs]
    overhead = {}
    for kind in kinds:
        wall, fixed = series.wall(f"{kind}:{n}"), series.wall(f"{kind}:1")
        overhead[kind] = (wall - fixed) / (n - 1)
    for kind in kinds:
        count = ANCHOR if kind == "anchor" else args.sources
        st = starts[kind]
        table.add_row(
            f"{count}{' (baseline)' if kind == 'baseline' else ''}",
            str(count * args.slots),
            f"{series.wall(f'{kind}:{n}'):.1f}",
            series.spread(f"{kind}:{n}", 1),
            f"{series.cpu(f'{kind}:{n}'):.1f}",
            f"{series.wall(f'{kind}:1'):.1f}",
            f"{1000 * overhead[kind]:.1f}",
            f"{st.at('first'):.1f} / {st.at('median'):.1f} / {st.at('last'):.1f}",
            f"{st.used()}/{count}",
            f"{overhead[kind] / overhead['anchor']:.2f}x",
        )
    Console(width=max(150, shutil.get_terminal_size().columns)).print(table)


if __name__ == "__main__":
    sys.exit(main())
