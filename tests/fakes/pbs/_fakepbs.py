"""FAKE PBS: the state and the "MoM" behind the fake qsub / qstat / qdel in this folder.

No PBS server can run in the test machines, so these fakes stand in for one, for the
end-to-end tests of hsm's submitit PBS executor only. They emulate, for both dialects
(``FAKE_PBS_DIALECT=pro`` for PBS Pro / OpenPBS, ``torque`` for Torque):

- ``qsub``: reads ``#PBS`` directives (before the first command line, PBS's rule) and
  command-line options, rejects the other dialect's options (``-J`` vs ``-t``; Torque has
  no ``select``), prints ``<seq>.<server>`` / ``<seq>[].<server>`` and starts a background
  "MoM" that really runs the script: one process per array index, at most ``%P`` at once,
  in ``$HOME`` with the ``PBS_*`` variables set, killed at its walltime;
- ``qstat``: the output formats recorded in ``tests/data/pbs/`` (see fmt_pro_json,
  fmt_text), ``--version``, unknown-job errors on stderr;
- ``qdel``: SIGTERM to the job's process group, SIGKILL ``FAKE_PBS_KILL_DELAY`` s later.

Configuration (environment): ``FAKE_PBS_STATE`` (JSON state file, required),
``FAKE_PBS_DIALECT`` (pro), ``FAKE_PBS_SERVER`` (fakepbs), ``FAKE_PBS_HISTORY`` (1: keep
finished jobs visible, as PBS Pro job history / Torque keep_completed; 0: forget them),
``FAKE_PBS_KILL_DELAY`` (0.5), ``FAKE_PBS_JSON_FIRST_ONLY`` (1: answer JSON queries for
the first job only, as OpenPBS issue #2672), ``FAKE_PBS_NO_JSON`` (1: refuse ``-F``, as
PBS Pro before 14.1).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DIALECT = os.environ.get("FAKE_PBS_DIALECT", "pro")
SERVER = os.environ.get("FAKE_PBS_SERVER", "fakepbs")
HISTORY = os.environ.get("FAKE_PBS_HISTORY", "1") == "1"
KILL_DELAY_S = float(os.environ.get("FAKE_PBS_KILL_DELAY", "0.5"))
VERSION = {"pro": "23.06.06", "torque": "6.1.3"}[DIALECT]
UNKNOWN_JOB = 153  # PBSE_UNKJOBID (15001) as an exit code
OVER = {"pro": "F", "torque": "C"}[DIALECT]
WALLTIME_KILL = {"pro": -29, "torque": -11}[DIALECT]


def state_path() -> Path:
    return Path(os.environ["FAKE_PBS_STATE"])


@contextlib.contextmanager
def locked_state() -> Iterator[dict[str, Any]]:
    """The whole state, locked; written back (atomically) when the block ends."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text()) if path.exists() else {"next": 1000, "jobs": {}}
        yield state
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)


def die(message: str, code: int) -> None:
    print(message, file=sys.stderr)
    sys.exit(code)


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def seconds(text: str | None) -> int | None:
    if not text:
        return None
    total = 0
    for part in text.split(":"):
        total = total * 60 + int(part)
    return total


def ctime(t: float) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(t))


def job_id(seq: str, index: str | None) -> str:
    """``1000.srv``, ``1000[].srv`` (index ""), ``1000[3].srv``."""
    return f"{seq}.{SERVER}" if index is None else f"{seq}[{index}].{SERVER}"


def resolve(text: str, state: dict[str, Any]) -> tuple[str, list[str]] | None:
    """A job id operand -> (seq, task keys); None if unknown. ``1000[]`` = all members."""
    head = text.split("@")[0]
    seq, _, rest = head.partition("[")
    seq = seq.split(".")[0]
    job = state["jobs"].get(seq)
    if job is None:
        return None
    if not rest:
        return seq, list(job["tasks"])
    index = rest.split("]")[0]
    if index == "":
        return seq, list(job["tasks"])
    return (seq, [index]) if index in job["tasks"] else None


def task_over(task: dict[str, Any]) -> bool:
    return task["state"] in ("F", "X", "C")


# ---------------------------------------------------------------- the MoM


def start_mom(seq: str) -> None:
    spool = state_path().parent
    log = open(spool / f"mom-{seq}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "mom", seq],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        close_fds=True,
    )
    with locked_state() as state:
        state["jobs"][seq]["mom_pid"] = proc.pid


def mom(seq: str) -> None:
    """Run the job's tasks (array members), at most ``limit`` at once, until all are over."""
    running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    while True:
        with locked_state() as state:
            job = state["jobs"][seq]
            for key, (proc, started) in list(running.items()):
                task = job["tasks"][key]
                code = proc.poll()
                limit_s = seconds(job["walltime"])
                over_time = limit_s is not None and time.time() - started > limit_s
                if code is None and over_time and not task.get("walltime_killed"):
                    task["walltime_killed"] = True
                    kill_group(proc.pid, wait=False)
                if code is not None:
                    finish(job, key, code, started)
                    del running[key]
            queued = [k for k, t in job["tasks"].items() if t["state"] == "Q"]
            for key in queued[: max(0, job["limit"] - len(running))]:
                running[key] = (launch(seq, job, key), time.time())
            if not running and not queued:
                return
        time.sleep(0.05)  # the MoM's own polling loop, not a test's synchronisation


def finish(job: dict[str, Any], key: str, code: int, started: float) -> None:
    task = job["tasks"][key]
    status = 256 - code if code < 0 else code  # a signal becomes 256 + signal, as PBS does
    if task.get("walltime_killed"):
        status = WALLTIME_KILL
    task.update(state=OVER if key == "" else ("X" if DIALECT == "pro" else "C"))
    task.update(exit_status=status, end=time.time(), used=time.time() - started)
    if DIALECT == "pro":
        task["substate"] = 91 if task.get("deleted") else (92 if status == 0 else 93)


def launch(seq: str, job: dict[str, Any], key: str) -> subprocess.Popen[bytes]:
    index = None if key == "" else key
    spool = state_path().parent
    nodefile = spool / f"{seq}.{key or 'job'}.nodes"
    slots = job["nodes"] * (job["ncpus"] if DIALECT == "torque" else 1)
    nodefile.write_text(f"{socket.gethostname()}\n" * slots)
    env = dict(job["env"]) if job["export_env"] else minimal_env(job["env"])
    env.update(
        PBS_JOBID=job_id(seq, index),
        PBS_JOBNAME=job["name"] if index is None or DIALECT == "pro" else f"{job['name']}-{index}",
        PBS_QUEUE=job["queue"],
        PBS_O_QUEUE=job["queue"],
        PBS_O_WORKDIR=job["cwd"],
        PBS_O_HOST=socket.gethostname(),
        PBS_ENVIRONMENT="PBS_BATCH",
        PBS_NODEFILE=str(nodefile),
        PBS_TASKNUM="1",
        PBS_NODENUM="0",
        PBS_MOMPORT="15003",
    )
    if DIALECT == "pro":
        env.update(NCPUS=str(job["ncpus"]), OMP_NUM_THREADS=str(job["ncpus"]))
        if index is not None:
            env.update(PBS_ARRAY_INDEX=index, PBS_ARRAY_ID=job_id(seq, ""))
    else:
        env.update(PBS_SERVER=SERVER, PBS_VERSION=f"TORQUE-{VERSION}")
        env.update(PBS_NUM_NODES=str(job["nodes"]), PBS_NUM_PPN=str(job["ncpus"]))
        env.update(PBS_NP=str(slots))
        if index is not None:
            env["PBS_ARRAYID"] = index
    out = open(output_file(seq, job, index, "o"), "ab")  # noqa: SIM115 - handed to the child
    err = out if job["join"] == "oe" else open(output_file(seq, job, index, "e"), "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [job["shell"], job["script"]],
        cwd=env.get("HOME", "/"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        start_new_session=True,
    )
    job["tasks"][key].update(state="R", substate=42, pgid=proc.pid, start=time.time())
    return proc


def minimal_env(submit_env: dict[str, str]) -> dict[str, str]:
    """Without -V a PBS job gets its own login-like environment plus PBS_O_* copies."""
    env = {k: submit_env[k] for k in ("HOME", "USER", "LOGNAME", "SHELL") if k in submit_env}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    for name in ("HOME", "LANG", "LOGNAME", "PATH", "MAIL", "SHELL", "TZ"):
        if name in submit_env:
            env[f"PBS_O_{name}"] = submit_env[name]
    return env


def output_file(seq: str, job: dict[str, Any], index: str | None, kind: str) -> Path:
    """PBS's own stdout/stderr file: ``<name>.o<seq>`` in the -o directory (or qsub's cwd);
    array members ``.o<seq>.<index>`` (PBS Pro) or ``.o<seq>-<index>`` (Torque)."""
    given = job["output"] if kind == "o" else job["error"]
    if given and not Path(given).is_dir():
        return Path(given.replace("^array_index^", index or ""))
    name = f"{job['name']}.{kind}{seq}"
    if index is not None:
        name += f".{index}" if DIALECT == "pro" else f"-{index}"
    return Path(given or job["cwd"]) / name


def kill_group(pgid: int, *, wait: bool = True) -> None:
    """SIGTERM the job's process group; SIGKILL it ``KILL_DELAY_S`` later (PBS kill_delay)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if not wait:
        subprocess.Popen(
            ["sh", "-c", f"sleep {KILL_DELAY_S}; kill -KILL -{pgid} 2>/dev/null"],
            start_new_session=True,
        )
        return
    deadline = time.monotonic() + KILL_DELAY_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__" and sys.argv[1:2] == ["mom"]:
    mom(sys.argv[2])
