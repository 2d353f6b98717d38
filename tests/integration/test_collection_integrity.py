"""`hsm monitor collection --verify-integrity [--repair]` on real loopback ssh hosts: the
agent's sha256 record of each collected folder, a corrupted / missing / extra file found
and repaired, `exclude:`d files reported as excluded, a sweep finished by `hsm complete`
on another host, a sweep collected without records; and the collector's own check on
arrival (pulled again, then a loud IntegrityError)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hsm_core import integrity
from hsm_core.sources.ssh import collect
from hsm_core.taskdir import FILES_RECORD
from hsm_core.transport.ssh import SSHTarget, SSHTransport
from tests.integration.ssh_support import make_project, remote_project, ssh_entry
from tests.services import SSHEnv
from tests.sweep_utils import hsm

# Writes a 100 kB file (pulled by SFTP: above inline_max), a small one (inline) and a
# checkpoint (kept back by `exclude:`); odd tasks fail on h1 (127.0.0.1) after writing.
MAKE_PY = """\
import json, os, random, sys
i = int(sys.argv[1])
res = os.path.join(os.environ["HSM_TASK_DIR"], "results")
rng = random.Random(i)
with open(os.path.join(res, "big.bin"), "wb") as f:
    f.write(bytes(rng.getrandbits(8) for _ in range(100_000)))
with open(os.path.join(res, "metrics.json"), "w") as f:
    json.dump({"i": i, "loss": 1.0 / (i + 1)}, f)
with open(os.path.join(res, "model.ckpt"), "wb") as f:
    f.write(b"c" * 5000)
if i % 2 and os.environ.get("SSH_CONNECTION", "").split()[2] == "127.0.0.1":
    sys.exit(3)
"""
N = 6


def _project(tmp_path: Path, sources: dict[str, Any]) -> Path:
    project = make_project(tmp_path / "proj", {"make.py": MAKE_PY})
    (project / "hsm.yaml").write_text(yaml.safe_dump({"sources": sources}))
    sweep = {"grid": {"i": list(range(N))}, "command": ["python3", "make.py", "{i}"]}
    (project / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    git = ["git", "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "cfg"], cwd=project, check=True)
    return project


def _check(project: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    res = hsm("monitor", "collection", "s", "--json", *extra, cwd=project)
    assert res.returncode in (0, 1), res.stdout + res.stderr
    return res.returncode, json.loads(res.stdout)


def _by_task(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["task"]: t for t in doc["tasks"]}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corrupt_missing_and_extra_files_are_found_and_repaired(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    sources = {
        "h1": ssh_entry(ssh_env, "h1", exclude=["*.ckpt"]),
        "h2": ssh_entry(ssh_env, "h2", exclude=["*.ckpt"]),
    }
    project = _project(tmp_path, sources)
    first = hsm("run", "-c", "sweep.yaml", "-s", "ssh:h1:2", "--sweep-id", "s", cwd=project)
    assert first.returncode != 0  # the odd tasks failed on h1
    done = hsm("complete", "s", "--retry-failed", "-s", "ssh:h2:2", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    tasks = project / "sweeps" / "outputs" / "s" / "tasks"

    # Every collected folder has the host's record, and it is right.
    for n in range(1, N + 1):
        folder = tasks / f"task_{n:03d}"
        rec = json.loads((folder / FILES_RECORD).read_text())
        assert rec["source"] == ("h1" if n % 2 else "h2")  # task_002 is i=1: odd, on h2
        assert rec["attempt"] == (1 if n % 2 else 2)
        assert set(rec["files"]) == {"results/big.bin", "results/metrics.json", "stdout.log",
                                     "stderr.log"}  # fmt: skip
        assert rec["files"]["results/big.bin"][1] == _sha(folder / "results/big.bin")
        assert rec["excluded"] == {"results/model.ckpt": 5000}
        assert not (folder / "results/model.ckpt").exists()

    code, doc = _check(project, "--verify-integrity")
    assert code == 0, doc
    assert doc["checked"] == N and doc["matching"] == N
    assert {h: v["reachable"] for h, v in doc["hosts"].items()} == {"h1": True, "h2": True}
    assert all(t["excluded"] == {"results/model.ckpt": 5000} for t in doc["tasks"])
    assert all(t["missing"] == [] for t in doc["tasks"])  # excluded is not missing

    # Damage: one byte flipped (same size), a file deleted, a stray file added.
    big = tasks / "task_001" / "results" / "big.bin"
    good = big.read_bytes()
    big.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])
    (tasks / "task_002" / "results" / "metrics.json").unlink()
    (tasks / "task_003" / "results" / "stray.txt").write_text("not from the host")

    sizes_only = _check(project)  # no --verify-integrity: sizes, no host
    assert sizes_only[0] == 1
    assert _by_task(sizes_only[1])["task_001"]["differing"] == []  # same size: not seen
    assert _by_task(sizes_only[1])["task_002"]["missing"] == ["results/metrics.json"]

    code, doc = _check(project, "--verify-integrity")
    assert code == 1
    t = _by_task(doc)
    assert t["task_001"]["differing"] == ["results/big.bin"]
    assert t["task_002"]["missing"] == ["results/metrics.json"]
    assert t["task_003"]["extra"] == ["results/stray.txt"]
    assert [n for n, v in t.items() if not v["ok"]] == ["task_001", "task_002", "task_003"]

    text = hsm("monitor", "collection", "s", "--verify-integrity", cwd=project)
    assert text.returncode == 1
    assert "task_001 (h1): differs: results/big.bin" in text.stdout
    assert "task_002 (h2): missing: results/metrics.json" in text.stdout
    assert "task_003 (h1): extra: results/stray.txt" in text.stdout
    assert (
        "excluded by `exclude:` (kept on the hosts, not missing): 6 files, 30.0 KB in 6 "
        "tasks: results/model.ckpt"
    ) in text.stdout
    assert "3 of 6 tasks do not match: 1 file missing, 1 differing, 1 extra" in text.stdout

    code, doc = _check(project, "--repair")
    assert code == 1  # the stray file is reported, never deleted
    t = _by_task(doc)
    assert t["task_001"]["repaired"] == ["results/big.bin"]
    assert t["task_002"]["repaired"] == ["results/metrics.json"]
    assert big.read_bytes() == good
    assert (tasks / "task_003" / "results" / "stray.txt").exists()
    (tasks / "task_003" / "results" / "stray.txt").unlink()
    assert _check(project, "--verify-integrity")[0] == 0

    # Without records (an older hsm collected it): the host's copies are the reference;
    # with no host to ask, the task is unverified.
    (tasks / "task_004" / FILES_RECORD).unlink()
    code, doc = _check(project, "--verify-integrity")
    assert code == 0 and _by_task(doc)["task_004"]["record"] is False
    code, doc = _check(project, "--verify-integrity", "--offline")
    assert code == 1 and _by_task(doc)["task_004"]["unverified"] is True
    bad = hsm("monitor", "collection", "s", "--repair", "--offline", cwd=project)
    assert bad.returncode == 2 and "--repair" in bad.stderr and "Traceback" not in bad.stderr


def test_a_copy_that_differs_from_the_host_record_is_pulled_again_then_refused(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    """The collector's own check, on a real SFTP pull: a right sum passes; a wrong one
    costs a second pull, then an IntegrityError, and leaves nothing behind."""
    remote = Path(remote_project(ssh_env, "h1"))
    remote.mkdir(parents=True)
    (remote / "out.bin").write_bytes(b"x" * 200_000)
    right = integrity.sha256_of(remote / "out.bin")
    local = tmp_path / "task"
    local.mkdir()
    host = ssh_env.host("h1")
    target = SSHTarget(host="h1", ssh_config=str(ssh_env.ssh_config))

    async def pull(sums: dict[str, integrity.Sum]) -> collect.CollectStats:
        transport = SSHTransport(target, name="h1")
        try:
            sftp = await transport.sftp()
            entries = [["out.bin", 200_000, 0.0]]
            return await collect.pull_files(sftp, str(remote), local, entries, (), sums)
        finally:
            await transport.close()

    assert host.address
    stats = asyncio.run(pull({"out.bin": right}))
    assert stats.written == 1 and (local / "out.bin").read_bytes() == b"x" * 200_000
    (local / "out.bin").unlink()
    with pytest.raises(integrity.IntegrityError, match="pulled 2 times"):
        asyncio.run(pull({"out.bin": (200_000, "0" * 64)}))
    assert sorted(p.name for p in local.iterdir()) == []  # no copy, no .part left
