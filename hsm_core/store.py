"""SweepStore: the SQLite journal that is the truth about a sweep, plus the YAML views.

One writer (the orchestrator), any number of readers (`hsm status` in another terminal):
SQLite in WAL mode gives both without locks in the readers' way. YAML files are views
rewritten from the journal, each atomically, so a reader never sees half a file and a
crash never leaves one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hsm_core.errors import SweepNotFound
from hsm_core.model import NOT_PLACED, Attempt, TaskEvent, TaskSpec, TaskState, can_move
from hsm_core.yamlio import dump_flat_yaml, dump_yaml, write_atomic

DB_NAME = "sweep.db"
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

_ATTEMPT_COLS = "key, attempt, state, source, handle, created, started, ended, exit_code, error"
_RANKED = (
    f"SELECT {_ATTEMPT_COLS}, ROW_NUMBER() OVER (PARTITION BY key ORDER BY "
    "state = 'COMPLETED' DESC, CASE WHEN state = 'COMPLETED' THEN attempt ELSE -attempt END"
    ") AS rn FROM attempts"
)
_INSERT_ATTEMPT = (
    f"INSERT INTO attempts ({_ATTEMPT_COLS}) VALUES (?,?,?,NULL,NULL,?,NULL,NULL,NULL,NULL)"
)


def _attempt(row: tuple[Any, ...]) -> Attempt:
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

        `task_views=False` leaves the task folders to `write_missing_task_views` (the
        engine writes them while its sources connect)."""
        sweep_dir = Path(sweep_dir).resolve()
        for sub in ("tasks", "logs/sources", "scripts", "reports"):
            (sweep_dir / sub).mkdir(parents=True, exist_ok=True)
        db = sweep_dir / DB_NAME
        fresh: list[TaskSpec] = []
        if not db.exists():
            tmp = sweep_dir / f".{DB_NAME}.new"
            tmp.unlink(missing_ok=True)
            init = cls(sweep_dir, cls._connect(tmp, readonly=False), readonly=False)
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
            _, fresh = init._insert_tasks(tasks)
            init._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            init.close()
            os.replace(tmp, db)
        store = cls(sweep_dir, cls._connect(db, readonly=False), readonly=False)
        if task_views:
            store._write_task_views(fresh)
        write_atomic(sweep_dir / "sweep_config.yaml", dump_yaml(dict(config)))
        store.write_metadata_view()
        return store

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
        out, fresh = self._insert_tasks(tasks)
        self._write_task_views(fresh)
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

    def write_missing_task_views(self) -> None:
        """Task folders (params.yaml, status.yaml) of tasks that have none yet."""
        missing = [t for t in self.tasks() if not (self.task_dir(t) / "params.yaml").exists()]
        self._write_task_views(missing)

    def tasks(self) -> list[TaskSpec]:
        rows = self._conn.execute("SELECT spec FROM tasks ORDER BY num").fetchall()
        return [TaskSpec.from_json(json.loads(r[0])) for r in rows]

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
        rows = self._conn.execute(
            f"SELECT {_ATTEMPT_COLS} FROM ({_RANKED}) WHERE rn = 1"
        ).fetchall()
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
            f"SELECT state, COUNT(*) FROM ({_RANKED}) WHERE rn = 1 GROUP BY state"
        ).fetchall()
        return {TaskState(s): n for s, n in rows}

    def counts_by_source(self) -> dict[str, dict[TaskState, int]]:
        """Tasks per (source, state) of their representative attempt, in one query."""
        out: dict[str, dict[TaskState, int]] = {}
        for source, state, n in self._conn.execute(
            f"SELECT source, state, COUNT(*) FROM ({_RANKED}) WHERE rn = 1 GROUP BY source, state"
        ):
            out.setdefault(source or NOT_PLACED, {})[TaskState(state)] = n
        return out

    def new_attempt(self, key: str) -> int:
        """Open attempt n+1 in PENDING (after a retry or a re-queue)."""
        with self._tx() as c:
            (last,) = c.execute("SELECT MAX(attempt) FROM attempts WHERE key=?", (key,)).fetchone()
            n = int(last or 0) + 1
            c.execute(
                _INSERT_ATTEMPT,
                (key, n, TaskState.PENDING.value, time.time()),
            )
        return n

    def set_handle(self, key: str, attempt: int, handle: str) -> None:
        """Record where an attempt runs (pid, job id) if no report has said so yet."""
        with self._tx() as c:
            c.execute(
                "UPDATE attempts SET handle = COALESCE(handle, ?) WHERE key = ? AND attempt = ?",
                (handle, key, attempt),
            )

    def apply(self, event: TaskEvent) -> bool:
        return self.apply_many([event])[0]

    def apply_many(self, events: Iterable[TaskEvent]) -> list[bool]:
        """Apply source reports in one transaction; refuse any that would move back."""
        accepted: list[bool] = []
        with self._tx() as c:
            for ev in events:
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
            name = f"task_{self._num(key):03d}"
            doc = {
                "state": att.state.value,
                "attempt": att.attempt,
                "source": att.source,
                "handle": att.handle,
                "created": _iso(att.created),
                "started": _iso(att.started),
                "ended": _iso(att.ended),
                "exit_code": att.exit_code,
                "error": att.error,
                "key": key,
            }
            path = self.sweep_dir / "tasks" / name / "status.yaml"
            text = dump_flat_yaml(doc)
            try:
                write_atomic(path, text)
            except FileNotFoundError:
                # The folder is made with the task: only a folder removed by hand since
                # needs the mkdir, so the usual rewrite does not pay for one.
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, text)

    def write_metadata_view(self) -> None:
        meta = self.all_meta()
        meta.pop("config", None)
        counts = self.counts() if not self.readonly else {}
        meta["counts"] = {s.value: counts.get(s, 0) for s in TaskState}
        meta["total_tasks"] = sum(counts.values())
        for k in ("created", "started", "ended"):
            if isinstance(meta.get(k), float):
                meta[k] = _iso(meta[k])
        write_atomic(self.sweep_dir / "sweep_metadata.yaml", dump_yaml(meta))

    def write_mapping_view(self) -> None:
        latest = self.latest_attempts()
        mapping = {}
        for t in self.tasks():
            att = latest.get(t.key)
            mapping[t.name] = {
                "key": t.key,
                "state": att.state.value if att else None,
                "source": att.source if att else None,
                "attempt": att.attempt if att else None,
                "params": dict(t.params),
            }
        write_atomic(self.sweep_dir / "task_mapping.yaml", dump_yaml({"tasks": mapping}))

    def write_views(self) -> None:
        self.write_metadata_view()
        self.write_mapping_view()


def _representative(attempts: list[Attempt]) -> Attempt:
    done = [a for a in attempts if a.state is TaskState.COMPLETED]
    return done[0] if done else attempts[-1]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def is_sweep_dir(path: Path) -> bool:
    return os.path.isfile(os.path.join(path, DB_NAME))
