"""The files record of a collected task folder (hsm_core.integrity) and the agent's listing
it is made from (remote_agent.walk_tree / tree_sums), on real files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hsm_core import integrity, remote_agent
from hsm_core.taskdir import FILES_RECORD


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_agent_lists_sums_and_what_exclude_kept_back(tmp_path: Path) -> None:
    d = tmp_path / "task"
    (d / "results" / "ckpt").mkdir(parents=True)
    (d / "results" / "m.json").write_bytes(b"{}")
    (d / "results" / "model.ckpt").write_bytes(b"x" * 10)
    (d / "results" / "ckpt" / "a.bin").write_bytes(b"y")
    (d / "stdout.log").write_bytes(b"out")
    (d / ".hsm_pid.json").write_text("{}")  # an old agent's record: never listed
    (d / "w.tmp123").write_text("partial")  # a temp file: never listed
    (d / FILES_RECORD).write_text("{}")  # the orchestrator's own record
    sums = remote_agent.tree_sums(str(d), ["*.ckpt", "ckpt"])
    assert sums == {
        "files": {
            "results/m.json": [2, _sha(b"{}")],
            "stdout.log": [3, _sha(b"out")],
        },
        "excluded": [["results/ckpt/", -1], ["results/model.ckpt", 10]],
    }
    assert remote_agent.tree_sums(str(tmp_path / "gone"), []) is None


def test_local_files_are_the_tasks_own(tmp_path: Path) -> None:
    d = tmp_path / "task_001"
    (d / "results").mkdir(parents=True)
    (d / "attempt_1").mkdir()
    for name in ("params.yaml", "status.yaml", FILES_RECORD, "hydra_job.pkl", ".x.1.2.tmp"):
        (d / name).write_text("hsm's")
    (d / "attempt_1" / "stdout.log").write_text("an earlier attempt")
    (d / "results" / "r.txt").write_text("r")
    (d / "stdout.log").write_text("o")
    assert sorted(integrity.local_files(d)) == ["results/r.txt", "stdout.log"]


def test_compare_names_missing_differing_and_extra() -> None:
    want = {"a": (1, "x"), "b": (2, "y"), "c": (3, "z")}
    have = {"a": (1, "x"), "b": (2, "other"), "d": (4, "w")}
    cmp = integrity.compare(want, have)
    assert (cmp.missing, cmp.differing, cmp.extra, cmp.ok) == (["c"], ["b"], ["d"], False)
    assert integrity.compare(want, dict(want)).ok


def test_the_record_is_written_then_replaced_and_read_back(tmp_path: Path) -> None:
    first = integrity.FilesRecord(1, "h1", "/r/t", {"a": (1, "x")}, {"m.ckpt": 9})
    integrity.write_record(tmp_path, first)
    second = integrity.FilesRecord(2, "h2", "/r/t", {"b": (2, "y")})
    integrity.write_record(tmp_path, second)
    got = integrity.read_record(tmp_path)
    assert got is not None and (got.attempt, got.source, got.files) == (2, "h2", {"b": (2, "y")})
    assert [p.name for p in tmp_path.iterdir()] == [FILES_RECORD]  # no temp file left
    (tmp_path / FILES_RECORD).write_text(json.dumps({"attempt": "x", "files": {}}))
    assert integrity.read_record(tmp_path) is None  # damaged: no record, not a crash


def test_matches_reads_only_when_the_size_agrees(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    assert integrity.matches(f, (3, _sha(b"abc")))
    assert not integrity.matches(f, (3, _sha(b"abd")))
    assert not integrity.matches(f, (4, _sha(b"abc")))
    assert not integrity.matches(tmp_path / "missing", (3, _sha(b"abc")))
