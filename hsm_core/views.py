"""The sweep folder's YAML views, kept up to date with the journal off the engine's path.

The journal (sweep.db) is the truth; `tasks/*/status.yaml`, `task_mapping.yaml` and
`sweep_metadata.yaml` are views of it. A ViewWriter renders them in a thread of its own,
through a connection of its own, so that no view write ever waits in front of a dispatch.

What is behind is known without looking at the files: every change to an attempt is a
row of the journal's `events` table, and the journal's meta `views_event` is the last
event id whose views are written. A refresh reads the events after the mark, rewrites the
views of those tasks only, then moves the mark. A writer killed at any moment leaves the
mark behind, never ahead, so the next one (any orchestrator of the sweep, or `hsm
cancel`) redoes what may be missing. `task_mapping.yaml` keeps each task's state, source
and attempt in fixed-width fields that are updated in place, so its refresh too costs
what changed, not the size of the sweep.

A task's folder (params.yaml, status.yaml) is made when the task is first placed on a
source; until then the task is in `task_mapping.yaml` only, with its parameters and
state. So stopping a sweep of 100,000 tasks a second after its start (Ctrl-C: 99,990
tasks CANCELLED) changes the mapping's fields, not 99,990 files. A status.yaml that
exists is always kept right, whoever made it (an older hsm made one for every task).

When a task completes, the writer also reads its metrics once (hsm_core.metrics.
read_metrics) into the journal's `metrics` table: `hsm results` and the reports
then read one table instead of every task folder.

Once per writer, an audit reads the status files and the mapping back and repairs any
that disagree with the journal (a file truncated by a power cut, edited by hand, or
written by an older hsm), in the background; `close()` finishes it, so when an
orchestrator ends every view agrees with the journal. (An interrupted run leaves the rest
of the audit to the next writer: what this writer wrote is right, and Ctrl-C must not wait
for reading every file of a big sweep back.)
"""

from __future__ import annotations

import logging
import math
import os
import re
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from hsm_core.journal_sql import METRICS_TABLE, REPRESENTATIVE
from hsm_core.model import Attempt, TaskState
from hsm_core.yamlio import (
    dump_flat_yaml,
    dump_yaml,
    dump_yaml_flow,
    scalar,
    write_atomic,
    write_fd,
)

log = logging.getLogger("hsm.views")

VIEW_INTERVAL_S = 2.0
CHUNK = 1000  # tasks per step of the folder pass and the audit, between refreshes
MAPPING = "task_mapping.yaml"
HWM_EVENT = "views_event"
HWM_TASKS = "views_tasks"
_STATE_W = max(len(s.value) for s in TaskState)
_ATTEMPT_W = 5
_MIN_SOURCE_W = 16
_HEADER = "# hsm task mapping v2, source width {w}: task_NNN -> key, state, source, attempt, "
_HEADER_RX = re.compile(rb"\A# hsm task mapping v2, source width (\d+):")
_ENTRY_RX = re.compile(rb"^  (task_\w+):\n    key: '?([^'\s]+)'?\n(?=    state: )", re.MULTILINE)


def task_name(num: int) -> str:
    return f"task_{num:03d}"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def status_text(att: Attempt) -> str:
    return dump_flat_yaml(
        {
            "state": att.state.value,
            "attempt": att.attempt,
            "source": att.source,
            "handle": att.handle,
            "created": _iso(att.created),
            "started": _iso(att.started),
            "ended": _iso(att.ended),
            "exit_code": att.exit_code,
            "error": att.error,
            "key": att.key,
        }
    )


def write_status(sweep_dir: Path, num: int, att: Attempt) -> None:
    path = sweep_dir / "tasks" / task_name(num) / "status.yaml"
    text = status_text(att)
    try:
        write_atomic(path, text)
    except FileNotFoundError:
        # The folder is made with the task: only a folder not made yet (or removed by
        # hand) needs the mkdir, so the usual rewrite does not pay for one.
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)


# ------------------------------------------------------------------ flow YAML for params
def _float(value: float) -> str:
    # YAML 1.1 (PyYAML) reads `1e-05` as a string: a float needs a dot before the exponent.
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value).lower()
    if "." not in text and "e" in text:
        text = text.replace("e", ".0e", 1)
    return text


def flow_yaml(value: Any) -> str:
    """`value` as one line of flow YAML that any YAML reader reads back as `value`."""
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is float:
        return _float(value)
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            key = scalar(k) if type(k) is str else None
            if key is None:
                return _fallback(value)
            items.append(f"{key}: {flow_yaml(v)}")
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow_yaml(v) for v in value) + "]"
    text = scalar(value)
    return text if text is not None else _fallback(value)


def _fallback(value: Any) -> str:
    """What the hand-written forms above do not cover, through the YAML dumper."""
    text = dump_yaml_flow(value)
    return text.strip().removesuffix("...").strip()


# ------------------------------------------------------------------------ the mapping
class _Mapping:
    """task_mapping.yaml with each task's `state`, `source` and `attempt` lines padded to
    a fixed width: a change is one pwrite at a known offset. Any reader sees valid YAML
    at every moment (padding is trailing blanks, which YAML drops)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.width = _MIN_SOURCE_W
        self.offsets: dict[str, int] = {}  # task key -> offset of its `    state:` line
        self.current: dict[str, bytes] = {}  # what the file holds there (from the index)

    def region(self, att: Attempt | None) -> bytes | None:
        if att is None:
            return self.region_of(None, None, None)
        return self.region_of(att.state.value, att.source, att.attempt)

    def region_of(self, state: str | None, source: str | None, attempt: int | None) -> bytes | None:
        src = scalar(source) if source is not None else "null"
        num = str(attempt) if attempt is not None else "null"
        if src is None or len(src) > self.width or len(num) > _ATTEMPT_W:
            return None  # does not fit: the file is written anew
        return (
            f"    state: {state or 'null':<{_STATE_W}}\n"
            f"    source: {src:<{self.width}}\n"
            f"    attempt: {num:<{_ATTEMPT_W}}\n"
        ).encode()

    def index(self, keys: Iterable[str]) -> bool:
        """Find each task's fields in the file as it is; False if it must be rewritten."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return False
        m = _HEADER_RX.match(data)
        if not m:
            return False
        self.width = int(m.group(1))
        size = len(self.region(None) or b"")
        offsets: dict[str, int] = {}
        current: dict[str, bytes] = {}
        for e in _ENTRY_RX.finditer(data):
            key = e.group(2).decode()
            offsets[key] = e.end()
            current[key] = data[e.end() : e.end() + size]
        wanted = set(keys)
        if set(offsets) != wanted:
            return False
        self.offsets, self.current = offsets, current
        return True

    def write_whole(
        self, rows: Iterable[tuple[int, str, Mapping[str, Any], Attempt | None]], width: int
    ) -> int:
        """Write the file anew from `rows` (streamed: memory does not grow with them);
        returns how many rows it holds."""
        self.width = max(_MIN_SOURCE_W, width)
        head = (_HEADER.format(w=self.width) + "params\ntasks:\n").encode()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        offsets: dict[str, int] = {}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                buf = [head]
                pos = len(head)
                for num, key, params, att in rows:
                    first = f"  {task_name(num)}:\n    key: {scalar(key)}\n".encode()
                    region = self.region(att)
                    if region is None:
                        raise ValueError(f"task {num}: state fields wider than the mapping's")
                    tail = f"    params: {flow_yaml(dict(params))}\n".encode()
                    offsets[sys.intern(key)] = pos + len(first)
                    buf += (first, region, tail)
                    pos += len(first) + len(region) + len(tail)
                    if len(buf) > 3000:
                        write_fd(fd, b"".join(buf))
                        buf = []
                write_fd(fd, b"".join(buf))
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.offsets = offsets
        self.current = {}
        return len(offsets)

    def update(self, fd: int, key: str, att: Attempt) -> bool:
        """Rewrite one task's fields in place; False if they do not fit (rewrite all)."""
        off = self.offsets.get(key)
        region = self.region(att)
        if off is None or region is None:
            return False
        os.pwrite(fd, region, off)
        return True

    def update_unplaced(self, fd: int, rows: Iterable[tuple[str, int, str]]) -> bool:
        """Rewrite the fields of tasks never placed, given as (key, attempt, state): one
        pwrite each of a region made once per (state, attempt), no Attempt built. False
        if one is not in the file or does not fit (rewrite all)."""
        offsets = self.offsets
        regions: dict[tuple[str, int], bytes | None] = {}
        for key, attempt, state in rows:
            region = regions.get((state, attempt), b"")
            if region == b"":
                region = regions[state, attempt] = self.region_of(state, None, attempt)
            off = offsets.get(key)
            if off is None or region is None:
                return False
            os.pwrite(fd, region, off)
        return True


# ------------------------------------------------------------------------ the writer
_COLS = (
    "a.key, a.attempt, a.state, a.source, a.handle, a.created, a.started, a.ended, "
    "a.exit_code, a.error"
)
_SCORE = "CASE WHEN a.state = 'COMPLETED' THEN -a.attempt ELSE a.attempt - 1000000000 END"
REFRESH_EVENTS = 20_000  # events per step of a refresh: what it holds in memory at once
# A step with at least this many events of tasks not placed (Ctrl-C cancelling a queue)
# writes those tasks set-wise: per task, one pwrite instead of an Attempt, a stat and a
# patch made one by one.
BULK_MIN = 500
_SQL_ARGS = 500  # host parameters per `IN (...)` (SQLite before 3.32 allows 999)


def attempt_from_row(row: tuple[Any, ...]) -> Attempt:
    """An Attempt from a row of the attempts table's columns, in table order."""
    return Attempt(
        key=row[0],
        attempt=row[1],
        state=TaskState(row[2]),
        source=row[3],
        handle=row[4],
        created=row[5],
        started=row[6],
        ended=row[7],
        exit_code=row[8],
        error=row[9],
    )


class ViewWriter:
    """Renders one sweep's views from its journal: in a thread (`start`/`close`) while an
    orchestrator runs, or once, to completion (`sync`)."""

    def __init__(self, sweep_dir: Path, interval: float = VIEW_INTERVAL_S) -> None:
        self.sweep_dir = Path(sweep_dir)
        self._tasks_dir = str(self.sweep_dir / "tasks")
        self.interval = interval
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._audit = True  # finish the audit before stopping (an interrupted run: no)
        self._mapping = _Mapping(self.sweep_dir / MAPPING)
        self._map_fd: int | None = None
        self._map_ok = False  # the mapping file is indexed (or written) and can be patched
        self._event_mark = 0
        self._audit_next = 0  # next task number to audit
        self._audit_end = 0  # audit up to this task number (the tasks there were at start)
        self._states: dict[str, str] = {}  # task key -> state its views show
        self._made = bytearray()  # by task number: 1 once its folder has its params.yaml
        self._max_num = 0  # highest task number the mapping holds
        self.refreshes = 0
        self.error: BaseException | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hsm-views", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Refresh now rather than at the next interval."""
        self._wake.set()

    def close(self, *, audit: bool = True) -> None:
        """Refresh once more, so the views agree with the journal as it is now, having
        finished the audit (unless `audit=False`: an interrupted run leaves the rest of
        it to the next writer); blocking (call it from a thread when in an event loop)."""
        self._audit = audit
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join()
            self._thread = None
        if self.error is not None:
            log.error("views: the writer failed (%s); writing them again", self.error)
            self.error = None
            try:
                self._reset()
                self.sync()
            except Exception:
                log.exception("views of %s could not be written", self.sweep_dir)
        self._shutdown()

    def sync(self, *, audit: bool = True) -> None:
        """Bring every view up to date with the journal, in this thread (`audit=False`:
        what changed only, as an interrupted orchestrator leaves them)."""
        self._audit = audit
        self._open()
        self._finish()

    # ---------------------------------------------------------------- internals
    def _loop(self) -> None:
        try:
            self._open()
            next_refresh = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_refresh or self._wake.is_set():
                    self._wake.clear()
                    self._refresh()
                    next_refresh = time.monotonic() + self.interval
                elif not self._audit_step():
                    self._wake.wait(max(0.0, next_refresh - now))
            self._finish()
        except BaseException as exc:  # reported by close(), never kills the orchestrator
            log.exception("views of %s", self.sweep_dir)
            self.error = exc

    def _open(self) -> None:
        if self._conn is not None:
            return
        db = self.sweep_dir / "sweep.db"
        self._conn = sqlite3.connect(db, timeout=30, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=30000")
        # Like the engine's connection: durable against a crash of the process, and no
        # fsync per mark moved (which would hold the journal's write lock that long).
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._conn:
            self._conn.execute(METRICS_TABLE)  # a sweep made by an older hsm has none
        self._event_mark = int(self._meta(HWM_EVENT) or 0)
        self._max_num = self._top_num()
        # The audit reads back the folders of the tasks placed before this writer (the
        # others have none, or one an older hsm made: see _write_status); on a new sweep,
        # nothing.
        (placed,) = (
            self._db()
            .execute(
                "SELECT COALESCE(MAX(t.num), 0) FROM attempts a JOIN tasks t ON t.key = a.key "
                "WHERE a.source IS NOT NULL"
            )
            .fetchone()
        )
        self._audit_next, self._audit_end = 1, int(placed)
        # What every task's views must show (for the counts); one query, keys only.
        rows = self._db().execute(f"SELECT key, state FROM ({REPRESENTATIVE})")
        self._states = {sys.intern(k): s for k, s in rows}

    def _reset(self) -> None:
        self._shutdown()
        self._mapping = _Mapping(self.sweep_dir / MAPPING)
        self._map_ok = False
        self._states = {}
        self._made = bytearray()

    def _shutdown(self) -> None:
        if self._map_fd is not None:
            os.close(self._map_fd)
            self._map_fd = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def _meta(self, key: str) -> Any:
        import json

        row = self._db().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def _set_meta(self, key: str, value: Any) -> None:
        import json

        with self._db() as c:
            c.execute(
                "INSERT INTO meta VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, json.dumps(value)),
            )

    def _finish(self) -> None:
        while self._audit and self._audit_step():
            pass
        self._refresh()

    # ---- representative attempts of a set of tasks, with their numbers
    def _latest(self, where: str, args: tuple[Any, ...]) -> list[tuple[int, Attempt]]:
        # SQLite's bare columns (see hsm_core.journal_sql): grouped in the primary key's
        # order, no sort, where a window over 100,000 cancelled tasks costs seconds.
        rows = (
            self._db()
            .execute(
                f"SELECT {_COLS}, t.num, MAX({_SCORE}) FROM attempts a "
                f"JOIN tasks t ON t.key = a.key WHERE {where} GROUP BY a.key",
                args,
            )
            .fetchall()
        )
        return [(r[10], attempt_from_row(r)) for r in rows]

    # ---- a task's folder: made when the task is first placed
    def _write_status(self, num: int, att: Attempt) -> None:
        """status.yaml of a task that was placed (its folder made if need be), or of one
        never placed whose folder there is anyway; a task never placed and without a
        folder has none (the mapping shows its state)."""
        folder = os.path.join(self._tasks_dir, task_name(num))
        placed = att.source is not None
        if placed:
            self._ensure_folder(num)
        elif not os.path.isdir(folder):
            return  # the cheap case of Ctrl-C on a big sweep: one stat per task
        path = os.path.join(folder, "status.yaml")
        try:
            write_atomic(path, status_text(att))
        except FileNotFoundError:
            if placed:  # the folder went away under us (removed by hand): make it again
                self._made[num : num + 1] = b"\0"
                self._ensure_folder(num)
                write_atomic(path, status_text(att))

    def _ensure_folder(self, num: int) -> None:
        """The task's folder with its params.yaml (once per writer; a params.yaml that
        is there, perhaps edited, is left alone)."""
        import json

        if num < len(self._made) and self._made[num]:
            return
        tdir = self.sweep_dir / "tasks" / task_name(num)
        params = tdir / "params.yaml"
        if not params.exists():
            row = self._db().execute("SELECT spec FROM tasks WHERE num = ?", (num,)).fetchone()
            tdir.mkdir(parents=True, exist_ok=True)
            if row is not None:
                write_atomic(params, dump_flat_yaml(json.loads(row[0]).get("params") or {}))
        if num >= len(self._made):
            self._made.extend(bytes(max(num + 1 - len(self._made), len(self._made))))
        self._made[num] = 1

    def _note(self, att: Attempt) -> None:
        self._states[sys.intern(att.key)] = att.state.value

    # ---- the audit: read back the views written before this writer, repair what is wrong
    def _audit_step(self) -> bool:
        if self._audit_next > self._audit_end:
            return False
        lo, hi = self._audit_next, min(self._audit_end, self._audit_next + CHUNK - 1)
        for num, att in self._latest("t.num >= ? AND t.num <= ?", (lo, hi)):
            path = os.path.join(self._tasks_dir, task_name(num), "status.yaml")
            try:
                with open(path, encoding="utf-8") as f:
                    ok = f.read() == status_text(att)
            except FileNotFoundError:
                ok = att.source is None  # never placed: no status file is right
            except (OSError, UnicodeDecodeError):
                ok = False
            if not ok:
                log.info("views: %s was not what the journal says; rewritten", path)
                self._write_status(num, att)
            elif att.source is not None:
                self._ensure_folder(num)
            self._note(att)
            self._patch_mapping(att, check=True)
        self._audit_next = hi + 1
        if self._audit_next > self._audit_end:
            self._mapping.current = {}  # what the file held: checked, no longer needed
        return True

    def _top_num(self) -> int:
        return int(self._db().execute("SELECT COALESCE(MAX(num), 0) FROM tasks").fetchone()[0])

    # ---- the mapping
    def _ensure_mapping(self) -> None:
        if self._map_ok:
            return
        keys = [r[0] for r in self._db().execute("SELECT key FROM tasks")]
        if not self._mapping.index(keys):
            self._write_mapping()
        elif self._audit_next > self._audit_end:
            self._mapping.current = {}  # no audit to come: only the offsets are needed
        self._map_fd = os.open(self._mapping.path, os.O_WRONLY)
        self._map_ok = True

    def _write_mapping(self) -> None:
        import json

        if self._map_fd is not None:
            os.close(self._map_fd)
            self._map_fd = None
        latest = {a.key: a for _, a in self._latest("1", ())}
        width = max((len(scalar(a.source) or "") + 8 for a in latest.values()), default=0)
        specs = self._db().execute("SELECT num, key, spec FROM tasks ORDER BY num")
        self._mapping.write_whole(
            (
                (num, key, json.loads(spec).get("params") or {}, latest.get(key))
                for num, key, spec in specs
            ),
            width,
        )
        for att in latest.values():
            self._note(att)
        self._map_ok = False  # reopen the new file

    def _patch_mapping(self, att: Attempt, *, check: bool = False) -> None:
        self._ensure_mapping()
        if check:
            # Only what the file held before this writer: what it wrote itself is right.
            have = self._mapping.current.get(att.key)
            if have is None or have == self._mapping.region(att):
                return
        assert self._map_fd is not None
        if not self._mapping.update(self._map_fd, att.key, att):
            self._write_mapping()  # a new task, or a source name wider than the fields
            self._ensure_mapping()

    # ---- refresh: the tasks with events after the mark
    def _refresh(self) -> None:
        db = self._db()
        (top,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        top_num = self._top_num()
        if top_num != self._max_num:  # tasks were added (a Hydra launch): all rows anew
            self._max_num = top_num
            self._write_mapping()
        self._ensure_mapping()
        # In steps of a bounded number of events: Ctrl-C on a fresh 100,000-task sweep
        # cancels them all at once, and a step's rows are all held in memory.
        while self._event_mark < top:
            hi = min(top, self._event_mark + REFRESH_EVENTS)
            for num, att in self._changed(self._event_mark, hi):
                self._write_status(num, att)
                self._note(att)
                self._patch_mapping(att)
            self._record_metrics(self._event_mark, hi)
            self._event_mark = hi
            self._set_meta(HWM_EVENT, hi)
        self._write_metadata()
        self.refreshes += 1

    def _changed(self, lo: int, hi: int) -> list[tuple[int, Attempt]]:
        """The representative attempts of the tasks with events in (lo, hi], to write one
        by one; but when many of them were never placed (Ctrl-C on a big sweep cancels
        its whole queue at once), those without a folder are written here set-wise."""
        db = self._db()
        events = "SELECT key FROM events WHERE id > ? AND id <= ?"
        (unplaced,) = db.execute(
            "SELECT COUNT(*) FROM events WHERE id > ? AND id <= ? AND source IS NULL", (lo, hi)
        ).fetchone()
        if unplaced < BULK_MIN:
            return self._latest(f"a.key IN ({events})", (lo, hi))
        # Every attempt of these tasks, four columns (no Attempt built, no join). A task
        # never placed has no COMPLETED attempt, so its newest stands for it, and no
        # folder unless an older hsm (or a hand) made one.
        newest: dict[str, tuple[str, int, str]] = {}
        one_by_one: set[str] = set()
        for key, attempt, state, source in db.execute(
            f"SELECT key, attempt, state, source FROM attempts WHERE key IN ({events})", (lo, hi)
        ):
            if source is not None:
                one_by_one.add(key)
            elif (have := newest.get(key)) is None or attempt > have[1]:
                newest[key] = (key, attempt, state)
        one_by_one.update(self._with_folder(newest))
        for key in one_by_one:
            newest.pop(key, None)
        self._ensure_mapping()
        assert self._map_fd is not None
        if not self._mapping.update_unplaced(self._map_fd, newest.values()):
            self._write_mapping()  # a task the file does not hold yet
            self._ensure_mapping()
        self._states.update((key, state) for key, _, state in newest.values())
        return self._latest_of(one_by_one)

    def _with_folder(self, keys: Collection[str]) -> list[str]:
        """Those of `keys` whose task has a folder: one listing of tasks/ (on a new sweep
        it holds the tasks placed so far), not a stat per task."""
        try:
            names = os.listdir(self._tasks_dir)
        except FileNotFoundError:
            return []
        nums = [int(n[5:]) for n in names if n.startswith("task_") and n[5:].isdigit()]
        found = []
        for i in range(0, len(nums), _SQL_ARGS):
            part = nums[i : i + _SQL_ARGS]
            found += [
                k
                for (k,) in self._db().execute(
                    f"SELECT key FROM tasks WHERE num IN ({','.join('?' * len(part))})", part
                )
                if k in keys
            ]
        return found

    def _latest_of(self, keys: Collection[str]) -> list[tuple[int, Attempt]]:
        keys = list(keys)
        out: list[tuple[int, Attempt]] = []
        for i in range(0, len(keys), _SQL_ARGS):
            part = keys[i : i + _SQL_ARGS]
            out += self._latest(f"a.key IN ({','.join('?' * len(part))})", tuple(part))
        return out

    def _record_metrics(self, lo: int, hi: int) -> None:
        """The metrics of the attempts that completed in events (lo, hi], read once from
        their task folders into the journal (a task's files are all there when it is
        reported COMPLETED: remote sources collect them first)."""
        import json

        rows = (
            self._db()
            .execute(
                "SELECT e.key, e.attempt, t.num, t.spec, "
                "(SELECT MAX(b.attempt) FROM attempts b WHERE b.key = e.key) "
                "FROM events e JOIN tasks t ON t.key = e.key "
                "WHERE e.id > ? AND e.id <= ? AND e.state = 'COMPLETED'",
                (lo, hi),
            )
            .fetchall()
        )
        if not rows:
            return
        from hsm_core.metrics import read_metrics
        from hsm_core.model import TaskKind
        from hsm_core.taskdir import TaskPaths

        found = []
        for key, attempt, num, spec_text, newest in rows:
            spec = json.loads(spec_text)
            folder = self.sweep_dir / "tasks" / task_name(num)
            if attempt != newest:  # an older attempt that finished late: its files moved
                folder = TaskPaths(folder).attempt(attempt)
            try:
                kind = TaskKind(spec.get("kind", "command"))
                metrics, origin = read_metrics(folder, kind, spec.get("params") or {})
            except Exception:  # a task's files are data: never a reason to stop the views
                log.exception("views: the metrics of %s could not be read", task_name(num))
                continue
            data = {"m": metrics, "o": origin} if metrics else {}
            found.append((key, attempt, json.dumps(data, allow_nan=True)))
        with self._db() as c:
            c.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?)", found)

    def _counts(self) -> dict[str, int]:
        return dict(Counter(self._states.values()))

    def _write_metadata(self) -> None:
        import json

        meta = {k: json.loads(v) for k, v in self._db().execute("SELECT key, value FROM meta")}
        write_metadata(self.sweep_dir, meta, self._counts())


def write_metadata(sweep_dir: Path, meta: dict[str, Any], counts: Mapping[str, int]) -> None:
    """sweep_metadata.yaml: the journal's meta (less the sweep file and the marks above)."""
    meta = {k: v for k, v in meta.items() if k not in ("config", HWM_EVENT, HWM_TASKS)}
    meta["counts"] = {s.value: int(counts.get(s.value, 0)) for s in TaskState}
    meta["total_tasks"] = sum(meta["counts"].values())
    for k in ("created", "started", "ended"):
        if isinstance(meta.get(k), float):
            meta[k] = _iso(meta[k])
    write_atomic(sweep_dir / "sweep_metadata.yaml", dump_yaml(meta))


def write_new_mapping(sweep_dir: Path, tasks: Iterable[tuple[int, str, Mapping[str, Any]]]) -> int:
    """task_mapping.yaml of a new sweep (every task PENDING, attempt 1), streamed."""
    pending = _Mapping(Path(sweep_dir) / MAPPING)
    rows = (
        (num, key, params, Attempt(key, 1, TaskState.PENDING, *(None,) * 2, 0.0, *(None,) * 4))
        for num, key, params in tasks
    )
    return pending.write_whole(rows, 0)


def sync_views(sweep_dir: Path) -> None:
    """Bring every view of a sweep up to date with its journal (no orchestrator running)."""
    writer = ViewWriter(sweep_dir)
    try:
        writer.sync()
    finally:
        writer.close()
