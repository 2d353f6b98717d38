"""rich renderables for `hsm monitor`: the watch frame, the health table, error groups."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from hsm_core.cli.render import STATE_STYLE
from hsm_core.model import NOT_PLACED, TaskState
from hsm_core.reporting.monitor import Frame, SourceLine

if TYPE_CHECKING:
    from hsm_core.reporting.health_timeline import Timelines
    from hsm_core.reporting.source_health import SourceCheck

BAR_WIDTH = 32
# Order of the segments in a state bar: what is settled first, then what is in flight.
_BAR_ORDER = (
    TaskState.COMPLETED,
    TaskState.FAILED,
    TaskState.LOST,
    TaskState.CANCELLED,
    TaskState.RUNNING,
    TaskState.ASSIGNED,
)
_HEALTH_STYLE = {"ok": "green", "healthy": "green", "warning": "yellow", "failing": "yellow"}


def _at(when: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when)) if when else "-"


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def state_bar(counts: dict[TaskState, int], width: int = BAR_WIDTH) -> Text:
    """A bar split by state (green done, red failed, blue running, dim still to do)."""
    total = sum(counts.values())
    bar = Text()
    if not total:
        return Text("─" * width, style="dim")
    used = 0
    for state in _BAR_ORDER:
        n = counts.get(state, 0)
        cells = round(n / total * width)
        if n and not cells:
            cells = 1
        cells = min(cells, width - used)
        if cells:
            bar.append("━" * cells, style=STATE_STYLE[state])
            used += cells
    bar.append("━" * (width - used), style="bright_black")
    return bar


def _source_row(line: SourceLine, health: dict[str, Any]) -> list[Any]:
    c = line.counts
    h = health.get(line.name)
    htext = Text("-", style="dim")
    if h is not None:
        htext = Text(h.state, style=_HEALTH_STYLE.get(h.state, "red"))
    return [
        line.name,
        state_bar(c),
        f"{line.done}/{line.total}",
        str(line.running),
        Text(str(c.get(TaskState.FAILED, 0)), style="red" if c.get(TaskState.FAILED) else ""),
        Text(str(c.get(TaskState.LOST, 0)), style="yellow" if c.get(TaskState.LOST) else ""),
        str(line.slots) if line.slots else "-",
        htext,
    ]


def frame_view(frame: Frame) -> Group:
    done, total = frame.done, frame.total
    pct = f"{done / total:.0%}" if total else "-"
    status = "[blue]running[/]" if frame.active else "[dim]not running[/]"
    head = Text.from_markup(
        f"[bold]sweep {frame.sweep_id}[/]  {status}  {done}/{total} settled ({pct})"
        f"  elapsed {clock(frame.elapsed_s)}"
    )
    if frame.mean_duration_s is not None:
        head.append(f"  mean task {frame.mean_duration_s:.1f} s")
    if frame.active:
        head.append(f"  ETA {clock(frame.eta_s)}" if frame.eta_s is not None else "  ETA -")
    counts = Text("  ".join(f"{s.value.lower()} {n}" for s, n in frame.counts.items() if n))
    health = {h.source: h for h in frame.health}

    table = Table(box=None, pad_edge=False, show_edge=False)
    for col, just in (
        ("source", "left"),
        ("progress", "left"),
        ("settled", "right"),
        ("running", "right"),
        ("failed", "right"),
        ("lost", "right"),
        ("slots", "right"),
        ("health", "left"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for line in frame.sources:
        table.add_row(*_source_row(line, health))
    table.add_row(
        "[bold]all",
        state_bar(frame.counts),
        f"[bold]{done}/{total}",
        str(frame.n_running),
        str(frame.counts.get(TaskState.FAILED, 0)),
        str(frame.counts.get(TaskState.LOST, 0)),
        "",
        "",
    )
    parts: list[Any] = [head, counts, table]

    if frame.running:
        run = Table(title=f"running ({frame.n_running})", title_justify="left", box=None)
        for col in ("task", "source", "state", "runtime"):
            run.add_column(col, justify="right" if col == "runtime" else "left")
        for r in frame.running:
            run.add_row(
                r.name,
                r.source or "-",
                Text(r.state.value.lower(), style=STATE_STYLE[r.state]),
                clock(r.runtime_s),
            )
        if frame.n_running > len(frame.running):
            run.add_row(f"… {frame.n_running - len(frame.running)} more", "", "", "")
        parts.append(run)

    if frame.failures:
        more = frame.n_failures - len(frame.failures)
        bad = Table(
            title=f"recent failures ({frame.n_failures})",
            title_justify="left",
            caption=f"... {more} more: hsm monitor errors {frame.sweep_id}" if more > 0 else None,
            caption_justify="left",
            box=None,
        )
        # Times, names and sources keep their width; the error text gives way first.
        bad.add_column("ended", no_wrap=True, min_width=8)
        bad.add_column("task", no_wrap=True, min_width=max(len(f.name) for f in frame.failures))
        width = max(len(f.source or NOT_PLACED) for f in frame.failures)
        bad.add_column("source", no_wrap=True, min_width=min(max(width, 6), 16))
        bad.add_column("cause", no_wrap=True, min_width=12)
        bad.add_column("error", no_wrap=True, overflow="ellipsis", ratio=1)
        for f in frame.failures:
            when = time.strftime("%H:%M:%S", time.localtime(f.ended)) if f.ended else "-"
            bad.add_row(
                when,
                f.name,
                f.source or NOT_PLACED,
                Text(f.cause, style=STATE_STYLE[f.state]),
                f.error[:160],
            )
        parts.append(bad)

    if frame.health:
        ht = Table(title="source health (logs/health_status.log)", title_justify="left", box=None)
        for col in ("source", "state", "at", "last message"):
            ht.add_column(col, overflow="fold")
        for h in frame.health:
            ht.add_row(
                h.source, Text(h.state, style=_HEALTH_STYLE.get(h.state, "red")), h.when, h.message
            )
        parts.append(ht)
    parts.append(Text(f"folder: {frame.sweep_dir}", style="dim"))
    return Group(*parts)


def health_view(rows: list[SourceCheck], title: str, timelines: Timelines | None = None) -> Group:
    """The numbers in a table; what each check said (and why a source is disabled) below
    it, one line per source, so that long messages stay readable in a narrow terminal.
    With `timelines` (--watch): when each source last failed, was disabled, re-enabled."""
    table = Table(title=title, title_justify="left", box=None)
    for col in ("source", "type", "state", "checked", "load/cpus", "mem free", "disk free"):
        table.add_column(col, no_wrap=True)
    table.add_column("GPUs")
    if timelines is not None:
        for col in ("last failure", "disabled", "re-enabled"):
            table.add_column(col, no_wrap=True)
    notes: list[Text] = []
    for r in rows:
        rep = r.report
        load = "-"
        if rep is not None and rep.load is not None:
            load = f"{rep.load:.2f}" + (f"/{rep.cpus}" if rep.cpus else "")
        mem = f"{rep.mem_free_gb:.1f} GB" if rep and rep.mem_free_gb is not None else "-"
        disk = f"{rep.disk_free_gb:.1f} GB" if rep and rep.disk_free_gb is not None else "-"
        gpus = ", ".join(rep.gpus) if rep and rep.gpus else "-"
        style = _HEALTH_STYLE.get(r.state, "red")
        cells: list[str | Text] = [
            r.name,
            r.type,
            Text(r.state, style=style),
            time.strftime("%H:%M:%S", time.localtime(r.checked)),
            load,
            mem,
            disk,
            gpus,
        ]
        tl = timelines.get(r.name) if timelines is not None else None
        if timelines is not None:
            cells += [_at(tl.last_failure if tl else None), _at(tl.disabled_at if tl else None),
                      _at(tl.reenabled_at if tl else None)]  # fmt: skip
        table.add_row(*cells)
        note = Text(f"{r.name}: ", style="bold")
        if r.disabled_reason:
            note.append(f"disabled: {r.disabled_reason}", style="red")
        else:
            note.append(r.detail or "-", style="" if r.ok else style)
        notes.append(note)
        if tl is not None and tl.last_failure is not None and r.ok:
            notes.append(Text(f"{r.name}: last failure: {tl.last_failure_detail}", style="dim"))
    return Group(table, *notes)
