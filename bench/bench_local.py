"""Benchmark: hsm's per-task overhead on local processes, against xargs and GNU parallel.

Not a test. In one run it times, alternating and for N rounds:

- `hsm run` on a sweep of TASKS no-op command tasks (`true`) on `local:WIDTH`, the whole
  process, full sweep folder written (checked after every run);
- `xargs -P WIDTH` and GNU parallel `-j WIDTH` running the same TASKS `true` processes;
- each of the three on a 1-task input, which measures what a run costs before and after its
  tasks (interpreter start, imports, set-up, tear-down);

then `hsm run --dry-run` on a grid of DRY_TASKS tasks. It prints medians in a table.

Definitions (all times are whole-process wall clock):
    wall           median wall time for TASKS tasks
    wall/task      wall / TASKS
    floor          median wall time for 1 task: the tool's fixed cost
    overhead/task  (wall - floor) / (TASKS - 1): what each further task costs, all tasks
                   being `true`, which does nothing, so this is the tool's own cost per task
    hsm / X        ratio of hsm's number to X's, for wall and for overhead/task

    python bench/bench_local.py [--rounds 5] [--tasks 200] [--width 2] [--dry-tasks 10000]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from _timing import Series, Timing, file_create_us, parallel_env, timed
from _timing import hsm_argv as default_hsm_argv
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

TOOLS = ("hsm", "xargs", "parallel")


def hsm_argv(given: str | None) -> list[str]:
    """How to start hsm: --hsm if given, else the `hsm` console script installed beside this
    interpreter (what a user runs; not a PATH lookup, which may find a wrapper such as a
    version-manager shim that adds its own start-up time), else the same entry point as a
    module of this interpreter."""
    return shlex.split(given) if given else default_hsm_argv()


def write_sweep(path: Path, grid: dict[str, list[int]]) -> Path:
    """A command sweep running `true <value>...` per point: the same argv as xargs -n 1."""
    command = ["true", *(f"{{{name}}}" for name in grid)]
    doc = {"grid": grid, "command": command, "metadata": {"description": "hsm benchmark"}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def check_sweep_folder(outputs: Path, before: set[Path], n_tasks: int) -> None:
    """The run must have left a complete sweep folder: one more sweep, every task in it
    COMPLETED according to its status.yaml."""
    sweeps = set(outputs.iterdir()) - before
    if len(sweeps) != 1:
        raise SystemExit(f"benchmark aborted: expected one new sweep folder, found {sweeps}")
    [sweep] = sweeps
    statuses = sorted((sweep / "tasks").glob("task_*/status.yaml"))
    states = [yaml.safe_load(p.read_text()).get("state") for p in statuses]
    if len(states) != n_tasks or any(s != "COMPLETED" for s in states):
        raise SystemExit(
            f"benchmark aborted: {sweep} has {len(states)} task status files, "
            f"{sum(s == 'COMPLETED' for s in states)} COMPLETED; expected {n_tasks}"
        )
    for name in ("sweep_config.yaml", "sweep_metadata.yaml", "task_mapping.yaml"):
        if not (sweep / name).is_file():
            raise SystemExit(f"benchmark aborted: {sweep / name} is missing")
    # Not deleted until all rounds are done: on ext4, deleting thousands of files makes
    # the next run's file creation slower for a while (the allocator skips recently
    # freed inodes), which would charge the benchmark's own cleanup to the next tool.


class Bench:
    """The inputs (in a temp project dir) and one runner per tool."""

    def __init__(self, project: Path, hsm: list[str], tasks: int, width: int) -> None:
        self.project = project
        self.hsm = hsm
        self.width = str(width)
        self.outputs = project / "sweeps" / "outputs"
        self.outputs.mkdir(parents=True)
        # hsm lists every sweep in a per-user index: keep the benchmark's out of the user's
        self.hsm_env = {"XDG_STATE_HOME": str(project / "state")}
        self.inputs: dict[int, tuple[Path, str]] = {}
        for n in (tasks, 1):
            sweep = write_sweep(project / f"noop_{n}.yaml", {"i": list(range(n))})
            self.inputs[n] = (sweep, "".join(f"{i}\n" for i in range(n)))

    def run(self, tool: str, n: int) -> Timing:
        sweep_file, lines = self.inputs[n]
        if tool == "hsm":
            before = set(self.outputs.iterdir())
            argv = [
                *self.hsm,
                "run",
                "--config",
                str(sweep_file),
                "--sources",
                f"local:{self.width}",
            ]
            timing = timed(argv, cwd=self.project, env=self.hsm_env)
            check_sweep_folder(self.outputs, before, n)
            return timing
        if tool == "xargs":
            return timed(
                ["xargs", "-P", self.width, "-n", "1", "true"], cwd=self.project, stdin=lines
            )
        argv = ["parallel", "--will-cite", "-j", self.width, "true"]
        return timed(argv, cwd=self.project, stdin=lines, env=parallel_env())

    def dry_run(self, sweep_file: Path) -> Timing:
        argv = [*self.hsm, "run", "--config", str(sweep_file), "--sources", "local:2", "--dry-run"]
        return timed(argv, cwd=self.project, env=self.hsm_env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="hsm run vs xargs -P and GNU parallel -j on no-op tasks; see the module doc."
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--tasks", type=int, default=200, help="no-op tasks (default 200)")
    parser.add_argument("--width", type=int, default=2, help="tasks at a time (default 2)")
    parser.add_argument(
        "--dry-tasks", type=int, default=10_000, help="grid size for the dry run (0: skip it)"
    )
    parser.add_argument("--hsm", help='command that starts hsm (default: the installed "hsm")')
    parser.add_argument(
        "--dir",
        type=Path,
        help="where the sweeps are written (default: the system temp dir); see the file "
        "creation line under the table",
    )
    args = parser.parse_args(argv)
    if args.dir is not None and not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: no such folder")
    if args.tasks < 2 or args.rounds < 1 or args.width < 1 or args.dry_tasks < 0:
        parser.error("need --tasks >= 2, --rounds >= 1, --width >= 1, --dry-tasks >= 0")
    for tool in ("xargs", "parallel"):
        if shutil.which(tool) is None:
            parser.error(f"`{tool}` is not on PATH (GNU parallel: the Debian package `parallel`)")

    out = Console(width=None if sys.stdout.isatty() else 120)  # a pipe: do not cut the table
    series = Series()
    hsm = hsm_argv(args.hsm)
    with tempfile.TemporaryDirectory(prefix="hsm-bench-", dir=args.dir) as tmp:
        bench = Bench(Path(tmp), hsm, args.tasks, args.width)
        create_before = file_create_us(bench.outputs)
        dry_sweep, dry_n = None, 0
        if args.dry_tasks:
            # a two-key grid (cartesian expansion) of exactly --dry-tasks points
            side = max(d for d in range(1, int(args.dry_tasks**0.5) + 1) if args.dry_tasks % d == 0)
            grid = {"a": list(range(side)), "b": list(range(args.dry_tasks // side))}
            dry_n = args.dry_tasks
            dry_sweep = write_sweep(Path(tmp) / "dry.yaml", grid)

        steps = args.rounds * (len(TOOLS) * 2 + (1 if dry_sweep else 0))
        progress = Progress(
            TextColumn("{task.description:<30}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        with progress:
            bar = progress.add_task("warm-up", total=steps)
            for tool in TOOLS:  # untimed: file caches, bytecode, Perl modules
                bench.run(tool, 1)
            for r in range(args.rounds):
                # rotate the order so that no tool always runs first, or always right after
                # the heaviest one, on a machine shared with other work
                order = TOOLS[r % len(TOOLS) :] + TOOLS[: r % len(TOOLS)]
                for tool in order:
                    for n in (args.tasks, 1):
                        progress.update(bar, description=f"round {r + 1}: {tool} x {n}")
                        series.add(f"{tool}:{n}", bench.run(tool, n))
                        progress.advance(bar)
                if dry_sweep is not None:
                    progress.update(bar, description=f"round {r + 1}: hsm --dry-run x {dry_n}")
                    series.add("dry", bench.dry_run(dry_sweep))
                    progress.advance(bar)
        create_after = file_create_us(bench.outputs)

    out.print(result_table(series, args))
    if dry_sweep is not None:
        out.print(
            f"hsm run --dry-run on a {dry_n}-task grid: median {series.wall('dry'):.3f} s wall "
            f"(range {series.spread('dry')} s), {series.cpu('dry'):.2f} s CPU"
        )
    out.print(
        f"a folder and a file where the sweeps go: median {create_before:.0f} us before the "
        f"rounds, {create_after:.0f} us after (about 20 us on a quiet disk here; hsm makes "
        "about 8 files and folders per task, the others none, so a slow moment, such as "
        "minutes after a bulk delete, weighs on hsm's numbers alone)"
    )
    load = os.getloadavg()
    out.print(
        f"hsm: {shlex.join(hsm)}; {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end; Python {sys.version.split()[0]}"
    )
    return 0


def result_table(series: Series, args: argparse.Namespace) -> Table:
    n = args.tasks
    table = Table(
        title=f"{n} no-op tasks (`true`), {args.width} at a time: medians of {args.rounds} rounds",
        caption="floor: the same tool on 1 task; overhead/task: (wall - floor) / (tasks - 1)",
    )
    columns = ("tool", "wall s", "range s", "CPU s", "wall/task ms", "floor s",
               "overhead/task ms", "hsm/X wall", "hsm/X overhead")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "tool" else "right")

    def overhead(tool: str) -> float:
        return (series.wall(f"{tool}:{n}") - series.wall(f"{tool}:1")) / (n - 1)

    hsm_wall, hsm_over = series.wall(f"hsm:{n}"), overhead("hsm")
    for tool in TOOLS:
        wall, over = series.wall(f"{tool}:{n}"), overhead(tool)
        table.add_row(
            tool,
            f"{wall:.3f}",
            series.spread(f"{tool}:{n}"),
            f"{series.cpu(f'{tool}:{n}'):.2f}",
            f"{1000 * wall / n:.2f}",
            f"{series.wall(f'{tool}:1'):.3f}",
            f"{1000 * over:.2f}",
            "" if tool == "hsm" else f"{hsm_wall / wall:.2f}x",
            "" if tool == "hsm" else (f"{hsm_over / over:.2f}x" if over > 0 else "n/a"),
        )
    return table


if __name__ == "__main__":
    sys.exit(main())
