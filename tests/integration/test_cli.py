"""`hsm run / status / cancel / complete` as a user runs them: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hsm_core.model import TaskState
from hsm_core.store import SweepStore
from tests.sweep_utils import PY, hsm, hsm_popen, wait_for

HOSTILE = [
    "$(touch pwned)",
    "; touch pwned",
    "`touch pwned`",
    "it's",
    'say "hi"',
    "back\\slash",
    "a,b",
    "a=b",
    "é☃中",
    "",
    " lead",
    "trail ",
    "line\nbreak",
    "tab\there",
    "${HOME}",
    "*",
    "--flag",
    "-",
]

ARGV_ECHO = "import sys, json; print(json.dumps(sys.argv[1:]))"


def _write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def _sweep_dir(cwd: Path, sweep_id: str) -> Path:
    return cwd / "sweeps" / "outputs" / sweep_id


def test_hostile_values_reach_argv_byte_exact(tmp_path: Path) -> None:
    sweep = _write(
        tmp_path / "s.yaml",
        {"grid": {"v": HOSTILE}, "command": [PY, "-c", ARGV_ECHO, "{v}", "x{v}y"]},
    )
    res = hsm("run", "-c", str(sweep), "-s", "local:2", "--sweep-id", "h", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    store = SweepStore.open(_sweep_dir(tmp_path, "h"), readonly=True)
    got = {}
    for t in store.tasks():
        got[t.params["v"]] = json.loads((store.task_dir(t) / "stdout.log").read_text())
    assert got == {v: [v, f"x{v}y"] for v in HOSTILE}
    assert not list(tmp_path.rglob("pwned"))


def test_hostile_values_reach_a_hydra_script_byte_exact(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "import json, os, hydra\n"
        "from omegaconf import OmegaConf\n"
        "@hydra.main(version_base=None, config_path=None)\n"
        "def main(cfg):\n"
        "    d = os.environ['HSM_TASK_DIR']\n"
        "    v = OmegaConf.to_container(cfg)['v']\n"
        "    json.dump({'v': v}, open(os.path.join(d, 'results', 'v.json'), 'w'))\n"
        "main()\n"
    )
    values = [v for v in HOSTILE if v != "${HOME}"] + [1, 2.5, True, None, [1, "a b"], "1e-3"]
    sweep = _write(
        tmp_path / "s.yaml",
        {"grid": {"+v": values}, "script": "app.py"},
    )
    res = hsm("run", "-c", str(sweep), "-s", "local:2", "--sweep-id", "hy", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    store = SweepStore.open(_sweep_dir(tmp_path, "hy"), readonly=True)
    for t in store.tasks():
        seen = json.loads((store.task_dir(t) / "results" / "v.json").read_text())["v"]
        assert seen == t.params["+v"], t.name
    assert not list(tmp_path.rglob("pwned"))


def test_dry_run_prints_commands_and_runs_nothing(tmp_path: Path) -> None:
    sweep = _write(
        tmp_path / "s.yaml",
        {"grid": {"a": [1, 2], "b": ["x y"]}, "command": ["echo", "{a}", "{b}"]},
    )
    res = hsm("run", "-c", str(sweep), "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "task_001  echo 1 'x y'" in res.stdout
    assert "task_002  echo 2 'x y'" in res.stdout
    assert not (tmp_path / "sweeps").exists()


def test_dry_run_of_10000_tasks(tmp_path: Path) -> None:
    sweep = _write(
        tmp_path / "s.yaml",
        {"grid": {"a": list(range(100)), "b": list(range(100))}, "command": ["true", "{a}"]},
    )
    res = hsm("run", "-c", str(sweep), "--dry-run", cwd=tmp_path)
    assert res.returncode == 0
    assert res.stdout.count("\n") == 10_001


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "-c", "missing.yaml"], "missing.yaml"),
        (["run", "-c", "ok.yaml", "-s", "local:0"], "--sources"),
        (["run", "-c", "ok.yaml", "-s", "nowhere"], "unknown source 'nowhere'"),
        (["run", "-c", "ok.yaml", "-s", "ssh:box"], "unknown source 'box'"),
        (["run", "-c", "bad.yaml"], "bad.yaml"),
        (["status", "no-such-sweep"], "no sweep 'no-such-sweep'"),
        (["cancel", "no-such-sweep"], "no sweep 'no-such-sweep'"),
        (["complete", "no-such-sweep"], "no sweep 'no-such-sweep'"),
    ],
)
def test_user_errors_are_one_line_without_traceback(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    _write(tmp_path / "ok.yaml", {"grid": {"a": [1]}, "command": ["echo", "{a}"]})
    (tmp_path / "bad.yaml").write_text("grid: [unclosed\n")
    res = hsm(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not (tmp_path / "sweeps").exists()


def test_corrupt_sweep_folder_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "sweep.db").write_bytes(b"this is not sqlite" * 100)
    res = hsm("status", str(bad), cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_exit_code_and_summary_name_failed_tasks(tmp_path: Path) -> None:
    sweep = _write(
        tmp_path / "s.yaml",
        {"grid": {"c": [0, 3, 4]}, "command": [PY, "-c", "import sys; sys.exit({c} % 2)"]},
    )
    res = hsm("run", "-c", str(sweep), "--sweep-id", "f", cwd=tmp_path)
    assert res.returncode == 1
    assert "task_002" in res.stdout and "exit code 1" in res.stdout
    assert "task_001" not in res.stdout.split("┘")[-1]
    assert str(_sweep_dir(tmp_path, "f") / "tasks" / "task_002" / "stderr.log") in res.stdout


def test_status_reads_while_the_sweep_runs_then_cancel_stops_it(tmp_path: Path) -> None:
    sweep = _write(
        tmp_path / "s.yaml",
        {"grid": {"i": list(range(20))}, "command": ["sleep", "30"]},
    )
    proc = hsm_popen("run", "-c", str(sweep), "-s", "local:2", "--sweep-id", "live", cwd=tmp_path)
    try:

        def running() -> dict[str, object] | None:
            res = hsm("status", "live", "--json", cwd=tmp_path)
            if res.returncode != 0:
                return None
            doc = json.loads(res.stdout)
            return doc if doc["counts"]["RUNNING"] == 2 else None

        doc = wait_for(running, timeout=30)
        assert doc["active"] is True
        assert doc["counts"]["PENDING"] == 18
        res = hsm("cancel", "live", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert "orchestrator stopped" in res.stdout
        folder = _sweep_dir(tmp_path, "live")
        assert f"to finish it later: hsm complete {folder}" in res.stdout
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert f"to finish the sweep: hsm complete {folder}" in out
    finally:
        if proc.poll() is None:
            proc.kill()
    store = SweepStore.open(_sweep_dir(tmp_path, "live"), readonly=True)
    assert store.counts() == {TaskState.CANCELLED: 20}
    assert store.meta("orchestrator") is None


def test_complete_after_failures_with_retry_and_task_selection(tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    code = f"import os, sys; sys.exit(0 if os.path.exists({str(flag)!r}) or {{i}} % 2 else 1)"
    sweep = _write(
        tmp_path / "s.yaml",
        {"grid": {"i": [0, 1, 2, 3, 4, 5]}, "command": [PY, "-c", code]},
    )
    res = hsm("run", "-c", str(sweep), "--sweep-id", "c", cwd=tmp_path)
    assert res.returncode == 1
    res = hsm("complete", "c", cwd=tmp_path)
    assert res.returncode == 0 and "nothing to complete" in res.stdout
    assert "--retry-failed" in res.stdout
    flag.write_text("")
    res = hsm("complete", "c", "--retry-failed", "--tasks", "1,3", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    store = SweepStore.open(_sweep_dir(tmp_path, "c"), readonly=True)
    by_num = {t.num: store.attempts(t.key) for t in store.tasks()}
    assert [a.state for a in by_num[1]] == [TaskState.FAILED, TaskState.COMPLETED]
    assert [a.state for a in by_num[5]] == [TaskState.FAILED]  # not selected
    assert len(by_num[2]) == 1  # completed the first time: never run again
    res = hsm("complete", "c", "--tasks", "99", cwd=tmp_path)
    assert res.returncode == 2 and "no task number 99" in res.stderr


def test_status_without_argument_lists_recent_sweeps(tmp_path: Path) -> None:
    sweep = _write(tmp_path / "s.yaml", {"grid": {"a": [1]}, "command": ["true"]})
    hsm("run", "-c", str(sweep), "--sweep-id", "first", cwd=tmp_path, check=True)
    time.sleep(0.01)
    res = hsm("status", "--json", cwd=tmp_path)
    assert [d["id"] for d in json.loads(res.stdout)] == ["first"]


def test_a_module_named_like_the_stdlib_in_the_project_does_not_break_the_agent(
    tmp_path: Path,
) -> None:
    """The local agent runs `python -m`, which puts its cwd first on sys.path: a project
    with its own `json.py` (or `subprocess.py`) must not shadow what the agent imports."""
    script = Path(sys.executable).parent / "hsm"
    assert script.is_file(), "the hsm console script is installed with the package"
    for name in ("json", "subprocess", "selectors"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('shadowed')\n")
    sweep = _write(tmp_path / "s.yaml", {"grid": {"i": [1, 2]}, "command": ["echo", "{i}"]})
    res = subprocess.run(
        [str(script), "run", "-c", str(sweep), "-s", "local:2", "--sweep-id", "sh"],
        cwd=tmp_path,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path / ".state")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    store = SweepStore.open(_sweep_dir(tmp_path, "sh"), readonly=True)
    assert sorted((store.task_dir(t) / "stdout.log").read_text() for t in store.tasks()) == [
        "1\n",
        "2\n",
    ]
    store.close()
