"""Run one Hydra job in the current process and record its outcome in its task folder.

Shared by the fork source's children (warm, forked from the launcher) and by
`python -m hsm_core.hydra.worker` (cold, from the pickled payload). Either way the job leaves
(names in hsm_core.taskdir):

- `hydra_job.json`: where Hydra writes the job (output dir, job log), written before the
  task function starts, so that a job dying hard can still get its reason appended;
- `job_return.pkl`: the cloudpickled JobReturn;
- `.hsm_result.json`: hsm's worker record `{"exit_code": 0|1, "status", "error", ...}`,
  written last. The job's process exit status, as its parent saw it, decides the outcome
  (taskdir.settle); this record tells a COMPLETED job from one that left early with 0,
  and carries the error. A `result.json` the job writes is its own.

Both result files are written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsm_core.model import task_key
from hsm_core.taskdir import JOB_INFO, JOB_RETURN, STDERR, WORKER_RECORD
from hsm_core.yamlio import write_atomic, write_json_atomic

log = logging.getLogger("hsm.hydra.job")

Gate = Callable[[], None]


def job_params(overrides: Sequence[str]) -> dict[str, Any]:
    """A job's parameters as shown by `hsm status`: override key (with its +/~) -> value."""
    params: dict[str, Any] = {}
    for line in overrides:
        key, sep, value = line.partition("=")
        if key in params:  # the same key twice: keep the exact lines instead
            return {"overrides": list(overrides)}
        params[key] = value if sep else None
    return params


def job_key(overrides: Sequence[str]) -> str:
    return task_key(job_params(overrides))


@dataclass
class JobRuntime:
    """What every job of one launch shares (inherited by fork, or unpickled by the worker)."""

    task_function: Callable[[Any], Any]
    hydra_context: Any
    composer: Any  # hsm_core.hydra.compose.JobComposer


def run_here(
    rt: JobRuntime,
    *,
    num: int,
    job_id: str,
    overrides: Sequence[str],
    task_dir: Path,
    config: Any = None,
    gate: Gate | None = None,
    inplace: bool = False,
    sweep_dir: str | None = None,
    last_in_process: bool = False,
) -> int:
    """Run the job; write its result files; return the process exit code (0 or 1).

    `last_in_process`: the process ends once this returns (a forked job, a worker). Then
    SIGTERM, SIGINT and SIGHUP are held from the moment the task function returns: a
    cancel or a dying launcher arriving while Hydra and hsm record the job would kill a
    job that has finished, and it would run again. The process never takes them; one that
    hangs on its way out is still ended by the SIGKILL that follows a cancel."""
    from hydra.core.utils import JobReturn, JobStatus, run_job
    from omegaconf import open_dict

    started = time.time()
    cfg = None
    info: dict[str, Any] = {"num": num, "job_id": job_id, "pid": os.getpid()}
    try:
        cfg = config if config is not None else rt.composer.compose(overrides, inplace=inplace)
        with open_dict(cfg):
            cfg.hydra.job.id = job_id
            cfg.hydra.job.num = num
            if sweep_dir is not None:
                cfg.hydra.sweep.dir = sweep_dir
        ret = run_job(
            hydra_context=rt.hydra_context,
            task_function=_wrapped(rt.task_function, task_dir, info, gate, last_in_process),
            config=cfg,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    except BaseException as exc:  # a compose error, a KeyboardInterrupt
        ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=exc)
        if cfg is not None:
            ret.working_dir = info.get("output_dir")
    failed = ret.status is not JobStatus.COMPLETED
    error = None
    if failed:
        err = ret._return_value
        error = _one_line(err)
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        info["traceback"] = text
        # The job's logging is still configured by run_job: this reaches the job's .log.
        log.error("job #%d failed (overrides: %s)\n%s", num, " ".join(overrides), text.rstrip())
        sys.stderr.write(text)
    write_result(task_dir, ret, info, error=error, started=started)
    return 1 if failed else 0


def _wrapped(
    fn: Callable[[Any], Any],
    task_dir: Path,
    info: dict[str, Any],
    gate: Gate | None,
    hold_signals: bool = False,
) -> Callable[[Any], Any]:
    """The task function, preceded by what must happen once run_job has set the job up
    (its output dir, logging, HydraConfig) and before the task itself runs."""
    import functools

    @functools.wraps(fn)
    def job(cfg: Any) -> Any:
        info.update(_job_paths())
        write_json_atomic(task_dir / JOB_INFO, info)  # for a note if the job dies hard
        if gate is not None:
            gate()  # set-up done; wait for a free slot (and its GPUs) before the real work
        try:
            return fn(cfg)
        except SystemExit as exc:
            # run_job catches Exception only: a SystemExit would skip its bookkeeping (the
            # task name, on_job_end callbacks). Exit status 0 is success, as for a process.
            if exc.code is None or exc.code == 0:
                return None
            raise JobExit(exc.code) from None
        finally:
            if hold_signals:  # see run_here: from here on the job is only being recorded
                signal.pthread_sigmask(
                    signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
                )

    return job


class JobExit(RuntimeError):
    """The task function called sys.exit() with a failure status."""

    def __init__(self, code: object) -> None:
        self.code = code
        super().__init__(f"the job called sys.exit({code!r})")


def _job_paths() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()  # set by run_job for this job
    out = str(hc.runtime.output_dir)
    return {
        "sweep_dir": os.path.abspath(str(hc.sweep.dir)),
        "output_dir": out,
        "log": os.path.join(out, f"{hc.job.name}.log"),
    }


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def write_result(
    task_dir: Path,
    ret: Any,
    info: Mapping[str, Any],
    *,
    error: str | None,
    started: float,
) -> None:
    import pickle

    from hsm_core.hydra.payload import dumps

    try:
        data = pickle.dumps(ret, protocol=pickle.HIGHEST_PROTOCOL)  # fast; usually enough
    except Exception:
        try:
            data = dumps(ret)  # classes and functions by value (a cold worker's __main__)
        except Exception as exc:  # unpicklable return value or exception: keep the outcome
            data = dumps(_plain_copy(ret, exc))
    write_atomic(task_dir / JOB_RETURN, data)
    failed = error is not None
    record = {
        **info,
        "exit_code": 1 if failed else 0,
        "status": "FAILED" if failed else "COMPLETED",
        "error": error,
        "started": started,
        "ended": time.time(),
        "job_return": JOB_RETURN,
    }
    if not failed:
        # The numbers of the return value, so that `hsm results` and the reports read
        # them from this record instead of unpickling every job (ms each).
        from hsm_core.metrics import numbers_of

        try:
            record["return_numbers"] = numbers_of(ret._return_value)
        except Exception:  # an odd mapping must not cost the job its record
            pass
    write_json_atomic(task_dir / WORKER_RECORD, record)


def _plain_copy(ret: Any, exc: Exception) -> Any:
    from hydra.core.utils import JobReturn, JobStatus

    value = ret._return_value
    note = f"{type(value).__qualname__} could not be pickled ({_one_line(exc)})"
    if ret.status is JobStatus.COMPLETED:
        log.warning("job return value dropped: %s", note)
        replacement: Any = UnpicklableResult(note, repr(value)[:500])
    else:
        replacement = RuntimeError(f"{_one_line(value)} [{note}]")
    return JobReturn(
        overrides=ret.overrides,
        cfg=ret.cfg,
        hydra_cfg=ret.hydra_cfg,
        working_dir=ret.working_dir,
        task_name=ret.task_name,
        status=ret.status,
        _return_value=replacement,
    )


@dataclass(frozen=True)
class UnpicklableResult:
    """Stands in for a return value that could not travel back to the launcher."""

    reason: str
    text: str


def read_info(task_dir: Path, name: str = JOB_INFO) -> dict[str, Any] | None:
    try:
        data = json.loads((task_dir / name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def note_hard_death(task_dir: Path, task: Any, reason: str) -> None:
    """Append why a job process died to its job log and stderr.log (it could not)."""
    line = f"[hsm] {getattr(task, 'name', 'job')} {reason}\n"
    targets = [task_dir / STDERR]
    info = read_info(task_dir)
    if info and info.get("log"):
        targets.append(Path(str(info["log"])))
    for path in targets:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError:
            log.warning("could not append to %s: %s", path, reason)
