"""`hsm run` checks before the first task what would make every task fail, and stops with
one line (exit 2) and nothing on disk; the README's sweep file runs as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from hsm_core.model import TaskState
from hsm_core.store import SweepStore
from tests.sweep_utils import hsm

REPO = Path(__file__).resolve().parents[2]

# The README's example before this check existed: keys the example app does not have.
OLD_README_SWEEP = """\
sweep:
  grid:
    seed: [1, 2, 3]
    optim: {lr: [0.1, 0.01]}
  paired:
    - size: {model.width: [16, 64], model.depth: [1, 3]}
script: example_app/train.py
"""


def _run(*args: str, cwd: Path, tmp: Path) -> tuple[int, str, str]:
    res = hsm("run", *args, "--no-progress", cwd=cwd, env={"XDG_STATE_HOME": str(tmp / "st")})
    return res.returncode, res.stdout, res.stderr


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_the_readme_sweep_file_runs_as_written(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("A sweep file", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    sweep = tmp_path / "readme_sweep.yaml"
    sweep.write_text(block)
    out = tmp_path / "out"
    code, stdout, stderr = _run(
        "--config", str(sweep), "--sources", "local:2", "--output-dir", str(out),
        cwd=REPO, tmp=tmp_path,
    )  # fmt: skip
    assert code == 0, stdout + stderr
    store = SweepStore.open(out, readonly=True)
    assert store.counts() == {TaskState.COMPLETED: 12}
    assert {t.params["model"] for t in store.tasks()} == {"linear", "mlp"}
    store.close()


def test_keys_the_app_does_not_have_stop_the_run_before_any_task(tmp_path: Path) -> None:
    sweep = tmp_path / "old.yaml"
    sweep.write_text(OLD_README_SWEEP)
    out = tmp_path / "out"
    code, _, stderr = _run("--config", str(sweep), "--output-dir", str(out), cwd=REPO, tmp=tmp_path)
    assert code == 2
    line = _one_line(stderr)
    assert f"{sweep}: task_001 (seed=1 optim.lr=0.1 model.width=16 model.depth=1)" in line
    assert "Could not override 'model.width'" in line and "--no-check" in line
    assert not out.exists()  # no sweep folder, no task ran

    # --no-check: the old behaviour, every task fails on its own.
    code, stdout, _ = _run(
        "--config", str(sweep), "--output-dir", str(out), "--max-tasks", "1", "--no-check",
        cwd=REPO, tmp=tmp_path,
    )  # fmt: skip
    assert code == 1 and "FAILED" in stdout


def test_a_config_group_choice_that_does_not_exist_is_found_in_a_later_point(
    tmp_path: Path,
) -> None:
    sweep = tmp_path / "g.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {"grid": {"model": ["linear", "mlp", "transformer"]}, "script": "example_app/train.py"}
        )
    )
    code, _, stderr = _run("--config", str(sweep), cwd=REPO, tmp=tmp_path)
    assert code == 2
    line = _one_line(stderr)
    assert "task_003 (model=transformer) would fail" in line
    assert "Could not find 'model/transformer'" in line and "linear, mlp" in line


def test_running_from_the_wrong_folder_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, stderr = _run(
        "--config", "sweeps/example.yaml", "--output-dir", str(out),
        cwd=REPO / "example_app", tmp=tmp_path,
    )  # fmt: skip
    assert code == 2
    line = _one_line(stderr)
    assert "sweeps/example.yaml:script: example_app/train.py not found in" in line
    assert "--project-root" in line
    assert not out.exists() and not (REPO / "example_app" / "sweeps" / "outputs").exists()


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"grid": {"a": [1]}, "script": "app.py", "python": "/no/such/python3"},
            "python: '/no/such/python3' is not found on this machine",
        ),
        (
            {"grid": {"a": [1]}, "command": ["hsm-test-no-such-program", "{a}"]},
            "command: 'hsm-test-no-such-program' is not found on this machine (not on PATH)",
        ),
        (
            {"grid": {"a": [1]}, "command": ["true", "{a}"], "cwd": "no/such/folder"},
            "cwd: the task folder",
        ),
    ],
)
def test_a_missing_interpreter_program_or_folder_is_one_line(
    tmp_path: Path, doc: dict[str, object], expected: str
) -> None:
    (tmp_path / "app.py").write_text("print('never runs')\n")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    code, _, stderr = _run("--config", "s.yaml", cwd=tmp_path, tmp=tmp_path)
    assert code == 2
    assert expected in _one_line(stderr)
    assert not (tmp_path / "sweeps").exists()


def test_a_script_that_is_not_a_hydra_app_is_never_run_by_the_check(tmp_path: Path) -> None:
    """`--cfg job` is only for Hydra apps: any other script would do its work with it."""
    (tmp_path / "plain.py").write_text(
        "import sys\nopen('calls.log', 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "# mentions hydra and main( in a comment, but declares no @hydra.main\n"
    )
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump({"grid": {"a": [1, 2]}, "script": "plain.py", "python": sys.executable})
    )
    code, stdout, stderr = _run("--config", "s.yaml", cwd=tmp_path, tmp=tmp_path)
    assert code == 0, stdout + stderr
    calls = sorted((tmp_path / "calls.log").read_text().splitlines())
    assert calls == ["a=1", "a=2"]
    assert not re.search(r"--cfg", (tmp_path / "calls.log").read_text())
