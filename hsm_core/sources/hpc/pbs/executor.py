"""submitit executor for PBS Pro / OpenPBS and Torque.

submitit finds these classes through the ``submitit`` entry points of this distribution
(``executor`` and ``job_environment``), so after ``pip install hsm`` plain submitit users
can write ``submitit.AutoExecutor(folder, cluster="pbs")`` (``pbs_dialect="torque"`` picks
the dialect, else ``qstat --version`` tells) or use :class:`PBSExecutor` directly.

The classes follow submitit's template methods: the executor renders the script and
parses ``qsub``'s answer (:mod:`.dialect`), one :class:`PBSInfoWatcher` per dialect asks
``qstat`` about every registered job at once (:mod:`.status`), and
:class:`PBSJobEnvironment` reads the ``PBS_*`` variables inside the job. Like submitit's
Slurm executor, it needs a folder shared by the submitting host and the compute nodes, and
hsm (with submitit) installed where the jobs run.
"""

from __future__ import annotations

import copy
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from submitit.core import core, job_environment, utils

from hsm_core.sources.hpc.pbs import dialect as d
from hsm_core.sources.hpc.pbs.watcher import (
    COMMAND_TIMEOUT_S,
    SERVERS,
    PBSInfoWatcher,
    cancel_jobs,
    remember_server,
    run_pbs,
)

__all__ = [
    "PBSExecutor",
    "PBSInfoWatcher",
    "PBSJob",
    "PBSJobEnvironment",
    "TorqueJob",
    "cancel_jobs",
    "detect_dialect",
]

log = logging.getLogger(__name__)


class PBSJob(core.Job[core.R]):
    """A job (or array member, id ``123_4``) on PBS Pro; :class:`TorqueJob` on Torque.

    The two differ only in the watcher their instances share (one ``qstat`` per dialect).
    """

    _cancel_command = "qdel"
    watcher: PBSInfoWatcher = PBSInfoWatcher("pro")

    @property
    def native_id(self) -> str:
        """The id PBS commands take: ``123.server`` or ``123[4].server``."""
        return d.native_id(self.job_id, SERVERS.get(self.job_id.split("_")[0]))

    def cancel(self, check: bool = True) -> None:
        """``qdel`` this job; a job that is already over is not an error."""
        cancel_jobs([self.job_id], check=check)


class TorqueJob(PBSJob[core.R]):
    watcher: PBSInfoWatcher = PBSInfoWatcher("torque")


class PBSJobEnvironment(job_environment.JobEnvironment):
    """What a running PBS job sees: ids and hosts from the ``PBS_*`` variables.

    The job script exports ``SUBMITIT_EXECUTOR=pbs``, which is how submitit picks this
    environment. One process runs per job, so ranks are 0 and there is one task.
    """

    _env: ClassVar[dict[str, str]] = {"job_id": "PBS_JOBID"}

    @classmethod
    def name(cls) -> str:
        return "pbs"

    @property
    def raw_job_id(self) -> str:
        value = os.environ["PBS_JOBID"]
        job = d.parse_job_id(value)
        return job.seq if job is not None else value

    @property
    def array_task_id(self) -> str | None:
        for variable in ("PBS_ARRAY_INDEX", "PBS_ARRAYID"):  # PBS Pro, Torque
            value = os.environ.get(variable)
            if value:
                return value
        return None

    @property
    def array_job_id(self) -> str | None:
        return self.raw_job_id if self.array_task_id is not None else None

    @property
    def hostnames(self) -> list[str]:
        """The job's hosts, in ``$PBS_NODEFILE`` order (it repeats a host per cpu slot)."""
        path = os.environ.get("PBS_NODEFILE")
        try:
            lines = Path(path).read_text().split() if path else []
        except OSError:
            lines = []
        return list(dict.fromkeys(lines)) or [self.hostname]

    @property
    def hostname(self) -> str:
        return socket.gethostname()

    @property
    def num_tasks(self) -> int:
        return 1

    @property
    def num_nodes(self) -> int:
        return len(self.hostnames)

    @property
    def node(self) -> int:
        return 0

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    def _requeue(self, countdown: int) -> None:
        # qrerun needs operator rights on many sites; submitit then logs the failure.
        subprocess.check_call(["qrerun", os.environ["PBS_JOBID"]], timeout=COMMAND_TIMEOUT_S)
        log.info("requeued job %s (%d timeouts left)", self.job_id, countdown)


class PBSExecutor(core.PicklingExecutor):
    """PBS job executor (PBS Pro / OpenPBS or Torque).

    Parameters
    ----------
    folder: folder for the job files and logs, shared with the compute nodes.
    max_num_timeout, max_pickle_size_gb: as for submitit's other executors.
    python: command that starts Python on the compute nodes (default: this interpreter).
    dialect: "pro" or "torque"; default: ask ``qstat --version``.

    ``update_parameters`` takes the names of :class:`~.dialect.PBSParams` (``queue``,
    ``account``, ``timeout_min``, ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``,
    ``array_parallelism``, ``setup``, ``directives`` ...); a wrong name or value raises
    ValueError listing what is valid. ``map_array`` / ``batch()`` submit one job array.
    """

    job_class: type[core.Job[Any]] = PBSJob

    def __init__(
        self,
        folder: str | Path,
        max_num_timeout: int = 3,
        max_pickle_size_gb: float = 1.0,
        python: str | None = None,
        dialect: str | None = None,
    ) -> None:
        super().__init__(
            folder, max_num_timeout=max_num_timeout, max_pickle_size_gb=max_pickle_size_gb
        )
        if self.affinity() <= 0:
            raise RuntimeError('Could not find "qsub" and "qstat" on PATH: is this a PBS host?')
        self.dialect: d.Dialect = detect_dialect() if dialect is None else _checked(dialect)
        self.job_class = TorqueJob if self.dialect == "torque" else PBSJob
        self.python = shlex.quote(sys.executable) if python is None else python
        self._map_count: int | None = None

    @property
    def watcher(self) -> PBSInfoWatcher:
        watcher: PBSInfoWatcher = self.job_class.watcher  # type: ignore[assignment]
        return watcher

    def poll_states(self, job_ids: Iterable[str]) -> dict[str, str]:
        """One ``qstat`` now (not paced) for these jobs, then the state of each."""
        ids = list(job_ids)
        for job_id in ids:
            if job_id not in self.watcher._registered:
                self.watcher.register_job(job_id)
        self.watcher.update()
        return {job_id: self.watcher.get_state(job_id, mode="cache") for job_id in ids}

    def cancel(self, job_ids: Iterable[str], *, check: bool = False) -> None:
        """One ``qdel`` for these jobs (see :func:`cancel_jobs`)."""
        cancel_jobs(job_ids, check=check)

    @classmethod
    def _equivalence_dict(cls) -> core.EquivalenceDict:
        return {
            "name": "job_name",
            "timeout_min": "timeout_min",
            "mem_gb": "mem_gb",
            "nodes": "nodes",
            "cpus_per_task": "cpus_per_task",
            "gpus_per_node": "gpus_per_node",
            "tasks_per_node": "tasks_per_node",
        }

    @classmethod
    def _valid_parameters(cls) -> set[str]:
        return set(d.parameter_defaults())

    def _internal_update_parameters(self, **kwargs: Any) -> None:
        params = d.PBSParams.from_dict({**self.parameters, **kwargs})  # raises on bad input
        self._render(params, "true")  # the script must come out, e.g. no ':' in the folder
        super()._internal_update_parameters(**kwargs)

    def _internal_process_submissions(
        self, delayed_submissions: list[utils.DelayedSubmission]
    ) -> list[core.Job[Any]]:
        if len(delayed_submissions) == 1:
            return super()._internal_process_submissions(delayed_submissions)
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        timeout_min = self.parameters.get("timeout_min", d.PBSParams.timeout_min)
        pickles: list[Path] = []
        try:
            for delayed in delayed_submissions:
                pickles.append(folder / f"{uuid.uuid4().hex}.pkl")
                delayed.set_timeout(timeout_min, self.max_num_timeout)
                delayed.dump(pickles[-1])
            total_gb = len(pickles) * pickles[0].stat().st_size / 1024**3
            if total_gb > self.max_pickle_size_gb:
                raise RuntimeError(
                    f"submitting about {total_gb:.2f} GB of pickled functions and arguments "
                    f"(> max_pickle_size_gb={self.max_pickle_size_gb}); raise the limit on "
                    "the executor if this is intended"
                )
            array = copy.copy(self)
            array._map_count = len(pickles)
            self._throttle()
            self._last_job_submitted = time.time()
            first = array._submit_command(self._submitit_command_str)
        except BaseException:
            for path in pickles:
                path.unlink(missing_ok=True)
            raise
        self.watcher.forget(first.job_id)  # the array is watched through its members
        jobs: list[core.Job[Any]] = [
            self.job_class(folder=self.folder, job_id=f"{first.job_id}_{i}")
            for i in range(len(pickles))
        ]
        for job, path in zip(jobs, pickles, strict=True):
            job.paths.move_temporary_file(path, "submitted_pickle")
        return jobs

    @property
    def _submitit_command_str(self) -> str:
        return " ".join([self.python, "-u -m submitit.core._submit", shlex.quote(str(self.folder))])

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return self._render(d.PBSParams.from_dict(self.parameters), command)

    def _render(self, params: d.PBSParams, command: str) -> str:
        paths = utils.JobPaths(self.folder)
        log_dir = utils.JobPaths.get_first_id_independent_folder(self.folder)
        return d.render_script(
            params,
            dialect=self.dialect,
            command=command,
            paths=d.ScriptPaths(str(paths.stdout), str(paths.stderr), str(log_dir)),
            map_count=self._map_count,
        )

    def _num_tasks(self) -> int:
        return 1

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        return ["qsub", str(submission_file_path)]

    @staticmethod
    def _get_job_id_from_submission_command(string: bytes | str) -> str:
        text = string.decode("utf-8", errors="replace") if isinstance(string, bytes) else string
        try:
            job = d.parse_qsub_output(text)
        except ValueError as exc:
            raise utils.FailedSubmissionError(str(exc)) from exc
        remember_server(job)
        return job.seq

    @classmethod
    def affinity(cls) -> int:
        if shutil.which("qsub") is None or shutil.which("qstat") is None:
            return -1
        # Grid Engine also has qsub/qstat; pbsnodes is PBS's own.
        return 2 if shutil.which("pbsnodes") else 1


def detect_dialect() -> d.Dialect:
    """Ask ``qstat --version`` whether this is PBS Pro / OpenPBS or Torque."""
    result = run_pbs(["qstat", "--version"])
    text = "" if result is None else result.stdout + result.stderr
    dialect = d.detect_dialect(text)
    if dialect is None:
        raise RuntimeError(
            "`qstat --version` did not say PBS Pro or Torque "
            f"({text.strip()[:200]!r}); pass dialect='pro' or dialect='torque' "
            "(pbs_dialect=... with AutoExecutor)"
        )
    return dialect


def _checked(dialect: str) -> d.Dialect:
    for known in d.DIALECTS:
        if dialect == known:
            return known
    raise ValueError(f"unknown PBS dialect {dialect!r}; valid: {', '.join(d.DIALECTS)}")
