"""What `hsm status` and the end-of-run summary print at 80 columns: whole sweep ids,
this project's sweeps only (`--all` for every project), paths that exist and copy whole,
and one name for tasks no source took."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import yaml

from tests.sweep_utils import PY, hsm, hsm_popen, wait_for

SWEEP_ID = re.compile(r"\b\d{8}_\d{6}_[0-9a-f]{4}\b")


def _project(root: Path, name: str) -> Path:
    project = root / name
    project.mkdir()
    (project / "hsm.yaml").write_text("sources: {}\n")  # marks the project root
    (project / "s.yaml").write_text(yaml.safe_dump({"grid": {"i": [1]}, "command": ["true"]}))
    return project


def test_status_lists_this_projects_sweeps_with_whole_ids_at_80_columns(tmp_path: Path) -> None:
    shared = {"XDG_STATE_HOME": str(tmp_path / "state"), "COLUMNS": "80"}
    ids = {}
    for name in ("alpha", "beta"):
        project = _project(tmp_path, name)
        res = hsm("run", "-c", "s.yaml", "--no-progress", cwd=project, env=shared)
        assert res.returncode == 0, res.stderr
        ids[name] = SWEEP_ID.findall(res.stdout)[0]  # the generated id, as a user gets it
    sub = tmp_path / "alpha" / "src"
    sub.mkdir()
    for cwd in (tmp_path / "alpha", sub):  # from the project root or below it
        out = hsm("status", cwd=cwd, env=shared, check=True).stdout
        assert ids["alpha"] in out and ids["beta"] not in out, out
        assert "…" not in out
        line = next(ln for ln in out.splitlines() if ids["alpha"] in ln)
        assert line.rstrip().endswith(str(tmp_path / "alpha" / "sweeps" / "outputs" / ids["alpha"]))
    every = hsm("status", "--all", cwd=sub, env=shared, check=True).stdout
    assert ids["alpha"] in every and ids["beta"] in every
    nothing = hsm("status", cwd=tmp_path, env=shared, check=True).stdout  # above both projects
    assert ids["alpha"] in nothing and ids["beta"] in nothing
    # A sweep id is still found from anywhere, whatever project it belongs to.
    found = hsm("status", ids["beta"], cwd=sub, env=shared, check=True).stdout
    assert f"sweep {ids['beta']} (not running)" in found


def test_summary_names_unplaced_tasks_once_and_prints_only_existing_paths(
    tmp_path: Path,
) -> None:
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump(
            {
                "grid": {"i": [1, 2, 3, 4]},
                "command": [
                    PY,
                    "-c",
                    "import sys, time; print('hi', file=sys.stderr); time.sleep(60)",
                ],
            }
        )
    )
    deep = tmp_path / ("a_folder_with_a_rather_long_name_" * 2) / "outputs"
    run = hsm_popen(
        "run", "-c", "s.yaml", "-s", "local:2", "--output-dir", str(deep), "--no-progress",
        cwd=tmp_path,
        env={"COLUMNS": "80"},
    )  # fmt: skip
    try:
        wait_for(
            lambda: all((deep / "tasks" / f"task_00{i}" / "stderr.log").exists() for i in (1, 2)),
            timeout=30,
        )
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, err
    lines = out.splitlines()
    paths = [ln.strip() for ln in lines if ln.strip().startswith("/")]
    assert len(paths) == 2, out  # the two tasks that ran; the queued ones left no log
    for path in paths:
        assert Path(path).is_file(), path  # whole, on a line of its own, and real
    assert sum("(not placed)" in ln for ln in lines if ln.startswith("CANCELLED")) == 2, out
    assert "(not placed)" in out.split("CANCELLED")[0]  # the counts table uses the same name
    assert "(unplaced)" not in out and " on -" not in out
    folder = next(ln for ln in lines if ln.startswith("sweep folder: "))
    assert folder == f"sweep folder: {deep}"
