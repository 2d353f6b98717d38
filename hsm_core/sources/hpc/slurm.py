"""The Slurm adapter: submitit's SlurmExecutor set up from the source's options, one
``sacct`` (or ``squeue`` without accounting) for many jobs, ``scancel``, the array
throttle, and the partition check. Its submit scripts are pinned by golden files
(tests/data/slurm/).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hsm_core.errors import HsmError, SchedulerError
from hsm_core.sources.hpc.keys import sbatch_option
from hsm_core.sources.hpc.options import HPCOptions
from hsm_core.sources.hpc.rpc import CheckAnswer, HealthAnswer, Partition
from hsm_core.sources.hpc.scheduler import Scheduler, run_command, tail_line, user

log = logging.getLogger(__name__)


class Slurm(Scheduler):
    name = "slurm"

    def __init__(self, opts: HPCOptions) -> None:
        super().__init__(opts)
        self.accounting = opts.accounting  # False once sacct said accounting is off

    def executor(self, folder: str, parallelism: int) -> Any:
        from submitit.slurm.slurm import SlurmExecutor

        o = self.opts
        try:
            ex = SlurmExecutor(folder, python=o.python, max_num_timeout=0)
        except RuntimeError as exc:
            raise SchedulerError(f"{exc} (no `srun` on PATH)") from None
        extra: dict[str, Any] = dict(sbatch_option(d, "directives") for d in o.directives)
        if not o.requeue:
            # A node failure must reach hsm (LOST, placed again), not be requeued silently.
            extra.setdefault("no-requeue", True)
        # submitit asks for USR2 before the time limit, which Slurm may send up to a minute
        # early: with short limits it kills every process of the job at start (USR2's
        # default action), the task's own included. hsm's default, URG, is ignored by
        # default; apps that handle USR2 set `signal: USR2`.
        extra["signal"] = f"{o.signal}@{o.signal_delay_s}"
        params: dict[str, Any] = {
            "job_name": o.name or o.job_name,
            "time": o.time_min,
            "cpus_per_task": o.cpus_per_task,
            "array_parallelism": parallelism,
            "setup": list(o.setup),
            "additional_parameters": extra,
            "stderr_to_stdout": o.stderr_to_stdout,
        }
        srun_args = list(o.srun_args)
        if o.nodes * o.tasks_per_node > 1:
            params["nodes"] = o.nodes
            params["ntasks_per_node"] = o.tasks_per_node
            if not any(a.startswith(("--kill-on-bad-exit", "-K")) for a in srun_args):
                # A failing rank stops the others now, not when they hang in a collective.
                srun_args.append("--kill-on-bad-exit=1")
        if srun_args:
            params["srun_args"] = srun_args
        # submitit's names; unset ones are left out, so sbatch gets no line for them.
        for key in (
            "partition",
            "account",
            "qos",
            "gpus_per_task",
            "gpus_per_node",
            "comment",
            "constraint",
            "exclude",
            "gres",
            "cpus_per_gpu",
            "mem_per_gpu",
            "mem_per_cpu",
        ):
            if getattr(o, key):
                params[key] = getattr(o, key)
        if o.mem_gb:
            params["mem"] = _mem(o.mem_gb)
        try:
            ex.update_parameters(**params)
        except ValueError as exc:
            raise HsmError(f"bad Slurm parameters: {tail_line(str(exc))}") from None
        return ex

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        if self.accounting:
            found = self._sacct(job_ids)
            if found is not None:
                return self._still_live(*found)
        return self._squeue(job_ids)

    def _still_live(self, found: dict[str, str], explicit: set[str]) -> dict[str, str]:
        """sacct lags: cancel the pending rest of an array and, for a while, it lists the
        whole array as one `123_[0-2%2] CANCELLED` line, its running elements included
        (a failure drill ran such elements twice: LOST, placed again, while they ran on).
        An end read from such a range line (not from the job's own `123_0` line) is
        checked with squeue, which knows what is alive: a job it lists as queued or
        running is not over. So the extra squeue call comes only after such a cancel."""
        from hsm_core.sources.hpc.states import phase_of

        over = [j for j, state in found.items() if phase_of(state).over and j not in explicit]
        if not over:
            return found
        live = {
            j: state
            for j, state in self._squeue(over).items()
            if not phase_of(state).over and state != "VANISHED"
        }
        return {**found, **live}

    def _sacct(self, job_ids: Sequence[str]) -> tuple[dict[str, str], set[str]] | None:
        """States of the jobs, and which of them sacct named on a line of their own (not
        only inside a range like `123_[0-2%2]`); None if accounting is off."""
        from submitit.slurm.slurm import SlurmInfoWatcher

        # A private watcher (not submitit's process-wide one): its command and parser
        # only, paced by the hpc source, not by submitit's clock.
        watcher = SlurmInfoWatcher(delay_s=0)
        for jid in job_ids:
            watcher.register_job(jid)
        argv = watcher._make_command()
        if argv is None:
            return {}, set()
        done = run_command([*argv, "-X"])
        if done.returncode != 0:
            if "accounting storage is disabled" in done.stderr.lower():
                log.warning("sacct: accounting is off on this cluster; asking squeue instead")
                self.accounting = False
                return None
            raise SchedulerError(f"sacct exited with {done.returncode}: {tail_line(done.stderr)}")
        info = watcher.read_info(done.stdout)
        own = {line.split("|", 1)[0] for line in done.stdout.splitlines()}
        return {jid: info[jid].get("State", "") for jid in job_ids if jid in info}, {
            j for j in own if "[" not in j
        }

    def _squeue(self, job_ids: Sequence[str]) -> dict[str, str]:
        from submitit.slurm.slurm import read_job_id

        mains = sorted({j.split("_")[0] for j in job_ids})
        # --states=all: jobs that ended lately (MinJobAge) are listed with their end state.
        done = run_command(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(mains)])
        if done.returncode != 0 and "invalid job id" not in done.stderr.lower():
            raise SchedulerError(f"squeue exited with {done.returncode}: {tail_line(done.stderr)}")
        seen: dict[str, str] = {}
        for line in done.stdout.splitlines():
            jid, _, state = line.strip().partition("|")
            if not jid:
                continue
            for parts in read_job_id(jid):
                if len(parts) == 3:
                    for i in range(int(parts[1]), int(parts[2]) + 1):
                        seen[f"{parts[0]}_{i}"] = state
                else:
                    seen["_".join(parts[:2])] = state
        # Without accounting, a job squeue does not list any more has left for good.
        return {j: seen.get(j, "VANISHED") for j in job_ids}

    def cancel(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        done = run_command(["scancel", *job_ids])
        if done.returncode != 0 and "invalid job id" not in done.stderr.lower():
            raise SchedulerError(f"scancel exited with {done.returncode}: {tail_line(done.stderr)}")

    def throttle(self, arrays: Mapping[str, int]) -> None:
        for job_id, limit in arrays.items():
            done = run_command(
                ["scontrol", "update", f"JobId={job_id}", f"ArrayTaskThrottle={int(limit)}"]
            )
            if done.returncode != 0:
                raise SchedulerError(
                    f"scontrol update exited {done.returncode}: {tail_line(done.stderr)}"
                )

    def check(self) -> CheckAnswer:
        # The largest array the cluster takes (one call, at start): the source splits
        # its batches under it, whatever `array_limit` says.
        info: CheckAnswer = {}
        done = run_command(["scontrol", "show", "config"])
        m = re.search(r"^MaxArraySize\s*=\s*(\d+)", done.stdout, re.MULTILINE)
        if done.returncode == 0 and m:
            info["max_array_size"] = int(m.group(1))
        want = self.opts.partition
        if not want:
            return info  # the cluster's default partition: nothing more to check
        parts = self._partitions()
        names = [p["name"] for p in parts]
        if want and want not in names:
            raise HsmError(
                f"Slurm partition {want!r} does not exist",
                f"partitions here: {', '.join(names) or 'none'}",
            )
        info["partitions"] = parts
        return info

    def _partitions(self) -> list[Partition]:
        done = run_command(["sinfo", "-h", "-o", "%P|%a|%D|%t"])
        if done.returncode != 0:
            raise SchedulerError(f"sinfo exited with {done.returncode}: {tail_line(done.stderr)}")
        parts: dict[str, Partition] = {}
        for line in done.stdout.splitlines():
            fields = line.strip().split("|")
            if len(fields) != 4:
                continue
            name, avail, nodes, state = fields
            default = name.endswith("*")
            name = name.rstrip("*")
            entry = parts.setdefault(
                name, {"name": name, "available": avail, "default": default, "nodes": {}}
            )
            counts = entry.setdefault("nodes", {})
            counts[state] = counts.get(state, 0) + int(nodes or 0)
        return list(parts.values())

    def health(self) -> HealthAnswer:
        parts = self._partitions()
        done = run_command(["squeue", "-h", "-u", user(), "-o", "%T"])
        if done.returncode != 0:
            raise SchedulerError(f"squeue exited with {done.returncode}: {tail_line(done.stderr)}")
        jobs: dict[str, int] = {}
        for line in done.stdout.split():
            jobs[line] = jobs.get(line, 0) + 1
        return {"partitions": parts, "jobs": jobs}


def _mem(gb: float) -> str:
    return f"{int(gb)}G" if gb == int(gb) else f"{int(gb * 1024)}M"
