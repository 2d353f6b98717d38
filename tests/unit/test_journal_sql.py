"""The journal's shared queries agree with their definition on every shape of history."""

from __future__ import annotations

import random
from pathlib import Path

from hsm_core.model import TaskEvent, TaskSpec, TaskState
from hsm_core.store import SweepStore

TERMINAL = (TaskState.COMPLETED, TaskState.FAILED, TaskState.LOST, TaskState.CANCELLED)


def _by_definition(store: SweepStore) -> dict[str, tuple[int, str]]:
    """First COMPLETED attempt, else the newest: read attempt by attempt."""
    out = {}
    for t in store.tasks():
        atts = store.attempts(t.key)
        done = [a for a in atts if a.state is TaskState.COMPLETED]
        pick = done[0] if done else atts[-1]
        out[t.key] = (pick.attempt, pick.state.value)
    return out


def test_representative_attempts_match_their_definition(tmp_path: Path) -> None:
    rng = random.Random(7)
    tasks = [
        TaskSpec.from_json({"key": f"{i:016x}", "num": i, "params": {"i": i}})
        for i in range(1, 301)
    ]
    store = SweepStore.create(tmp_path / "s", sweep_id="s", kind="test", config={}, tasks=tasks)
    for t in tasks:
        # 0-3 further attempts, each ended one way or another; the last may still run.
        for n in range(1, rng.randint(1, 4) + 1):
            if n > 1:
                store.new_attempt(t.key)
            if rng.random() < 0.2 and n > 1:
                continue  # left PENDING
            end = rng.choice([*TERMINAL, TaskState.RUNNING])
            store.apply(TaskEvent(t.key, n, TaskState.ASSIGNED, rng.choice(["a", "b"])))
            store.apply(TaskEvent(t.key, n, end, None))
    want = _by_definition(store)
    got = {k: (a.attempt, a.state.value) for k, a in store.latest_attempts().items()}
    assert got == want
    rows = {r[0]: (r[1], r[2]) for r in store.latest_rows()}
    assert rows == want
    counts = {s.value: n for s, n in store.counts().items()}
    expected: dict[str, int] = {}
    for _, state in want.values():
        expected[state] = expected.get(state, 0) + 1
    assert counts == expected
    assert sum(sum(v.values()) for v in store.counts_by_source().values()) == len(tasks)
    assert [r[0] for r in store.task_rows()] == [t.key for t in tasks]
    store.close()
