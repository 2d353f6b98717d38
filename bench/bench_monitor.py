"""Benchmark: how fast `hsm status`, `hsm monitor watch --once` and the reports answer on a
sweep of 10,000 tasks.

Not a test. It builds a synthetic sweep through SweepStore's own API (tasks, attempts and
every transition with realistic times over three sources, 44 slots, a few hundred failures
with tracebacks on disk, LOST attempts re-run elsewhere, tasks still queued and running),
then times, for N rounds, whole processes (interpreter start included) of:

    hsm status SWEEP                  goal < 0.5 s
    hsm monitor watch SWEEP --once    goal < 0.5 s
    hsm report SWEEP                  goal < 5 s (both reports written)

and, in this process, the report builder alone (no interpreter start). Prints medians.

    python bench/bench_monitor.py [--tasks 10000] [--rounds 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import heapq
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

SOURCES = {"local": 4, "server1": 8, "cluster": 32}
QUEUE_WAIT_S = {"local": (0.01, 0.05), "server1": (0.2, 1.0), "cluster": (5.0, 60.0)}
SPEED = {"local": 1.0, "server1": 0.8, "cluster": 1.3}  # duration multiplier

OOM_TRACE = """\
Traceback (most recent call last):
  File "train.py", line 88, in <module>
    main()
  File "train.py", line 61, in main
    batch = make_batch(cfg.batch_size)
  File "train.py", line 30, in make_batch
    return [0.0] * (size * 10**9)
MemoryError
"""
VALUE_TRACE = """\
Traceback (most recent call last):
  File "train.py", line 88, in <module>
    main()
  File "train.py", line 70, in main
    check(loss)
  File "train.py", line 12, in check
    raise ValueError(f"loss is nan at step {step}")
ValueError: loss is nan at step 1234
"""


def build_store(sweep_dir: Path, n: int, seed: int = 0) -> SweepStore:
    """A sweep of `n` tasks caught mid-run: ~94 % settled, some running, some queued."""
    rng = random.Random(seed)
    lrs, bss = [1e-4, 1e-3, 1e-2, 1e-1], [32, 64, 128, 256, 512]
    specs = []
    for i in range(n):
        params = {"lr": lrs[i % 4], "batch_size": bss[(i // 4) % 5], "seed": i // 20}
        specs.append(
            TaskSpec(
                key=task_key(params),
                num=i + 1,
                params=params,
                argv=("python", "train.py", *(f"{k}={v}" for k, v in params.items())),
            )
        )
    store = SweepStore.create(
        sweep_dir, sweep_id=sweep_dir.name, kind="command", config={"grid": {}}
    )
    store.add_tasks(specs)
    store.set_meta(
        "sources",
        [{"name": s, "type": "local", "max_parallel": k} for s, k in SOURCES.items()],
    )

    # Simulate the schedule: each task goes to the source whose next slot frees first.
    slots = [(0.0, name, j) for name, k in SOURCES.items() for j in range(k)]
    heapq.heapify(slots)
    plan = []  # (key, attempt, source, assigned, started, ended, final state, stderr)
    for spec in specs:
        p = spec.params
        attempt = 1
        while True:
            free, src, j = heapq.heappop(slots)
            lo, hi = QUEUE_WAIT_S[src]
            started = free + rng.uniform(lo, hi)
            dur = rng.lognormvariate(3.0, 0.5) * SPEED[src]
            stderr = ""
            if p["batch_size"] == 512 and p["lr"] == 1e-1:
                state, dur, stderr = TaskState.FAILED, dur * 0.1, OOM_TRACE
            elif rng.random() < 0.01:
                state, stderr = TaskState.FAILED, VALUE_TRACE
            elif src == "server1" and attempt == 1 and rng.random() < 0.01:
                state = TaskState.LOST
            else:
                state = TaskState.COMPLETED
            ended = started + dur
            plan.append((spec, attempt, src, free, started, ended, state, stderr))
            heapq.heappush(slots, (ended, src, j))
            if state is not TaskState.LOST:
                break
            attempt += 1

    # Freeze the picture at the moment 94 % of attempts were assigned; shift to now.
    cut = sorted(x[3] for x in plan)[int(len(plan) * 0.94)]
    shift = time.time() - cut
    events: list[TaskEvent] = []
    for spec, attempt, src, assigned, started, ended, state, stderr in plan:
        if assigned > cut:
            continue
        if attempt > 1:
            store.apply_many(events)
            events = []
            store.new_attempt(spec.key)
        key = spec.key
        events.append(TaskEvent(key, attempt, TaskState.ASSIGNED, src, time=assigned + shift))
        if started > cut:
            continue
        events.append(
            TaskEvent(key, attempt, TaskState.RUNNING, src, time=started + shift, handle="1")
        )
        if ended > cut:
            continue
        code = {TaskState.COMPLETED: 0, TaskState.FAILED: 1}.get(state)
        error = {TaskState.FAILED: "exit code 1", TaskState.LOST: "host unreachable"}.get(state)
        events.append(TaskEvent(key, attempt, state, src, ended + shift, code, error))
        if stderr:
            # Only final attempts fail with a traceback here: their files are in the task dir.
            (store.task_dir(spec) / "stderr.log").write_text("loading data\n" + stderr)
    store.apply_many(events)
    store.set_meta("started", min(x[3] for x in plan) + shift)
    store.write_views()
    return store


def hsm(*args: str) -> list[str]:
    return [sys.executable, "-m", "hsm_core.cli.main", *args]


def time_proc(argv: list[str], rounds: int) -> float:
    times = []
    env = bench_environ({"COLUMNS": "120"})
    for _ in range(rounds):
        t0 = time.perf_counter()
        res = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO)
        times.append(time.perf_counter() - t0)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{res.stderr}")
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", type=Path, help="build the sweep here and keep it")
    args = ap.parse_args()
    con = Console()
    base = args.keep or Path(tempfile.mkdtemp(prefix="hsm-bench-monitor-"))
    sweep_dir = base / "bench_sweep"
    if sweep_dir.exists():
        shutil.rmtree(sweep_dir)
    t0 = time.perf_counter()
    store = build_store(sweep_dir, args.tasks)
    build_s = time.perf_counter() - t0
    counts = store.counts()
    con.print(
        f"built {args.tasks} tasks in {build_s:.1f} s: "
        + ", ".join(f"{s.value.lower()} {n}" for s, n in counts.items())
    )

    from hsm_core.reporting.reports import write_reports

    in_proc = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        write_reports(store)
        in_proc.append(time.perf_counter() - t0)
    store.close()
    rows = [
        ("hsm status SWEEP", time_proc(hsm("status", str(sweep_dir)), args.rounds), 0.5),
        (
            "hsm monitor watch SWEEP --once",
            time_proc(hsm("monitor", "watch", str(sweep_dir), "--once"), args.rounds),
            0.5,
        ),
        ("hsm report SWEEP", time_proc(hsm("report", str(sweep_dir)), args.rounds), 5.0),
        ("write_reports() in process", statistics.median(in_proc), 5.0),
    ]
    table = Table(title=f"{args.tasks} tasks, median of {args.rounds} rounds", title_justify="left")
    for col in ("what", "seconds", "goal", "ok"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for what, secs, goal in rows:
        table.add_row(what, f"{secs:.3f}", f"< {goal:g}", "yes" if secs < goal else "NO")
    con.print(table)
    html = sweep_dir / "reports" / "error_analysis.html"
    con.print(f"report: {html} ({html.stat().st_size / 1e6:.1f} MB)")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
