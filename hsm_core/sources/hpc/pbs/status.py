"""Reading ``qstat`` (PBS Pro JSON or text, Torque text) and mapping PBS states: no I/O.

The result of :func:`parse_status` is keyed by submitit job id (``123``, ``123_4``) and
holds, per job, ``State`` (the mapped name below), ``PBSState`` (the raw letter),
``ExitStatus``, ``NativeID`` and ``Comment`` when PBS gave them.

State table. PBS reports a one-letter ``job_state``; once a job is over, its
``Exit_status`` (``exit_status`` in Torque) and, in PBS Pro, its ``substate`` tell how it
ended. The names are Slurm's, as submitit reports them, so one table in hsm maps both.

=======================  =================================================  ==============
PBS                      meaning                                            state
=======================  =================================================  ==============
Q, H, W, T, M            queued, held, waiting for its start time, in       PENDING
                         transit, moved to another server
R, B                     running; array with a member started (Pro)         RUNNING
S, U                     suspended (by the scheduler / by keyboard use)     SUSPENDED
E                        exiting: ran, PBS is cleaning up                   COMPLETING
F, X (Pro), C (Torque)   over; then, in this order:
  substate 91 (Pro)      deleted (``qdel``)                                 CANCELLED
  no exit status         never ran (deleted while queued)                   CANCELLED
  0                      the script exited 0                                COMPLETED
  1 .. 255               the script's own exit code                         FAILED
  >= 256                 the script was killed by signal (status - 256):    TIMEOUT if it
                         ``qdel`` of a running job, an operator, or the     used its whole
                         walltime kill of servers that do not report it     walltime, else
                                                                            CANCELLED
  -29/-28 Pro,           killed for exceeding walltime / cpu time           TIMEOUT
  -11/-12 Torque
  -27/-26 Pro, -10 Tq.   killed for exceeding mem / vmem                    OUT_OF_MEMORY
  other negative         PBS could not start or keep the job (MoM failure,  NODE_FAIL
                         bad uid, hook rejection, stage-in): not the task
not in ``qstat``         PBS no longer knows the job (no job history, or    VANISHED
                         ``keep_completed`` elapsed)
=======================  =================================================  ==============

Sources: the job_state letters from the PBS Pro ``qstat(1B)`` and ``pbs_job_attributes(7B)``
manuals and the Torque ``qstat`` manual; substates 91/92/93 and the negative
``JOB_EXEC_*`` codes from OpenPBS ``src/include/job.h``; the Torque codes from Torque's
"Job Exit Status" page (``pbs_job.h``); "signal + 256" from both MoMs.

submitit's own ``is_done`` treats any name outside its "incomplete" list as finished, so
``SUSPENDED`` would count as done there; the PBS watcher uses :data:`FINAL_STATES` instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from hsm_core.sources.hpc.pbs.dialect import Dialect, parse_job_id

FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "VANISHED"}
)

_ACTIVE = {
    "Q": "PENDING",
    "H": "PENDING",
    "W": "PENDING",
    "T": "PENDING",
    "M": "PENDING",
    "R": "RUNNING",
    "B": "RUNNING",
    "S": "SUSPENDED",
    "U": "SUSPENDED",
    "E": "COMPLETING",
}
_OVER = frozenset("FXC")
_PRO_DELETED_SUBSTATE = 91  # JOB_SUBSTATE_TERMINATED
_LIMIT_KILLS: dict[str, dict[int, str]] = {
    "pro": {-29: "TIMEOUT", -28: "TIMEOUT", -27: "OUT_OF_MEMORY", -26: "OUT_OF_MEMORY"},
    "torque": {-11: "TIMEOUT", -12: "TIMEOUT", -10: "OUT_OF_MEMORY"},
}
_SIGNAL_BASE = 256


def map_state(dialect: Dialect, attrs: Mapping[str, str]) -> str:
    """The state name for one job's attributes (dotted keys, as :func:`parse_records`)."""
    letter = attrs.get("job_state", "").strip()[:1].upper()
    if letter in _ACTIVE:
        return _ACTIVE[letter]
    if letter not in _OVER:
        return "UNKNOWN"
    if dialect == "pro" and _int(attrs.get("substate")) == _PRO_DELETED_SUBSTATE:
        return "CANCELLED"
    status = exit_status(attrs)
    if status is None:
        return "CANCELLED"
    if status == 0:
        return "COMPLETED"
    if 0 < status < _SIGNAL_BASE:
        return "FAILED"
    if status >= _SIGNAL_BASE:
        return "TIMEOUT" if _used_whole_walltime(attrs) else "CANCELLED"
    return _LIMIT_KILLS[dialect].get(status, "NODE_FAIL")


def exit_status(attrs: Mapping[str, str]) -> int | None:
    return _int(attrs.get("Exit_status", attrs.get("exit_status")))


def parse_status(dialect: Dialect, text: str) -> dict[str, dict[str, str]]:
    """``qstat -f`` output (JSON or text, either dialect) -> info per submitit job id."""
    out: dict[str, dict[str, str]] = {}
    for native, attrs in parse_records(text):
        job = parse_job_id(native)
        if job is None:
            continue
        info = {
            "JobID": job.submitit_id,
            "NativeID": native,
            "State": map_state(dialect, attrs),
            "PBSState": attrs.get("job_state", ""),
        }
        status = exit_status(attrs)
        if status is not None:
            info["ExitStatus"] = str(status)
        for key, name in (("comment", "Comment"), ("exec_host", "ExecHost")):
            if attrs.get(key):
                info[name] = attrs[key]
        out[job.submitit_id] = info
    return out


def parse_records(text: str) -> list[tuple[str, dict[str, str]]]:
    """(job id, attributes) pairs; nested JSON objects flattened to ``Resource_List.mem``."""
    if text.lstrip().startswith("{"):
        return _json_records(text)
    return _text_records(text)


def unknown_ids(stderr: str, queried: Iterable[str]) -> set[str]:
    """Sequence numbers of queried jobs that ``qstat`` says it does not know (any more).

    PBS Pro: ``qstat: Unknown Job Id 123.srv``, or ``qstat: 123.srv Job has finished, use
    -x or -H ...`` without ``-x``; Torque: ``qstat: Unknown Job Id Error 123.srv``.
    """
    seqs = {q.split("[")[0].split(".")[0] for q in queried}
    found: set[str] = set()
    for line in stderr.splitlines():
        if "Unknown Job Id" not in line and "has finished" not in line:
            continue
        for token in re.findall(r"\b\d+(?:\[\d*\])?(?:\.[\w.-]+)?", line):
            seq = token.split("[")[0].split(".")[0]
            if seq in seqs:
                found.add(seq)
    return found


def _text_records(text: str) -> list[tuple[str, dict[str, str]]]:
    """``qstat -f`` text: ``Job Id: X`` then ``    name = value`` lines; long values go on
    in continuation lines that start with a tab (unless ``-1`` asked for one line)."""
    records: list[tuple[str, dict[str, str]]] = []
    attrs: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            attrs, last = {}, ""
            records.append((line.split(":", 1)[1].strip(), attrs))
            continue
        match = re.match(r"^ {4}([A-Za-z_][\w.-]*) = ?(.*)$", line)
        if match:
            last = match.group(1)
            attrs[last] = match.group(2).rstrip()
        elif last and line.strip():
            attrs[last] += line.strip()
    return records


def _json_records(text: str) -> list[tuple[str, dict[str, str]]]:
    try:
        document = json.loads(text, strict=False)
    except ValueError:
        # Some PBS Pro releases print invalid JSON for odd environment variables in
        # Variable_List (OpenPBS issues #1255, #2541), or repeat "Jobs" per job (PP-1240):
        # fall back to reading the few attributes this module needs.
        return _salvage_json(text)
    jobs = document.get("Jobs") if isinstance(document, dict) else None
    if not isinstance(jobs, dict):
        return []
    return [(str(k), _flatten(v)) for k, v in jobs.items() if isinstance(v, dict)]


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


_JSON_JOB_KEY = re.compile(r'"(\d+(?:\[\d*\])?(?:\.[^"]*)?)"\s*:\s*\{')
_JSON_FIELDS = {
    "job_state": re.compile(r'"job_state"\s*:\s*"(\w)"'),
    "substate": re.compile(r'"substate"\s*:\s*"?(-?\d+)'),
    "Exit_status": re.compile(r'"Exit_status"\s*:\s*"?(-?\d+)'),
    "comment": re.compile(r'"comment"\s*:\s*"((?:[^"\\]|\\.)*)"'),
}


def _salvage_json(text: str) -> list[tuple[str, dict[str, str]]]:
    keys = list(_JSON_JOB_KEY.finditer(text))
    records = []
    for n, key in enumerate(keys):
        chunk = text[key.end() : keys[n + 1].start() if n + 1 < len(keys) else len(text)]
        attrs = {name: m.group(1) for name, rx in _JSON_FIELDS.items() if (m := rx.search(chunk))}
        for block in ("Resource_List", "resources_used"):
            inner = re.search(rf'"{block}"\s*:\s*\{{([^{{}}]*)\}}', chunk)
            wall = inner and re.search(r'"walltime"\s*:\s*"([^"]*)"', inner.group(1))
            if wall:
                attrs[f"{block}.walltime"] = wall.group(1)
        if "job_state" in attrs:
            records.append((key.group(1), attrs))
    return records


def _used_whole_walltime(attrs: Mapping[str, str]) -> bool:
    used = duration_s(attrs.get("resources_used.walltime"))
    limit = duration_s(attrs.get("Resource_List.walltime"))
    return used is not None and limit is not None and used >= limit


def duration_s(text: str | None) -> int | None:
    """``[[HH:]MM:]SS`` (PBS durations) or plain seconds -> seconds."""
    if text is None or not re.fullmatch(r"\s*\d+(:\d+){0,2}\s*", text):
        return None
    seconds = 0
    for part in text.strip().split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def _int(value: object) -> int | None:
    if value is None:
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None
