"""SweepStore: the SQLite journal that is the truth about a sweep, plus the YAML views.

One writer (the orchestrator), any number of readers (`hsm status` in another terminal):
SQLite in WAL mode gives both without locks in the readers' way. YAML files are views
rewritten from the journal, each atomically, so a reader never sees half a file and a
crash never leaves one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hsm_core.errors import HsmError, SweepNotFound
from hsm_core.journal_sql import ATTEMPT_COLS as _ATTEMPT_COLS
from hsm_core.journal_sql import METRICS_TABLE, RESUMES_TABLE
from hsm_core.journal_sql import REPRESENTATIVE as _REPRESENTATIVE
from hsm_core.model import NOT_PLACED, Attempt, TaskEvent, TaskSpec, TaskState, can_move
from hsm_core.views import HWM_TASKS, sync_views, write_metadata, write_new_mapping, write_status
from hsm_core.views import attempt_from_row as _attempt
from hsm_core.yamlio import dump_yaml, write_atomic

DB_NAME = "sweep.db"
INSERT_BATCH = 5000  # tasks per transaction when a sweep is created
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY,
    num INTEGER NOT NULL UNIQUE,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    source TEXT,
    handle TEXT,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    exit_code INTEGER,
    error TEXT,
    PRIMARY KEY (key, attempt)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    source TEXT,
    message TEXT
);
"""
_SCHEMA += METRICS_TABLE + ";\n" + RESUMES_TABLE + ";\n"

_INSERT_ATTEMPT = (
    f"INSERT INTO attempts ({_ATTEMPT_COLS}) VALUES (?,?,?,NULL,NULL,?,NULL,NULL,NULL,NULL)"
)


@dataclasses.dataclass(frozen=True)
class Reopen:
    """Attempt `attempt` of `key` opens in PENDING, after a retry or a re-queue. With
    `resume` ("timeout" / "preempted"), it goes on from the last attempt's checkpoint on
    source `on` (hsm_core.resume)."""

    key: str
    attempt: int
    resume: str | None = None
    on: str | None = None


class TaskStubs(Mapping[str, TaskSpec]):
    """key -> a TaskSpec with its key and number only (so its name), made when asked:
    what shows a task by name, without every spec of a big sweep in memory."""

    _NO_PARAMS: Mapping[str, Any] = {}

    def __init__(self, nums: dict[str, int]) -> None:
        self._nums = nums

    def __getitem__(self, key: str) -> TaskSpec:
        return TaskSpec(key, self._nums[key], self._NO_PARAMS)

    def __iter__(self) -> Iterator[str]:
        return iter(self._nums)

    def __len__(self) -> int:
        return len(self._nums)


class SweepStore:
    def __init__(self, sweep_dir: Path, conn: sqlite3.Connection, readonly: bool) -> None:
        self.sweep_dir = sweep_dir
        self._conn = conn
        self.readonly = readonly
        # The engine writes from worker threads (asyncio.to_thread); one at a time.
        self._lock = threading.Lock()
        self._nums: dict[str, int] | None = None

    # ----------------------------------------------------------------- opening
    @staticmethod
    def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
        if readonly:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False
            )
        else:
            conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode is durable against process crashes (our failure model);
            # only a power loss can drop the last transactions, and result.json files
            # on disk still prove what finished.
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    @classmethod
    def create(
        cls,
        sweep_dir: Path,
        *,
        sweep_id: str,
        kind: str,
        config: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        project_root: Path | None = None,
        tasks: Iterable[TaskSpec] = (),
        task_views: bool = True,
    ) -> SweepStore:
        """Make a sweep folder. The journal is built whole (tables, metadata and `tasks`)
        under another name and renamed into place: a crash or a reader at any moment sees
        either no sweep or the whole sweep, never one without its tasks.

        `task_views=False` leaves the task folders to the engine's view writer, which
        makes them in the background while the first tasks run. `tasks` is read in
        batches: memory does not grow with the sweep (unless `task_views`)."""
        sweep_dir = Path(sweep_dir).resolve()
        for sub in ("tasks", "logs/sources", "scripts", "reports"):
            (sweep_dir / sub).mkdir(parents=True, exist_ok=True)
        db = sweep_dir / DB_NAME
        fresh: list[TaskSpec] = []
        if not db.exists():
            tmp = sweep_dir / f".{DB_NAME}.new"
            tmp.unlink(missing_ok=True)
            init = cls(sweep_dir, cls._connect(tmp, readonly=False), readonly=False)
            try:
                init._conn.executescript(_SCHEMA)
                with init._tx() as c:
                    for k, v in {
                        "schema_version": SCHEMA_VERSION,
                        "sweep_id": sweep_id,
                        "kind": kind,
                        "created": time.time(),
                        "project_root": str(project_root or Path.cwd()),
                        "metadata": dict(metadata or {}),
                        "config": dict(config),
                    }.items():
                        c.execute("INSERT INTO meta VALUES (?, ?)", (k, json.dumps(v, default=str)))
                fresh = init._insert_new(tasks, keep=task_views)
                init._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                # The mapping before the journal: a sweep that exists has its mapping.
                write_new_mapping(
                    sweep_dir,
                    (
                        (num, key, json.loads(spec).get("params") or {})
                        for num, key, spec in init._conn.execute(
                            "SELECT num, key, spec FROM tasks ORDER BY num"
                        )
                    ),
                )
                init.close()
            except BaseException:
                init.close()
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, db)
        store = cls(sweep_dir, cls._connect(db, readonly=False), readonly=False)
        if task_views:
            store._write_task_views(fresh)
        write_atomic(sweep_dir / "sweep_config.yaml", dump_yaml(dict(config)))
        store.write_metadata_view()
        return store

    def _insert_new(self, tasks: Iterable[TaskSpec], *, keep: bool) -> list[TaskSpec]:
        """Insert the tasks of a new journal in batches: memory holds one batch (and the
        specs only if `keep`). Numbers given are kept while they increase."""
        kept: list[TaskSpec] = []
        last = 0
        batch: list[TaskSpec] = []
        it = iter(tasks)
        while True:
            batch = list(itertools.islice(it, INSERT_BATCH))
            if not batch:
                break
            specs = []
            for t in batch:
                num = t.num if t.num > last else last + 1
                last = num
                specs.append(t if num == t.num else dataclasses.replace(t, num=num))
            now = time.time()
            try:
                with self._tx() as c:
                    c.executemany(
                        "INSERT INTO tasks VALUES (?, ?, ?)",
                        [(t.key, t.num, json.dumps(t.to_json())) for t in specs],
                    )
                    c.executemany(
                        _INSERT_ATTEMPT, [(t.key, 1, TaskState.PENDING.value, now) for t in specs]
                    )
            except sqlite3.IntegrityError as exc:
                raise HsmError(
                    f"two points of the sweep are the same task ({exc})",
                    "make every point of the sweep differ",
                ) from None
            if keep:
                kept += specs
        return kept

    @classmethod
    def open(cls, sweep_dir: Path, *, readonly: bool = False) -> SweepStore:
        sweep_dir = Path(sweep_dir).resolve()
        db = sweep_dir / DB_NAME
        if not db.is_file():
            raise SweepNotFound(
                f"{sweep_dir} is not a sweep folder (no {DB_NAME})",
                "pass a sweep id or a folder made by `hsm run` or the hsm launcher",
            )
        try:
            conn = cls._connect(db, readonly)
            conn.execute("SELECT value FROM meta WHERE key='sweep_id'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SweepNotFound(
                f"{db} cannot be read as a sweep journal: {exc}",
                "the file is damaged or not an hsm sweep; check the path",
            ) from None
        return cls(sweep_dir, conn, readonly)

    @staticmethod
    def exists(sweep_dir: Path) -> bool:
        return (Path(sweep_dir) / DB_NAME).is_file()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._conn:
            yield self._conn

    # -------------------------------------------------------------------- meta
    def meta(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def all_meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._conn.execute("SELECT key, value FROM meta")}

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO meta VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, json.dumps(value, default=str)),
            )

    @property
    def sweep_id(self) -> str:
        return str(self.meta("sweep_id"))

    # ------------------------------------------------------------------- tasks
    def add_tasks(self, tasks: Iterable[TaskSpec]) -> list[TaskSpec]:
        """Store new tasks; a key already known keeps its number and spec.

        Numbers given by the caller are used when free; otherwise the next free number is
        taken, so a sweep file edited later never renumbers what already exists.
        """
        mark = int(self.meta(HWM_TASKS) or 0)
        out, fresh = self._insert_tasks(tasks)
        self._write_task_views(fresh)
        if fresh and min(t.num for t in fresh) == mark + 1:
            # Their folders are made: the view writer need not make them again.
            self.set_meta(HWM_TASKS, max(t.num for t in fresh))
        return out

    def _insert_tasks(self, tasks: Iterable[TaskSpec]) -> tuple[list[TaskSpec], list[TaskSpec]]:
        known = {t.key: t for t in self.tasks()}
        used = {t.num for t in known.values()}
        next_num = max(used, default=0) + 1
        out: list[TaskSpec] = []
        fresh: list[TaskSpec] = []
        for task in tasks:
            if task.key in known:
                out.append(known[task.key])
                continue
            num = task.num
            if num in used or num <= 0:
                num = next_num
            used.add(num)
            next_num = max(next_num, num + 1)
            spec = TaskSpec.from_json({**task.to_json(), "num": num})
            known[spec.key] = spec
            fresh.append(spec)
            out.append(spec)
        now = time.time()
        with self._tx() as c:
            c.executemany(
                "INSERT INTO tasks VALUES (?, ?, ?)",
                [(t.key, t.num, json.dumps(t.to_json())) for t in fresh],
            )
            c.executemany(
                _INSERT_ATTEMPT,
                [(t.key, 1, TaskState.PENDING.value, now) for t in fresh],
            )
        self._nums = None
        return out, fresh

    def _write_task_views(self, fresh: list[TaskSpec]) -> None:
        for t in fresh:
            tdir = self.task_dir(t)
            tdir.mkdir(parents=True, exist_ok=True)
            write_atomic(tdir / "params.yaml", dump_yaml(dict(t.params)))
        self.write_status_views([t.key for t in fresh])

    def tasks(self) -> list[TaskSpec]:
        rows = self._conn.execute("SELECT spec FROM tasks ORDER BY num").fetchall()
        return [TaskSpec.from_json(json.loads(r[0])) for r in rows]

    def task_rows(self) -> Iterator[tuple[str, int, str, int, str, str | None]]:
        """(key, num, spec as JSON text, attempt, state, source) of each task's
        representative attempt, in number order, read as they come: what an engine
        loads, without a parsed spec or an Attempt per task."""
        yield from self._conn.execute(
            "SELECT r.key, t.num, t.spec, r.attempt, r.state, r.source "
            f"FROM ({_REPRESENTATIVE}) r JOIN tasks t ON t.key = r.key ORDER BY t.num"
        )

    def result_rows(
        self, *, only_metrics: bool = False
    ) -> Iterator[tuple[str, int, str, str, str | None, str | None]]:
        """(key, num, spec as JSON text, state, source, recorded metrics) of each task's
        representative attempt, in number order. The metrics are what the view writer
        read from the task's folder when it completed (JSON: {} when it had none), or
        None when they were never recorded (a sweep of an older hsm, a task completed
        since the last refresh). `only_metrics`: COMPLETED tasks that have metrics or
        may have (not recorded), only."""
        rep = f"({_REPRESENTATIVE}) r JOIN tasks t ON t.key = r.key"
        where = " WHERE r.state = 'COMPLETED'" if only_metrics else ""
        may_have = " AND (m.data IS NULL OR m.data != '{}')" if only_metrics else ""
        try:
            yield from self._conn.execute(
                f"SELECT r.key, t.num, t.spec, r.state, r.source, m.data FROM {rep} "
                f"LEFT JOIN metrics m ON m.key = r.key AND m.attempt = r.attempt{where}{may_have} "
                "ORDER BY t.num"
            )
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            # Made by an older hsm and never opened by a writer since: no metrics table.
            yield from self._conn.execute(
                f"SELECT r.key, t.num, t.spec, r.state, r.source, NULL FROM {rep} {where} "
                "ORDER BY t.num"
            )

    def not_completed(self, limit: int) -> tuple[int, list[tuple[str, Attempt]]]:
        """How many tasks are not COMPLETED, and (task name, attempt) of the first
        `limit` of them by number: what a summary lists, without reading every task."""
        # Counted in SQL: after Ctrl-C on a fresh 100,000-task sweep, iterating the rows
        # in Python held the exit back by a second or more.
        (count,) = self._conn.execute(
            f"SELECT COUNT(*) FROM ({_REPRESENTATIVE}) WHERE state != 'COMPLETED'"
        ).fetchone()
        rows = self._conn.execute(
            f"SELECT r.*, t.num FROM ({_REPRESENTATIVE}) r JOIN tasks t ON t.key = r.key "
            "WHERE r.state != 'COMPLETED' ORDER BY t.num LIMIT ?",
            (max(0, limit),),
        )
        first = [(f"task_{r[-1]:03d}", _attempt(r)) for r in rows]
        return int(count), first

    def task_nums(self) -> list[tuple[str, int]]:
        return self._conn.execute("SELECT key, num FROM tasks ORDER BY num").fetchall()

    def task_params(self) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """(key, num, params) of every task, in number order."""
        for key, num, spec in self._conn.execute("SELECT key, num, spec FROM tasks ORDER BY num"):
            yield key, num, json.loads(spec).get("params") or {}

    def assigned_times(self) -> dict[tuple[str, int], float]:
        """When each attempt was first ASSIGNED (the journal's events say it, not the
        attempts table)."""
        rows = self._conn.execute(
            "SELECT key, attempt, MIN(time) FROM events WHERE state = 'ASSIGNED' "
            "GROUP BY key, attempt"
        )
        return {(k, a): t for k, a, t in rows}

    def latest_rows(self) -> list[tuple[str, int, str, str | None, float | None, float | None]]:
        """(key, attempt, state, source, started, ended) of each task's representative
        attempt: latest_attempts as plain rows, half the cost on a big sweep."""
        return self._conn.execute(
            f"SELECT key, attempt, state, source, started, ended FROM ({_REPRESENTATIVE})"
        ).fetchall()

    def task_numbers(self) -> list[int]:
        """Every task's number, in order (no spec read)."""
        return [r[0] for r in self._conn.execute("SELECT num FROM tasks ORDER BY num")]

    def task_stubs(self, keys: Iterable[str] | None = None) -> TaskStubs:
        rows = self._conn.execute("SELECT key, num FROM tasks")
        nums = dict(rows.fetchall())
        if keys is not None:
            nums = {k: nums[k] for k in keys if k in nums}
        return TaskStubs(nums)

    def task(self, key: str) -> TaskSpec:
        row = self._conn.execute("SELECT spec FROM tasks WHERE key=?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return TaskSpec.from_json(json.loads(row[0]))

    def task_dir(self, task: TaskSpec) -> Path:
        return self.sweep_dir / "tasks" / task.name

    def _num(self, key: str) -> int:
        if self._nums is None:
            self._nums = dict(self._conn.execute("SELECT key, num FROM tasks").fetchall())
        return self._nums[key]

    # ---------------------------------------------------------------- attempts
    def latest_attempts(self) -> dict[str, Attempt]:
        """The attempt that stands for each task: its first COMPLETED attempt if it has
        one (the first result wins, e.g. over a re-run of a task whose host came back),
        otherwise its newest attempt."""
        rows = self._conn.execute(_REPRESENTATIVE).fetchall()
        return {r[0]: _attempt(r) for r in rows}

    def attempts(self, key: str | None = None) -> list[Attempt]:
        if key is None:
            rows = self._conn.execute(
                f"SELECT {_ATTEMPT_COLS} FROM attempts ORDER BY key, attempt"
            ).fetchall()
        else:
            rows = self._conn.execute(
                f"SELECT {_ATTEMPT_COLS} FROM attempts WHERE key=? ORDER BY attempt", (key,)
            ).fetchall()
        return [_attempt(r) for r in rows]

    def counts(self) -> dict[TaskState, int]:
        """Tasks per state of their latest attempt (one query, fast on 10,000 tasks)."""
        rows = self._conn.execute(
            f"SELECT state, COUNT(*) FROM ({_REPRESENTATIVE}) GROUP BY state"
        ).fetchall()
        return {TaskState(s): n for s, n in rows}

    def counts_by_source(self) -> dict[str, dict[TaskState, int]]:
        """Tasks per (source, state) of their representative attempt, in one query."""
        out: dict[str, dict[TaskState, int]] = {}
        for source, state, n in self._conn.execute(
            f"SELECT source, state, COUNT(*) FROM ({_REPRESENTATIVE}) GROUP BY source, state"
        ):
            out.setdefault(source or NOT_PLACED, {})[TaskState(state)] = n
        return out

    def new_attempt(self, key: str) -> int:
        """Open attempt n+1 in PENDING (after a retry or a re-queue)."""
        with self._tx() as c:
            return self._open_attempt(c, key)

    @staticmethod
    def _open_attempt(
        c: sqlite3.Connection, key: str, resume: tuple[str, str] | None = None
    ) -> int:
        (last,) = c.execute("SELECT MAX(attempt) FROM attempts WHERE key=?", (key,)).fetchone()
        n = int(last or 0) + 1
        now = time.time()
        c.execute(_INSERT_ATTEMPT, (key, n, TaskState.PENDING.value, now))
        # An event like every other change of an attempt: the views follow the events.
        c.execute(
            "INSERT INTO events (time, key, attempt, state, source, message) "
            "VALUES (?,?,?,?,NULL,NULL)",
            (now, key, n, TaskState.PENDING.value),
        )
        if resume is not None:
            c.execute(RESUMES_TABLE)  # a sweep made by an older hsm has none
            c.execute("INSERT OR REPLACE INTO resumes VALUES (?,?,?,?)", (key, n, *resume))
        return n

    def resumes(self) -> dict[str, list[tuple[int, str, str]]]:
        """key -> (attempt, kind, source) of each attempt that resumed its predecessor."""
        out: dict[str, list[tuple[int, str, str]]] = {}
        try:
            rows = self._conn.execute(
                "SELECT key, attempt, kind, source FROM resumes ORDER BY key, attempt"
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return out  # made by an older hsm: nothing resumed
        for key, attempt, kind, source in rows:
            out.setdefault(key, []).append((int(attempt), str(kind), str(source)))
        return out

    def set_handle(self, key: str, attempt: int, handle: str) -> None:
        """Record where an attempt runs (pid, job id) if no report has said so yet."""
        with self._tx() as c:
            c.execute(
                "UPDATE attempts SET handle = COALESCE(handle, ?) WHERE key = ? AND attempt = ?",
                (handle, key, attempt),
            )

    def apply(self, event: TaskEvent) -> bool:
        return self.apply_many([event])[0]

    def apply_many(self, events: Iterable[TaskEvent | Reopen]) -> list[bool]:
        """Apply source reports, and open new attempts, in order and in one transaction
        (a time limit and the resumed attempt it opens are on disk together or not at
        all); refuse any report that would move back. A Reopen is accepted when it opens
        the attempt number it names."""
        accepted: list[bool] = []
        with self._tx() as c:
            for ev in events:
                if isinstance(ev, Reopen):
                    resume = (ev.resume, ev.on) if ev.resume and ev.on else None
                    accepted.append(self._open_attempt(c, ev.key, resume) == ev.attempt)
                    continue
                row = c.execute(
                    "SELECT state FROM attempts WHERE key=? AND attempt=?", (ev.key, ev.attempt)
                ).fetchone()
                if row is None or not can_move(TaskState(row[0]), ev.state):
                    accepted.append(False)
                    continue
                sets = ["state=?"]
                args: list[Any] = [ev.state.value]
                if ev.source is not None:
                    sets.append("source=?")
                    args.append(ev.source)
                if ev.handle is not None:
                    sets.append("handle=?")
                    args.append(ev.handle)
                if ev.state is TaskState.RUNNING:
                    sets.append("started=COALESCE(started, ?)")
                    args.append(ev.time)
                if ev.state.terminal:
                    sets += ["ended=?", "exit_code=COALESCE(?, exit_code)", "error=?"]
                    args += [ev.time, ev.exit_code, ev.error]
                c.execute(
                    f"UPDATE attempts SET {', '.join(sets)} WHERE key=? AND attempt=?",
                    (*args, ev.key, ev.attempt),
                )
                c.execute(
                    "INSERT INTO events (time, key, attempt, state, source, message) "
                    "VALUES (?,?,?,?,?,?)",
                    (ev.time, ev.key, ev.attempt, ev.state.value, ev.source, ev.error),
                )
                accepted.append(True)
        return accepted

    def cancel_pending(self, attempts: Iterable[tuple[str, int]], when: float) -> int:
        """CANCELLED for each of these (key, attempt) that is still PENDING, as
        apply_many would journal it (an event each), in a few set-wide statements: Ctrl-C
        on 100,000 queued tasks takes a fraction of a second, not a statement triple per
        task. Returns how many were cancelled."""
        with self._tx() as c:
            c.execute(
                "CREATE TEMP TABLE IF NOT EXISTS hsm_cancel "
                "(key TEXT NOT NULL, attempt INTEGER NOT NULL, PRIMARY KEY (key, attempt))"
            )
            c.execute("DELETE FROM temp.hsm_cancel")
            c.executemany("INSERT OR IGNORE INTO temp.hsm_cancel VALUES (?, ?)", attempts)
            n = c.execute(
                "INSERT INTO events (time, key, attempt, state, source, message) "
                "SELECT ?, a.key, a.attempt, 'CANCELLED', NULL, NULL FROM temp.hsm_cancel x "
                "JOIN attempts a ON a.key = x.key AND a.attempt = x.attempt "
                "WHERE a.state = 'PENDING'",
                (when,),
            ).rowcount
            (pending,) = c.execute(
                "SELECT COUNT(*) FROM attempts WHERE state = 'PENDING'"
            ).fetchone()
            # As many of these as there are PENDING attempts: they are all of them (the
            # usual Ctrl-C), and one pass over the table beats a look-up per attempt.
            only = (
                ""
                if n == pending
                else " AND (key, attempt) IN (SELECT key, attempt FROM temp.hsm_cancel)"
            )
            c.execute(
                "UPDATE attempts SET state = 'CANCELLED', ended = ?, error = NULL "
                f"WHERE state = 'PENDING'{only}",
                (when,),
            )
            c.execute("DELETE FROM temp.hsm_cancel")
        return int(n)

    def events(self, since_id: int = 0) -> list[tuple[Any, ...]]:
        return self._conn.execute(
            "SELECT id, time, key, attempt, state, source, message FROM events "
            "WHERE id > ? ORDER BY id",
            (since_id,),
        ).fetchall()

    # ------------------------------------------------------------------- views
    def write_status_views(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        latest = self.latest_attempts() if len(keys) > 50 else None
        for key in keys:
            att = latest[key] if latest is not None else _representative(self.attempts(key))
            write_status(self.sweep_dir, self._num(key), att)

    def write_metadata_view(self) -> None:
        counts = self.counts() if not self.readonly else {}
        write_metadata(self.sweep_dir, self.all_meta(), {s.value: n for s, n in counts.items()})

    def write_views(self) -> None:
        """Every view up to date with the journal (what an orchestrator's end does)."""
        sync_views(self.sweep_dir)


def _representative(attempts: list[Attempt]) -> Attempt:
    done = [a for a in attempts if a.state is TaskState.COMPLETED]
    return done[0] if done else attempts[-1]


def is_sweep_dir(path: Path) -> bool:
    return os.path.isfile(os.path.join(path, DB_NAME))
