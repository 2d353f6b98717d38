"""The PBS adapter (PBS Pro and Torque): hsm's own submitit executor (executor.py)
set up from the source's options; status and cancel through it, ``qstat -Q`` for health.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hsm_core.errors import HsmError, SchedulerError
from hsm_core.sources.hpc.rpc import CheckAnswer, HealthAnswer, Partition
from hsm_core.sources.hpc.scheduler import Scheduler, run_command, tail_line, user


class PBS(Scheduler):
    name = "pbs"

    def _executor_class(self) -> Any:
        from hsm_core.sources.hpc.pbs.executor import PBSExecutor

        return PBSExecutor

    def executor(self, folder: str, parallelism: int) -> Any:
        o = self.opts
        try:
            ex = self._executor_class()(
                folder, python=o.python, max_num_timeout=0, dialect=o.pbs_dialect
            )
        except RuntimeError as exc:
            raise SchedulerError(str(exc)) from None
        directives = list(o.directives)
        if not o.requeue:
            directives.append("-r n")  # not rerunnable: a failed node reaches hsm
        params: dict[str, Any] = {
            "job_name": o.name or o.job_name,
            "timeout_min": o.time_min,
            "cpus_per_task": o.cpus_per_task,
            # One task per node on PBS: per task and per node are the same here.
            "gpus_per_node": o.gpus_per_node or o.gpus_per_task,
            "stderr_to_stdout": o.stderr_to_stdout,
            "array_parallelism": parallelism,
            "setup": list(o.setup),
            "directives": directives,
        }
        if o.partition:
            params["queue"] = o.partition
        if o.account:
            params["account"] = o.account
        if o.mem_gb:
            params["mem_gb"] = o.mem_gb
        try:
            ex.update_parameters(**params)
        except ValueError as exc:
            raise HsmError(f"bad PBS parameters: {tail_line(str(exc))}") from None
        return ex

    def _any_executor(self) -> Any:
        # poll/cancel need no folder of their own; the executor is what knows the dialect.
        return self.executor(str(Path.home() / ".cache" / "hsm" / "pbs"), 1)

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        got: dict[str, str] = self._any_executor().poll_states(job_ids)
        return {j: s for j, s in got.items() if s and s != "UNKNOWN"}

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            self._any_executor().cancel(job_ids, check=False)

    def check(self) -> CheckAnswer:
        from hsm_core.sources.hpc.pbs.executor import detect_dialect

        if self.opts.pbs_dialect:
            return {"pbs_dialect": self.opts.pbs_dialect}
        try:
            return {"pbs_dialect": detect_dialect()}
        except RuntimeError as exc:
            raise HsmError(str(exc), "set `pbs_dialect: pro` or `torque` for this source") from None

    def health(self) -> HealthAnswer:
        done = run_command(["qstat", "-Q"])
        if done.returncode != 0:
            why = tail_line(done.stderr)
            raise SchedulerError(f"qstat -Q exited with {done.returncode}: {why}")
        queues: list[Partition] = [
            {"name": line.split()[0]}
            for line in done.stdout.splitlines()[2:]
            if line.strip() and not line.startswith("-")
        ]
        mine = run_command(["qstat", "-u", user()])
        jobs: dict[str, int] = {}
        for line in mine.stdout.splitlines():
            if re.match(r"^\d+", line):
                words = line.split()
                state = words[-2] if len(words) >= 2 else "?"
                jobs[state] = jobs.get(state, 0) + 1
        return {"partitions": queues, "jobs": jobs}
