"""reports/error_analysis.html: one self-contained page (inline CSS and SVG, no script, no
network) with the summary, the error groups and the timeline of every task.

Everything that comes from the sweep (parameters, tracebacks, paths) is escaped: a task's
output is data, never markup.
"""

from __future__ import annotations

import os
import time
from html import escape
from pathlib import Path
from typing import Any

from hsm_core.model import NOT_PLACED, TaskState
from hsm_core.reporting import gantt, results_svg
from hsm_core.reporting.failures import ErrorAnalysis, ErrorGroup
from hsm_core.reporting.patterns import Pattern

ROWS_SHOWN = 10  # per error group; the next ones fold away
ROWS_PER_GROUP = 200  # and beyond this the page only counts them

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       margin: 24px auto; max-width: 1140px; padding: 0 12px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
.muted { color: #666; } code, pre { font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace; }
pre { background: #f6f8fa; border: 1px solid #e3e6ea; padding: 8px 10px; overflow-x: auto;
      white-space: pre-wrap; word-break: break-word; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 3px 10px 3px 0; text-align: left;
         vertical-align: top; }
th { font-weight: 600; color: #444; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { border-radius: 6px; padding: 6px 14px; color: #fff; min-width: 80px; }
.card b { display: block; font-size: 20px; }
details { border: 1px solid #e3e6ea; border-radius: 6px; margin: 8px 0; padding: 6px 12px; }
summary { cursor: pointer; font-weight: 600; }
.count { display: inline-block; min-width: 2.5em; padding: 0 6px; margin-right: 6px;
         border-radius: 10px; background: #d1352b; color: #fff; text-align: center; }
.hint { color: #555; font-style: italic; }
.chart { overflow-x: auto; border: 1px solid #e3e6ea; border-radius: 6px; padding: 6px; }
"""


def _h(value: Any) -> str:
    return escape(str(value), quote=True)


def _secs(x: Any) -> str:
    if x is None:
        return "-"
    x = float(x)
    if x >= 3600:
        return f"{x / 3600:.1f} h"
    if x >= 120:
        return f"{x / 60:.1f} min"
    return f"{x:.1f} s" if x >= 1 else f"{x * 1000:.0f} ms"


def _pct(x: Any) -> str:
    return "-" if x is None else f"{float(x):.0%}"


def _params(params: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in dict(params).items())


def _rel(path: Path, reports_dir: Path) -> str:
    try:
        return os.path.relpath(path, reports_dir)
    except ValueError:
        return str(path)


def _summary(perf: dict[str, Any], analysis: ErrorAnalysis) -> str:
    sweep = perf["sweep"]
    cards = []
    for state in TaskState:
        n = sweep["states"].get(state.value, 0)
        if n or state in (TaskState.COMPLETED, TaskState.FAILED):
            colour = gantt.STATE_COLOURS[state]
            cards.append(
                f'<div class="card" style="background:{colour}"><b>{n}</b>'
                f"{state.value.lower()}</div>"
            )
    rows = [
        ("tasks", sweep["tasks"]),
        ("attempts (re-runs)", f"{sweep['attempts']} ({sweep['reruns']})"),
        ("success rate", _pct(sweep["success_rate"])),
        ("makespan", _secs(sweep["makespan_s"])),
        ("slots", sweep["slots"] or "-"),
        ("efficiency", _pct(sweep["efficiency"])),
        ("throughput", f"{sweep['throughput_per_min'] or 0:.1f} tasks/min"),
        ("recovered by a re-run", analysis.recovered),
        ("first assigned / last end", f"{sweep['first_assigned']} / {sweep['last_end']}"),
    ]
    table = "".join(f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in rows)
    return f'<div class="cards">{"".join(cards)}</div><table>{table}</table>'


def _sources(perf: dict[str, Any]) -> str:
    head = (
        "<tr><th>source</th><th>tasks</th><th>attempts</th><th>completed</th><th>failed</th>"
        "<th>lost</th><th>success</th><th>mean</th><th>median</th><th>p95</th>"
        "<th>queue wait (median / p95)</th><th>slots</th><th>utilisation</th></tr>"
    )
    rows = []
    for name, s in perf["sources"].items():
        d, q = s["duration_s"], s["queue_wait_s"]
        cells = [
            s["tasks"],
            s["attempts"],
            s["completed"],
            s["failed"],
            s["lost"],
            _pct(s["success_rate"]),
            _secs(d["mean"]),
            _secs(d["median"]),
            _secs(d["p95"]),
            f"{_secs(q['median'])} / {_secs(q['p95'])}",
            s["slots"] or "-",
            _pct(s["utilisation"]),
        ]
        tds = "".join(f'<td class="n">{_h(c)}</td>' for c in cells)
        rows.append(f"<tr><td>{_h(name)}</td>{tds}</tr>")
    if not rows:
        return '<p class="muted">No attempt was placed on a source yet.</p>'
    return f"<table>{head}{''.join(rows)}</table>"


def _patterns(patterns: list[Pattern]) -> str:
    if not patterns:
        return ""
    items = "".join(f"<li>{_h(p.describe())}</li>" for p in patterns)
    return f"<p>Parameter values these failures go with:</p><ul>{items}</ul>"


def _group(group: ErrorGroup, patterns: list[Pattern], reports_dir: Path) -> str:
    rep = group.representative
    rows: list[str] = []
    for f in group.failures[:ROWS_PER_GROUP]:
        logs = " ".join(
            f'<a href="{_h(_rel(p, reports_dir))}">{_h(p.name)}</a>' for p in f.logs[:4]
        )
        rows.append(
            f"<tr><td>{_h(f.name)}</td><td>{_h(f.source or NOT_PLACED)}</td>"
            f"<td><code>{_h(_params(f.params))}</code></td>"
            f'<td class="n">{_h("-" if f.exit_code is None else f.exit_code)}</td>'
            f"<td>{logs}</td></tr>"
        )
    head = "<tr><th>task</th><th>source</th><th>params</th><th>exit</th><th>logs</th></tr>"
    table = f"<table>{head}{''.join(rows[:ROWS_SHOWN])}</table>"
    if len(rows) > ROWS_SHOWN:
        table += (
            f"<details><summary>{len(rows) - ROWS_SHOWN} more tasks</summary>"
            f"<table>{head}{''.join(rows[ROWS_SHOWN:])}</table></details>"
        )
    if group.count > ROWS_PER_GROUP:
        table += f'<p class="muted">… and {group.count - ROWS_PER_GROUP} more</p>'
    logs_of_rep = ", ".join(_h(_rel(p, reports_dir)) for p in rep.logs) or "no log files"
    return (
        f'<details open><summary><span class="count">{group.count}</span>'
        f"{_h(group.label)}</summary>"
        f'<p class="hint">{_h(group.cause.hint)}</p>'
        f"{_patterns(patterns)}"
        f"<p>Representative: <b>{_h(rep.name)}</b> on {_h(rep.source or NOT_PLACED)} "
        f'<span class="muted">({logs_of_rep})</span></p>'
        f"<pre>{_h(rep.tail or rep.error or '')}</pre>{table}</details>"
    )


def render(
    perf: dict[str, Any],
    analysis: ErrorAnalysis,
    patterns: list[Pattern],
    group_patterns: dict[tuple[str, str], list[Pattern]],
    timeline_svg: str,
    reports_dir: Path,
    sweep_dir: Path,
    results: str = "",
) -> str:
    sweep = perf["sweep"]
    status = "still running" if sweep["running"] else "finished"
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    if analysis.groups:
        groups = "".join(
            _group(g, group_patterns.get(g.cause.group, []), reports_dir) for g in analysis.groups
        )
        overall = _patterns(patterns)
        errors = (
            f"<p>{analysis.failed} failed and {analysis.lost} lost tasks "
            f"in {len(analysis.groups)} group{'s' if len(analysis.groups) != 1 else ''}.</p>"
            f"{overall}{groups}"
        )
    else:
        errors = '<p class="muted">No failed or lost task.</p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hsm sweep {_h(sweep["id"])}: errors and timeline</title>
<style>{_CSS}
{gantt.css()}
{results_svg.css()}</style></head>
<body>
<h1>Sweep {_h(sweep["id"])}</h1>
<p class="muted">{_h(sweep_dir)} · {status} · report written {_h(generated)}</p>
<h2>Summary</h2>
{_summary(perf, analysis)}
<h2>Results</h2>
<div class="results">{results or '<p class="muted">Not computed.</p>'}</div>
<h2>Sources</h2>
{_sources(perf)}
<h2>Timeline</h2>
<p class="muted">Every attempt, per source, from assignment (pale) through running to its end
(coloured by state). Hover a bar for the task.</p>
<div class="chart">{timeline_svg}</div>
<h2>Errors</h2>
{errors}
</body></html>
"""
