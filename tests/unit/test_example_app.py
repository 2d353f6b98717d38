"""The example app is a real Hydra app: run it for real (single run, basic-launcher multirun,
every failure mode) and check what it leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TRAIN = Path(__file__).resolve().parents[2] / "example_app" / "train.py"

# A Hydra callback that records each job's JobReturn, to prove what a launcher receives.
CALLBACK = """
import json
from hydra.experimental.callback import Callback

class Capture(Callback):
    def __init__(self, path):
        self.path = path

    def on_job_end(self, config, job_return, **kwargs):
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"status": job_return.status.name,
                                 "value": job_return.return_value}) + "\\n")
"""


def run_app(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "HSM_TASK_DIR"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def capture_args(tmp_path: Path) -> tuple[list[str], dict[str, str], Path]:
    (tmp_path / "hsm_test_capture.py").write_text(CALLBACK)
    out = tmp_path / "returns.jsonl"
    args = [
        "+hydra.callbacks.capture._target_=hsm_test_capture.Capture",
        f"+hydra.callbacks.capture.path={out}",
    ]
    return args, {"PYTHONPATH": str(tmp_path)}, out


def test_single_run_writes_metrics_and_returns_the_loss(tmp_path: Path) -> None:
    cb_args, env, returns = capture_args(tmp_path)
    run_dir = tmp_path / "run"
    proc = run_app(tmp_path, f"hydra.run.dir={run_dir}", "seed=7", "epochs=5", *cb_args, env=env)
    assert proc.returncode == 0, proc.stderr

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["seed"] == 7
    assert metrics["epochs"] == 5
    assert len(metrics["loss_history"]) == 6
    assert metrics["loss_history"][-1] < metrics["loss_history"][0]  # it does learn
    assert 0.5 < metrics["accuracy"] <= 1.0
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "epoch 5/5" in (run_dir / "train.log").read_text()

    [record] = [json.loads(line) for line in returns.read_text().splitlines()]
    assert record == {"status": "COMPLETED", "value": metrics["loss"]}


def test_default_output_dir_is_relative_to_the_callers_cwd(tmp_path: Path) -> None:
    proc = run_app(tmp_path, "epochs=1")
    assert proc.returncode == 0, proc.stderr
    [metrics] = list((tmp_path / "outputs").glob("*/*/metrics.json"))
    assert json.loads(metrics.read_text())["epochs"] == 1


def test_under_hsm_it_writes_into_the_task_dir(tmp_path: Path) -> None:
    task_dir = tmp_path / "sweep" / "tasks" / "task_001"
    proc = run_app(tmp_path, "epochs=2", "model=mlp", env={"HSM_TASK_DIR": str(task_dir)})
    assert proc.returncode == 0, proc.stderr
    top = json.loads((task_dir / "metrics.json").read_text())
    result = json.loads((task_dir / "results" / "metrics.json").read_text())
    assert top == result
    assert result["model"] == "mlp"
    assert not (tmp_path / "outputs").exists()


def test_multirun_with_the_basic_launcher(tmp_path: Path) -> None:
    cb_args, env, returns = capture_args(tmp_path)
    sweep_dir = tmp_path / "multirun"
    proc = run_app(
        tmp_path,
        "-m",
        "seed=0,1,2",
        "optim=momentum",
        "optim.lr=0.1",
        f"hydra.sweep.dir={sweep_dir}",
        *cb_args,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    seeds, losses = [], []
    for num in range(3):
        metrics = json.loads((sweep_dir / str(num) / "metrics.json").read_text())
        assert metrics["optim"] == "momentum" and metrics["lr"] == 0.1
        seeds.append(metrics["seed"])
        losses.append(metrics["loss"])
    assert seeds == [0, 1, 2]
    assert len(set(losses)) == 3  # the seed really changes the data
    records = [json.loads(line) for line in returns.read_text().splitlines()]
    assert [r["value"] for r in records] == losses


@pytest.mark.parametrize(
    ("mode", "expected_rc", "stderr_text"),
    [
        ("exception", 1, "RuntimeError: deliberate failure"),
        ("oom", 1, "MemoryError: deliberate failure"),
        ("exit", 3, None),
        ("segfault", -signal.SIGSEGV, None),
    ],
)
def test_failure_modes(
    tmp_path: Path, mode: str, expected_rc: int, stderr_text: str | None
) -> None:
    run_dir = tmp_path / "run"
    proc = run_app(tmp_path, f"fail={mode}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == expected_rc, proc.stderr
    if stderr_text:
        assert stderr_text in proc.stderr
    log = (run_dir / "train.log").read_text()
    assert "epoch 1/20" in log  # fails after the first epoch by default...
    assert "epoch 2/20" not in log
    assert f"failing on purpose: fail={mode}" in log
    assert not (run_dir / "metrics.json").exists()  # ...and leaves no metrics behind


def test_fail_before_training_and_unknown_mode(tmp_path: Path) -> None:
    proc = run_app(tmp_path, "fail=exit", "fail_at_epoch=0", "hydra.run.dir=r0")
    assert proc.returncode == 3
    assert "epoch 1/" not in (tmp_path / "r0" / "train.log").read_text()

    proc = run_app(tmp_path, "fail=typo", "hydra.run.dir=r1")
    assert proc.returncode == 1
    assert "fail='typo' is not one of" in proc.stderr


def test_sleep_makes_it_run_longer(tmp_path: Path) -> None:
    proc = run_app(tmp_path, "sleep=0.6", "epochs=3", "hydra.run.dir=r")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["train_seconds"] >= 0.6


# --- the sweep files, run by hsm itself ---------------------------------------------------

REPO = TRAIN.parents[1]
SWEEPS = REPO / "example_app" / "sweeps"


def hsm_run(tmp_path: Path, sweep: str, *args: str) -> tuple[int, str, Path]:
    out_dir = tmp_path / "sweep"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}  # keep the user's index
    env.pop("HSM_TASK_DIR", None)
    hsm = [sys.executable, "-m", "hsm_core.cli.main", "run", "--config", str(SWEEPS / sweep)]
    proc = subprocess.run(
        [*hsm, "--sources", "local:2", "--output-dir", str(out_dir), "--no-progress", *args],
        cwd=REPO,  # script: paths are relative to the project root
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr, out_dir


def task_status(task_dir: Path) -> dict[str, object]:
    return yaml.safe_load((task_dir / "status.yaml").read_text())


def test_example_sweep_file_runs_under_hsm(tmp_path: Path) -> None:
    from hsm_core.sweepfile import load_sweep_file

    definition = load_sweep_file(SWEEPS / "example.yaml")
    assert len(definition.points) == 12
    assert {p["model"] for p in definition.points} == {"linear", "mlp"}

    rc, output, sweep = hsm_run(tmp_path, "example.yaml", "--max-tasks", "4")
    assert rc == 0, output
    for num in range(1, 5):
        task_dir = sweep / "tasks" / f"task_{num:03d}"
        assert task_status(task_dir)["state"] == "COMPLETED"
        metrics = json.loads((task_dir / "results" / "metrics.json").read_text())
        params = definition.points[num - 1]
        assert metrics["lr"] == params["optim.lr"]
        assert (metrics["seed"], metrics["model"]) == (params["seed"], params["model"])
        assert metrics["epochs"] == params["epochs"]
    assert not (sweep / "tasks" / "task_005").exists()


def test_failing_sweep_file_fails_the_expected_tasks(tmp_path: Path) -> None:
    rc, output, sweep = hsm_run(tmp_path, "failing.yaml")
    assert rc == 1, output
    outcomes: dict[str, set[tuple[object, object]]] = {}
    for task_dir in sorted((sweep / "tasks").iterdir()):
        fail = yaml.safe_load((task_dir / "params.yaml").read_text())["fail"]
        status = task_status(task_dir)
        outcomes.setdefault(str(fail), set()).add((status["state"], status["exit_code"]))
    assert outcomes == {
        "None": {("COMPLETED", 0)},
        "exception": {("FAILED", 1)},
        "oom": {("FAILED", 1)},
        "exit": {("FAILED", 3)},
        "segfault": {("FAILED", 128 + signal.SIGSEGV)},  # as the runner's shell reports it
    }
