"""`hsm results SWEEP`: one row per task, its parameters and its metrics.

Where metrics come from: hsm_core/metrics.py (the Hydra return value, the JSON
files in the task's results/, else the last numbers it printed). Plain aligned text by
default (pipes into sort, grep and less), or `--csv` / `--json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

from hsm_core.errors import ConfigError

if TYPE_CHECKING:
    from hsm_core.reporting.results import Results, TaskResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep id or folder")
    p.add_argument("--sort", metavar="KEY", help="sort by a metric or a parameter (ascending)")
    p.add_argument("--desc", action="store_true", help="sort descending (largest first)")
    p.add_argument(
        "--best", type=int, metavar="N", help="only the first N tasks by --sort that have KEY"
    )
    p.add_argument(
        "--metrics", metavar="A,B", help="only these metrics as columns (default: every one)"
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV: task, state, parameters, metrics")
    fmt.add_argument("--json", action="store_true", help="a JSON list, one object per task")


def run(args: argparse.Namespace) -> int:
    from hsm_core.reporting.results import load_results
    from hsm_core.sweeps import open_sweep

    if args.best is not None and args.best < 1:
        raise ConfigError("must be a whole number >= 1", key="--best")
    if args.best is not None and not args.sort:
        raise ConfigError(
            "needs --sort KEY: the metric to rank by", key="--best", hint="e.g. --sort loss"
        )
    with open_sweep(args.sweep) as store:
        res = load_results(store)
    metrics = res.metrics
    if args.metrics:
        wanted = [m.strip() for m in args.metrics.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in res.metrics]
        if unknown:
            raise ConfigError(
                f"no metric {unknown[0]!r} in sweep {res.sweep_id}",
                key="--metrics",
                hint=f"metrics: {', '.join(res.metrics) or 'none found'}",
            )
        metrics = wanted
    rows = list(res.rows)
    if args.sort:
        key = args.sort
        if key not in res.metrics and key not in res.params and key not in ("task", "state"):
            raise ConfigError(
                f"no metric or parameter {key!r} in sweep {res.sweep_id}",
                key="--sort",
                hint=f"metrics: {', '.join(res.metrics) or 'none found'}; "
                f"parameters: {', '.join(res.params)}",
            )
        rows = _sorted(res, rows, key, args.desc)
        if args.best is not None:
            rows = [r for r in rows if _has(res.value(r, key) if key != "task" else 1)]
            rows = rows[: args.best]
    if args.json:
        _json(res, rows, metrics)
    elif args.csv:
        _csv(res, rows, metrics)
    else:
        _text(res, rows, metrics)
        _where(res)
    return 0


def _has(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _sorted(res: Results, rows: list[TaskResult], key: str, desc: bool) -> list[TaskResult]:
    """Rows with a value first (numbers before words), in order; rows without it last."""

    def value(row: TaskResult) -> Any:
        if key == "task":
            return row.task.num
        if key == "state":
            return row.state.value
        return res.value(row, key)

    present = [r for r in rows if _has(value(r))]
    missing = [r for r in rows if not _has(value(r))]
    nums = [r for r in present if isinstance(value(r), (int, float))]
    words = [r for r in present if not isinstance(value(r), (int, float))]
    nums.sort(key=value, reverse=desc)
    words.sort(key=lambda r: str(value(r)), reverse=desc)
    return nums + words + missing


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _text(res: Results, rows: list[TaskResult], metrics: list[str]) -> None:
    from hsm_core.reporting.results import finite

    head = ["task", "state", *res.params, *metrics]
    table = [head]
    numeric = [False, False]
    numeric += [all(finite(res.value(r, p)) for r in rows) for p in res.params]
    numeric += [True] * len(metrics)
    for r in rows:
        table.append(
            [
                r.name,
                r.state.value,
                *(_cell(r.task.params.get(p)) for p in res.params),
                *(_cell(r.metrics.get(m)) for m in metrics),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    out = sys.stdout
    for n, row in enumerate(table):
        cells = [
            c.rjust(w) if num and n else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        out.write("  ".join(cells).rstrip() + "\n")


def _where(res: Results) -> None:
    """One line on stderr: how many tasks had metrics and where they were found."""
    with_metrics = [r for r in res.rows if r.metrics]
    completed = sum(1 for r in res.rows if r.state.value == "COMPLETED")
    if not with_metrics:
        sys.stderr.write(
            f"no metrics in the {completed} completed tasks: hsm reads a Hydra job's return "
            "value, JSON files in the task's results/ folder ($HSM_TASK_DIR/results), "
            "and key=value lines it printed\n"
        )
        return
    where = Counter(o for r in with_metrics for o in dict.fromkeys(r.origin.values()))
    said = ", ".join(f"{w} ({n})" for w, n in where.most_common(4))
    sys.stderr.write(
        f"metrics of {len(with_metrics)} of {completed} completed tasks, from {said}\n"
    )


def _csv(res: Results, rows: list[TaskResult], metrics: list[str]) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["task", "state", *res.params, *metrics])
    for r in rows:
        w.writerow(
            [
                r.name,
                r.state.value,
                *(_cell(r.task.params.get(p)) for p in res.params),
                *(_csv_number(r.metrics.get(m)) for m in metrics),
            ]
        )


def _csv_number(x: float | None) -> str:
    return "" if x is None else repr(x) if math.isfinite(x) else str(x)


def _json(res: Results, rows: list[TaskResult], metrics: list[str]) -> None:
    def number(x: float) -> float | None:
        return x if math.isfinite(x) else None  # JSON has no NaN

    doc = [
        {
            "task": r.name,
            "key": r.task.key,
            "state": r.state.value,
            "source": r.source,
            "params": dict(r.task.params),
            "metrics": {m: number(r.metrics[m]) for m in metrics if m in r.metrics},
            "origin": {m: r.origin[m] for m in metrics if m in r.origin},
        }
        for r in rows
    ]
    sys.stdout.write(json.dumps(doc, default=str) + "\n")  # one write: 30 MB at 100k tasks
