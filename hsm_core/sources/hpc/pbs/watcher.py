"""The PBS side of submitit's polling: one batched ``qstat`` per dialect, and ``qdel``."""

from __future__ import annotations

import logging
import shlex
import subprocess
import threading
import time
from collections.abc import Iterable
from typing import Any

from submitit.core import core

from hsm_core.sources.hpc.pbs import dialect as d
from hsm_core.sources.hpc.pbs.status import FINAL_STATES, parse_status, unknown_ids

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 60.0
_GONE_MARKERS = ("Unknown Job Id", "has finished", "invalid state for job")

# seq -> server suffix of the job id (``123.server``). A bare sequence number means "at
# the default server", which misconfigured Torque sites fail to resolve, and PBS Pro may
# confuse with a peer-scheduled job of another server: so the full id is used once known.
SERVERS: dict[str, str] = {}


def remember_server(job: d.PBSJobId | None) -> None:
    if job is not None and job.server:
        SERVERS[job.seq] = job.server


def run_pbs(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    """Run a PBS command; None (and a warning) when it could not run at all."""
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("`%s` could not run: %s; job states may be stale", shlex.join(argv), exc)
        return None


class PBSInfoWatcher(core.InfoWatcher):
    """One ``qstat`` for all registered jobs of a dialect, paced like submitit's watcher:
    at 0, 2, 4, 8 ... s after the latest submission, then at most every ``delay_s``.

    A failing ``qstat`` is logged and leaves the known states as they were; a job that
    ``qstat`` says it does not know (any more) becomes ``VANISHED``.
    """

    def __init__(self, dialect: d.Dialect, delay_s: int = 60) -> None:
        super().__init__(delay_s=delay_s)
        self.dialect = dialect
        # Some OpenPBS builds return only the first job of a JSON query (issue #2672);
        # the watcher then falls back to the text format, which the parser also reads.
        self.json_output = dialect == "pro"
        self._lock = threading.RLock()  # hsm calls in from worker threads

    def _make_command(self) -> list[str] | None:
        to_check = self._registered - self._finished
        if not to_check:
            return None
        return d.status_command(self.dialect, to_check, json=self.json_output, servers=SERVERS)

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if isinstance(string, bytes):
            string = string.decode("utf-8", errors="replace")
        return parse_status(self.dialect, string)

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        return self.get_state(job_id, mode=mode) in FINAL_STATES

    def forget(self, job_id: str) -> None:
        """Stop watching a job (the array itself, whose members are watched instead)."""
        with self._lock:
            self._registered.discard(job_id)
            self._finished.discard(job_id)
            self._info_dict.pop(job_id, None)

    def update(self) -> None:
        with self._lock:
            command = self._make_command()
            if command is None:
                return
            self._query(command)
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    def _query(self, command: list[str]) -> None:
        self._num_calls += 1
        log.debug("call #%d: %s", self._num_calls, shlex.join(command))
        result = run_pbs(command)
        if result is None:
            return
        info = self.read_info(result.stdout)
        queried = d.query_ids(self._registered - self._finished, SERVERS)
        gone = unknown_ids(result.stderr, queried)
        # PBS Pro before 14.1 has no -F and answers with its usage text.
        said = result.stderr.lower()
        refused = result.returncode != 0 and not info and ("usage" in said or "invalid" in said)
        if self.json_output and (refused or self._dropped_jobs(queried, info, gone)):
            log.warning(
                "`qstat -F json` answered for %d of %d jobs (PBS Pro before 14.1, or "
                "OpenPBS issue #2672); reading qstat's text output from now on",
                len({i.split("_")[0] for i in info}),
                len(queried),
            )
            self.json_output = False
            command = d.status_command(
                self.dialect, self._registered - self._finished, json=False, servers=SERVERS
            )
            self._num_calls += 1
            result = run_pbs(command)
            if result is None:
                return
            info = self.read_info(result.stdout)
            gone = unknown_ids(result.stderr, queried)
        if result.returncode and not info and not gone:
            log.warning(
                "`%s` exited with %d: %s; job states may be stale",
                shlex.join(command),
                result.returncode,
                result.stderr.strip()[-500:],
            )
        self._output = result.stdout.encode()
        self._info_dict.update(info)
        for job_info in info.values():
            remember_server(d.parse_job_id(job_info.get("NativeID", "")))
        for job_id in self._registered - self._finished:
            if job_id not in info and job_id.split("_")[0] in gone:
                self._info_dict[job_id] = {"JobID": job_id, "State": "VANISHED"}

    @staticmethod
    def _dropped_jobs(queried: list[str], info: dict[str, Any], gone: set[str]) -> bool:
        wanted = {q.split("[")[0].split(".")[0] for q in queried} - gone
        seen = {job_id.split("_")[0] for job_id in info}
        return len(wanted) > 1 and bool(seen) and not wanted <= seen


def cancel_jobs(job_ids: Iterable[str], *, check: bool = False) -> None:
    """One ``qdel`` for many jobs (submitit ids). Jobs already over are skipped quietly;
    other errors raise ``subprocess.CalledProcessError`` when ``check``, else are logged."""
    ids = list(job_ids)
    if not ids:
        return
    argv = d.cancel_command(ids, SERVERS)
    result = run_pbs(argv)
    if result is None:
        if check:
            raise subprocess.CalledProcessError(-1, argv, "", "qdel could not run")
        return
    problems = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not any(marker in line for marker in _GONE_MARKERS)
    ]
    if result.returncode and problems:
        if check:
            raise subprocess.CalledProcessError(
                result.returncode, argv, result.stdout, result.stderr
            )
        log.warning("`%s` failed: %s", shlex.join(argv), "; ".join(problems))
