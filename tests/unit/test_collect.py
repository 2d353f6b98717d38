"""Result collection: incremental, idempotent, result.json last, never outside the folder."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from hsm_core.collect import collect_folder, write_inline


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


def test_result_json_is_written_last(tmp_path: Path) -> None:
    seen: list[tuple[bool, bool]] = []

    async def before(result: bytes | None) -> None:
        assert result is not None and json.loads(result)["exit_code"] == 0
        seen.append(((tmp_path / "stdout.log").exists(), (tmp_path / "result.json").exists()))

    async def no_sftp() -> object:
        raise AssertionError("nothing large to pull")

    files = {"result.json": b64(b'{"exit_code": 0}'), "stdout.log": b64(b"out")}
    stats, result = asyncio.run(
        collect_folder(tmp_path, "/remote", files, [], no_sftp, before_result=before)  # type: ignore[arg-type]
    )
    assert seen == [(True, False)]  # the folder was there, its proof not yet
    assert (tmp_path / "result.json").read_bytes() == result == b'{"exit_code": 0}'
    assert stats.written == 2
