"""Benchmark: does a task cost the same in a 100,000-task sweep as in a 1,000-task one?

Not a test. For each size (default 1,000, 10,000 and 100,000) and each round it runs
`hsm run` on a command sweep of no-op tasks (`command: [true, "{i}"]`) on `local:WIDTH`
as a whole process, and measures:

    wall           interpreter start to exit
    per task ms    (wall - floor) / (tasks - 1), floor = the same on 1 task: what each
                   further task costs (the task does nothing, so this is hsm's own cost)
    orch CPU s     user + system CPU of the orchestrator process alone (the `hsm` process,
                   not its agent or the tasks), read from /proc while it runs
    orch peak MB   the orchestrator's peak resident memory (VmHWM)
    tree CPU s     CPU of the whole process tree (orchestrator, agent, tasks)

After each run (untimed) it checks the sweep folder: every status.yaml, the mapping and the
metadata say COMPLETED for every task. Then, on the largest sweep, it times the reads a
user does: `hsm status`, `hsm monitor watch --once`, `hsm report`, and the size of the
HTML report. Goals (issue 12): per task at the largest size within 1.25x of the smallest;
orchestrator peak under 300 MB at 100,000; status and watch under 1 s, report under 10 s,
its HTML under 5 MB.

With `--interrupt K` it measures Ctrl-C instead: for each size and round, `hsm run` is
started, sent SIGINT once K tasks are COMPLETED in the journal, and timed from the signal
to its exit; then (untimed) the views are checked against the journal: the mapping's
state of every task, every status.yaml there is, the metadata's counts.

    python bench/bench_scale.py [--sizes 1000,10000,100000] [--rounds 3] [--dir /dev/shm]
    python bench/bench_scale.py --sizes 100000 --rounds 3 --interrupt 20
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from _timing import bench_environ, file_create_us, hsm_argv
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

TICK = (sys.platform.startswith("linux") and os.sysconf("SC_CLK_TCK")) or 100


@dataclass
class Run:
    wall: float
    orch_cpu: float
    orch_peak_mb: float
    tree_cpu: float


def _proc_sample(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, peak RSS in MB) of one live process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        peak = 0.0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
        return cpu, peak
    except (OSError, IndexError, ValueError):
        return None


def run_measured(argv: list[str], cwd: Path, env: dict[str, str]) -> Run:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    cpu = peak = 0.0
    # Sampled until the exit (a zombie still shows its CPU, no longer its memory): the
    # last sample misses at most one interval of CPU.
    while proc.poll() is None:
        sample = _proc_sample(proc.pid)
        if sample is not None:
            cpu, peak = max(cpu, sample[0]), max(peak, sample[1])
        time.sleep(0.05)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read() if proc.stderr else ""
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(
            f"benchmark aborted: `{shlex.join(argv)}` exited {proc.returncode}:\n{stderr[-2000:]}"
        )
    tree = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(wall, cpu, peak, tree)


def write_sweep(path: Path, n: int) -> Path:
    path.write_text(yaml.safe_dump({"grid": {"i": list(range(n))}, "command": ["true", "{i}"]}))
    return path


def check_folder(sweep: Path, n: int) -> None:
    """Every view says COMPLETED for every task (read as text: 100,000 YAML parses would
    take longer than the run)."""
    statuses = list((sweep / "tasks").glob("task_*/status.yaml"))
    bad = [p for p in statuses if not p.read_text().startswith("state: COMPLETED\n")]
    mapping = (sweep / "task_mapping.yaml").read_text()
    meta = yaml.safe_load((sweep / "sweep_metadata.yaml").read_text())
    problems = []
    if len(statuses) != n or bad:
        problems.append(f"{len(statuses)} status.yaml, {len(bad)} not COMPLETED (e.g. {bad[:1]})")
    if mapping.count("    state: COMPLETED") != n:
        problems.append(f"task_mapping.yaml: {mapping.count('    state: COMPLETED')} COMPLETED")
    if meta["counts"]["COMPLETED"] != n:
        problems.append(f"sweep_metadata.yaml: {meta['counts']}")
    if problems:
        raise SystemExit(f"benchmark aborted: {sweep}: " + "; ".join(problems))


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a live process and of the children it has waited for."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def interrupted(
    argv: list[str], sweep: Path, cwd: Path, env: dict[str, str], after: int
) -> tuple[float, float]:
    """Seconds from SIGINT (sent once `after` tasks are COMPLETED) to the exit of `hsm run`,
    and the CPU seconds its process tree spent in them (steadier than wall on a busy
    machine)."""
    import signal
    import sqlite3

    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A benchmark started in the background inherits SIGINT ignored; hsm must not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    db = sweep / "sweep.db"
    while proc.poll() is None:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                (done,) = conn.execute(
                    "SELECT COUNT(*) FROM attempts WHERE state = 'COMPLETED'"
                ).fetchone()
        except sqlite3.Error:
            done = 0
        if done >= after:
            break
        time.sleep(0.05)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_at_signal = _tree_cpu(proc.pid)
    start = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    took = time.perf_counter() - start
    after_exit = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 130:
        raise SystemExit(f"benchmark aborted: hsm run exited {proc.returncode}:\n{err[-2000:]}")
    tree = (after_exit.ru_utime - before.ru_utime) + (after_exit.ru_stime - before.ru_stime)
    return took, tree - cpu_at_signal


def check_views_agree(sweep: Path) -> str:
    """The views of an interrupted sweep say what its journal says; returns its counts."""
    import sqlite3

    with sqlite3.connect(f"file:{sweep / 'sweep.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT t.num, a.state FROM attempts a JOIN tasks t ON t.key = a.key "
            "WHERE a.attempt = (SELECT MAX(attempt) FROM attempts b WHERE b.key = a.key)"
        ).fetchall()
    want = dict(rows)
    # libyaml's loader when there is one: the pure-Python one takes minutes on 100,000 rows.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    mapping = yaml.load((sweep / "task_mapping.yaml").read_text(), Loader=loader)["tasks"]
    shown = {int(name.split("_")[1]): v["state"] for name, v in mapping.items()}
    problems = []
    if shown != want:
        bad = [n for n in want if shown.get(n) != want[n]]
        problems.append(f"task_mapping.yaml: {len(bad)} tasks differ (e.g. task {bad[:3]})")
    wrong = 0
    for status in (sweep / "tasks").glob("task_*/status.yaml"):
        num = int(status.parent.name.split("_")[1])
        if not status.read_text().startswith(f"state: {want[num]}\n"):
            wrong += 1
    if wrong:
        problems.append(f"{wrong} status.yaml differ from the journal")
    counts = yaml.safe_load((sweep / "sweep_metadata.yaml").read_text())["counts"]
    tally: dict[str, int] = {}
    for state in want.values():
        tally[state] = tally.get(state, 0) + 1
    if {k: v for k, v in counts.items() if v} != tally:
        problems.append(f"sweep_metadata.yaml counts {counts}, journal {tally}")
    if problems:
        raise SystemExit(f"benchmark aborted: {sweep}: " + "; ".join(problems))
    return ", ".join(f"{n} {s}" for s, n in sorted(tally.items()))


def time_reads(hsm: list[str], sweep: Path, cwd: Path, env: dict[str, str], rounds: int) -> dict:
    out: dict[str, list[float]] = {}
    commands = {
        "hsm status": ["status", str(sweep)],
        "hsm monitor watch --once": ["monitor", "watch", str(sweep), "--once"],
        "hsm report": ["report", str(sweep)],
    }
    for _ in range(rounds):
        for name, args in commands.items():
            start = time.perf_counter()
            subprocess.run([*hsm, *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
            out.setdefault(name, []).append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hsm run at 1k, 10k, 100k no-op tasks")
    parser.add_argument("--sizes", default="1000,10000,100000", help="sweep sizes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every size")
    parser.add_argument("--width", type=int, default=2, help="local slots (default 2)")
    parser.add_argument("--dir", type=Path, help="where the sweeps go (e.g. /dev/shm)")
    parser.add_argument("--hsm", help='command that starts hsm (default: the installed "hsm")')
    parser.add_argument("--keep", action="store_true", help="leave the sweeps behind")
    parser.add_argument(
        "--interrupt",
        type=int,
        metavar="K",
        help="measure Ctrl-C instead: SIGINT once K tasks are COMPLETED, time to the exit",
    )
    args = parser.parse_args(argv)
    if args.dir is not None and not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: no such folder")
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if sizes[0] < 2 or args.rounds < 1:
        parser.error("sizes must be >= 2, --rounds >= 1")
    hsm = shlex.split(args.hsm) if args.hsm else hsm_argv()
    out = Console(width=None if sys.stdout.isatty() else 130)
    tmp = Path(tempfile.mkdtemp(prefix="hsm-scale-", dir=args.dir))
    env = bench_environ({"XDG_STATE_HOME": str(tmp / "state")})
    inputs = {n: write_sweep(tmp / f"sweep_{n}.yaml", n) for n in (1, *sizes)}
    if args.interrupt is not None:
        return interrupt_main(args, sizes, hsm, tmp, env, inputs, out)
    runs: dict[int, list[Run]] = {}
    create_us = file_create_us(tmp)
    progress = Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tasks"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    total = args.rounds * (sum(sizes) + 1)
    last_sweep = tmp
    with progress:
        bar = progress.add_task("warm-up", total=total)
        n_out = 0

        def one(n: int, label: str) -> Run:
            nonlocal n_out, last_sweep
            n_out += 1
            sweep = tmp / "out" / f"s{n_out}"
            progress.update(bar, description=label)
            argv = [*hsm, "run", "-c", str(inputs[n]), "-s", f"local:{args.width}"]
            run = run_measured([*argv, "--no-progress", "--output-dir", str(sweep)], tmp, env)
            check_folder(sweep, n)
            last_sweep = sweep
            return run

        one(1, "warm-up")
        for r in range(args.rounds):
            # Small and large alternate, so that a busy moment of the machine does not
            # land on one size only.
            order = [1, *sizes] if r % 2 == 0 else [1, *reversed(sizes)]
            for n in order:
                runs.setdefault(n, []).append(one(n, f"round {r + 1}: {n:,} tasks"))
                progress.advance(bar, n)
                if n == sizes[-1]:
                    biggest = last_sweep
        progress.update(bar, description=f"reads of the {sizes[-1]:,}-task sweep")
        reads = time_reads(hsm, biggest, tmp, env, args.rounds)
    html = biggest / "reports" / "error_analysis.html"
    out.print(table(runs, sizes, args))
    goal = ", ".join(f"{name} {secs:.2f} s" for name, secs in reads.items())
    out.print(
        f"reading the {sizes[-1]:,}-task sweep (median of {args.rounds}): {goal}; "
        f"HTML report {html.stat().st_size / 1e6:.2f} MB"
    )
    load = os.getloadavg()
    out.print(
        f"where the sweeps went: {tmp} (a folder and a file there: {create_us:.0f} us); "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at "
        f"the end; hsm: {shlex.join(hsm)}; Python {sys.version.split()[0]}"
    )
    if not args.keep:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0


def interrupt_main(
    args: argparse.Namespace,
    sizes: list[int],
    hsm: list[str],
    tmp: Path,
    env: dict[str, str],
    inputs: dict[int, Path],
    out: Console,
) -> int:
    t = Table(title=f"Ctrl-C once {args.interrupt} tasks are COMPLETED (local:{args.width})")
    for col in ("tasks", "SIGINT to exit s (median)", "range s", "CPU s after SIGINT",
                "journal after the last"):  # fmt: skip
        t.add_column(col, justify="right")
    n_out = 0
    for n in sizes:
        took: list[float] = []
        cpu: list[float] = []
        counts = ""
        for _ in range(args.rounds):
            n_out += 1
            sweep = tmp / "out" / f"i{n_out}"
            argv = [*hsm, "run", "-c", str(inputs[n]), "-s", f"local:{args.width}"]
            argv += ["--no-progress", "--output-dir", str(sweep)]
            wall, spent = interrupted(argv, sweep, tmp, env, args.interrupt)
            took.append(wall)
            cpu.append(spent)
            counts = check_views_agree(sweep)
        t.add_row(
            f"{n:,}",
            f"{statistics.median(took):.2f}",
            f"{min(took):.2f}-{max(took):.2f}",
            f"{statistics.median(cpu):.2f}",
            counts,
        )
    out.print(t)
    load = os.getloadavg()
    out.print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; hsm: {shlex.join(hsm)}")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0


def table(runs: dict[int, list[Run]], sizes: list[int], args: argparse.Namespace) -> Table:
    t = Table(
        title=f"`true` tasks on local:{args.width}: medians of {args.rounds} rounds",
        caption="per task: (wall - wall of 1 task) / (tasks - 1); orch: the hsm process alone",
    )
    for col in ("tasks", "wall s", "range s", "per task ms", "vs smallest", "orch CPU s",
                "orch CPU/task ms", "orch peak MB", "tree CPU s"):  # fmt: skip
        t.add_column(col, justify="right")
    floor = statistics.median(r.wall for r in runs[1])

    def med(n: int, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs[n])

    base = (med(sizes[0], "wall") - floor) / (sizes[0] - 1)
    for n in sizes:
        per = (med(n, "wall") - floor) / (n - 1)
        walls = [r.wall for r in runs[n]]
        t.add_row(
            f"{n:,}",
            f"{med(n, 'wall'):.1f}",
            f"{min(walls):.1f}-{max(walls):.1f}",
            f"{1000 * per:.2f}",
            f"{per / base:.2f}x",
            f"{med(n, 'orch_cpu'):.1f}",
            f"{1000 * med(n, 'orch_cpu') / n:.2f}",
            f"{med(n, 'orch_peak_mb'):.0f}",
            f"{med(n, 'tree_cpu'):.1f}",
        )
    t.add_row("1 (floor)", f"{floor:.2f}", "", "", "", f"{med(1, 'orch_cpu'):.2f}", "",
              f"{med(1, 'orch_peak_mb'):.0f}", f"{med(1, 'tree_cpu'):.2f}")  # fmt: skip
    return t


if __name__ == "__main__":
    sys.exit(main())
