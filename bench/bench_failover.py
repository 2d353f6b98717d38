"""Benchmark: a host dies mid-sweep. How fast is it noticed, and what does it cost?

Not a test. TASKS tasks of SECONDS each over `local:2` plus two loopback ssh hosts with 2
slots each (the project's test sshd servers: `scripts/services/sshd.sh start`). When
KILL_AT of the tasks have completed, host h2's sshd and every process of its sessions
are killed (`sshd.sh kill h2`); it is revived after the run. Printed per round and as
medians:

    makespan         first task start to last task end
    ideal            the same work on the capacity that really existed: 6 slots until the
                     kill, 4 after (assumes no overhead at all)
    ratio            makespan / ideal (goal: <= 1.25)
    detect           kill -> first LOST report for a task on h2 (goal: within 2 health
                     intervals or the keepalive timeout, whichever is shorter)
    re-run           attempts that ran again elsewhere because h2 died
    lost tasks       tasks not COMPLETED at the end (goal: 0)

    python bench/bench_failover.py [--rounds 3] [--tasks 120] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from hsm_core.model import SourceSpec, TaskEvent, TaskSpec, TaskState, task_key
from hsm_core.orchestrate import RunOptions, context_for, run_sweep
from hsm_core.store import SweepStore

ROOT = Path(__file__).resolve().parent.parent
SSHD = ROOT / "scripts" / "services" / "sshd.sh"
SERVICES = Path(os.environ.get("HSM_SERVICES_DIR", "/tmp/hsm-test-services"))
KEEPALIVE = {"keepalive_interval": 1, "keepalive_count": 2, "connect_timeout": 2}
HEALTH = {"interval_s": 5, "consecutive_failures": 2, "timeout_s": 3}


def ssh_hosts() -> dict[str, Any]:
    env_file = SERVICES / "sshd" / "env.json"
    if not env_file.is_file():
        sys.exit(f"no test sshd hosts ({env_file} missing): run `bash {SSHD} start` as root")
    return json.loads(env_file.read_text())  # type: ignore[no-any-return]


def specs(env: dict[str, Any], remote_root: str) -> list[SourceSpec]:
    out = [SourceSpec("local", "local", 2)]
    for host in env["hosts"][:2]:
        opts = {
            "host": host["alias"],
            "ssh_config": env["ssh_config"],
            "project_dir": f"{host['project_dir']}/{remote_root}",
            "python": host["python"],
            "sync": "push",
            "reconnect_window": 2,
            **KEEPALIVE,
        }
        out.append(SourceSpec(host["alias"], "ssh", 2, opts))
    return out


def one_round(
    env: dict[str, Any], n: int, seconds: float, kill_at: float, progress: Progress
) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="hsm-bench-failover-"))
    project = work / "proj"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    tasks = [
        TaskSpec(task_key({"i": i}), i + 1, {"i": i}, argv=("sleep", str(seconds)))
        for i in range(n)
    ]
    store = SweepStore.create(
        work / "sweep", sweep_id="failover", kind="command", config={}, project_root=project
    )
    store.add_tasks(tasks)
    victim = env["hosts"][1]["alias"]
    killed_at: list[float] = []
    detected: list[float] = []
    done = [0]
    bar = progress.add_task("round", total=n)

    def listener(ev: TaskEvent) -> None:
        if ev.state is TaskState.COMPLETED:
            done[0] += 1
            progress.update(bar, completed=done[0])
            if not killed_at and done[0] >= kill_at * n:
                killed_at.append(time.time())
                subprocess.Popen(
                    ["bash", str(SSHD), "kill", victim],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
        if ev.state is TaskState.LOST and ev.source == victim and not detected:
            detected.append(ev.time)

    def hook(engine: Any) -> None:
        if listener not in engine.listeners:
            engine.listeners.append(listener)

    try:
        run = run_sweep(
            store,
            context_for(store),
            specs(env, f"bench-failover-{os.getpid()}"),
            RunOptions(strategy="least_loaded", health=HEALTH),
            progress=hook,
            handle_signals=False,
        )
        asyncio.run(run)
        attempts = store.attempts()
        starts = [a.started for a in attempts if a.started]
        ends = [a.ended for a in attempts if a.ended and a.state is TaskState.COMPLETED]
        makespan = max(ends) - min(starts)
        first = min(starts)
        before = killed_at[0] - first if killed_at else makespan
        work_left = n * seconds - before * 6
        ideal = before + max(0.0, work_left) / 4
        rerun = len([a for a in attempts if a.attempt > 1])
        unfinished = sum(n for s, n in store.counts().items() if s is not TaskState.COMPLETED)
        return {
            "makespan": makespan,
            "ideal": ideal,
            "ratio": makespan / ideal,
            "detect": (detected[0] - killed_at[0]) if detected and killed_at else float("nan"),
            "rerun": rerun,
            "unfinished": unfinished,
        }
    finally:
        progress.remove_task(bar)
        subprocess.run(
            ["bash", str(SSHD), "revive", victim], stdout=subprocess.DEVNULL, check=False
        )
        store.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=120)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--kill-at", type=float, default=0.3, help="fraction completed at the kill")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the lost host's warnings are expected here
    env = ssh_hosts()
    console = Console()
    rows: list[dict[str, float]] = []
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as progress:
        overall = progress.add_task("rounds", total=args.rounds)
        for _ in range(args.rounds):
            rows.append(one_round(env, args.tasks, args.seconds, args.kill_at, progress))
            progress.advance(overall)
    table = Table(
        title=f"{args.tasks} x {args.seconds} s over local:2 + h1:2 + h2:2, h2 killed at "
        f"{100 * args.kill_at:.0f}% (health every {HEALTH['interval_s']} s, keepalive "
        f"{KEEPALIVE['keepalive_interval']} s x {KEEPALIVE['keepalive_count']})"
    )
    cols = ("makespan", "ideal", "ratio", "detect", "rerun", "unfinished")
    table.add_column("round")
    for c in cols:
        table.add_column(c, justify="right")
    for i, r in enumerate(rows, 1):
        table.add_row(
            str(i),
            *(
                f"{r[c]:.2f}" if c in ("makespan", "ideal", "ratio", "detect") else str(int(r[c]))
                for c in cols
            ),
        )
    table.add_row(
        "median",
        *(f"{statistics.median(r[c] for r in rows):.2f}" for c in cols),
        style="bold",
    )
    console.print(table)


if __name__ == "__main__":
    main()
