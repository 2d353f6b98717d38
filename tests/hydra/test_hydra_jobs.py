"""HydraJobs, the one object a launch hands the fork server and the sources: a real Hydra
config and context, a real fork server, the real engine and store."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hydra.core.utils import JobStatus

from hsm_core.engine import SweepEngine
from hsm_core.hydra.compose import JobComposer
from hsm_core.hydra.fork import ForkSource, make_sources
from hsm_core.hydra.forkserver import ForkServer
from hsm_core.hydra.job import JobRuntime
from hsm_core.hydra.jobs import HydraJobs, JobFailed
from hsm_core.model import SourceSpec
from hsm_core.orchestrate import context_for
from hsm_core.store import SweepStore
from tests.hydra.util import APPS


def task(cfg: Any) -> dict[str, Any]:
    """Job x=1 is slow, x=2 dies without a word, x=3 raises; the others return."""
    x = int(cfg.x)
    if x == 1:
        time.sleep(0.5)  # ends after the others: the returns still come in input order
    if x == 2:
        os._exit(3)
    if x == 3:
        raise ValueError("three")
    return {
        "x": x,
        "pid": os.getpid(),
        "attempt": os.environ.get("HSM_ATTEMPT"),
        "task_dir": os.environ.get("HSM_TASK_DIR"),
    }


@pytest.fixture
def hydra_jobs(hydra_restore_singletons: None, tmp_path: Path) -> HydraJobs:
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.utils import setup_globals
    from hydra.types import HydraContext, RunMode

    setup_globals()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(APPS / "conf")))
    master = loader.load_configuration(
        config_name="config",
        overrides=[f"hydra.sweep.dir={tmp_path / 'outputs'}", "hydra.job.chdir=false"],
        run_mode=RunMode.MULTIRUN,
    )
    batch = [(n, [f"x={n + 1}"]) for n in range(4)]
    composer = JobComposer(loader, master)
    composer.set_template(batch[0][1], composer.full(batch[0][1]))
    composer.prepare([o for _, o in batch])
    rt = JobRuntime(task, HydraContext(loader, Callbacks(master)), composer)
    return HydraJobs(rt, batch, tmp_path / "sweep")


def test_forked_jobs_get_their_task_env_and_their_returns_come_back_in_order(
    hydra_jobs: HydraJobs,
) -> None:
    server = ForkServer(hydra_jobs)
    server.start()  # before the store's connection and the engine's threads
    try:
        store = SweepStore.create(hydra_jobs.sweep_dir, sweep_id="t", kind="hydra", config={})
        tasks = hydra_jobs.add_tasks(store, cwd=".", timeout_s=None)
        ctx = context_for(store)
        sources = make_sources(
            [SourceSpec("local", "local", 4, {})], ctx, hydra_jobs, server, ahead=0
        )
        assert [type(s) for s in sources] == [ForkSource]
        asyncio.run(SweepEngine(store, ctx, sources).run())
        returns = hydra_jobs.returns(store)
    finally:
        server.close()

    assert [r.overrides for r in returns] == [["x=1"], ["x=2"], ["x=3"], ["x=4"]]
    assert [r.status for r in returns] == [
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.FAILED,
        JobStatus.COMPLETED,
    ]
    for ret, t in ((returns[0], tasks[0]), (returns[3], tasks[3])):
        value = ret.return_value
        assert value["pid"] != os.getpid()  # forked, not run here
        assert value["attempt"] == "1"  # the shared task_env, as every source gives it
        assert value["task_dir"] == str(store.task_dir(t))
    died = returns[1]._return_value
    assert isinstance(died, JobFailed)
    assert "job #1 (task_002) FAILED" in str(died) and "exited with code 3" in str(died)
    raised = returns[2]._return_value
    assert isinstance(raised, ValueError) and str(raised) == "three"

    errors = (hydra_jobs.sweep_dir / "logs" / "errors.log").read_text()
    assert errors.count(" FAILED (") == 2, errors  # each failure once, however it was read
    assert "task_002 FAILED (x=2)" in errors and "task_003 FAILED (x=3)" in errors
    assert "ValueError: three" in errors
    store.close()
