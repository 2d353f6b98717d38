"""What `HsmSweeper.sweep()` does: build the jobs, resume, launch everything, summarise.

- Only the first job is composed here, to fail early on a bad config (the basic sweeper
  composes every job, ~0.1 s each, serially). With the hsm launcher not even that: its
  own compose of the first job (the template) is the check.
- All jobs go to the launcher at once unless `max_batch_size` is set; the engine's
  concurrency does the pacing, and every job runs even when some fail.
- Resume: when the sweep dir already holds an hsm sweep (same `hydra.sweep.dir`, or
  `resume=true`, which finds the latest earlier sweep of the same command), completed jobs
  are skipped and every job keeps its number.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hsm_core.errors import HsmError
from hsm_core.model import canonical_json
from hydra_plugins.hsm_launcher import _space

log = logging.getLogger("hydra_plugins.hsm_launcher.sweeper")


class SweeperError(CompactHydraException):
    """One line for the user, no traceback (Hydra prints only the message)."""


@dataclass
class Plan:
    jobs: list[tuple[int, list[str]]]  # to run
    done: list[tuple[int, list[str]]] = field(default_factory=list)  # completed earlier
    resumed_from: Path | None = None


def sweep(sweeper: Any, arguments: list[str]) -> list[Sequence[JobReturn]]:
    try:
        return _sweep(sweeper, arguments)
    except HsmError as exc:
        raise SweeperError(str(exc)) from None


def _sweep(sw: Any, arguments: list[str]) -> list[Sequence[JobReturn]]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config: DictConfig = sw.config
    params = [f"{k}={v}" for k, v in (sw.params or {}).items()]
    parser = OverridesParser.create(config_loader=sw.hydra_context.config_loader)
    overrides = parser.parse_overrides(params + list(arguments))
    all_jobs = _space.expand(overrides, paired=sw.paired, num_samples=sw.num_samples, seed=sw.seed)
    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    if sw.resume and not hasattr(sw.launcher, "launch_numbered"):
        log.warning("hydra.sweeper.resume needs hydra/launcher=hsm (its journal): running all")
    elif sw.resume and not _is_sweep(sweep_dir):
        previous = _find_previous(sweep_dir, config)
        if previous is None:
            log.info("nothing to resume: no earlier hsm sweep of this command; starting anew")
        else:
            _move_sweep_dir(config, previous)
            sweep_dir = previous
    launcher = sw.launcher
    hsm_launcher = hasattr(launcher, "launch_numbered")
    # Owned before the journal is read for the plan, and for the whole multirun: the
    # launcher takes the lock over for each batch (same process), nobody else can.
    lock = _own(launcher, sweep_dir) if hsm_launcher else None
    try:
        return _run_plan(sw, config, all_jobs, sweep_dir, hsm_launcher)
    finally:
        if lock is not None:
            lock.release()


def _own(launcher: Any, sweep_dir: Path) -> Any:
    from hydra_plugins.hsm_launcher._core import hold

    lock = hold(launcher, sweep_dir)
    lock.release(keep=True)  # idle: the launcher's batches take it over
    return lock


def _run_plan(
    sw: Any,
    config: DictConfig,
    all_jobs: list[list[str]],
    sweep_dir: Path,
    hsm_launcher: bool,
) -> list[Sequence[JobReturn]]:
    plan = _plan(all_jobs, sweep_dir, _resumable(sw, sweep_dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    if plan.done:
        log.info(
            f"resuming {sweep_dir}: {len(plan.done)} jobs already completed, "
            f"{len(plan.jobs)} to run"
        )
    launcher = sw.launcher
    if plan.jobs and not hsm_launcher:
        sw.validate_batch_is_legal([plan.jobs[0][1]])
    returns: list[Sequence[JobReturn]] = []
    if plan.done:
        returns.append(_load_done(sweep_dir, plan.done))
    interrupted: BaseException | None = None
    try:
        for batch in _batches(plan.jobs, sw.max_batch_size):
            if hsm_launcher:
                returns.append(list(launcher.launch_numbered(batch)))
            else:
                returns.append(_launch_runs(launcher, batch))
    except KeyboardInterrupt as exc:
        interrupted = exc
    from hydra_plugins.hsm_launcher import _summary

    flat = [r for batch in returns for r in batch]
    failed = _summary.report(sweep_dir, all_jobs, plan, flat, interrupted is not None)
    if interrupted is not None:
        raise SystemExit(130)
    if failed:
        raise SweeperError(
            f"{failed} of {len(all_jobs)} jobs failed; tracebacks in "
            f"{sweep_dir / 'logs' / 'errors.log'} and in each job's log"
            if hsm_launcher
            else f"{failed} of {len(all_jobs)} jobs failed; see each job's log"
        )
    return returns


# ------------------------------------------------------------------- planning
def _is_sweep(sweep_dir: Path) -> bool:
    return (sweep_dir / "sweep.db").is_file()


def _resumable(sw: Any, sweep_dir: Path) -> bool:
    """Resume the sweep in this dir: always with resume=true; on its own only if the app's
    script is unchanged (results of two code versions are not mixed silently)."""
    if not _is_sweep(sweep_dir):
        return False
    if sw.resume:
        return True
    from hsm_core.hydra.payload import app_fingerprint
    from hsm_core.store import SweepStore

    store = SweepStore.open(sweep_dir, readonly=True)
    try:
        stored = store.meta("hydra_app")
    finally:
        store.close()
    if stored == app_fingerprint(sw.task_function):
        return True
    log.info(
        f"{sweep_dir} holds a sweep of other code: every job runs again "
        "(hydra.sweeper.resume=true would keep its completed jobs)"
    )
    return False


def _plan(jobs: list[list[str]], sweep_dir: Path, resume: bool) -> Plan:
    """Numbers for every job: earlier ones keep theirs, new ones come after them."""
    if not resume:
        return Plan([(i, j) for i, j in enumerate(jobs)])
    known, completed = _stored_jobs(sweep_dir)
    next_num = max(known.values(), default=-1) + 1
    plan = Plan([], resumed_from=sweep_dir)
    for job in jobs:
        ident = _ident(job)
        num = known.get(ident)
        if num is None:
            num = next_num
            next_num += 1
            known[ident] = num
        (plan.done if ident in completed else plan.jobs).append((num, job))
    return plan


def _ident(overrides: Sequence[str]) -> str:
    from hsm_core.hydra.job import job_params

    return canonical_json(job_params(overrides))


def _stored_jobs(sweep_dir: Path) -> tuple[dict[str, int], set[str]]:
    """Job number of every stored job (by its overrides) and which of them completed."""
    from hsm_core.model import TaskState
    from hsm_core.store import SweepStore

    store = SweepStore.open(sweep_dir, readonly=True)
    try:
        nums = store.meta("hydra_job_nums") or {}
        latest = store.latest_attempts()
        known: dict[str, int] = {}
        completed: set[str] = set()
        for task in store.tasks():
            num = nums.get(task.key)
            if num is None:
                continue
            ident = canonical_json(dict(task.params))
            known[ident] = int(num)
            att = latest.get(task.key)
            if att is not None and att.state is TaskState.COMPLETED:
                completed.add(ident)
    finally:
        store.close()
    return known, completed


def _find_previous(sweep_dir: Path, config: DictConfig) -> Path | None:
    """The latest earlier hsm sweep of the same app and overrides, near this sweep dir
    (Hydra's default dirs are multirun/<date>/<time>: siblings and cousins)."""
    want = (str(config.hydra.job.name), list(config.hydra.overrides.task))
    candidates: list[tuple[float, Path]] = []
    roots = {sweep_dir.parent, sweep_dir.parent.parent}
    for root in roots:
        if not root.is_dir():
            continue
        for db in [*root.glob("*/sweep.db"), *root.glob("*/*/sweep.db")]:
            folder = db.parent
            if folder == sweep_dir:
                continue
            try:
                prev = OmegaConf.load(folder / "multirun.yaml")
                got = (str(prev.hydra.job.name), list(prev.hydra.overrides.task))
            except Exception:
                continue
            if got == want:
                candidates.append((db.stat().st_mtime, folder))
    return max(candidates)[1] if candidates else None


def _move_sweep_dir(config: DictConfig, folder: Path) -> None:
    """Point this run (and every job composed from it) at the earlier sweep's folder."""
    from hsm_core.overrides import format_override

    line = format_override("hydra.sweep.dir", str(folder))
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.sweep.dir = str(folder)
        config.hydra.overrides.hydra.append(line)


# ------------------------------------------------------------------ launching
def _batches(
    jobs: list[tuple[int, list[str]]], size: int | None
) -> list[list[tuple[int, list[str]]]]:
    if not jobs:
        return []
    step = len(jobs) if not size or size < 1 else size
    return [jobs[i : i + step] for i in range(0, len(jobs), step)]


def _launch_runs(launcher: Any, batch: list[tuple[int, list[str]]]) -> list[JobReturn]:
    """Other launchers number a batch from initial_job_idx: one call per run of numbers."""
    out: list[JobReturn] = []
    start = 0
    for i in range(1, len(batch) + 1):
        if i == len(batch) or batch[i][0] != batch[i - 1][0] + 1:
            run = batch[start:i]
            out.extend(launcher.launch([o for _, o in run], initial_job_idx=run[0][0]))
            start = i
    return out


def _load_done(sweep_dir: Path, done: list[tuple[int, list[str]]]) -> list[JobReturn]:
    """JobReturns of the jobs completed earlier, read from their task folders."""
    from hsm_core.store import SweepStore
    from hsm_core.taskdir import read_job_return

    store = SweepStore.open(sweep_dir, readonly=True)
    try:
        nums = {int(v): k for k, v in (store.meta("hydra_job_nums") or {}).items()}
        by_key = {t.key: t for t in store.tasks()}
    finally:
        store.close()
    out = []
    for num, overrides in done:
        task = by_key.get(nums.get(num, ""))
        ret = read_job_return(sweep_dir / "tasks" / task.name) if task else None
        if ret is None:
            ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)
        out.append(ret)
    return out
