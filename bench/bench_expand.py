"""Benchmark: expanding a sweep file's grid into tasks, against a bare product of its values.

Not a test. For each size it parses the same sweep (a grid of three keys by a paired axis
of two, as in tests/unit/test_sweepfile.py, grown along the first key) and makes every
task, in this process, for N rounds:

    script      `script: train.py` tasks (argv made from the parameters)
    command     a `command:` template with four placeholders filled per task
    bare loop   itertools.product over the same values into one dict per point, keyed
                by a sha256 of its JSON: the least an expansion that names each point
                by its content pays (the anchor)

and prints the median seconds, microseconds per task and the ratio to the bare loop. The
ratio is the number to read on a shared machine. (It replaces a timed unit test that
failed whenever the machine was busy.)

    python bench/bench_expand.py [--sizes 10000,100000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hsm_core.sweepfile import parse_sweep  # noqa: E402


def sweep_data(n: int) -> dict[str, Any]:
    """n points: a in range(n // 100) x b (10) x c (2) x the paired (d, e) (5)."""
    return {
        "grid": {"a": list(range(n // 100)), "b": [0.1 * i for i in range(10)], "c": ["x", "y"]},
        "paired": [{"g": {"d": [1, 2, 3, 4, 5], "e": ["p q", "r", "s", "t", "u"]}}],
    }


def bare(data: dict[str, Any]) -> int:
    grid = data["grid"]
    pairs = list(zip(*data["paired"][0]["g"].values(), strict=True))
    n = 0
    for a, b, c, (d, e) in itertools.product(grid["a"], grid["b"], grid["c"], pairs):
        point = {"a": a, "b": b, "c": c, "d": d, "e": e}
        key = hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()
        n += len(key) > 0
    return n


def timed(fn: Callable[[], int], want: int) -> float:
    start = time.perf_counter()
    got = fn()
    elapsed = time.perf_counter() - start
    if got != want:
        raise SystemExit(f"benchmark aborted: {got} tasks made, {want} expected")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="grid expansion vs a bare product")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    console = Console()
    table = Table(title=f"expansion, median of {args.rounds} rounds")
    for col in ("tasks", "way", "s", "us/task", "x bare loop"):
        table.add_column(col, justify="right" if col != "way" else "left")
    for n in (int(s) for s in args.sizes.split(",")):
        data = sweep_data(n)
        ways: dict[str, Callable[[], int]] = {
            "bare loop": lambda data=data: bare(data),
            "script": lambda data=data: len(
                parse_sweep({**data, "script": "train.py"}, "b.yaml").to_tasks()
            ),
            "command": lambda data=data: len(
                parse_sweep(
                    {**data, "command": ["prog", "--a={a}", "{e}", "{d}{b}{c}"]}, "b.yaml"
                ).to_tasks()
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in ways}
        for r in range(args.rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for name in order:
                times[name].append(timed(ways[name], n))
        anchor = statistics.median(times["bare loop"])
        for name, values in times.items():
            med = statistics.median(values)
            table.add_row(
                f"{n:,}", name, f"{med:.3f}", f"{med / n * 1e6:.1f}", f"{med / anchor:.1f}x"
            )
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
