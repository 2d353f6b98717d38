"""The table the hsm sweeper prints at the end: jobs per state and per source, and every
failed job with its log."""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

STATES = ("COMPLETED", "FAILED", "LOST", "CANCELLED", "PENDING", "RUNNING")
MAX_LISTED = 20


def _store_rows(sweep_dir: Path, nums: set[int]) -> dict[int, tuple[str, str, str | None, str]]:
    """num -> (state, source, error, task name) from the sweep's journal, if there is one."""
    if not (sweep_dir / "sweep.db").is_file():
        return {}
    from hsm_core.store import SweepStore

    store = SweepStore.open(sweep_dir, readonly=True)
    try:
        job_nums = store.meta("hydra_job_nums") or {}
        latest = store.latest_attempts()
        out = {}
        for task in store.tasks():
            num = job_nums.get(task.key)
            att = latest.get(task.key)
            if num is None or int(num) not in nums or att is None:
                continue
            out[int(num)] = (att.state.value, att.source or "-", att.error, task.name)
        return out
    finally:
        store.close()


def _job_log(sweep_dir: Path, ret: JobReturn | None, task_name: str | None) -> str:
    if task_name:
        from hsm_core.hydra.job import read_info

        info = read_info(sweep_dir / "tasks" / task_name) or {}
        if info.get("log"):
            return str(info["log"])
    if ret is not None and ret.working_dir and ret.task_name:
        return str(Path(ret.working_dir) / f"{ret.task_name}.log")
    return "-"


def report(
    sweep_dir: Path,
    all_jobs: Sequence[Sequence[str]],
    plan: Any,
    returns: Sequence[JobReturn],
    interrupted: bool,
    resume: str | None = None,
) -> int:
    """Print the summary; return how many jobs of this sweep did not complete. `resume`:
    what finishes the sweep, when not the hsm sweeper's own `resume_hint`."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    launched = list(plan.jobs)
    by_num: dict[int, JobReturn] = {}
    for (num, _), ret in zip(
        launched, returns[len(plan.done) :] if plan.done else returns, strict=False
    ):
        by_num[num] = ret
    nums = {n for n, _ in launched} | {n for n, _ in plan.done}
    rows = _store_rows(sweep_dir, nums)
    state_of: dict[int, str] = {}
    source_of: dict[int, str] = {}
    for num, _ in plan.done:
        state_of[num], source_of[num] = "COMPLETED", rows.get(num, ("", "-", None, ""))[1]
    for num, _ in launched:
        if num in rows:
            state_of[num], source_of[num] = rows[num][0], rows[num][1]
            if source_of[num] == "-":
                source_of[num] = "(not started)"
        elif num in by_num:
            ok = by_num[num].status is JobStatus.COMPLETED
            state_of[num], source_of[num] = ("COMPLETED" if ok else "FAILED"), "-"
        else:
            state_of[num], source_of[num] = ("CANCELLED" if interrupted else "PENDING"), "-"
    for num, ret in by_num.items():  # a stored COMPLETED whose JobReturn says FAILED
        if ret.status is not JobStatus.COMPLETED and state_of[num] == "COMPLETED":
            state_of[num] = "FAILED"

    con = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    counts = Counter(state_of.values())
    head = ", ".join(f"{counts[s]} {s.lower()}" for s in STATES if counts[s])
    resumed = f" ({len(plan.done)} done before)" if plan.done else ""
    folder = escape(str(sweep_dir))
    con.print(f"[bold]hsm sweep[/]: {len(all_jobs)} jobs: {head}{resumed}  [dim]{folder}[/]")
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("source")
    present = [s for s in STATES if counts[s]]
    for s in present:
        table.add_column(s.lower(), justify="right")
    table.add_column("total", justify="right")
    per_source: dict[str, Counter[str]] = {}
    for num, state in state_of.items():
        per_source.setdefault(source_of[num], Counter())[state] += 1
    for source in sorted(per_source):
        c = per_source[source]
        table.add_row(source, *(str(c[s]) for s in present), str(sum(c.values())))
    con.print(table)
    bad = sorted(n for n, s in state_of.items() if s != "COMPLETED")
    if bad:
        jobs = dict(launched)
        con.print("[bold red]not completed[/]:")
        for num in bad[:MAX_LISTED]:
            row = rows.get(num)
            found = by_num.get(num)
            error = row[2] if row and row[2] else _error_of(found)
            log = _job_log(sweep_dir, found, row[3] if row else None)
            overrides = escape(" ".join(jobs.get(num, [])))
            con.print(f"  #{num} {state_of[num]} [dim]{overrides}[/] {escape(error or '')}")
            con.print(f"      log: {escape(log)}")
        if len(bad) > MAX_LISTED:
            con.print(f"  ... and {len(bad) - MAX_LISTED} more (hsm status {sweep_dir})")
    if bad:
        text = resume if resume is not None else resume_hint(sweep_dir, len(bad), interrupted)
        # soft_wrap: a command cut across lines cannot be pasted
        con.print(escape(text), soft_wrap=True)
    return len(bad)


def rerun_command(sweep_dir: Path, sweeper: str | None = None) -> str:
    """The command this process was started with, pointed at `sweep_dir`: the hsm sweeper
    then keeps the completed jobs and runs the others (with Hydra's default timestamped
    dirs the same command alone would start a new sweep in a new dir)."""
    import shlex

    from hsm_core.overrides import format_override

    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    keys: tuple[str, ...] = ("hydra.sweep.dir=", "+hydra.sweep.dir=", "++hydra.sweep.dir=")
    if sweeper is not None:
        keys += ("hydra/sweeper=",)
    argv = [a for a in argv if not a.startswith(keys)]
    if sweeper is not None:
        argv.append(f"hydra/sweeper={sweeper}")
    path = str(sweep_dir)
    # A plain path needs no quotes in Hydra's grammar: one quoting layer (the shell's) less.
    plain = re.fullmatch(r"[\w/.+@%-]+", path)
    argv.append(f"hydra.sweep.dir={path}" if plain else format_override("hydra.sweep.dir", path))
    return shlex.join(argv)


def launch_interrupted_hint(sweep_dir: Path, sweeper_target: str, payload: bool) -> str:
    """After Ctrl-C under another sweeper than hsm's: the same command would run every
    job again (a launcher runs what it is given), so point at what finishes the sweep."""
    import shlex

    folder = shlex.quote(str(sweep_dir))
    head = f"cancelled: completed jobs are kept in {folder}."
    basic = sweeper_target.endswith("BasicSweeper")
    with_hydra = rerun_command(sweep_dir, sweeper="hsm") if basic else ""
    if payload and with_hydra:
        return (
            f"{head} To finish the others: hsm complete {folder} (without Hydra), "
            f"or with Hydra: {with_hydra}"
        )
    if payload:
        return f"{head} To finish the others: hsm complete {folder}"
    if with_hydra:
        return f"{head} To finish the others: {with_hydra}"
    return head


def resume_hint(sweep_dir: Path, left: int, interrupted: bool) -> str:
    """What to run to finish the sweep, ready to paste: the Hydra command (hsm sweeper),
    or `hsm complete` (without Hydra, from the stored payloads)."""
    import shlex

    folder = shlex.quote(str(sweep_dir))
    jobs = "1 job" if left == 1 else f"{left} jobs"
    # Without a stored payload (it could not be pickled) hsm complete cannot run them.
    payload = any((sweep_dir / "payload").glob("*.pkl"))
    if interrupted:
        alone = f"\nor without Hydra: hsm complete {folder}" if payload else ""
        return (
            f"interrupted: {jobs} did not complete (completed ones are kept). "
            f"To finish them:\n  {rerun_command(sweep_dir)}{alone}"
        )
    alone = f"; or without Hydra: hsm complete {folder} --retry-failed" if payload else ""
    return (
        f"to run the {jobs} that did not complete again (completed ones are kept):\n"
        f"  {rerun_command(sweep_dir)}\n"
        f"(after editing the app, add hydra.sweeper.resume=true to keep the completed jobs"
        f"{alone})"
    )


def _error_of(ret: JobReturn | None) -> str:
    if ret is None:
        return ""
    value = ret._return_value
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}".splitlines()[0]
    return ""
