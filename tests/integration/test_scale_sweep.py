"""A 10,000-task sweep run end to end, as a user runs it: a test of correctness, not of
time (bench/bench_scale.py measures time). Every task COMPLETED, and every view says so.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from hsm_core.model import TaskState
from hsm_core.store import SweepStore
from tests.sweep_utils import hsm

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
