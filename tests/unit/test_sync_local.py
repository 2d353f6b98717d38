"""The local half of the sync check on real folders: no git, a git repository, and a
project in a subfolder of one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hsm_core.sources.ssh.sync import local_state


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def test_a_folder_outside_git(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print(1)\n")
    side, tracked = local_state(tmp_path)
    assert tracked is None and side.git_commit is None
    assert "no git repository" in (side.git_error or "")


def test_a_project_inside_a_repository(tmp_path: Path) -> None:
    project = tmp_path / "repo" / "proj"
    project.mkdir(parents=True)
    (project / "train.py").write_text("print(1)\n")
    (tmp_path / "repo" / "other.txt").write_text("x\n")
    git(tmp_path / "repo", "init", "-q")
    git(tmp_path / "repo", "add", ".")
    git(tmp_path / "repo", "commit", "-q", "-m", "c")

    side, tracked = local_state(project)  # found through the parent folder
    assert tracked == ["train.py"] and side.git_commit and not side.git_dirty

    (project / "train.py").write_text("print(2)\n")
    side, _ = local_state(project)
    assert side.git_dirty and side.dirty_files == [" M train.py"]


def test_a_project_dir_without_the_project_is_told_apart_from_one_that_differs() -> None:
    from hsm_core.sources.ssh.sync import SyncReport

    report = SyncReport("h1", "h1", "warn", "/p", status="differs", compared=3)
    report.differing_files = report.missing_files = ["a.py", "b.py", "c.py"]
    assert report.project_missing
    assert "none of the project's 3 files is in /p" in report.summary()
    report.missing_files = ["c.py"]  # two are there, one differs from ours
    assert not report.project_missing and "3 file(s) differ" in report.summary()
    report.remote.exists = False
    assert report.project_missing and "/p does not exist" in report.summary()
    assert report.to_meta()["project_missing"] == "/p does not exist"
