"""Jobs' output on the terminal while a sweep runs, each line prefixed by its job.

Modes (`hydra.launcher.output`, `hsm run|complete --output`):
- `failed` (default): when a job fails, its error and the last lines of its stderr.log
  (or stdout.log), and where its full output is;
- `all`: every line of every job as it comes (`[#3] epoch 1 loss 0.41`), plus the above;
- `none`: nothing.

Where the lines come from depends on the source (`ComputeSource.live_output`): a task
folder on this machine that fills as the job runs (forked jobs, the local agent, a
cluster with a shared filesystem) is read every POLL_S; an ssh host's agent sends the
lines itself (`out` events); a remote cluster's folder comes back when the job ends, so
its lines are shown then.

Rate limit: at most `rate` lines a second over all jobs (a burst of BURST), shared fairly
between the jobs that have lines waiting; what is over is held back (it stays in the
task's files), counted, and said every NOTE_EVERY_S and at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

from hsm_core.model import TaskEvent, TaskSpec, TaskState

MODES = ("failed", "all", "none")
DEFAULT_RATE = 20.0  # lines per second, over all jobs
BURST = 60
POLL_S = 0.3
NOTE_EVERY_S = 10.0
TAIL_LINES = 12
FULL_TAILS = 5  # failures shown with their last lines; later ones with their error only
LINE_MAX = 400
READ_MAX = 1 << 20  # bytes of one log read per cycle
STREAMS = ("stdout", "stderr")

Write = Callable[[str], None]


def check_mode(value: Any, where: str) -> str:
    from hsm_core.errors import ConfigError

    if value not in MODES:
        raise ConfigError(
            f"unknown output mode {value!r}", key=where, hint=f"valid: {', '.join(MODES)}"
        )
    return str(value)


def add_arguments(p: Any) -> None:
    """`--output` and `--output-rate` for `hsm run` and `hsm complete`."""
    p.add_argument(
        "--output",
        choices=MODES,
        default="failed",
        help="tasks' output on the terminal: failed (each failed task's last lines, the "
        "default), all (every line as it comes, prefixed by its task), none",
    )
    p.add_argument(
        "--output-rate",
        type=_positive,
        default=DEFAULT_RATE,
        help=f"at most this many lines a second (default {DEFAULT_RATE:g}); the rest is "
        "held back and counted (every line stays in the task's stdout.log/stderr.log)",
    )


def _positive(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of lines per second > 0: {text!r}")
    return value


def _stdout(text: str) -> None:
    # Through sys.stdout: a live rich progress display redirects it above the bar.
    sys.stdout.write(text)
    sys.stdout.flush()


def clean(line: str) -> str:
    """What a terminal would show of a line: the last carriage-return segment (progress
    bars), without trailing blanks, cut to LINE_MAX."""
    if "\r" in line:
        parts = [p for p in line.split("\r") if p.strip()]
        line = parts[-1] if parts else ""
    line = line.rstrip()
    return line if len(line) <= LINE_MAX else line[: LINE_MAX - 3] + "..."


@dataclass
class _Watch:
    task: TaskSpec
    kind: str  # files: read its logs here; push: its source sends them; end: read at the end
    offsets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    partial: dict[str, str] = field(default_factory=lambda: dict.fromkeys(STREAMS, ""))
    held: int = 0  # lines of this job not shown


class _Limiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class JobOutput:
    """An orchestrate.Observer: attach it to a run with `run_sweep(..., observers=[...])`."""

    def __init__(
        self,
        mode: str,
        sweep_dir: Path,
        tasks: Mapping[str, TaskSpec],
        *,
        label: Callable[[TaskSpec], str] | None = None,
        rate: float = DEFAULT_RATE,
        write: Write = _stdout,
    ) -> None:
        self.mode = mode
        self.sweep_dir = sweep_dir
        self.tasks = tasks
        self.label = label or (lambda t: t.name)
        self.write = write
        self.limiter = _Limiter(max(rate, 0.1), BURST)
        self.rate = rate
        self._kinds: dict[str, str] = {}  # source name -> files | push | end | terminal
        self._watches: dict[str, _Watch] = {}  # task key -> its logs, while it runs
        self._pushed: dict[str, list[str]] = {}  # task key -> lines a source sent
        self._ending: list[tuple[str, TaskEvent]] = []
        self._lock = threading.Lock()  # the watches' offsets: read in a worker thread
        self._loop_task: asyncio.Task[None] | None = None
        self._failures = 0
        self.held_total = 0
        self.held_jobs: set[str] = set()
        self._held_since_note = 0
        self._next_note = time.monotonic() + NOTE_EVERY_S

    # ------------------------------------------------------------ observer
    def attach(self, engine: Any, sources: Sequence[Any], cancel: Callable[[], None]) -> None:
        if self.mode == "none":
            return
        for src in sources:
            kind = src.live_output()
            self._kinds[src.name] = kind
            if kind == "push" and self.mode == "all":
                src.output_to(self.pushed)
        late = sorted(name for name, kind in self._kinds.items() if kind == "end")
        if late and self.mode == "all":
            self.write(
                f"[hsm] {', '.join(late)}: a job's output is shown when it ends "
                "(its folder comes back from the cluster then)\n"
            )
        engine.listeners.append(self.on_event)
        self._loop_task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._loop_task is None:
            return
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        self._loop_task = None
        await self._cycle()  # what ended last
        if self.held_total:
            jobs = len(self.held_jobs)
            self.write(
                f"[hsm] {self.held_total} lines of {jobs} job{'s' if jobs != 1 else ''} were "
                f"held back (at most {self.rate:g} lines/s on the terminal); every line is in "
                f"{self.sweep_dir}/tasks/task_NNN/stdout.log and stderr.log\n"
            )

    # --------------------------------------------------------------- input
    def on_event(self, ev: TaskEvent) -> None:
        """An engine listener (on the event loop)."""
        if ev.source is None and ev.state is TaskState.CANCELLED:
            return  # never placed, so no output (Ctrl-C cancels a whole queue at once)
        task = self.tasks.get(ev.key)
        if task is None:
            return
        kind = self._kinds.get(ev.source or "", "files")
        if ev.state is TaskState.RUNNING:
            if self.mode == "all" and kind == "files":
                with self._lock:
                    self._watches[ev.key] = _Watch(task, kind)
            return
        if ev.state.terminal or ev.state is TaskState.LOST:
            self._ending.append((ev.key, ev))

    def pushed(self, key: str, stream: str, text: str, skipped: int = 0) -> None:
        """Lines a push source sent (on the event loop)."""
        watch = self._push_watch(key)
        if watch is None:
            return
        if skipped:
            watch.held += 1  # an unknown number of lines: counted as one gap
            self._count_held(key, 1)
        lines = self._split(watch, stream, text)
        self._pushed.setdefault(key, []).extend(lines)

    def _push_watch(self, key: str) -> _Watch | None:
        task = self.tasks.get(key)
        if task is None:
            return None
        with self._lock:
            watch = self._watches.get(key)
            if watch is None:
                watch = self._watches[key] = _Watch(task, "push")
        return watch

    @staticmethod
    def _split(watch: _Watch, stream: str, text: str, final: bool = False) -> list[str]:
        text = watch.partial[stream] + text
        *lines, rest = text.split("\n")
        if final and rest:
            lines.append(rest)
            rest = ""
        watch.partial[stream] = rest
        return [c for c in (clean(line) for line in lines) if c]

    # ---------------------------------------------------------------- loop
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await self._cycle()

    async def _cycle(self) -> None:
        ending, self._ending = self._ending, []
        if (
            not ending
            and not self._pushed
            and not any(w.kind == "files" for w in list(self._watches.values()))
        ):
            self._maybe_note()
            return  # nothing to read: no thread trip (the `failed` mode, most of the time)
        running, ended = await asyncio.to_thread(self._read, ending)
        pushed, self._pushed = self._pushed, {}
        for key, lines in pushed.items():
            running.setdefault(key, []).extend(lines)
        for key, _, lines, _ in ended:  # an ended job's last lines come before its failure
            running.setdefault(key, []).extend(lines)
        self._show_fairly(running)
        for key, ev, _, tail in ended:
            if ev.state is TaskState.FAILED and self.mode in ("failed", "all"):
                self._failure(key, ev, tail)
            with self._lock:
                self._watches.pop(key, None)
        self._maybe_note()

    def _read(
        self, ending: list[tuple[str, TaskEvent]]
    ) -> tuple[dict[str, list[str]], list[tuple[str, TaskEvent, list[str], list[str]]]]:
        """In a worker thread: new lines of the running jobs; the rest of the ended ones
        and, for a failed one, the end of its logs."""
        running: dict[str, list[str]] = {}
        with self._lock:
            done = {key for key, _ in ending}
            for key, live in list(self._watches.items()):
                if key not in done and live.kind == "files":
                    running[key] = self._read_logs(live, final=False)
            ended = []
            for key, ev in ending:
                watch = self._watches.get(key)
                kind = self._kinds.get(ev.source or "", "files")
                lines: list[str] = []
                if watch is not None and watch.kind == "files":
                    lines = self._read_logs(watch, final=True)
                elif watch is not None:  # pushed: what is left of a last partial line
                    lines = [clean(p) for p in watch.partial.values() if p.strip()]
                elif kind == "end" and self.mode == "all":
                    watch = self._watches[key] = _Watch(self.tasks[key], kind)
                    lines = self._read_logs(watch, final=True)
                failed = ev.state is TaskState.FAILED and kind != "terminal"
                tail = self._tail(key) if failed else []
                ended.append((key, ev, lines, tail))
        return running, ended

    def _read_logs(self, watch: _Watch, final: bool) -> list[str]:
        out: list[str] = []
        tdir = self.sweep_dir / "tasks" / watch.task.name
        for stream in STREAMS:
            try:
                with open(tdir / f"{stream}.log", "rb") as f:
                    f.seek(watch.offsets[stream])
                    data = f.read(READ_MAX)
            except OSError:
                continue
            watch.offsets[stream] += len(data)
            text = data.decode("utf-8", "replace")
            out += self._split(watch, stream, text, final=final and len(data) < READ_MAX)
        return out

    def _tail(self, key: str) -> list[str]:
        tdir = self.sweep_dir / "tasks" / self.tasks[key].name
        for stream in ("stderr", "stdout"):
            try:
                with open(tdir / f"{stream}.log", "rb") as f:
                    f.seek(0, 2)
                    f.seek(max(0, f.tell() - 64 * 1024))
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            lines = [c for c in (clean(line) for line in text.splitlines()) if c]
            if lines:
                return [f"last lines of {stream}.log:", *lines[-TAIL_LINES:]]
        return []

    # -------------------------------------------------------------- output
    def _prefix(self, key: str) -> str:
        return f"[{self.label(self.tasks[key])}] "

    def _show_fairly(self, by_job: Mapping[str, list[str]]) -> None:
        """One line of each job in turn, while the rate allows; count the rest."""
        out: list[str] = []
        keys = [k for k, lines in by_job.items() if lines]
        for row in zip_longest(*(by_job[k] for k in keys)):
            for key, line in zip(keys, row, strict=True):
                if line is None:
                    continue
                if self.limiter.take():
                    out.append(self._prefix(key) + line + "\n")
                else:
                    self._count_held(key, 1)
        if out:
            self.write("".join(out))

    def _count_held(self, key: str, n: int) -> None:
        self.held_total += n
        self._held_since_note += n
        self.held_jobs.add(key)
        watch = self._watches.get(key)
        if watch is not None:
            watch.held += n

    def _failure(self, key: str, ev: TaskEvent, tail: list[str]) -> None:
        self._failures += 1
        prefix = self._prefix(key)
        watch = self._watches.get(key)
        streamed = self.mode == "all" and watch is not None and not watch.held
        lines = [f"{prefix}FAILED: {ev.error or 'failed'}"]
        if tail and not streamed and self._failures <= FULL_TAILS:
            lines.append(f"{prefix}{tail[0]}")
            lines += [f"{prefix}  {line}" for line in tail[1:]]
        if self._kinds.get(ev.source or "", "files") != "terminal":  # else on screen already
            tdir = self.sweep_dir / "tasks" / self.tasks[key].name
            lines.append(f"{prefix}full output: {tdir}/stdout.log and stderr.log")
        shown = [line for line in lines if self.limiter.take()]
        if len(shown) < len(lines):
            self._count_held(key, len(lines) - len(shown))
        if shown:
            self.write("\n".join(shown) + "\n")

    def _maybe_note(self) -> None:
        now = time.monotonic()
        if now < self._next_note:
            return
        self._next_note = now + NOTE_EVERY_S
        if self._held_since_note:
            self.write(
                f"[hsm] held back {self._held_since_note} lines in the last "
                f"{NOTE_EVERY_S:g} s (at most {self.rate:g} lines/s); every line is in "
                f"{self.sweep_dir}/tasks/task_NNN/stdout.log and stderr.log\n"
            )
            self._held_since_note = 0
