"""Run one Hydra job cold from its payload: `python -m hsm_core.hydra.worker [PAYLOAD [TASK_DIR]]`.

TASK_DIR defaults to $HSM_TASK_DIR and PAYLOAD to TASK_DIR/hydra_job.pkl. Used by remote
sources and by `hsm complete`; local jobs of a live launcher are forked instead (warm).
The sweep folder is TASK_DIR/../.. : when it is not the folder the job was launched in (a
remote copy), the job's outputs go to this folder's copy of `hydra.sweep.dir`.
Writes job_return.pkl and hsm's worker record atomically (hsm_core.taskdir); exits 0
(COMPLETED) or 1 (FAILED).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hsm_core.taskdir import JOB_PAYLOAD


def _add_import_paths(job: object) -> None:
    extra = [str(Path.cwd())]
    rel = getattr(job, "script_rel", ".")
    extra.insert(0, str(Path.cwd() / rel))
    original = getattr(job, "script_dir", "")
    if original and os.path.isdir(original):
        extra.insert(0, original)
    for p in reversed(extra):
        if p not in sys.path:
            sys.path.insert(0, p)


def run(payload: Path, task_dir: Path) -> int:
    from hsm_core.hydra.payload import load

    task_dir = task_dir.resolve()
    sweep_dir = task_dir.parent.parent
    job = load(payload)
    _add_import_paths(job)
    part = load(sweep_dir / job.sweep_file)

    from hydra.core.singleton import Singleton
    from hydra.core.utils import setup_globals

    from hsm_core.hydra.compose import JobComposer
    from hsm_core.hydra.job import JobRuntime, run_here

    Singleton.set_state(part.singleton_state)
    setup_globals()
    composer = JobComposer(part.hydra_context.config_loader, part.config)
    rt = JobRuntime(part.task_function, part.hydra_context, composer)
    moved = os.path.realpath(part.sweep_dir) != os.path.realpath(sweep_dir)
    return run_here(
        rt,
        num=job.num,
        job_id=job.job_id,
        overrides=job.overrides,
        # A multi-rank job's rank k > 0 keeps its records apart (sources.hpc.ranks).
        task_dir=Path(os.environ.get("HSM_RANK_DIR") or task_dir),
        config=job.config,
        sweep_dir=str(sweep_dir) if moved else None,
        last_in_process=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 2 or any(a in ("-h", "--help") for a in args):
        sys.stderr.write(f"usage: python -m hsm_core.hydra.worker [PAYLOAD [TASK_DIR]]\n{__doc__}")
        return 2
    if len(args) > 1:
        task_dir = Path(args[1])
    elif os.environ.get("HSM_TASK_DIR"):
        task_dir = Path(os.environ["HSM_TASK_DIR"])
    else:
        sys.stderr.write("hsm worker: no TASK_DIR given and $HSM_TASK_DIR is not set\n")
        return 2
    payload = Path(args[0]) if args else task_dir / JOB_PAYLOAD
    if not payload.is_file():
        sys.stderr.write(f"hsm worker: payload {payload} not found\n")
        return 2
    return run(payload, task_dir)


if __name__ == "__main__":
    sys.exit(main())
