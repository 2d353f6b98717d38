"""The view writer: views follow the journal's events, cost what changed, repair what lies."""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from hsm_core.model import TaskEvent, TaskSpec, TaskState
from hsm_core.store import SweepStore
from hsm_core.views import HWM_EVENT, MAPPING, ViewWriter, flow_yaml, sync_views


def specs(n: int) -> list[TaskSpec]:
    # Keys of digits only: a YAML reader takes them for numbers unless quoted.
    return [
        TaskSpec.from_json({"key": f"{i:016d}", "num": i, "params": {"i": i, "lr": 1e-5 * i}})
        for i in range(1, n + 1)
    ]


def make(tmp_path: Path, n: int = 5) -> tuple[SweepStore, list[TaskSpec]]:
    tasks = specs(n)
    store = SweepStore.create(
        tmp_path / "s", sweep_id="s", kind="test", config={}, tasks=tasks, task_views=False
    )
    return store, tasks


def mapping(store: SweepStore) -> dict[str, Any]:
    return dict(yaml.safe_load((store.sweep_dir / MAPPING).read_text())["tasks"])


def status(store: SweepStore, t: TaskSpec) -> dict[str, Any]:
    return dict(yaml.safe_load((store.task_dir(t) / "status.yaml").read_text()))


def state_of(store: SweepStore, t: TaskSpec) -> str | None:
    try:
        return str(status(store, t)["state"])
    except FileNotFoundError:
        return None


def finish(store: SweepStore, t: TaskSpec, source: str = "local", attempt: int = 1) -> None:
    for state in (TaskState.ASSIGNED, TaskState.RUNNING, TaskState.COMPLETED):
        assert store.apply(TaskEvent(t.key, attempt, state, source, exit_code=0))


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": -2.5, "c": 1e-05, "d": 1e300, "e": "1e-3", "f": "0123", "g": True},
        {"s": "yes", "t": "null", "u": "a b: c", "v": "", "w": None, "x": [1, "x", [2.0]]},
        {"nested": {"deep": {"x": 1}}, "q": 'it\'s "quoted"\n', "inf": math.inf, "u": "ü"},
        {"t": "2024-01-01", "o": "0o17", "h": "0x1F", "n": "-", "at": "@x", "hash": "#c"},
    ],
)
def test_flow_yaml_reads_back_as_the_value(value: dict[str, Any]) -> None:
    text = flow_yaml(value)
    assert "\n" not in text
    assert yaml.safe_load(text) == value


def test_views_follow_events_and_the_mark_is_in_the_journal(tmp_path: Path) -> None:
    store, tasks = make(tmp_path)
    sync_views(store.sweep_dir)
    assert {v["state"] for v in mapping(store).values()} == {"PENDING"}
    size = (store.sweep_dir / MAPPING).stat().st_size
    finish(store, tasks[1])
    store.apply(TaskEvent(tasks[2].key, 1, TaskState.ASSIGNED, "gpu-box"))
    store.apply(TaskEvent(tasks[2].key, 1, TaskState.FAILED, "gpu-box", exit_code=3))
    sync_views(store.sweep_dir)
    m = mapping(store)
    assert m["task_002"] == {
        "key": tasks[1].key,
        "state": "COMPLETED",
        "source": "local",
        "attempt": 1,
        "params": dict(tasks[1].params),
    }
    assert (m["task_003"]["state"], m["task_003"]["source"]) == ("FAILED", "gpu-box")
    assert (store.sweep_dir / MAPPING).stat().st_size == size, "fields changed in place"
    assert status(store, tasks[1])["state"] == "COMPLETED"
    assert status(store, tasks[2])["exit_code"] == 3
    (top,) = store._conn.execute("SELECT MAX(id) FROM events").fetchone()
    assert store.meta(HWM_EVENT) == top
    meta = yaml.safe_load((store.sweep_dir / "sweep_metadata.yaml").read_text())
    assert meta["counts"]["COMPLETED"] == 1 and meta["counts"]["FAILED"] == 1
    assert meta["counts"]["PENDING"] == 3
    store.close()


def test_a_refresh_rewrites_only_what_changed(tmp_path: Path) -> None:
    store, tasks = make(tmp_path, 50)
    for t in tasks:
        store.apply(TaskEvent(t.key, 1, TaskState.ASSIGNED, "local"))
    sync_views(store.sweep_dir)
    for t in tasks:
        os.utime(store.task_dir(t) / "status.yaml", (0, 0))
    for state in (TaskState.RUNNING, TaskState.COMPLETED):
        assert store.apply(TaskEvent(tasks[7].key, 1, state, "local", exit_code=0))
    sync_views(store.sweep_dir)
    touched = [t.num for t in tasks if (store.task_dir(t) / "status.yaml").stat().st_mtime]
    assert touched == [8]
    store.close()


def test_a_new_attempt_is_an_event_the_views_follow(tmp_path: Path) -> None:
    store, tasks = make(tmp_path)
    t = tasks[0]
    store.apply(TaskEvent(t.key, 1, TaskState.ASSIGNED, "h1"))
    store.apply(TaskEvent(t.key, 1, TaskState.LOST, "h1", error="gone"))
    sync_views(store.sweep_dir)
    assert store.new_attempt(t.key) == 2
    sync_views(store.sweep_dir)
    assert (status(store, t)["state"], status(store, t)["attempt"]) == ("PENDING", 2)
    assert mapping(store)["task_001"]["attempt"] == 2
    store.close()


def test_a_wider_source_name_rewrites_the_mapping(tmp_path: Path) -> None:
    store, tasks = make(tmp_path)
    sync_views(store.sweep_dir)
    long = "a-source-name-much-wider-than-the-field"
    finish(store, tasks[0], source=long)
    sync_views(store.sweep_dir)
    assert mapping(store)["task_001"]["source"] == long
    finish(store, tasks[1], source="x")
    sync_views(store.sweep_dir)  # in place again, in the wider fields
    assert mapping(store)["task_002"]["source"] == "x"
    store.close()


def test_views_that_lie_are_repaired(tmp_path: Path) -> None:
    """What a crash, a power cut or a hand leaves behind: every view is right again
    after the next writer, though the mark says nothing is behind."""
    store, tasks = make(tmp_path)
    for t in tasks:
        finish(store, t)
    sync_views(store.sweep_dir)
    truncated = store.task_dir(tasks[0]) / "status.yaml"
    truncated.write_text(truncated.read_text()[:20])
    (store.task_dir(tasks[1]) / "status.yaml").write_text("state: PENDING\n")
    (store.task_dir(tasks[2]) / "status.yaml").unlink()
    path = store.sweep_dir / MAPPING
    path.write_text(path.read_text().replace("state: COMPLETED", "state: RUNNING  ", 1))
    sync_views(store.sweep_dir)
    for t in tasks:
        assert status(store, t)["state"] == "COMPLETED", t.name
    assert {v["state"] for v in mapping(store).values()} == {"COMPLETED"}
    path.write_text("tasks: {}\n")  # not ours any more: written anew
    sync_views(store.sweep_dir)
    assert {v["state"] for v in mapping(store).values()} == {"COMPLETED"}
    assert len(mapping(store)) == len(tasks)
    store.close()


def test_the_writer_thread_keeps_up_while_the_journal_grows(tmp_path: Path) -> None:
    from tests.helpers import wait_for

    store, tasks = make(tmp_path, 20)
    writer = ViewWriter(store.sweep_dir, interval=0.05)
    writer.start()
    try:
        for t in tasks[:10]:
            finish(store, t)
        wait_for(lambda: state_of(store, tasks[9]) == "COMPLETED", timeout=10)
        added = TaskSpec.from_json({"key": "ffff000000000000", "num": 21, "params": {"i": 21}})
        store.add_tasks([added])
        wait_for(lambda: "task_021" in (mapping(store) or {}), timeout=10)
        for t in tasks[10:]:
            finish(store, t)
    finally:
        writer.close()
    assert all(status(store, t)["state"] == "COMPLETED" for t in tasks)
    assert [v["state"] for v in mapping(store).values()].count("COMPLETED") == 20
    store.close()


def test_creation_is_all_or_nothing_on_interrupt(tmp_path: Path) -> None:
    def points() -> Any:
        yield from specs(12_000)[:11_000]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SweepStore.create(tmp_path / "s", sweep_id="s", kind="test", config={}, tasks=points())
    assert not SweepStore.exists(tmp_path / "s")
    assert not [p for p in (tmp_path / "s").iterdir() if p.is_file()]


def test_a_killed_writer_leaves_the_mark_behind_never_ahead(tmp_path: Path) -> None:
    store, tasks = make(tmp_path)
    sync_views(store.sweep_dir)
    mark = store.meta(HWM_EVENT) or 0
    finish(store, tasks[0])
    # A writer that has not refreshed yet (killed first): the mark has not moved.
    assert (store.meta(HWM_EVENT) or 0) == mark
    conn = sqlite3.connect(store.sweep_dir / "sweep.db")
    assert conn.execute("SELECT COUNT(*) FROM events WHERE id > ?", (mark,)).fetchone()[0] == 3
    conn.close()
    sync_views(store.sweep_dir)
    assert status(store, tasks[0])["state"] == "COMPLETED"
    store.close()


def test_metrics_are_read_once_when_a_task_completes_and_reports_read_the_journal(
    tmp_path: Path,
) -> None:
    """`hsm results` and the report's Results section read the metrics the view writer
    recorded when each task completed, not 100,000 task folders (issue 12); what was
    never recorded (an older hsm's sweep, a task completed since) comes from its folder."""
    import json

    from hsm_core.reporting.results import load_results

    store, tasks = make(tmp_path, 4)

    def complete_with(t: TaskSpec, loss: float) -> None:
        store.apply(TaskEvent(t.key, 1, TaskState.ASSIGNED, "local"))
        results = store.task_dir(t) / "results"
        results.mkdir(parents=True, exist_ok=True)
        (results / "m.json").write_text(json.dumps({"loss": loss, "i": 0}))
        for state in (TaskState.RUNNING, TaskState.COMPLETED):
            assert store.apply(TaskEvent(t.key, 1, state, "local", exit_code=0))

    complete_with(tasks[0], 0.5)
    complete_with(tasks[1], 0.25)
    store.apply(TaskEvent(tasks[3].key, 1, TaskState.CANCELLED, None))
    sync_views(store.sweep_dir)
    for t in tasks[:2]:
        (store.task_dir(t) / "results" / "m.json").unlink()  # only the journal has them now
    complete_with(tasks[2], 0.125)  # after the views: its folder is read

    def losses() -> dict[str, float | None]:
        res = load_results(store)
        return {r.task.name: r.metrics.get("loss") for r in res.rows}

    assert losses() == {"task_001": 0.5, "task_002": 0.25, "task_003": 0.125, "task_004": None}
    plotted = load_results(store, only_metrics=True)
    assert [r.task.name for r in plotted.rows] == ["task_001", "task_002", "task_003"]
    assert plotted.completed == 3
    assert all("i" not in r.metrics for r in plotted.rows), "a parameter's echo is no metric"
    sync_views(store.sweep_dir)
    (store.task_dir(tasks[2]) / "results" / "m.json").unlink()
    assert losses()["task_003"] == 0.125, "recorded by the next refresh"
    with sqlite3.connect(store.sweep_dir / "sweep.db") as db:
        db.execute("DROP TABLE metrics")  # a sweep of an older hsm
    assert losses() == {"task_001": None, "task_002": None, "task_003": None, "task_004": None}
    store.close()


def test_a_whole_queue_cancelled_at_once_is_written_set_wise_and_right(tmp_path: Path) -> None:
    """Ctrl-C on a big sweep cancels its queue in one statement; the writer then writes
    the tasks never placed set-wise (no folder, one patch of the mapping each), and every
    task that was placed, or has a folder anyway, one by one, as it stands."""
    from hsm_core.views import BULK_MIN, write_status

    store, tasks = make(tmp_path, BULK_MIN + 40)
    sync_views(store.sweep_dir)
    finish(store, tasks[0])  # done before the Ctrl-C
    store.apply(TaskEvent(tasks[1].key, 1, TaskState.ASSIGNED, "h1"))
    sync_views(store.sweep_dir)  # its folder is made
    store.apply(TaskEvent(tasks[1].key, 1, TaskState.LOST, "h1"))
    assert store.new_attempt(tasks[1].key) == 2  # queued again: it has a folder
    store.apply(TaskEvent(tasks[2].key, 1, TaskState.CANCELLED, None))
    assert store.new_attempt(tasks[2].key) == 2  # never placed, two attempts
    finish(store, tasks[3])
    assert store.new_attempt(tasks[3].key) == 2  # a re-run queued: attempt 1 stands
    sync_views(store.sweep_dir)
    store.apply(TaskEvent(tasks[5].key, 1, TaskState.ASSIGNED, "h2"))  # no folder yet
    # A folder an older hsm made for a task never placed: its status.yaml is kept right.
    write_status(store.sweep_dir, tasks[4].num, store.attempts(tasks[4].key)[0])
    pending = [(a.key, a.attempt) for a in store.attempts() if a.state is TaskState.PENDING]
    last = pending.pop()  # some of the queue (a look-up per attempt), then the rest
    assert store.cancel_pending(pending, 1.0) == len(pending) > BULK_MIN
    assert store.cancel_pending([last, (tasks[0].key, 1)], 2.0) == 1
    writer = ViewWriter(store.sweep_dir)
    writer.sync(audit=False)  # as Ctrl-C leaves them: nothing read back and repaired
    writer.close(audit=False)

    latest = store.latest_attempts()
    assert latest[tasks[0].key].state is TaskState.COMPLETED
    assert (latest[tasks[3].key].state, latest[tasks[3].key].attempt) == (TaskState.COMPLETED, 1)
    rows = mapping(store)
    for t in tasks:
        att = latest[t.key]
        shown = (rows[t.name]["state"], rows[t.name]["source"], rows[t.name]["attempt"])
        assert shown == (att.state.value, att.source, att.attempt), t.name
        if t in tasks[:6] and t is not tasks[2]:  # placed, or a folder anyway
            assert (status(store, t)["state"], status(store, t)["attempt"]) == (
                att.state.value,
                att.attempt,
            ), t.name
        else:
            assert not store.task_dir(t).exists(), t.name
    meta = yaml.safe_load((store.sweep_dir / "sweep_metadata.yaml").read_text())
    assert meta["counts"]["CANCELLED"] == len(tasks) - 3
    assert meta["counts"]["ASSIGNED"] == 1
    assert meta["counts"]["COMPLETED"] == 2
    store.close()
