"""Terminal rendering for the CLI (rich), kept apart from the logic it shows."""

from __future__ import annotations

import shlex
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from hsm_core.model import NOT_PLACED, PYTHON, TaskSpec, TaskState

if TYPE_CHECKING:
    from rich.console import Console

    from hsm_core.engine import SweepEngine
    from hsm_core.orchestrate import RunOutcome
    from hsm_core.store import SweepStore

STATE_STYLE = {
    TaskState.PENDING: "dim",
    TaskState.ASSIGNED: "cyan",
    TaskState.RUNNING: "blue",
    TaskState.COMPLETED: "green",
    TaskState.FAILED: "red",
    TaskState.LOST: "yellow",
    TaskState.CANCELLED: "magenta",
}


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def task_table(tasks: Iterable[TaskSpec], count: int, cwd_root: Path) -> None:
    """Dry run: one line per task with its exact argv. Plain text on purpose: it must stay
    fast for 10,000 tasks and be easy to grep; written as the tasks are made, so a big
    grid starts printing at once (and Ctrl-C stops it)."""
    out = sys.stdout
    out.write(f"{count} tasks (dry run, nothing started)\n")
    for t in tasks:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in t.env)
        cwd = "" if t.cwd in ("", ".") else f"(cd {shlex.quote(t.cwd)}) "
        argv = [sys.executable if a == PYTHON else a for a in t.argv]
        line = shlex.join(argv) if argv else f"<hydra job {t.payload}>"
        out.write(f"{t.name}  {cwd}{env + ' ' if env else ''}{line}\n")


class LiveProgress:
    """A progress bar with per-state counts while a sweep runs; silent when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self._progress: Any = None
        self._bar: Any = None

    def __enter__(self) -> LiveProgress:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]sweep"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[states]}"),
                TimeElapsedColumn(),
                console=console(),
                transient=False,
            )
            self._bar = self._progress.add_task("sweep", total=self.total, states="")
            self._progress.start()
        return self

    def update(self, engine: SweepEngine) -> None:
        if not self._progress:
            return
        counts = engine.counts()
        done = sum(n for s, n in counts.items() if s.terminal)
        states = "  ".join(
            f"[{STATE_STYLE[s]}]{s.value.lower()} {n}[/]" for s, n in counts.items() if n
        )
        self._progress.update(self._bar, completed=done, states=states)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress:
            self._progress.stop()


def counts_table(
    title: str, counts: dict[TaskState, int], by_source: dict[str, Counter[str]]
) -> Any:
    """The title on a line of its own (a table title wraps to the table's width, which
    cut sweep ids), then sources x states, the not placed tasks last."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table()
    table.add_column("source")
    states = [s for s in TaskState if counts.get(s)]
    for s in states:
        table.add_column(s.value.lower(), justify="right", style=STATE_STYLE[s])
    table.add_column("total", justify="right")
    for src, c in sorted(by_source.items(), key=lambda kv: (kv[0] == NOT_PLACED, kv[0])):
        table.add_row(src, *(str(c.get(s.value, 0)) for s in states), str(sum(c.values())))
    table.add_row(
        "[bold]all",
        *(f"[bold]{counts.get(s, 0)}" for s in states),
        f"[bold]{sum(counts.values())}",
    )
    return Group(Text.from_markup(title), table)


def per_source(store: SweepStore) -> dict[str, Counter[str]]:
    return {
        src: Counter({s.value: n for s, n in by_state.items()})
        for src, by_state in store.counts_by_source().items()
    }


def summary(store: SweepStore, outcome: RunOutcome, limit: int = 20) -> None:
    """End-of-run summary: counts per state and source, then each task that did not
    complete, with the log it left (only a log that exists: a task that never started has
    none). Paths go on lines of their own, never wrapped, so they copy whole."""
    from rich.markup import escape

    con = console()
    counts = store.counts()
    title = f"sweep {store.sweep_id} ({outcome.seconds:.1f} s)"
    if outcome.cancelled:
        title += " [magenta]cancelled"
    con.print(counts_table(title, counts, per_source(store)))
    # The tasks not COMPLETED only, the first `limit` of them: not every task of the sweep.
    n_bad, bad = store.not_completed(limit)
    for name, a in bad:
        where = f"on {a.source}" if a.source else NOT_PLACED
        error = f": {escape(a.error)}" if a.error else ""
        con.print(
            f"[{STATE_STYLE[a.state]}]{a.state.value:9}[/] {name} {escape(where)}{error}",
            soft_wrap=True,
        )
        log = task_log(store.sweep_dir / "tasks" / name)
        if log is not None:
            con.print(f"          [dim]{escape(str(log))}", soft_wrap=True)
    if n_bad > limit:
        con.print(f"... and {n_bad - limit} more: `hsm status {store.sweep_dir}`", soft_wrap=True)
    not_started(con, store, outcome.not_started, finished=not bad)
    con.print(f"sweep folder: {escape(str(store.sweep_dir))}", soft_wrap=True)
    if bad and not outcome.not_started:  # else not_started() said how to finish
        con.print(escape(finish_hint(store.sweep_dir, [a.state for _, a in bad])), soft_wrap=True)


def task_log(task_dir: Path) -> Path | None:
    """The log that tells why a task ended: stderr.log, or stdout.log when only it holds
    something; None when neither exists (a task that never started)."""
    sizes: dict[str, int] = {}
    for name in ("stderr.log", "stdout.log"):
        try:
            sizes[name] = (task_dir / name).stat().st_size
        except OSError:
            continue
    if not sizes:
        return None
    if not sizes.get("stderr.log") and sizes.get("stdout.log"):
        return task_dir / "stdout.log"
    return task_dir / next(iter(sizes))


def not_started(con: Console, store: SweepStore, reasons: dict[str, str], finished: bool) -> None:
    """Sources that never started in this run, why, and how to use them once back."""
    from rich.markup import escape

    for name, why in sorted(reasons.items()):
        con.print(f"[yellow]never started[/] {escape(name)}: {escape(why)}", soft_wrap=True)
    if reasons and not finished:
        names = ",".join(sorted(reasons))
        con.print(
            "once they are back: "
            + escape(f"hsm complete {shlex.quote(str(store.sweep_dir))} --sources {names}"),
            soft_wrap=True,
        )


def finish_hint(sweep_dir: Path, states: Sequence[TaskState]) -> str:
    """The `hsm complete` line that finishes a cancelled or partly failed sweep."""
    folder = shlex.quote(str(sweep_dir))
    if any(s is TaskState.FAILED for s in states):
        rest = len(states) - sum(s is TaskState.FAILED for s in states)
        other = f" (and the {rest} that did not run)" if rest else ""
        return f"to run the failed tasks again{other}: hsm complete {folder} --retry-failed"
    return f"to finish the sweep: hsm complete {folder}"
