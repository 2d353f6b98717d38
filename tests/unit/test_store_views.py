"""status.yaml views: what the journal says, readable by any YAML reader, folder or not."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from hsm_core.model import TaskEvent, TaskSpec, TaskState
from hsm_core.store import SweepStore
from hsm_core.views import sync_views


def make_store(tmp_path: Path) -> tuple[SweepStore, TaskSpec]:
    spec = TaskSpec.from_json({"key": "0123456789abcdef", "num": 1, "params": {"lr": 0.1}})
    store = SweepStore.create(
        tmp_path / "sweep", sweep_id="s", kind="test", config={}, tasks=[spec]
    )
    return store, spec


def status(store: SweepStore, spec: TaskSpec) -> dict[str, object]:
    return dict(yaml.safe_load((store.task_dir(spec) / "status.yaml").read_text()))


def test_status_view_reads_back_what_the_journal_says(tmp_path: Path) -> None:
    store, spec = make_store(tmp_path)
    error = 'line one\nline two: "quoted" # not a comment \\ ü 😀 \x1b[0m\u2028'
    for state in (TaskState.ASSIGNED, TaskState.RUNNING):
        store.apply(TaskEvent(spec.key, 1, state, "gpu-1", handle="4242"))
    store.apply(TaskEvent(spec.key, 1, TaskState.FAILED, "gpu-1", exit_code=-9, error=error))
    store.write_status_views([spec.key])
    doc = status(store, spec)
    assert (doc["state"], doc["attempt"], doc["source"], doc["handle"]) == (
        "FAILED",
        1,
        "gpu-1",
        "4242",
    )
    assert (doc["exit_code"], doc["error"], doc["key"]) == (-9, error, spec.key)
    assert isinstance(doc["created"], str) and isinstance(doc["ended"], str)
    text = (store.task_dir(spec) / "status.yaml").read_text()
    assert "state: FAILED\n" in text  # greppable, as the docs show it
    store.close()


def test_status_view_remakes_a_removed_task_folder(tmp_path: Path) -> None:
    store, spec = make_store(tmp_path)
    shutil.rmtree(store.task_dir(spec))
    store.write_status_views([spec.key])
    assert status(store, spec)["state"] == "PENDING"
    assert [p.name for p in store.task_dir(spec).iterdir()] == ["status.yaml"]
    store.close()


def test_task_folders_are_made_when_tasks_are_first_placed(tmp_path: Path) -> None:
    """Until it is placed, a task is in task_mapping.yaml only: stopping a big sweep
    right after its start changes no file per task (issue 12)."""
    specs = [TaskSpec.from_json({"key": f"{i:016x}", "num": i, "params": {"i": i}}) for i in (1, 2)]
    store = SweepStore.create(
        tmp_path / "sweep", sweep_id="s", kind="test", config={}, tasks=specs, task_views=False
    )
    sync_views(store.sweep_dir)
    assert not any(store.task_dir(t).exists() for t in specs)
    store.apply(TaskEvent(specs[0].key, 1, TaskState.ASSIGNED, "local"))
    store.apply(TaskEvent(specs[1].key, 1, TaskState.CANCELLED, None))
    sync_views(store.sweep_dir)
    assert yaml.safe_load((store.task_dir(specs[0]) / "params.yaml").read_text()) == {"i": 1}
    assert status(store, specs[0])["state"] == "ASSIGNED"
    assert not store.task_dir(specs[1]).exists(), "never placed: no folder"
    mine = store.task_dir(specs[0]) / "params.yaml"
    mine.write_text("i: edited\n")
    (store.task_dir(specs[0]) / "status.yaml").unlink()
    sync_views(store.sweep_dir)
    assert mine.read_text() == "i: edited\n", "a folder made once is not made again"
    assert status(store, specs[0])["state"] == "ASSIGNED", "a missing status.yaml comes back"
    shutil.rmtree(store.task_dir(specs[0]))
    sync_views(store.sweep_dir)
    assert yaml.safe_load((store.task_dir(specs[0]) / "params.yaml").read_text()) == {"i": 1}
    store.close()


def test_a_status_file_of_a_task_never_placed_is_kept_right(tmp_path: Path) -> None:
    """An older hsm (and a Hydra launch) made every task's folder at once: those status
    files follow the journal like any other."""
    specs = [TaskSpec.from_json({"key": f"{i:016x}", "num": i, "params": {"i": i}}) for i in (1, 2)]
    store = SweepStore.create(tmp_path / "sweep", sweep_id="s", kind="test", config={}, tasks=specs)
    assert status(store, specs[1])["state"] == "PENDING"
    store.apply(TaskEvent(specs[1].key, 1, TaskState.CANCELLED, None))
    sync_views(store.sweep_dir)
    assert status(store, specs[1])["state"] == "CANCELLED"
    store.close()
