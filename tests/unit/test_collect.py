"""Result collection: incremental, idempotent, never outside the folder."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from hsm_core.sources.ssh.collect import collect_folder, write_inline


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_write_inline_is_idempotent(tmp_path: Path) -> None:
    files = {"stdout.log": b64(b"hello"), "results/metrics.json": b64(b"{}")}
    first = write_inline(tmp_path, files)
    second = write_inline(tmp_path, files)
    assert (first.written, second.written, second.skipped) == (2, 0, 2)
    assert (tmp_path / "results" / "metrics.json").read_bytes() == b"{}"
    changed = write_inline(tmp_path, {"stdout.log": b64(b"hello again")})
    assert changed.written == 1 and (tmp_path / "stdout.log").read_bytes() == b"hello again"


def test_paths_that_are_not_ours_are_refused(tmp_path: Path) -> None:
    local = tmp_path / "task"
    (local).mkdir()
    (local / "status.yaml").write_text("state: RUNNING\n")
    evil = {
        "../escape.txt": b64(b"x"),
        "/etc/passwd-copy": b64(b"x"),
        "a/../../escape2.txt": b64(b"x"),
        "status.yaml": b64(b"state: COMPLETED\n"),  # written by the store, not the host
        ".hsm_pid.json": b64(b"{}"),
        "big.ckpt": b64(b"weights"),
    }
    stats = write_inline(local, evil, exclude=["*.ckpt"])
    assert stats.written == 0
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "escape2.txt").exists()
    assert (local / "status.yaml").read_text() == "state: RUNNING\n"
    assert sorted(p.name for p in local.iterdir()) == ["results", "status.yaml"]


def test_a_tasks_own_result_json_is_collected_as_one_of_its_files(tmp_path: Path) -> None:
    async def no_sftp() -> object:
        raise AssertionError("nothing large to pull")

    files = {"result.json": b64(b'{"acc": 0.9}'), "stdout.log": b64(b"out")}
    stats = asyncio.run(collect_folder(tmp_path, "/remote", files, [], no_sftp))  # type: ignore[arg-type]
    assert json.loads((tmp_path / "result.json").read_bytes()) == {"acc": 0.9}
    assert stats.written == 2


def test_missing_folders_are_made_and_results_always_exists(tmp_path: Path) -> None:
    local = tmp_path / "tasks" / "task_007"
    files = {"stdout.log": b64(b"out"), "deep/er/x.txt": b64(b"x"), "result.json": b64(b"{}")}
    stats = write_inline(local, files)
    assert stats.written == 3 and (local / "deep" / "er" / "x.txt").read_bytes() == b"x"
    assert (local / "results").is_dir()
    # Nothing but the files themselves: no temp file is left behind.
    assert sorted(p.name for p in local.iterdir()) == [
        "deep",
        "result.json",
        "results",
        "stdout.log",
    ]
    (local / "results").rmdir()  # e.g. archived with the attempt: a re-pull brings it back
    assert write_inline(local, files).skipped == 3 and (local / "results").is_dir()


def test_unchanged_means_same_bytes_whatever_the_length(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_bytes(b"abc")
    (tmp_path / "b.log").write_bytes(b"abcdef")
    (tmp_path / "c.log").write_bytes(b"")
    (tmp_path / "d.log").write_bytes(b"")
    files = {
        "a.log": b64(b"abcd"),
        "b.log": b64(b"abc"),
        "c.log": b64(b""),
        "d.log": b64(b"x"),
    }
    stats = write_inline(tmp_path, files)
    assert (stats.written, stats.skipped) == (3, 1)
    assert [(tmp_path / n).read_bytes() for n in sorted(files)] == [b"abcd", b"abc", b"", b"x"]


def test_a_symlink_in_the_folder_is_replaced_not_written_through(tmp_path: Path) -> None:
    local = tmp_path / "task"
    local.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep")
    (local / "stdout.log").symlink_to(outside)
    write_inline(local, {"stdout.log": b64(b"new"), "result.json": b64(b"{}")})
    assert outside.read_bytes() == b"keep"
    assert not (local / "stdout.log").is_symlink()
    assert (local / "stdout.log").read_bytes() == b"new"


def test_new_files_are_written_in_place_and_existing_ones_replaced_whole(
    tmp_path: Path,
) -> None:
    # A new file: nobody trusts the folder before the journal says so, so it is written
    # in place (no rename). A file already here may be open in a reader: a changed one is
    # swapped in whole (a new inode), never rewritten under the reader.
    write_inline(tmp_path, {"stdout.log": b64(b"one")})
    assert not list(tmp_path.glob(".*.part"))
    with open(tmp_path / "stdout.log", "rb") as reader:
        write_inline(tmp_path, {"stdout.log": b64(b"two")})
        assert reader.read() == b"one"
    assert (tmp_path / "stdout.log").read_bytes() == b"two"
