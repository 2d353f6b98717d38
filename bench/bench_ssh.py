"""Benchmark: hsm over two ssh hosts against GNU parallel `-S` and a local xargs floor.

Not a test. In one run it times, alternating and for N rounds (whole processes, wall
clock, medians):

- `hsm run` of TASKS no-op tasks (`python3 noop.py x=I`) on two ssh hosts x 2 slots,
  every task's folder collected back into the local sweep folder (checked after each run);
- GNU parallel `-S 2/h1,2/h2` running the same commands over ssh on the same hosts;
- the floor: `xargs -P 4` running the same commands locally, no ssh at all;
- hsm and parallel on a 1-task input too: their fixed cost (start, connect, tear-down).

The hosts are the project's loopback test sshd servers (`scripts/services/sshd.sh start`,
described in $HSM_SERVICES_DIR/sshd/env.json); `--python` is the interpreter used by
all three (default /usr/bin/python3: a version-manager shim would add its own start-up
to every task and hide the dispatch cost).

Columns:
    wall            median wall time for TASKS tasks
    all-in/task     wall / TASKS
    fixed           median wall time for 1 task
    overhead/task   (wall - fixed) / (TASKS - 1): what each further task costs
    vs floor        wall / floor wall (goal for hsm: <= 2x)
    parallel / X    GNU parallel's wall / X's wall (how much faster X is)

    python bench/bench_ssh.py [--rounds 3] [--tasks 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml
from _timing import (
    Series,
    Timing,
    add_place_args,
    file_create_us,
    hsm_argv,
    parallel_env,
    ssh_hosts,
    timed,
)
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

REMOTE_DIR = "hsm-bench-ssh"  # relative to the login user's home on every host
NOOP = "import sys\nsys.argv[1:]\n"
TOOLS = ("hsm", "parallel", "floor")


async def prepare_remote(
    ssh_config: str, host: str, project: Path | None = None, clean: bool = False
) -> None:
    """Copy the project's files to ~/hsm-bench-ssh on the host, so that hsm's sync check
    finds it in sync (as a user's copy would be); or remove that dir when clean."""
    import asyncssh

    async with asyncssh.connect(host, config=[ssh_config]) as conn:
        if clean:
            await conn.run(shlex.join(["rm", "-rf", REMOTE_DIR]), check=True)
            return
        await conn.run(shlex.join(["mkdir", "-p", REMOTE_DIR]), check=True)
        assert project is not None
        async with conn.start_sftp_client() as sftp:
            for path in project.iterdir():
                await sftp.put(str(path), f"{REMOTE_DIR}/{path.name}")


def check_collected(sweep_dir: Path, n: int) -> None:
    """Every task COMPLETED and its folder here: stdout.log."""
    bad = []
    for i in range(1, n + 1):
        tdir = sweep_dir / "tasks" / f"task_{i:03d}"
        try:
            state = yaml.safe_load((tdir / "status.yaml").read_text()).get("state")
            ok = state == "COMPLETED" and (tdir / "stdout.log").is_file()
        except (OSError, ValueError, KeyError, AttributeError):
            ok = False
        if not ok:
            bad.append(tdir.name)
    if bad:
        raise SystemExit(f"benchmark aborted: {len(bad)} task folders incomplete: {bad[:5]}")
    # Kept until the end (the temp dir goes then): deleting thousands of files slows the
    # next run's file creation on ext4 for a while, measured at +0.6 s of system time here.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--python", default="/usr/bin/python3", help="interpreter of the tasks")
    add_place_args(parser)
    args = parser.parse_args(argv)
    if args.dir is not None and not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: no such folder")
    if args.tasks < 2 or args.rounds < 1:
        parser.error("need --tasks >= 2 and --rounds >= 1")
    for tool in ("xargs", "parallel", "ssh"):
        if shutil.which(tool) is None:
            parser.error(f"`{tool}` is not on PATH")
    ssh_config, all_hosts = ssh_hosts(args.services_dir)
    hosts = all_hosts[:2]
    if len(hosts) < 2:
        raise SystemExit("need two ssh hosts in env.json")
    console = Console(stderr=True)
    series = Series()
    hsm = hsm_argv()
    try:
        with tempfile.TemporaryDirectory(prefix="hsm-bench-ssh-", dir=args.dir) as tmp:
            create_us = file_create_us(Path(tmp))
            run_rounds(args, Path(tmp), hosts, ssh_config, hsm, series, console)
    finally:
        for host in hosts:
            asyncio.run(prepare_remote(ssh_config, host, clean=True))
    report(series, args, hosts)
    console.print(
        f"a folder and a file where the local sweeps go: median {create_us:.0f} us before "
        "the rounds (about 20 us on a quiet disk here; hsm writes each task's folder, the "
        "others nothing)"
    )
    load = os.getloadavg()
    console.print(
        f"{args.rounds} rounds, medians; {os.cpu_count()} CPUs shared by the orchestrator, "
        f"both hosts and all tasks; load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"Python {sys.version.split()[0]}"
    )
    return 0


def run_rounds(
    args: argparse.Namespace,
    tmp: Path,
    hosts: list[str],
    ssh_config: str,
    hsm: list[str],
    series: Series,
    console: Console,
) -> None:
    # The project holds what the tasks need; sweep files and outputs live beside it.
    project, sweeps, outputs = tmp / "project", tmp / "sweeps", tmp / "out"
    for d in (project, sweeps, outputs):
        d.mkdir()
    (project / "noop.py").write_text(NOOP)
    sources = {
        h: {
            "type": "ssh",
            "host": h,
            "ssh_config": ssh_config,
            "project_dir": REMOTE_DIR,
            "python": args.python,
            "max_parallel": 2,
            "sync": "warn",
        }
        for h in hosts
    }
    (project / "hsm.yaml").write_text(yaml.safe_dump({"sources": sources}))
    for host in hosts:
        asyncio.run(prepare_remote(ssh_config, host, project))
    inputs: dict[int, tuple[Path, str]] = {}
    for n in (args.tasks, 1):
        sweep = sweeps / f"noop_{n}.yaml"
        doc = {"grid": {"x": list(range(n))}, "command": [args.python, "noop.py", "x={x}"]}
        sweep.write_text(yaml.safe_dump(doc))
        inputs[n] = (sweep, "".join(f"{i}\n" for i in range(n)))
    counter = iter(range(1_000_000))

    def run_hsm(n: int) -> Timing:
        out = outputs / f"s{next(counter)}"
        argv = [*hsm, "run", "--config", str(inputs[n][0]), "--sources", ",".join(hosts)]
        timing = timed([*argv, "--output-dir", str(out), "--no-progress"], cwd=project)
        check_collected(out, n)
        return timing

    def run_parallel(n: int) -> Timing:
        remote = f"cd {REMOTE_DIR} && {shlex.quote(args.python)} noop.py x={{}}"
        argv = [
            "parallel", "--will-cite", "--ssh", f"ssh -F {shlex.quote(ssh_config)}",
            "-S", ",".join(f"2/{h}" for h in hosts), remote,
        ]  # fmt: skip
        return timed(argv, cwd=project, stdin=inputs[n][1], env=parallel_env())

    def run_floor(n: int) -> Timing:
        argv = ["xargs", "-P", "4", "-I{}", args.python, "noop.py", "x={}"]
        return timed(argv, cwd=project, stdin=inputs[n][1])

    runners: dict[str, Callable[[int], Timing]] = {
        "hsm": run_hsm,
        "parallel": run_parallel,
        "floor": run_floor,
    }
    sizes = {"hsm": (args.tasks, 1), "parallel": (args.tasks, 1), "floor": (args.tasks,)}
    plan = [(tool, n) for tool in TOOLS for n in sizes[tool]]
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
        for tool in TOOLS:  # untimed: caches, bytecode, perl modules, known hosts
            runners[tool](1)
        for r in range(args.rounds):
            shift = r % len(plan)  # rotate so that no tool always runs first
            for tool, n in plan[shift:] + plan[:shift]:
                progress.update(bar, description=f"round {r + 1}: {tool} x {n}")
                series.add(f"{tool}:{n}", runners[tool](n))
                progress.advance(bar)


def report(series: Series, args: argparse.Namespace, hosts: list[str]) -> None:
    n = args.tasks
    table = Table(
        title=f"{n} no-op tasks (`{args.python} noop.py x=I`) over {' + '.join(hosts)} x 2 "
        f"slots; floor: xargs -P4 locally; {args.rounds} rounds (medians)"
    )
    cols = ("tool", "wall s", "range s", "CPU s", "all-in/task ms", "fixed s",
            "overhead/task ms", "vs floor", "parallel / X")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "tool" else "right")
    floor = series.wall(f"floor:{n}")
    par = series.wall(f"parallel:{n}")
    for tool in TOOLS:
        wall = series.wall(f"{tool}:{n}")
        fixed = series.wall(f"{tool}:1") if f"{tool}:1" in series.runs else None
        over = (wall - fixed) / (n - 1) if fixed is not None else None
        table.add_row(
            {"floor": "xargs -P4 (local)", "parallel": "GNU parallel -S"}.get(tool, tool),
            f"{wall:.2f}",
            series.spread(f"{tool}:{n}", 2),
            f"{series.cpu(f'{tool}:{n}'):.2f}",
            f"{1000 * wall / n:.1f}",
            f"{fixed:.2f}" if fixed is not None else "",
            f"{1000 * over:.1f}" if over is not None else "",
            f"{wall / floor:.2f}x",
            f"{par / wall:.1f}x",
        )
    Console(width=max(130, shutil.get_terminal_size().columns)).print(table)


if __name__ == "__main__":
    sys.exit(main())
