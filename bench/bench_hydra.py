"""Benchmark: the hsm Hydra launcher (and sweeper) against Hydra's basic, joblib and
submitit_local launchers. Not a test.

In one run, alternating the launchers inside every round, it times a trivial Hydra app:

- `trivial`: N jobs (default 100) that do nothing but return a value;
- `sleep`: S jobs (default 20) that sleep 0.5 s each, on 2 slots.

Contenders: basic (basic launcher, sequential), joblib (n_jobs=2), submitit_local,
hsm+basic (the hsm launcher on local:2 under Hydra's basic sweeper), hsm (the hsm launcher
on local:2 with the hsm sweeper).

Definitions:
    wall          whole process, interpreter start to exit (median over rounds)
    launch        first launch() call to the last one's return, timed inside the app
    per job       (wall - ideal) / jobs, where ideal = jobs x work / 2 slots (0 if trivial)
    eff           ideal / wall (whole process); eff(launch) = ideal / launch
    X / hsm       how many times faster hsm is than X: the median of the per-round ratios

Before each run the benchmark waits (up to --quiet-wait s) for the rest of the machine to
use less than --quiet-load cores, and prints the load it saw: on a shared machine only
ratios from the same round mean much.

    python bench/bench_hydra.py [--rounds 3] [--jobs 100] [--sleep-jobs 20]
                                [--submitit-rounds 1] [--only hsm,joblib]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _timing import bench_environ
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

SLOTS = 2
WORK_S = 0.5

APP = """
import json, os, time
import hydra
from omegaconf import DictConfig

TIMES = os.environ.get("HSM_BENCH_TIMES")
if TIMES:  # time every launch() call, whatever the launcher
    from hydra.core.plugins import Plugins

    _orig = Plugins.instantiate_launcher

    def _timed(fn):
        def call(*a, **k):
            t0 = time.time()
            try:
                return fn(*a, **k)
            finally:
                with open(TIMES, "a") as f:
                    f.write(json.dumps([t0, time.time()]) + "\\n")
        return call

    def _instantiate(self, *a, **k):
        launcher = _orig(self, *a, **k)
        for name in ("launch", "launch_numbered"):
            if hasattr(launcher, name):
                setattr(launcher, name, _timed(getattr(launcher, name)))
        return launcher

    Plugins.instantiate_launcher = _instantiate


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    if cfg.sleep:
        time.sleep(cfg.sleep)
    return int(cfg.x) * 2


if __name__ == "__main__":
    main()
"""

CONTENDERS: dict[str, list[str]] = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={SLOTS}"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=30"],
    "hsm+basic": [
        "hydra/launcher=hsm",
        f"hydra.launcher.sources=local:{SLOTS}",
        "hydra.launcher.progress=false",
    ],
    "hsm": [
        "hydra/launcher=hsm",
        "hydra/sweeper=hsm",
        f"hydra.launcher.sources=local:{SLOTS}",
        "hydra.launcher.progress=false",
    ],
}


@dataclass
class Sample:
    wall: float
    launch: float | None
    cpu: float
    other_load: float


@dataclass
class Case:
    name: str
    jobs: int
    work: float
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    @property
    def ideal(self) -> float:
        return self.jobs * self.work / SLOTS


def cpu_busy() -> tuple[float, float]:
    with open("/proc/stat") as f:
        parts = [float(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def other_load(seconds: float = 0.5) -> float:
    """Cores busy over `seconds`, while this benchmark runs nothing."""
    b0, t0 = cpu_busy()
    time.sleep(seconds)
    b1, t1 = cpu_busy()
    ncpu = os.cpu_count() or 1
    return ncpu * (b1 - b0) / max(t1 - t0, 1e-9)


def wait_quiet(limit: float, max_wait: float) -> float:
    deadline = time.monotonic() + max_wait
    load = other_load()
    while load > limit and time.monotonic() < deadline:
        load = other_load(1.0)
    return load


def run_once(root: Path, case: Case, contender: str, load: float) -> Sample:
    sweep = Path(tempfile.mkdtemp(prefix=f"{contender}_", dir=root))
    times = sweep / "launch_times.jsonl"
    args = [
        sys.executable,
        str(root / "app.py"),
        "-m",
        f"x=range(0,{case.jobs})",
        f"sleep={case.work}",
        f"hydra.sweep.dir={sweep / 'out'}",
        *CONTENDERS[contender],
    ]
    env = bench_environ({"HSM_BENCH_TIMES": str(times)})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        args, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{contender} failed on {case.name}:\n{err[-3000:]}")
    done = sum(1 for p in (sweep / "out").iterdir() if p.is_dir() and p.name.isdigit())
    if done != case.jobs:
        raise SystemExit(f"{contender} left {done} job dirs of {case.jobs} on {case.name}")
    spans = [json.loads(line) for line in times.read_text().splitlines()] if times.exists() else []
    launch = (max(e for _, e in spans) - min(s for s, _ in spans)) if spans else None
    shutil.rmtree(sweep, ignore_errors=True)
    return Sample(wall, launch, cpu, load)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio(case: Case, other: str, ours: str = "hsm") -> float | None:
    a, b = case.samples.get(other, []), case.samples.get(ours, [])
    pairs = [x.wall / y.wall for x, y in zip(a, b, strict=False)]
    return median(pairs) if pairs else None


def report(con: Console, cases: list[Case]) -> None:
    for case in cases:
        table = Table(title=f"{case.name}: {case.jobs} jobs x {case.work:g} s on {SLOTS} slots")
        for col in ("launcher", "runs", "wall s", "range", "launch s", "CPU s", "per job ms"):
            table.add_column(col, justify="right" if col != "launcher" else "left")
        if case.work:
            table.add_column("eff", justify="right")
            table.add_column("eff(launch)", justify="right")
        table.add_column("X / hsm", justify="right")
        table.add_column("X / hsm+basic", justify="right")
        for name, samples in case.samples.items():
            walls = [s.wall for s in samples]
            launches = [s.launch for s in samples if s.launch is not None]
            wall = median(walls)
            row = [
                name,
                str(len(samples)),
                f"{wall:.2f}",
                f"{min(walls):.1f}-{max(walls):.1f}",
                f"{median(launches):.2f}" if launches else "-",
                f"{median([s.cpu for s in samples]):.1f}",
                f"{1000 * (wall - case.ideal) / case.jobs:.0f}",
            ]
            if case.work:
                row.append(f"{100 * case.ideal / wall:.0f}%")
                row.append(f"{100 * case.ideal / median(launches):.0f}%" if launches else "-")
            for ours in ("hsm", "hsm+basic"):
                r = ratio(case, name, ours)
                row.append(f"{r:.2f}x" if r is not None else "-")
            table.add_row(*row)
        con.print(table)
        loads = [s.other_load for ss in case.samples.values() for s in ss]
        con.print(
            f"other load before runs (cores): median {median(loads):.2f}, max {max(loads):.2f}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--sleep-jobs", type=int, default=20)
    ap.add_argument("--submitit-rounds", type=int, default=1, help="submitit_local is slow")
    ap.add_argument("--only", default="", help="comma-separated contenders (default: all)")
    ap.add_argument("--quiet-load", type=float, default=0.3)
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    ap.add_argument("--json", help="also write the raw samples here")
    args = ap.parse_args()
    chosen = [c for c in CONTENDERS if not args.only or c in args.only.split(",")]
    cases = [Case("trivial", args.jobs, 0.0), Case("sleep", args.sleep_jobs, WORK_S)]
    con = Console(stderr=True)
    root = Path(tempfile.mkdtemp(prefix="hsm_bench_hydra_"))
    (root / "conf").mkdir()
    (root / "conf" / "config.yaml").write_text("x: 0\nsleep: 0.0\n")
    (root / "app.py").write_text(APP)
    plan = []
    for rnd in range(args.rounds):
        order = chosen if rnd % 2 == 0 else list(reversed(chosen))
        for case in cases:
            for name in order:
                if name == "submitit_local" and rnd >= args.submitit_rounds:
                    continue
                plan.append((case, name))
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=con,
        ) as bar:
            task = bar.add_task("runs", total=len(plan))
            for case, name in plan:
                bar.update(task, description=f"{case.name}: {name}")
                load = wait_quiet(args.quiet_load, args.quiet_wait)
                sample = run_once(root, case, name, load)
                case.samples.setdefault(name, []).append(sample)
                bar.advance(task)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(Console(width=200), cases)
    if args.json:
        raw = {c.name: {n: [vars(s) for s in ss] for n, ss in c.samples.items()} for c in cases}
        Path(args.json).write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
