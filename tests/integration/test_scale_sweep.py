"""Big sweeps run as a user runs them: tests of correctness, not of time
(bench/bench_scale.py measures time). A 10,000-task sweep end to end: every task
COMPLETED, and every view says so. Ctrl-C early in a big sweep: every view says what the
journal says.
"""

from __future__ import annotations

import signal
from pathlib import Path

import yaml

from hsm_core.model import TaskState
from hsm_core.store import SweepStore
from hsm_core.views import BULK_MIN
from hsm_core.yamlio import load_yaml
from tests.helpers import wait_for
from tests.sweep_utils import hsm, hsm_popen

N = 10_000


def test_ten_thousand_tasks_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump({"grid": {"i": list(range(N))}, "command": ["true", "{i}"]})
    )
    res = hsm(
        "run", "-c", "sweep.yaml", "-s", "local:2", "--sweep-id", "big", "--no-progress",
        cwd=tmp_path, timeout=1200,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    folder = tmp_path / "sweeps" / "outputs" / "big"
    store = SweepStore.open(folder, readonly=True)
    assert store.counts() == {TaskState.COMPLETED: N}
    assert len(store.attempts()) == N  # nothing ran twice
    store.close()
    # The views, read as text (10,000 YAML parses would dominate the test).
    statuses = sorted((folder / "tasks").glob("task_*/status.yaml"))
    assert len(statuses) == N
    wrong = [p for p in statuses if not p.read_text().startswith("state: COMPLETED\n")]
    assert not wrong, wrong[:3]
    assert len(list((folder / "tasks").glob("task_*/params.yaml"))) == N
    mapping = yaml.safe_load((folder / "task_mapping.yaml").read_text())["tasks"]
    assert len(mapping) == N
    assert {row["state"] for row in mapping.values()} == {"COMPLETED"}
    assert mapping["task_10000"]["params"] == {"i": N - 1}
    meta = yaml.safe_load((folder / "sweep_metadata.yaml").read_text())
    assert meta["counts"]["COMPLETED"] == N and meta["total_tasks"] == N
    assert meta["orchestrator"] is None
    assert (folder / "reports" / "error_analysis.html").is_file()


def test_ctrl_c_early_in_a_big_sweep_leaves_views_that_agree_with_the_journal(
    tmp_path: Path,
) -> None:
    """SIGINT a few tasks into a 5,000-task sweep: the queue is cancelled at once, and
    every view (the mapping's row of every task, every status.yaml there is, the
    metadata's counts) says what the journal says when `hsm run` has exited."""
    n = 5_000
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump({"grid": {"i": list(range(n))}, "command": ["true", "{i}"]})
    )
    proc = hsm_popen(
        "run", "-c", "sweep.yaml", "-s", "local:2", "--sweep-id", "c", "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    folder = tmp_path / "sweeps" / "outputs" / "c"

    def completed() -> int:
        if proc.poll() is not None:
            return -1  # exited on its own: the assertions below say how
        store = SweepStore.open(folder, readonly=True)
        try:
            return store.counts().get(TaskState.COMPLETED, 0)
        finally:
            store.close()

    wait_for(
        lambda: completed() >= 10 or proc.poll() is not None, timeout=300, retry_on=(Exception,)
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]

    store = SweepStore.open(folder, readonly=True)
    latest = store.latest_attempts()
    counts = store.counts()
    assert counts[TaskState.CANCELLED] >= BULK_MIN, counts  # the set-wise path ran
    assert set(counts) == {TaskState.COMPLETED, TaskState.CANCELLED}, counts
    tasks = store.tasks()
    store.close()
    rows = load_yaml((folder / "task_mapping.yaml").read_text())["tasks"]
    assert len(rows) == n
    for t in tasks:
        att, row = latest[t.key], rows[t.name]
        shown = (row["state"], row["source"], row["attempt"])
        assert shown == (att.state.value, att.source, att.attempt), t.name
    with_status = {p.parent.name for p in (folder / "tasks").glob("task_*/status.yaml")}
    placed = {t.name for t in tasks if latest[t.key].source is not None}
    assert with_status == placed  # a folder for each task placed, none for the rest
    for t in tasks:
        if t.name in placed:
            doc = load_yaml((folder / "tasks" / t.name / "status.yaml").read_text())
            assert (doc["state"], doc["attempt"]) == (latest[t.key].state.value, 1), t.name
    meta = load_yaml((folder / "sweep_metadata.yaml").read_text())
    assert meta["counts"] == {s.value: counts.get(s, 0) for s in TaskState}
    assert meta["orchestrator"] is None
