"""Failed and lost tasks of a sweep, each classified from its logs, grouped by cause.

A task counts here when its newest attempt is FAILED or LOST (a task retried into success
is not a failure; `recovered` counts those). Logs are read from the attempt's folder:
stderr.log first, then scheduler files (`*.err`), then hsm's worker record of a Hydra job
(hsm_core.taskdir; a task's own `result.json` is never read as hsm's); stdout.log only
when none of those names an exception (some programs print errors there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm_core.model import TaskState
from hsm_core.reporting.errors_analysis import Cause, classify, exception_line, traceback_tail
from hsm_core.reporting.sweepdata import SweepData
from hsm_core.taskdir import STDERR, STDOUT, read_tail, read_worker_record

READ_BYTES = 64 * 1024  # the end of a log holds the traceback; huge logs are not read whole
_LOG_SUFFIXES = (".log", ".err", ".out")


@dataclass(frozen=True)
class Failure:
    name: str
    key: str
    attempt: int
    state: TaskState
    source: str | None
    exit_code: int | None
    error: str | None
    params: Mapping[str, Any]
    cause: Cause
    tail: str  # representative end of the traceback / log
    logs: tuple[Path, ...]
    ended: float | None


@dataclass
class ErrorGroup:
    cause: Cause  # of the first member; members share category and detail
    failures: list[Failure] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.cause.label

    @property
    def count(self) -> int:
        return len(self.failures)

    @property
    def representative(self) -> Failure:
        """The first member whose logs hold a traceback, else the first member."""
        for f in self.failures:
            if "Traceback" in f.tail:
                return f
        return self.failures[0]

    @property
    def keys(self) -> set[str]:
        return {f.key for f in self.failures}


@dataclass(frozen=True)
class ErrorAnalysis:
    groups: list[ErrorGroup]  # largest first
    failed: int
    lost: int
    recovered: int  # tasks that failed or were lost at least once, then completed
    finished_keys: frozenset[str]  # COMPLETED, FAILED or LOST: the population for patterns

    @property
    def failures(self) -> list[Failure]:
        return [f for g in self.groups for f in g.failures]


def attempt_logs(folder: Path) -> tuple[str, list[Path]]:
    """(text to classify, log files present) for one attempt's folder."""
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError:
        return "", []
    paths = [folder / n for n in names if n.endswith(_LOG_SUFFIXES) and not n.startswith(".")]
    first = [p for p in paths if p.name == STDERR]
    errs = [p for p in paths if p.name.endswith(".err")]
    text = "\n".join(t for t in (read_tail(p, READ_BYTES) for p in first + errs) if t)
    if not exception_line(text):
        # The worker's own record of the error: only when the logs do not already say it.
        text = "\n".join(t for t in (text, _worker_text(folder)) if t)
    if not exception_line(text):
        stdout = [p for p in paths if p.name == STDOUT or p.name.endswith(".out")]
        text = "\n".join([text, *(read_tail(p, READ_BYTES) for p in stdout)]).strip("\n")
    ordered = first + errs + [p for p in paths if p not in first and p not in errs]
    return text, ordered


def _worker_text(folder: Path) -> str:
    # An older hsm's record was result.json: read only in the worker's shape.
    data = read_worker_record(folder, legacy=True)
    if data is None:
        return ""
    parts = [str(data[k]) for k in ("traceback", "error") if data.get(k)]
    return "\n".join(parts)


def analyze(data: SweepData) -> ErrorAnalysis:
    """Classify every task whose newest attempt FAILED or was LOST, and group them.
    (The population for the patterns, `finished_keys`, is read only when there are
    failures: a sweep without any needs no set of every task.)"""
    groups: dict[tuple[str, str], ErrorGroup] = {}
    failed = lost = 0
    for row in data.failed():
        failed += row.state is TaskState.FAILED
        lost += row.state is TaskState.LOST
        folder = data.attempt_dir(row.name, row.attempt, row.attempt)
        text, logs = attempt_logs(folder)
        cause = classify(row.state, row.exit_code, row.error, text)
        tail = traceback_tail(text) if text else (row.error or "")
        failure = Failure(
            name=row.name,
            key=row.key,
            attempt=row.attempt,
            state=row.state,
            source=row.source,
            exit_code=row.exit_code,
            error=row.error,
            params=data.params_of(row.key),
            cause=cause,
            tail=tail,
            logs=tuple(logs),
            ended=row.ended,
        )
        groups.setdefault(cause.group, ErrorGroup(cause)).failures.append(failure)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.label))
    finished = data.finished_keys() if groups else frozenset()
    return ErrorAnalysis(ordered, failed, lost, data.recovered(), finished)
