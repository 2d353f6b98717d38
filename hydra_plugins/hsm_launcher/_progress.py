"""The live progress bar of a launch, on an interactive terminal only."""

from __future__ import annotations

import os
import sys
from typing import Any

from hsm_core.model import TaskState


class _Progress:
    def __init__(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("hsm"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            transient=True,
        )
        self.task = self.bar.add_task("jobs", total=total, detail="")
        self.bar.start()

    def __call__(self, engine: Any) -> None:
        counts = engine.counts()
        done = sum(
            counts.get(s, 0) for s in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)
        )
        failed = counts.get(TaskState.FAILED, 0)
        running = counts.get(TaskState.RUNNING, 0)
        detail = f"running {running}" + (f", failed {failed}" if failed else "")
        self.bar.update(self.task, completed=done, detail=detail)

    def close(self) -> None:
        self.bar.stop()


def progress_bar(total: int) -> _Progress | None:
    """A live bar on an interactive terminal only (logs and CI stay clean)."""
    if not sys.stderr.isatty() or os.environ.get("TERM") == "dumb":
        return None
    return _Progress(total)
