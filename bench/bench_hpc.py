"""Benchmark: hsm on the one-node test Slurm against Hydra's submitit launcher.

Not a test. In one run, for N rounds in a rotating order, it runs TASKS trivial jobs of
the same small Hydra app (returns 2x; `-m x=range(TASKS)`) three ways, whole processes,
wall clock:

- `submitit`:   `hydra/launcher=submitit_slurm` (hydra-submitit-launcher), one job array
                with `array_parallelism=WIDTH`;
- `hsm hydra`:  `hydra/launcher=hsm` on a pool with one hpc source of WIDTH slots (the
                same Slurm, `%WIDTH` arrays);
- `hsm run`:    `hsm run` of TASKS script tasks (`<python> noop.py i=I`) on
                `hpc:cluster:WIDTH`.

Every scheduler command is counted by a logging shim put first on PATH for the run (the
real command runs; the shim writes one line). Both launchers submit from this machine,
with the same partition, time limit, CPUs and array parallelism.

Columns:
    wall s          median wall time for TASKS jobs (start of the process to its end)
    range s         fastest and slowest round
    sbatch          median number of sbatch calls per run
    sacct / squeue  median number of status calls per run
    other           scancel, sinfo, scontrol
    X / submitit    ratio of X's wall time and scheduler calls to submitit's

Goals (issue 5): no more scheduler calls than submitit's launcher, wall time no worse.

    python bench/bench_hpc.py [--rounds 3] [--tasks 200] [--width 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from _timing import bench_environ
from rich.console import Console
from rich.table import Table

TOOLS = ("submitit", "hsm hydra", "hsm run")
SCHEDULER_COMMANDS = ("sbatch", "sacct", "squeue", "scancel", "sinfo", "scontrol")
TIME_MIN = 10

APP = """\
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    return int(cfg.x) * 2


if __name__ == "__main__":
    main()
"""
NOOP = "import sys\nsys.argv[1:]\n"


@dataclass
class Run:
    wall: float
    cpu: float
    calls: Counter[str]


@dataclass
class Series:
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def add(self, name: str, run: Run) -> None:
        self.runs.setdefault(name, []).append(run)

    def wall(self, name: str) -> float:
        return statistics.median(r.wall for r in self.runs[name])

    def calls(self, name: str, *cmds: str) -> float:
        return statistics.median(sum(r.calls[c] for c in cmds) for r in self.runs[name])

    def spread(self, name: str) -> str:
        walls = [r.wall for r in self.runs[name]]
        return f"{min(walls):.1f}-{max(walls):.1f}"


def make_shims(shim_dir: Path, log: Path) -> None:
    shim_dir.mkdir()
    for name in SCHEDULER_COMMANDS:
        real = shutil.which(name)
        if real is None:
            raise SystemExit(f"`{name}` is not on PATH: is this a Slurm login node?")
        shim = shim_dir / name
        shim.write_text(
            "#!/bin/sh\n"
            f'printf "%s\\n" "{name}" >> {shlex.quote(str(log))}\n'
            f'exec {shlex.quote(real)} "$@"\n'
        )
        shim.chmod(0o755)


def timed(argv: list[str], *, cwd: Path, shims: Path, log: Path) -> Run:
    log.write_text("")
    env = bench_environ({"PATH": f"{shims}{os.pathsep}{os.environ['PATH']}"})
    env["XDG_STATE_HOME"] = str(cwd / ".state")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        logs = sorted(cwd.glob("sweeps/outputs/*/logs/sweep_aggregated.log"))
        bad = [
            ln for p in logs for ln in p.read_text().splitlines() if "FAILED" in ln or "LOST" in ln
        ]
        raise SystemExit(
            f"benchmark aborted: `{shlex.join(argv)}` exited {proc.returncode}:\n"
            f"{proc.stderr.strip()[-2000:]}\n" + "\n".join(bad[-10:])
        )
    calls = Counter(line.strip() for line in log.read_text().splitlines() if line.strip())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(wall, cpu, calls)


def setup_project(root: Path, args: argparse.Namespace) -> None:
    (root / "conf" / "hydra" / "launcher" / "pool").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "noop.py").write_text(NOOP)
    (root / "conf" / "config.yaml").write_text("x: 0\n")
    cluster = {
        "type": "hpc",
        "max_parallel": args.width,
        "time": TIME_MIN,
        "cpus_per_task": 1,
    }
    if args.partition:
        cluster["partition"] = args.partition
    if args.max_queued:
        cluster["max_queued"] = args.max_queued
    (root / "conf" / "hydra" / "launcher" / "pool" / "slurm.yaml").write_text(
        json.dumps({"sources": {"cluster": cluster}})
    )
    (root / "hsm.yaml").write_text(json.dumps({"sources": {"cluster": cluster}}))
    grid: dict[str, object] = {"grid": {"i": list(range(args.tasks))}, "script": "noop.py"}
    if args.command:
        grid = {"grid": {"i": list(range(args.tasks))}, "command": ["true", "{i}"]}
    (root / "sweep.yaml").write_text(json.dumps(grid))


def commands(root: Path, args: argparse.Namespace, round_no: int) -> dict[str, list[str]]:
    py = sys.executable
    sweep = f"x=range({args.tasks})"
    out_dir = f"hydra.sweep.dir={root}/multirun/{{tool}}_{round_no}"
    part = [f"hydra.launcher.partition={args.partition}"] if args.partition else []
    return {
        "submitit": [
            py,
            "app.py",
            "-m",
            sweep,
            "hydra/launcher=submitit_slurm",
            f"hydra.launcher.array_parallelism={args.width}",
            f"hydra.launcher.timeout_min={TIME_MIN}",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.tasks_per_node=1",
            f"hydra.launcher.submitit_folder={root}/submitit_{round_no}",
            *part,
            out_dir.format(tool="submitit"),
        ],
        "hsm hydra": [
            py,
            "app.py",
            "-m",
            sweep,
            "hydra/launcher=hsm",
            "hydra/launcher/pool=slurm",
            "hydra.launcher.progress=false",
            out_dir.format(tool="hsm"),
        ],
        "hsm run": [
            *hsm_argv(),
            "run",
            "-c",
            "sweep.yaml",
            "-s",
            f"hpc:cluster:{args.width}",
            "--sweep-id",
            f"bench_{round_no}",
            "--no-progress",
        ],
    }


def hsm_argv() -> list[str]:
    """The `hsm` console script beside this interpreter, else the module."""
    script = Path(sys.executable).parent / "hsm"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "hsm_core.cli.main"]


def check(root: Path, tool: str, round_no: int, tasks: int) -> None:
    """Every job ran: Hydra's per-job dirs (both launchers) or hsm's COMPLETED count."""
    if tool == "hsm run":
        store = root / "sweeps" / "outputs" / f"bench_{round_no}" / "tasks"
        done = sum(1 for p in store.glob("*/status.yaml") if "state: COMPLETED" in p.read_text())
    else:
        name = "submitit" if tool == "submitit" else "hsm"
        sweep = root / "multirun" / f"{name}_{round_no}"
        done = sum(1 for i in range(tasks) if (sweep / str(i) / ".hydra").is_dir())
    if done != tasks:
        raise SystemExit(f"benchmark aborted: {tool} round {round_no}: {done}/{tasks} jobs ran")
    if tool == "hsm run":
        # How the sweep was cut into arrays: the job ids hsm journaled (ARRAY_TASK).
        ledger = store.parent / "scripts" / "cluster" / "jobs.jsonl"
        arrays = Counter(
            json.loads(line)["job"].split("_")[0] for line in ledger.read_text().splitlines()
        )
        sizes = sorted(arrays.values(), reverse=True)
        print(
            f"hsm run: {len(arrays)} arrays, largest {sizes[0]}, smallest {sizes[-1]}",
            file=sys.stderr,
        )


def report(series: Series, args: argparse.Namespace) -> None:
    table = Table(
        title=f"{args.tasks} trivial jobs on the one-node Slurm, array parallelism {args.width}"
    )
    for col in (
        "tool",
        "wall s",
        "range s",
        "sbatch",
        "sacct/squeue",
        "other",
        "wall/submitit",
        "calls/submitit",
    ):
        table.add_column(col, justify="right" if col != "tool" else "left")
    has_base = "submitit" in series.runs
    base_wall = series.wall("submitit") if has_base else 0.0
    base_calls = series.calls("submitit", *SCHEDULER_COMMANDS) if has_base else 0.0
    for tool in TOOLS:
        if tool not in series.runs:
            continue
        calls = series.calls(tool, *SCHEDULER_COMMANDS)
        table.add_row(
            tool,
            f"{series.wall(tool):.1f}",
            series.spread(tool),
            f"{series.calls(tool, 'sbatch'):g}",
            f"{series.calls(tool, 'sacct', 'squeue'):g}",
            f"{series.calls(tool, 'scancel', 'sinfo', 'scontrol'):g}",
            f"{series.wall(tool) / base_wall:.2f}" if base_wall else "-",
            f"{calls / base_calls:.2f}" if base_calls else "-",
        )
    Console(width=130).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--width", type=int, default=16, help="array parallelism / slots")
    parser.add_argument("--partition", default=None, help="default: the cluster's default")
    parser.add_argument("--only", choices=TOOLS, action="append", help="run only these")
    parser.add_argument(
        "--command",
        action="store_true",
        help="`hsm run` runs `true` instead of a Python script: hsm's own cost at scale "
        "(e.g. --only 'hsm run' --tasks 5000)",
    )
    parser.add_argument(
        "--max-queued",
        type=int,
        default=None,
        help="the source's max_queued (default: its own, 1000): below the sweep's size, the "
        "tasks after the first max_queued are refills (sbatch calls per refill)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the temporary project goes (default: the system temp dir); on a real "
        "cluster, a folder the compute nodes share",
    )
    args = parser.parse_args(argv)
    if args.tasks < 2 or args.rounds < 1 or args.width < 1:
        parser.error("need --tasks >= 2, --rounds >= 1 and --width >= 1")
    console = Console(stderr=True)
    series = Series()
    tools = [t for t in TOOLS if not args.only or t in args.only]
    with tempfile.TemporaryDirectory(prefix="hsm-bench-hpc-", dir=args.workdir) as tmp:
        root = Path(tmp)
        shims, log = root / "shims", root / "calls.log"
        make_shims(shims, log)
        setup_project(root, args)
        for round_no in range(args.rounds):
            order = tools[round_no % len(tools) :] + tools[: round_no % len(tools)]
            argvs = commands(root, args, round_no)
            for tool in order:
                run = timed(argvs[tool], cwd=root, shims=shims, log=log)
                check(root, tool, round_no, args.tasks)
                series.add(tool, run)
                console.print(
                    f"round {round_no + 1}/{args.rounds} {tool:>9}: {run.wall:6.1f} s, "
                    f"calls {dict(sorted(run.calls.items()))}"
                )
    report(series, args)
    load = os.getloadavg()
    console.print(
        f"{args.rounds} rounds, medians; {os.cpu_count()} CPUs shared by Slurm, the launcher "
        f"and all jobs; load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"Python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
