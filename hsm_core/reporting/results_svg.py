"""The Results section of the HTML report: what each swept parameter did to each metric.

Inline SVG only (no script, nothing from the network), small at any sweep size:

- a table per metric: how many tasks have it, its minimum and maximum (with the task),
  its median;
- one small plot per (metric, swept parameter): a scatter for a numeric parameter (a log
  axis when its values span two decades or more), with the median at each value when
  the values are few (a grid); a box per value for a word-valued parameter (minimum,
  quartiles, median, maximum);
- a parallel-coordinates view: one line per task across every plotted parameter and
  metric, coloured by the first metric.

Only COMPLETED tasks count. Boxes and medians are computed from every task; points and
lines are a fixed sample (at most POINTS / LINES, chosen by task key, so the same sweep
always draws the same picture), and the page says so. At most PLOT_METRICS x PLOT_PARAMS
plots are drawn: the others are listed with `hsm results`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from hsm_core.model import TaskState
from hsm_core.reporting.results import Results, TaskResult, as_number, finite

PLOT_METRICS = 4
PLOT_PARAMS = 6
TABLE_METRICS = 12
POINTS = 200  # per scatter / box plot
LINES = 300  # parallel coordinates
CATEGORIES = 12  # boxes per plot; the rarest values beyond are left out (and said)
FEW_VALUES = 20  # a numeric parameter with at most this many values gets medians

W, H = 250, 190  # one small plot
ML, MR, MT, MB = 46, 8, 22, 34  # margins: left (y ticks), right, top (title), bottom
LOW, HIGH = (59, 76, 192), (180, 4, 38)  # the line colours' ends (blue low, red high)


def css() -> str:
    return """
.rplots { display: flex; flex-wrap: wrap; gap: 6px; margin: 6px 0 14px; }
.rplot { border: 1px solid #e3e6ea; border-radius: 4px; background: #fff; }
.rplot text, .pcoords text { font: 10px sans-serif; fill: #555; }
.rplot .ttl { font: 11px sans-serif; fill: #222; }
.rplot .ax, .pcoords .ax { stroke: #999; stroke-width: 1; }
.rplot .grid { stroke: #eee; stroke-width: 1; }
.rplot .pt { fill: #3b6fb6; fill-opacity: 0.45; }
.rplot .med { fill: none; stroke: #d1352b; stroke-width: 1.5; }
.rplot .bx { fill: #cfe0f5; stroke: #3b6fb6; stroke-width: 1; }
.rplot .wh { stroke: #3b6fb6; stroke-width: 1; }
.rplot .md { stroke: #d1352b; stroke-width: 2; }
.pcoords .pl { fill: none; stroke-width: 1; stroke-opacity: 0.55; }
"""


@dataclass(frozen=True)
class _Axis:
    name: str
    numeric: bool
    lo: float = 0.0
    hi: float = 1.0
    log: bool = False
    categories: tuple[str, ...] = ()

    def pos(self, value: Any) -> float | None:
        """0..1 along the axis, or None when the value has no place on it."""
        if not self.numeric:
            text = _text(value)
            if text not in self.categories:
                return None
            n = len(self.categories)
            return (self.categories.index(text) + 0.5) / n
        if not finite(value) or (self.log and value <= 0):
            return None
        lo, hi, v = self.lo, self.hi, float(value)
        if self.log:
            lo, hi, v = math.log10(lo), math.log10(hi), math.log10(v)
        return 0.5 if hi <= lo else (v - lo) / (hi - lo)

    def ticks(self) -> list[tuple[float, str]]:
        if not self.numeric:
            return [(self.pos(c) or 0.0, c) for c in self.categories]
        if self.log:
            a, b = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
            step = max(1, math.ceil((b - a) / 5))
            vals = [10.0**e for e in range(a, b + 1, step)]
        else:
            vals = _nice_ticks(self.lo, self.hi)
        out = []
        for v in vals:
            p = self.pos(v)
            if p is not None and -1e-9 <= p <= 1 + 1e-9:
                out.append((p, _num(v)))
        return out


def _text(value: Any) -> str:
    return "null" if value is None else str(value)


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.3g}"


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    out = []
    v = start
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def _numeric_axis(name: str, values: Sequence[float], allow_log: bool = True) -> _Axis:
    lo, hi = min(values), max(values)
    log = allow_log and lo > 0 and hi / lo >= 100
    if not log and hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    elif not log:
        pad = (hi - lo) * 0.04
        lo, hi = lo - pad, hi + pad
    return _Axis(name, True, lo, hi, log)


def _param_axis(name: str, values: Sequence[Any]) -> _Axis | None:
    nums = [v for v in values if finite(v)]
    if len(nums) == len(values):
        if len(set(nums)) < 2:
            return None
        return _numeric_axis(name, nums)
    counts: dict[str, int] = {}
    for v in values:
        counts[_text(v)] = counts.get(_text(v), 0) + 1
    if len(counts) < 2:
        return None
    keep = sorted(counts, key=lambda c: -counts[c])[:CATEGORIES]
    ordered = [c for c in _natural(counts) if c in keep]
    return _Axis(name, False, categories=tuple(ordered))


def _natural(counts: dict[str, int]) -> list[str]:
    def key(c: str) -> tuple[int, float, str]:
        v = as_number(c)
        return (0, float(v), c) if finite(v) else (1, 0.0, c)

    return sorted(counts, key=key)


def _sample(rows: Sequence[TaskResult], n: int, metric: str | None = None) -> list[TaskResult]:
    """A fixed sample: the first `n` by task key (a hash, so the same sweep always draws
    the same picture) of the rows with a finite `metric`. `rows` come sorted by key."""
    out: list[TaskResult] = []
    for r in rows:
        if metric is None or finite(r.metrics.get(metric)):
            out.append(r)
            if len(out) >= n:
                break
    return out


def _jitter(row: TaskResult) -> float:
    return (int(row.task.key[:6], 16) / 0xFFFFFF) - 0.5


# ------------------------------------------------------------------ plots
def _frame(title: str, xaxis: _Axis, yaxis: _Axis, kind: str) -> tuple[list[str], Any, Any]:
    pw, ph = W - ML - MR, H - MT - MB

    def x(p: float) -> float:
        return ML + p * pw

    def y(p: float) -> float:
        return MT + (1 - p) * ph

    parts = [
        f'<svg class="rplot {kind}" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}">',
        f'<text class="ttl" x="{ML}" y="13">{escape(_short(title, 40))}</text>',
    ]
    for p, label in yaxis.ticks():
        yp = y(p)
        parts.append(f'<line class="grid" x1="{ML}" x2="{W - MR}" y1="{yp:.1f}" y2="{yp:.1f}"/>')
        parts.append(f'<text x="{ML - 4}" y="{y(p) + 3:.1f}" text-anchor="end">{label}</text>')
    ticks = xaxis.ticks()
    every = max(1, math.ceil(len(ticks) / 6))
    for i, (p, label) in enumerate(ticks):
        if i % every:
            continue
        parts.append(
            f'<text x="{x(p):.1f}" y="{H - MB + 12}" text-anchor="middle">'
            f"{escape(_short(label, 9))}</text>"
        )
    parts.append(f'<line class="ax" x1="{ML}" x2="{ML}" y1="{MT}" y2="{H - MB}"/>')
    parts.append(f'<line class="ax" x1="{ML}" x2="{W - MR}" y1="{H - MB}" y2="{H - MB}"/>')
    parts.append(
        f'<text x="{ML + pw / 2:.1f}" y="{H - 4}" text-anchor="middle">'
        f"{escape(_short(xaxis.name, 36))}{' (log)' if xaxis.log else ''}</text>"
    )
    return parts, x, y


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _scatter(
    rows: Sequence[TaskResult], res: Results, metric: str, param: str, xa: _Axis, ya: _Axis
) -> str:
    parts, x, y = _frame(f"{metric} vs {param}", xa, ya, "scatter")
    by_value: dict[float, list[float]] = {}  # one pass: 100,000 rows x 20 values is slow
    for r in rows:  # every row here has a finite metric
        v = r.values.get(param)
        if finite(v):
            by_value.setdefault(float(v), []).append(r.metrics[metric])
    distinct = sorted(by_value)
    few = len(distinct) <= FEW_VALUES
    spread = 0.5 / max(len(distinct), 1) * 0.5 if few else 0.0
    for r in _sample(rows, POINTS):
        px, py = xa.pos(r.values.get(param)), ya.pos(r.metrics.get(metric))
        if px is None or py is None:
            continue
        px = min(1.0, max(0.0, px + _jitter(r) * spread * 0.6))
        parts.append(
            f'<circle class="pt" cx="{x(px):.1f}" cy="{y(py):.1f}" r="2.6">'
            f"<title>{escape(r.name)}</title></circle>"
        )
    if few and len(distinct) > 1:
        line = []
        for v in distinct:
            px, py = xa.pos(v), ya.pos(statistics.median(by_value[v]))
            if px is not None and py is not None:
                line.append(f"{x(px):.1f},{y(py):.1f}")
        if len(line) > 1:
            parts.append(f'<polyline class="med" points="{" ".join(line)}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _box(
    rows: Sequence[TaskResult], res: Results, metric: str, param: str, xa: _Axis, ya: _Axis
) -> str:
    parts, x, y = _frame(f"{metric} by {param}", xa, ya, "box")
    groups: dict[str, list[float]] = {c: [] for c in xa.categories}
    for r in rows:
        m = r.metrics.get(metric)
        c = _text(r.values.get(param))
        if m is not None and finite(m) and c in groups:
            groups[c].append(m)
    half = (W - ML - MR) / max(len(groups), 1) * 0.3
    for c, ms in groups.items():
        p = xa.pos(c)
        if not ms or p is None:
            continue
        q1, med, q3 = _quartiles(ms)
        cx = x(p)
        levels = (min(ms), q1, med, q3, max(ms))
        y_lo, y_q1, y_md, y_q3, y_hi = (y(ya.pos(v) or 0.0) for v in levels)
        parts.append(
            f"<g><title>{escape(c)}: {len(ms)} tasks, median {_num(med)}</title>"
            f'<line class="wh" x1="{cx:.1f}" x2="{cx:.1f}" y1="{y_hi:.1f}" y2="{y_lo:.1f}"/>'
            f'<rect class="bx" x="{cx - half:.1f}" y="{y_q3:.1f}" width="{2 * half:.1f}" '
            f'height="{max(y_q1 - y_q3, 1):.1f}"/>'
            f'<line class="md" x1="{cx - half:.1f}" x2="{cx + half:.1f}" '
            f'y1="{y_md:.1f}" y2="{y_md:.1f}"/></g>'
        )
    for r in _sample(rows, POINTS):
        px, py = xa.pos(r.values.get(param)), ya.pos(r.metrics.get(metric))
        if px is None or py is None:
            continue
        cx = x(px) + _jitter(r) * half * 1.6
        parts.append(
            f'<circle class="pt" cx="{cx:.1f}" cy="{y(py):.1f}" r="2">'
            f"<title>{escape(r.name)}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    s = sorted(values)
    if len(s) < 2:
        return s[0], s[0], s[0]
    q = statistics.quantiles(s, n=4, method="inclusive")
    return q[0], q[1], q[2]


def _colour(t: float) -> str:
    t = min(1.0, max(0.0, t))
    r, g, b = (round(a + (b - a) * t) for a, b in zip(LOW, HIGH, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def _parallel(rows: Sequence[TaskResult], res: Results, axes: list[tuple[str, _Axis]]) -> str:
    """axes: (what, axis) with what 'param' or 'metric'; the first metric colours."""
    n = len(axes)
    width = max(480, min(1100, 120 * n))
    height, top, bottom = 300, 34, 40
    left, right = 50, 50
    step = (width - left - right) / max(n - 1, 1)

    def xs(i: int) -> float:
        return left + i * step

    def ys(p: float) -> float:
        return top + (1 - p) * (height - top - bottom)

    colour_by = next(((w, a) for w, a in axes if w == "metric"), None)
    label = (
        f"colour: {colour_by[1].name}, blue lowest, red highest" if colour_by else "colour: none"
    )
    parts = [
        f'<svg class="pcoords" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="parallel coordinates">',
        f'<text x="{left}" y="12">{escape(label)}</text>',
    ]
    for r in _sample(rows, LINES):
        pts = []
        for i, (what, a) in enumerate(axes):
            v = r.metrics.get(a.name) if what == "metric" else r.values.get(a.name)
            p = a.pos(v)
            if p is None:
                break
            pts.append(f"{xs(i):.1f},{ys(p):.1f}")
        if len(pts) != n:
            continue
        tone = "#3b6fb6"
        if colour_by is not None:
            t = colour_by[1].pos(r.metrics.get(colour_by[1].name))
            tone = _colour(t if t is not None else 0.5)
        parts.append(
            f'<polyline class="pl" stroke="{tone}" points="{" ".join(pts)}">'
            f"<title>{escape(r.name)}</title></polyline>"
        )
    for i, (what, a) in enumerate(axes):
        cx = xs(i)
        parts.append(f'<line class="ax" x1="{cx:.1f}" x2="{cx:.1f}" y1="{top}" y2="{ys(0):.1f}"/>')
        weight = ' font-weight="bold"' if what == "metric" else ""
        parts.append(
            f'<text x="{cx:.1f}" y="{height - 22}" text-anchor="middle"{weight}>'
            f"{escape(_short(a.name, 18))}</text>"
        )
        ticks = a.ticks()
        if a.numeric and len(ticks) > 2:
            ticks = [ticks[0], ticks[-1]]
        every = max(1, math.ceil(len(ticks) / 8))
        for j, (p, text) in enumerate(ticks):
            if j % every == 0:
                parts.append(
                    f'<text x="{cx + 4:.1f}" y="{ys(p) + 3:.1f}">{escape(_short(text, 10))}</text>'
                )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- section
def results_html(res: Results) -> str:
    # Sorted by task key once: every sample below is a prefix of this order.
    done = sorted(
        (r for r in res.rows if r.state is TaskState.COMPLETED and r.metrics),
        key=lambda r: r.task.key,
    )
    completed = res.completed
    if not done:
        return (
            f'<p class="muted">No metrics in the {completed} completed tasks. hsm reads a '
            "Hydra job's return value, JSON files in each task's <code>results/</code> "
            "folder, and otherwise the last <code>key=value</code> lines a task printed "
            "(<code>hsm results SWEEP</code> lists them).</p>"
        )
    parts = [_table(res, done, completed)]
    metrics = [
        m for m in res.metrics if len({r.metrics[m] for r in done if finite(r.metrics.get(m))}) > 1
    ][:PLOT_METRICS]
    param_axes: list[_Axis] = []
    for p in res.params:
        a = _param_axis(p, [r.values.get(p) for r in done])
        if a is not None:
            param_axes.append(a)
    shown_params = param_axes[:PLOT_PARAMS]
    notes = []
    if len(done) > POINTS:
        notes.append(
            f"points show a fixed sample of {POINTS} of the {len(done):,} tasks; boxes and "
            "red median lines use every task"
        )
    if len(param_axes) > PLOT_PARAMS:
        notes.append(f"{len(param_axes) - PLOT_PARAMS} more swept parameters not plotted")
    if notes:
        parts.append(f'<p class="muted">{escape("; ".join(notes))}.</p>')
    if not metrics or not shown_params:
        parts.append(
            '<p class="muted">No plot: the metrics or the parameters do not vary over the '
            "completed tasks.</p>"
        )
        return "".join(parts)
    metric_axes = {}
    for m in metrics:
        vals = [r.metrics[m] for r in done if finite(r.metrics.get(m))]
        metric_axes[m] = _numeric_axis(m, vals, allow_log=False)
    for m in metrics:
        rows = [r for r in done if finite(r.metrics.get(m))]
        plots = []
        for a in shown_params:
            draw = _scatter if a.numeric else _box
            plots.append(draw(rows, res, m, a.name, a, metric_axes[m]))
        parts.append(f'<div class="rplots">{"".join(plots)}</div>')
    axes: list[tuple[str, _Axis]] = [("param", a) for a in shown_params]
    axes += [("metric", metric_axes[m]) for m in metrics]
    shown = min(len(done), LINES)
    parts.append(
        f'<h3>Parallel coordinates</h3><p class="muted">One line per task ({shown:,} of '
        f"{len(done):,}), across the swept parameters and the metrics (bold).</p>"
        f'<div class="chart">{_parallel(done, res, axes)}</div>'
    )
    return "".join(parts)


def _table(res: Results, done: Sequence[TaskResult], completed: int) -> str:
    rows = []
    for m in res.metrics[:TABLE_METRICS]:
        have = [r for r in done if finite(r.metrics.get(m))]
        if not have:
            continue
        lo = min(have, key=lambda r: r.metrics[m])
        hi = max(have, key=lambda r: r.metrics[m])
        med = statistics.median(r.metrics[m] for r in have)
        rows.append(
            f'<tr><td>{escape(m)}</td><td class="n">{len(have):,}</td>'
            f'<td class="n">{lo.metrics[m]:.4g}</td><td>{escape(lo.name)}</td>'
            f'<td class="n">{med:.4g}</td>'
            f'<td class="n">{hi.metrics[m]:.4g}</td><td>{escape(hi.name)}</td></tr>'
        )
    more = len(res.metrics) - TABLE_METRICS
    tail = f'<p class="muted">… and {more} more metrics: hsm results SWEEP</p>' if more > 0 else ""
    head = (
        "<tr><th>metric</th><th>tasks</th><th>min</th><th>task</th><th>median</th>"
        "<th>max</th><th>task</th></tr>"
    )
    origin = sorted({o for r in done for o in r.origin.values()})
    return (
        f"<p>{len(done):,} of {completed:,} completed tasks have metrics (from "
        f"{escape(', '.join(origin[:4]))}{', ...' if len(origin) > 4 else ''}). "
        "<code>hsm results SWEEP --sort METRIC</code> lists every task.</p>"
        f"<table>{head}{''.join(rows)}</table>{tail}"
    )
