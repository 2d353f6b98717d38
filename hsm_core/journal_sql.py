"""SQL over the journal that several readers share (the store, the view writer, reports).

Each task's *representative* attempt is the one that stands for it everywhere (status,
views, reports): its first COMPLETED attempt if it has one (the first result wins, e.g.
over a re-run of a task whose host came back), otherwise its newest attempt.
"""

from __future__ import annotations

# Each completed attempt's metrics, read once from its task folder by the view writer
# (hsm_core.views): JSON {"m": {name: number}, "o": {name: where it was found}}, or {}.
METRICS_TABLE = (
    "CREATE TABLE IF NOT EXISTS metrics (key TEXT NOT NULL, attempt INTEGER NOT NULL, "
    "data TEXT NOT NULL, PRIMARY KEY (key, attempt))"
)

# The attempts that go on from their predecessor's checkpoint (hsm_core.resume), with the
# source that holds it: written with the attempt, so an orchestrator killed between a
# time limit and the resubmit still resumes, pinned and counted, under `hsm complete`.
RESUMES_TABLE = (
    "CREATE TABLE IF NOT EXISTS resumes (key TEXT NOT NULL, attempt INTEGER NOT NULL, "
    "kind TEXT NOT NULL, source TEXT NOT NULL, PRIMARY KEY (key, attempt))"
)

ATTEMPT_COLS = "key, attempt, state, source, handle, created, started, ended, exit_code, error"

_MULTI = "SELECT key FROM attempts WHERE attempt > 1"

# Every column of each task's representative attempt. Most tasks have one attempt: those
# rows are read as they are, and only the tasks with more are ranked (a window over every
# attempt of a 100,000-task sweep costs about five times more). The ranking uses SQLite's
# bare columns: beside MAX(), they come from the row that holds the maximum (a COMPLETED
# attempt scores above any other, the first of them highest; otherwise the newest).
REPRESENTATIVE = (
    f"SELECT {ATTEMPT_COLS} FROM attempts WHERE attempt = 1 AND key NOT IN ({_MULTI}) "
    f"UNION ALL SELECT {ATTEMPT_COLS} FROM (SELECT {ATTEMPT_COLS}, MAX(CASE "
    "WHEN state = 'COMPLETED' THEN -attempt ELSE attempt - 1000000000 END) FROM attempts "
    f"WHERE key IN ({_MULTI}) GROUP BY key)"
)

# Each task's newest attempt (every column), the same way.
NEWEST = (
    f"SELECT {ATTEMPT_COLS} FROM attempts WHERE attempt = 1 AND key NOT IN ({_MULTI}) "
    f"UNION ALL SELECT {ATTEMPT_COLS} FROM (SELECT {ATTEMPT_COLS}, MAX(attempt) FROM attempts "
    f"WHERE key IN ({_MULTI}) GROUP BY key)"
)
