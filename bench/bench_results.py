"""Benchmark: `hsm results` and the report's Results section on big sweeps.

Not a test. Builds a finished synthetic sweep through SweepStore's own API: N tasks over
lr (4 values) x batch_size (5) x model (3 words) x seed, each COMPLETED with a
results/metrics.json (loss, accuracy, an echo of lr) and a stdout.log, then times, for N
rounds (whole processes, interpreter start included):

    hsm results SWEEP                        every row, as text
    hsm results SWEEP --sort loss --best 10
    hsm results SWEEP --json
    hsm report SWEEP                         both reports, the Results section included

and, as anchors measured in the same run on the same files: a plain Python loop that
json-loads every task's metrics.json (the least any reader of those files pays), and
`cat` of all of them. Prints medians, the ratio to the Python loop, and the size of the
HTML report.

    python bench/bench_results.py [--tasks 10000] [--rounds 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import bench_environ
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hsm_core.model import TaskEvent, TaskSpec, TaskState, task_key  # noqa: E402
from hsm_core.store import SweepStore  # noqa: E402

LRS = [1e-4, 1e-3, 1e-2, 1e-1]
BATCH = [32, 64, 128, 256, 512]
MODELS = ["linear", "mlp", "resnet"]


def build(sweep_dir: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        params = {
            "lr": LRS[i % 4],
            "batch_size": BATCH[(i // 4) % 5],
            "model": MODELS[(i // 20) % 3],
            "seed": i // 60,
        }
        specs.append(TaskSpec(key=task_key(params), num=i + 1, params=params, argv=("true",)))
    store = SweepStore.create(
        sweep_dir, sweep_id=sweep_dir.name, kind="command", config={"grid": {}}
    )
    store.add_tasks(specs)
    t = time.time() - n * 0.01
    events = []
    for spec in specs:
        events += [
            TaskEvent(spec.key, 1, TaskState.ASSIGNED, "local", time=t),
            TaskEvent(spec.key, 1, TaskState.RUNNING, "local", time=t + 0.001, handle="1"),
            TaskEvent(spec.key, 1, TaskState.COMPLETED, "local", time=t + 0.5, exit_code=0),
        ]
        t += 0.01
    store.apply_many(events)
    for spec in specs:
        p = spec.params
        loss = abs(rng.gauss(0.3 + 0.1 * LRS.index(p["lr"]), 0.05)) + p["batch_size"] / 5000
        tdir = store.task_dir(spec)
        (tdir / "results").mkdir(parents=True, exist_ok=True)
        doc = {"loss": loss, "accuracy": 1 - loss / 2, "lr": p["lr"], "history": [1, 2]}
        (tdir / "results" / "metrics.json").write_text(json.dumps(doc))
        (tdir / "stdout.log").write_text(f"epoch 1 loss={loss + 0.1}\nfinal loss={loss}\n")
    store.write_views()
    store.close()


def hsm(*args: str) -> list[str]:
    return [sys.executable, "-m", "hsm_core.cli.main", *args]


def timed(argv: list[str] | None, rounds: int, fn: object = None) -> float:
    times = []
    env = bench_environ({"COLUMNS": "120"})
    for _ in range(rounds):
        t0 = time.perf_counter()
        if argv is not None:
            res = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            if res.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} failed:\n{res.stderr.decode()}")
        else:
            fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def python_floor(sweep_dir: Path) -> None:
    """The anchor: list the task folders and json-load each metrics file, nothing else."""
    tasks = sweep_dir / "tasks"
    for name in os.listdir(tasks):
        with open(tasks / name / "results" / "metrics.json", "rb") as f:
            json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", type=Path, help="build the sweep here and keep it")
    args = ap.parse_args()
    con = Console()
    base = args.keep or Path(tempfile.mkdtemp(prefix="hsm-bench-results-"))
    sweep_dir = base / "bench_results"
    if not (sweep_dir / "sweep.db").exists():
        shutil.rmtree(sweep_dir, ignore_errors=True)
        t0 = time.perf_counter()
        build(sweep_dir, args.tasks)
        con.print(f"built {args.tasks} tasks in {time.perf_counter() - t0:.1f} s")
    cat = f"find {sweep_dir}/tasks -name metrics.json -print0 | xargs -0 cat > /dev/null"
    floor = timed(None, args.rounds, lambda: python_floor(sweep_dir))
    rows = [
        ("anchor: python loop, json.load of each metrics.json", floor),
        ("anchor: find | xargs cat", timed(["sh", "-c", cat], args.rounds)),
        ("hsm results SWEEP", timed(hsm("results", str(sweep_dir)), args.rounds)),
        (
            "hsm results SWEEP --sort loss --best 10",
            timed(hsm("results", str(sweep_dir), "--sort", "loss", "--best", "10"), args.rounds),
        ),
        ("hsm results SWEEP --json", timed(hsm("results", str(sweep_dir), "--json"), args.rounds)),
        ("hsm report SWEEP", timed(hsm("report", str(sweep_dir)), args.rounds)),
    ]
    table = Table(
        title=f"{args.tasks} tasks, median of {args.rounds} rounds (warm page cache)",
        title_justify="left",
    )
    for col in ("what", "seconds", "x python loop"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for what, secs in rows:
        table.add_row(what, f"{secs:.3f}", f"{secs / floor:.1f}")
    con.print(table)
    html = sweep_dir / "reports" / "error_analysis.html"
    con.print(f"report: {html} ({html.stat().st_size / 1e6:.2f} MB)")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
