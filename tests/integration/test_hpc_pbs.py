"""The hpc source with `scheduler: pbs`, against the FAKE PBS commands (no PBS server
can run here). The fakes (tests/fakes/pbs, fixture `pbs` of test_pbs_executor.py) really
run the submitted array scripts and answer qstat in the recorded PBS Pro / Torque
formats; everything on hsm's side is real: the source, the PBS submitit executor, the
job wrapper, the records."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hsm_core.model import SourceSpec, TaskState
from hsm_core.orchestrate import RunOptions, context_for, run_sweep
from hsm_core.sources.hpc.source import HPCSource
from tests.fakes.pbs_env import FakePBS
from tests.integration.test_pbs_executor import pbs  # noqa: F401 - the fixture
from tests.sweep_utils import PY, command_tasks, make_sweep, states

FAST = {"time": 5, "poll_min": 0.3, "poll_interval": 1, "batch_window": 0.1}


def run(store: Any, slots: int, **options: Any) -> HPCSource:
    spec = SourceSpec("cluster", "hpc", slots, {"scheduler": "pbs", **FAST, **options})
    ctx = context_for(store)
    src = HPCSource(spec, ctx)
    asyncio.run(run_sweep(store, ctx, [spec], RunOptions(), sources=[src], handle_signals=False))
    return src


def test_pbs_sweep_is_one_array_and_outcomes_come_from_the_records(
    pbs: FakePBS,  # noqa: F811
    tmp_path: Path,
) -> None:
    argvs = [
        [PY, "-c", "print('ok')"],
        [PY, "-c", "raise SystemExit('bad input')"],
        [PY, "-c", "print('ok too')"],
    ]
    store = make_sweep(tmp_path, command_tasks(argvs))
    src = run(store, 3, queue="workq")
    assert states(store) == {1: TaskState.COMPLETED, 2: TaskState.FAILED, 3: TaskState.COMPLETED}
    assert src.opts.pbs_dialect == pbs.dialect  # asked from `qstat --version` once
    jobs = pbs.state()["jobs"]
    assert len(jobs) == 1  # one qsub: an array of three
    failed = store.latest_attempts()[store.tasks()[1].key]
    assert failed.exit_code == 1 and "bad input" in (failed.error or "")
    assert (store.task_dir(store.tasks()[0]) / "stdout.log").read_text() == "ok\n"
    assert all(
        a.handle and a.handle.startswith(next(iter(jobs))) for a in store.latest_attempts().values()
    )
