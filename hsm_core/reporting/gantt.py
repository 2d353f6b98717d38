"""An SVG timeline (Gantt chart) of every attempt, one band of lanes per source.

Each attempt is drawn from the moment it was ASSIGNED (pale: waiting in a queue or being
started) through RUNNING to its end (solid, coloured by state). Attempts are packed into
lanes greedily, so a source's band has as many lanes as it ran attempts at once: its slots
as they were really used. Plain SVG, no script: the page works offline and anywhere.

The attempts stream from the journal in start order, one source at a time; a band with
more attempts than pixels keeps only per-pixel tallies (`_Aggregate`), so the timeline of
100,000 attempts costs no object per attempt.
"""

from __future__ import annotations

import heapq
import itertools
import math
from array import array
from collections import Counter
from collections.abc import Callable
from html import escape

from hsm_core.model import TaskState
from hsm_core.reporting.performance import span
from hsm_core.reporting.sweepdata import Bar, SweepData

STATE_COLOURS = {
    TaskState.PENDING: "#9aa0a6",
    TaskState.ASSIGNED: "#46b3c8",
    TaskState.RUNNING: "#2f6fd6",
    TaskState.COMPLETED: "#2e9d4f",
    TaskState.FAILED: "#d1352b",
    TaskState.LOST: "#e8a317",
    TaskState.CANCELLED: "#8e5ea2",
}
LABEL_W = 110  # left margin for source names
BAND_MAX_H = 260  # a source with many lanes gets thinner lanes, not a taller band
_NICE_STEPS = (
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    14400,
    43200,
)


def css() -> str:
    """Style rules for the chart's state classes (the page includes them once)."""
    rules = [f".g-{s.value} {{ fill: {c}; }}" for s, c in STATE_COLOURS.items()]
    rules.append(".g-wait { fill: #c9d3df; }")
    rules.append(".g-axis { stroke: #bbb; stroke-width: 1; }")
    rules.append(".g-grid { stroke: #eee; stroke-width: 1; }")
    rules.append(".g-label { font: 12px sans-serif; fill: #333; }")
    rules.append(".g-tick { font: 10px sans-serif; fill: #666; }")
    return "\n".join(rules)


def _fmt_clock(seconds: float, total: float) -> str:
    if total < 120:
        return f"{round(seconds, 1):g} s"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _step(total: float, max_ticks: int = 10) -> float:
    for step in _NICE_STEPS:
        if total / step <= max_ticks:
            return float(step)
    return float(math.ceil(total / max_ticks / 86400) * 86400)


class _Packer:
    """Greedy interval packing of bars that come ordered by (start, end): each goes to
    the lane that has been free longest, or a new lane; the fewest lanes such that no two
    bars in a lane overlap."""

    def __init__(self) -> None:
        self.free: list[tuple[float, int]] = []  # (end time, lane)
        self.lanes = 0

    def place(self, bar: Bar) -> int:
        if self.free and self.free[0][0] <= bar.start:
            _, lane = heapq.heappop(self.free)
        else:
            lane = self.lanes
            self.lanes += 1
        heapq.heappush(self.free, (bar.end, lane))
        return lane


# Worst first: the colour a pixel of an aggregated lane gets when attempts share it.
_SEVERITY = (
    TaskState.FAILED,
    TaskState.LOST,
    TaskState.CANCELLED,
    TaskState.RUNNING,
    TaskState.ASSIGNED,
    TaskState.COMPLETED,
    TaskState.PENDING,
)
AGGREGATE_ABOVE = 2  # attempts per pixel of width in a source's band


_Tallies = dict[int, dict[TaskState, "array[int]"]]  # lane -> state -> per pixel


class _Aggregate:
    """One band drawn as runs of pixels: per lane and state, +1/-1 where its attempts
    begin and end covering pixels (a running sum tells which states cover a pixel), and
    how many begin in each pixel. Memory: lanes x states x pixels, whatever the count
    of attempts."""

    def __init__(self, px: Callable[[float], float], plot_w: float) -> None:
        self.px = px
        self.cols = int(plot_w)
        self.cover: _Tallies = {}
        self.starts: _Tallies = {}

    def _col(self, t: float) -> int:
        return min(self.cols - 1, max(0, int(self.px(t))))

    def _row(self, table: _Tallies, lane: int, state: TaskState) -> array[int]:
        per = table.setdefault(lane, {})
        row = per.get(state)
        if row is None:
            row = per[state] = array("l", bytes(8 * (self.cols + 1)))
        return row

    def add(self, lane: int, bar: Bar) -> None:
        c0, c1 = self._col(bar.start), self._col(bar.end)
        diff = self._row(self.cover, lane, bar.state)
        diff[c0] += 1
        diff[c1 + 1] -= 1
        self._row(self.starts, lane, bar.state)[c0] += 1

    def svg(self, top: float, lane_h: float, gap: float) -> list[str]:
        out: list[str] = []
        for lane in sorted(self.cover):
            cover, starts = self.cover[lane], self.starts[lane]
            running = dict.fromkeys(cover, 0)
            runs: list[tuple[int, int, TaskState, Counter[TaskState]]] = []
            for c in range(self.cols):
                for s, diff in cover.items():
                    running[s] += diff[c]
                worst = next((s for s in _SEVERITY if running.get(s)), None)
                if worst is None:
                    continue
                begun = Counter({s: row[c] for s, row in starts.items() if row[c]})
                if runs and runs[-1][2] is worst and runs[-1][1] == c:
                    runs[-1][3].update(begun)
                    runs[-1] = (runs[-1][0], c + 1, worst, runs[-1][3])
                else:
                    runs.append((c, c + 1, worst, begun))
            y = top + lane * lane_h
            for c0, c1, state, tally in runs:
                tip = ", ".join(f"{n} {s.value.lower()}" for s, n in tally.most_common())
                out.append(
                    f'<rect class="g-{state.value}" x="{LABEL_W + c0}" y="{y:.1f}" '
                    f'width="{c1 - c0}" height="{lane_h - gap:.1f}">'
                    f"<title>{tip or 'continued'}</title></rect>"
                )
        return out


def gantt_svg(data: SweepData, width: int = 1100) -> str:
    t0, t1 = span(data)
    if t0 is None or t1 is None:
        return '<p class="muted">No task has started yet: nothing to draw.</p>'
    total = max(t1 - t0, 1e-3)
    plot_w = width - LABEL_W - 10

    def x(t: float) -> float:
        return LABEL_W + (t - t0) / total * plot_w

    parts: list[str] = []
    y = 24.0
    limit = AGGREGATE_ABOVE * plot_w
    # One source's bars at a time, as the journal streams them (ordered by start):
    # at most `limit` of them kept, beyond that only the per-pixel tallies.
    for source, rows in itertools.groupby(data.bars(t1), key=lambda r: r[0]):
        packer = _Packer()
        placed: list[tuple[int, Bar]] = []
        agg: _Aggregate | None = None
        for _, bar in rows:
            lane = packer.place(bar)
            if agg is not None:
                agg.add(lane, bar)
                continue
            placed.append((lane, bar))
            if len(placed) > limit:
                # More attempts than pixels: one bar per lane and run of pixels of one
                # colour (the worst outcome in them), with what it stands for in its tooltip.
                agg = _Aggregate(lambda t: x(t) - LABEL_W, plot_w)
                for lane_, bar_ in placed:
                    agg.add(lane_, bar_)
                placed = []
        lanes = packer.lanes
        lane_h = max(2.0, min(14.0, BAND_MAX_H / lanes))
        band_h = lanes * lane_h
        parts.append(f'<line class="g-axis" x1="{LABEL_W}" y1="{y - 3:.1f}" x2="{width - 10}" ')
        parts.append(f'y2="{y - 3:.1f}"/>')
        short = source if len(source) <= 15 else source[:14] + "…"
        parts.append(f'<text class="g-label" x="4" y="{y + 10:.1f}">{escape(short)}')
        parts.append(f"<title>{escape(source)}</title></text>")
        parts.append(f'<text class="g-tick" x="4" y="{y + 23:.1f}">{lanes} at once</text>')
        band_h = max(band_h, 26.0)
        gap = 1.0 if lane_h >= 4 else 0.0
        if agg is not None:
            parts += agg.svg(y, lane_h, gap)
            y += band_h + 18
            continue
        names = data.names(bar.key for _, bar in placed)
        for lane, bar in placed:
            top = y + lane * lane_h
            h = lane_h - gap
            run_s = (bar.end - bar.run) if bar.run is not None else 0.0
            wait_s = (bar.run - bar.start) if bar.run is not None else bar.end - bar.start
            name = names.get(bar.key, bar.key)
            tip = f"{name} #{bar.attempt} {bar.state.value} run {run_s:.1f} s, wait {wait_s:.1f} s"
            if bar.error:
                tip += f": {bar.error[:120]}"
            run_from = bar.run if bar.run is not None else bar.end
            if run_from > bar.start:
                w = max(x(run_from) - x(bar.start), 0.5)
                parts.append(
                    f'<rect class="g-wait" x="{x(bar.start):.1f}" y="{top:.1f}" '
                    f'width="{w:.1f}" height="{h:.1f}"/>'
                )
            w = max(x(bar.end) - x(run_from), 1.0)
            parts.append(
                f'<rect class="g-{bar.state.value}" x="{x(run_from):.1f}" y="{top:.1f}" '
                f'width="{w:.1f}" height="{h:.1f}"><title>{escape(tip)}</title></rect>'
            )
        y += band_h + 18
    # time axis at the bottom, with grid lines through every band
    step = _step(total)
    ticks: list[str] = []
    for i in range(int(total / step + 1e-9) + 1):
        t = i * step
        xt = x(t0 + t)
        ticks.append(f'<line class="g-grid" x1="{xt:.1f}" y1="16" x2="{xt:.1f}" y2="{y:.1f}"/>')
        ticks.append(
            f'<text class="g-tick" x="{xt:.1f}" y="{y + 12:.1f}" text-anchor="middle">'
            f"{_fmt_clock(t, total)}</text>"
        )
    height = y + 20
    legend = []
    lx = LABEL_W
    for state in (
        TaskState.COMPLETED,
        TaskState.FAILED,
        TaskState.LOST,
        TaskState.CANCELLED,
        TaskState.RUNNING,
    ):
        legend.append(f'<rect class="g-{state.value}" x="{lx}" y="2" width="10" height="10"/>')
        legend.append(f'<text class="g-tick" x="{lx + 14}" y="11">{state.value.lower()}</text>')
        lx += 90
    legend.append(f'<rect class="g-wait" x="{lx}" y="2" width="10" height="10"/>')
    legend.append(f'<text class="g-tick" x="{lx + 14}" y="11">assigned, waiting</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" '
        f'viewBox="0 0 {width} {height:.0f}" role="img" aria-label="timeline of every task">'
        + "".join(legend)
        + "".join(ticks)
        + "".join(parts)
        + "</svg>"
    )
