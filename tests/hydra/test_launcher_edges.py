"""The launcher's edges, with small real apps: pools, pickling, threads, the cold worker,
and the start-up cost of the plugin package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from hsm_core.taskdir import JOB_RETURN, WORKER_RECORD
from tests.hydra.util import APPS, EXAMPLE, HSM, job_return, jobs, run_app

NO_PROGRESS = "hydra.launcher.progress=false"


def test_user_pool_from_the_app_config_dir(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["hydra/launcher=hsm", "hydra/launcher/pool=one", NO_PROGRESS, "x=1,2,3"]
    res = run_app(APPS / "tiny.py", args, sweep_dir=sweep)
    assert res.returncode == 0, res.stderr
    assert "with hsm on local:1" in res.stdout
    found = jobs(sweep)
    assert [job_return(found[n]["dir"]).return_value["x"] for n in range(3)] == [2, 4, 6]
    # a pool choice is launcher configuration, not a job parameter
    assert "pool" not in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()


def test_bad_pool_is_one_line(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = run_app(
        APPS / "tiny.py",
        ["hydra/launcher=hsm", "hydra/launcher/pool=broken", "x=1,2"],
        sweep_dir=sweep,
    )
    assert res.returncode == 1
    assert "teleport" in res.stderr and "valid: local, ssh, hpc" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (sweep / "tasks").exists()


def test_unpicklable_task_fails_before_anything_runs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["hydra/launcher=hsm", "hydra/launcher/pool=remote", "x=1,2"]
    res = run_app(APPS / "locked.py", args, sweep_dir=sweep)
    assert res.returncode == 1
    line = res.stderr.strip().splitlines()[0]
    assert "cannot pickle the global 'LOCK' used by main" in line
    assert "_thread.lock" in line and "inside the task function" in line
    assert "Traceback" not in res.stderr
    assert not (sweep / "tasks").exists()  # nothing was submitted


def test_unpicklable_task_still_runs_locally(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = run_app(APPS / "locked.py", [*HSM, NO_PROGRESS, "x=1,2"], sweep_dir=sweep)
    assert res.returncode == 0, res.stderr
    assert "cannot pickle the global 'LOCK'" in res.stdout + res.stderr  # a warning
    assert [job_return(j["dir"]).return_value for _, j in sorted(jobs(sweep).items())] == [2, 4]


def test_threads_fall_back_to_cold_workers(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = run_app(APPS / "threaded.py", [*HSM, "x=1,2"], sweep_dir=sweep)
    assert res.returncode == 0, res.stderr
    assert "background-poller" in res.stdout + res.stderr  # the warning names the thread
    values = [job_return(j["dir"]).return_value for _, j in sorted(jobs(sweep).items())]
    assert [v["x"] for v in values] == [2, 4]


def test_cold_worker_reruns_a_job_from_its_payload(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = run_app(EXAMPLE, [*HSM, "seed=3,4", "epochs=2"], sweep_dir=sweep)
    assert res.returncode == 0, res.stderr
    task = jobs(sweep)[1]["dir"]
    expected = job_return(task).return_value
    for name in (WORKER_RECORD, JOB_RETURN):
        (task / name).unlink()
    shutil.rmtree(sweep / "1")
    run = subprocess.run(
        [sys.executable, "-m", "hsm_core.hydra.worker", str(task / "hydra_job.pkl"), str(task)],
        cwd=EXAMPLE.parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((task / WORKER_RECORD).read_text())["exit_code"] == 0
    assert job_return(task).return_value == expected
    assert (sweep / "1" / "metrics.json").is_file()
    assert (sweep / "1" / ".hydra" / "overrides.yaml").is_file()


IMPORT_PROBE = """
import json, sys
from hydra.core.plugins import Plugins
stats = Plugins.instance().stats
ours = sum(t for m, t in stats.modules_import_time.items() if m.startswith("hydra_plugins.hsm"))
heavy = [m for m in ("hsm_core", "rich", "cloudpickle", "asyncio", "sqlite3") if m in sys.modules]
print(json.dumps({"ours": ours, "all": stats.total_modules_import_time, "heavy": heavy}))
"""


def test_plugin_import_loads_nothing_heavy() -> None:
    """Hydra imports every plugin module at start-up: ours must stay cheap. What it costs
    in time is a benchmark's matter (this machine's load decides a timing); what it
    imports is not: none of hsm's core, rich, cloudpickle, asyncio or sqlite3."""
    run = json.loads(subprocess.check_output([sys.executable, "-c", IMPORT_PROBE], text=True))
    assert run["ours"] > 0, run  # the probe saw our plugin modules
    assert run["heavy"] == [], run


def test_a_jobs_own_result_json_neither_forges_nor_fails_it(tmp_path: Path) -> None:
    """The fork server's wait status and hsm's worker record decide; a `result.json` the
    job writes in its task folder is its own and stays (issue 11, item 5)."""
    sweep = tmp_path / "sweep"
    res = run_app(APPS / "own_result.py", [*HSM, NO_PROGRESS, "x=0,1,2,3"], sweep_dir=sweep)
    assert res.returncode == 1  # two jobs failed
    found = jobs(sweep)
    assert [found[n]["state"] for n in range(4)] == ["FAILED", "FAILED", "COMPLETED", "COMPLETED"]
    own = [json.loads((found[n]["dir"] / "result.json").read_text()) for n in range(3)]
    assert own == [{"exit_code": 0}, {"exit_code": 0}, {"acc": 0.9}]
    assert job_return(found[2]["dir"]).return_value == 2


def test_what_a_job_leaves_behind_ends_with_it(tmp_path: Path) -> None:
    """Issue 11, item 8: a child in the job's group and one that called setsid."""
    from hsm_core.procs import pid_alive
    from tests.helpers import wait_for

    sweep = tmp_path / "sweep"
    res = run_app(APPS / "leaves_behind.py", [*HSM, NO_PROGRESS, "x=1,2"], sweep_dir=sweep)
    assert res.returncode == 0, res.stderr
    for job in jobs(sweep).values():
        for name in ("same", "own"):
            pid = int((job["dir"] / "results" / name).read_text())
            wait_for(lambda p=pid: not pid_alive(p), timeout=15, message=f"{name} child {pid}")
