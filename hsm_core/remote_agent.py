"""The small agent hsm runs on each ssh host (and on this machine for the local source),
one per host, over one channel.

Standard library only, and runnable from its source text alone: the ssh source sends
this file's text as `python -I -c SOURCE`, so hosts need no hsm install for command tasks
and the agent always speaks the orchestrator's protocol version. (Hydra jobs still need
hsm on the host, for `python -m hsm_core.hydra.worker`.) `python -m hsm_core.remote_agent`
runs the same code; the local source starts it that way over pipes.

Protocol: JSON lines. The orchestrator writes ops on stdin, the agent writes events on
stdout (ASCII JSON; non-UTF-8 bytes in argv travel as surrogate escapes and are restored
by os.fsencode here).

  {"op": "config", "journal": DIR, "slots": N, "gpus": [..]|null, "inline_max": BYTES,
   "exclude": [globs], "grace": S, "listing": true|false,
   "stream": true|false, "checksums": true|false}               (keys absent: unchanged)
  {"op": "launch", "id": ID, "attempt": N, "dir": ABS, "cwd": ABS, "argv": [..], "env": {..},
   "timeout": S|null, "files": {PATH: BASE64} (relative to dir, or absolute; written
   as the message arrives, before it is queued),
   "skip": [NAMES]}
  {"op": "kill", "ids": [ID..]}
  {"op": "scan", "tasks": [{"id": ID, "attempt": N, "dir": ABS, "skip": [..],
                            "timeout": S|null}]}
  {"op": "ping", "seq": N, "path": ABS|null}

  {"ev": "hello", "protocol": 3, "pid", "boot_id", "python", "home", "host", "keeper"}
  {"ev": "started", "id", "pid"}            the task runs, as process group `pid`
  {"ev": "running", "id", "pid"}            scan: still running, now watched
  {"ev": "exit", "id", "record": {..}|null, "error": str|null, "files": {REL: BASE64},
   "large": [[REL, SIZE, MTIME]..], "launch_error": bool, "never_started": bool,
   "sums": {REL: [SIZE, SHA256]}, "excluded": [[REL, SIZE]..]}
                                            record null: no exit record (lost), or
                                            launch_error: the task could not be started,
                                            never_started: scan found no trace of it;
                                            with `checksums` on: `sums` of every listed
                                            file (large ones hashed off the loop, so
                                            their exit comes once hashed), `excluded`:
                                            what `exclude` kept back (SIZE -1: a folder)
  {"ev": "out", "id", "stream": "stdout"|"stderr", "text", "skipped": BYTES}
                                            with `stream` on: new whole lines of a task's
                                            stdout.log/stderr.log as it runs, the rest
                                            before its exit; `skipped`: bytes passed over
                                            when it wrote faster than they were sent
  {"ev": "pong", "seq", "load", "running", "queued", "disk_free"}
  {"ev": "error", "id": ID|null, "msg"}

The agent is the parent of every task it starts: each runs in its own session (so its
whole process group can be signalled), the agent waits for it and journals its exit
record. Nothing the agent writes lives in the task folder: a task cannot forge its
outcome, and a `result.json` of its own is just one of its files.
Starting a task costs one spawn, not a monitor process per task. Losing the
orchestrator (EOF on stdin: the connection dropped, hsm was killed) does not stop the
agent: it stops taking work, waits for the tasks it started, records them and only then
exits.

`python -I -c SOURCE --sums` (no agent, no protocol): reads {"dirs": [ABS|REL..],
"exclude": [globs]} on stdin and prints {"home", "dirs": {DIR: {"files": {REL: [SIZE,
SHA256]}, "excluded": [[REL, SIZE]..]}|null}}, the same listing the exit events carry:
`hsm monitor collection --verify-integrity` compares a host's copies with it.

Every agent appends what it starts and how each ended to its own journal,
`JOURNAL_DIR/agent-<boot>-<pid>-<start>.jsonl` (one line per event, one write each: no
file created per record): a `launch` line just before a task is started, a `start`
line (pid, process start time) right after, an `exit` line when it ended; the exit is
journaled before the task's zombie is reaped. A new agent finds earlier tasks through
`scan`, which reads the journals: an exit line settles an attempt; a start line whose
process still runs (pid + boot id + process start time, so a recycled pid is not
mistaken for the task) is watched, its exit line awaited from whoever records it, and
it holds one of the new agent's slots meanwhile. Kill and
timeout = SIGTERM to the task's group, SIGKILL after a grace period.

The keeper (Linux): what the orchestrator (or sshd) starts is a tiny process that forks
the agent and outlives it. Both are child subreapers (prctl PR_SET_CHILD_SUBREAPER):

    orchestrator / sshd -- keeper -- agent -- task, task, ...

- An agent that is killed costs a delay only: its tasks reparent to the keeper, which
  waits for them and journals their exit records as the agent would have (it reads the
  start lines to know them). The orchestrator sees the channel end, starts a new agent
  and scans: the tasks are adopted (watched, in their slots) and settled by the
  keeper's records, never run again while they live. (Killed between a launch and
  its start line, the agent leaves a task its journal cannot name: the keeper finds it
  by the HSM_TASK_DIR and HSM_ATTEMPT it was started with and journals its start, or
  journals that no process was made.) A killed keeper costs nothing (the agent is
  their parent). Both killed at once: running tasks are still adopted and
  never overlap a re-run, but their exit status is lost, so each runs again once it
  ended. The two run in sessions of their own, so a kill of one process group never
  takes both; on systems without prctl the agent runs alone, as before.
- A task's processes end with it: when its leader exits, the rest of its group gets
  SIGTERM, then SIGKILL after the grace period; a process that left the group (setsid,
  a daemon) reparents to the agent when its parent exits, and is stopped the same way
  once its task is over (it is known by HSM_TASK_DIR in its environment, else by its
  start: it belongs to a task running when it started).
"""

from __future__ import annotations

import base64
import collections
import fnmatch
import hashlib
import json
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Literal

# 2: journals instead of per-task files; 3: keeper, start lines by the task; 4: sha256 sums
# in exit events (`checksums`). The orchestrator ships this file's text, so an agent it
# talks to always has its version (agent_channel checks the hello); older agents still
# running on a host are never spoken to, only their journals read, whose lines are
# unchanged.
PROTOCOL = 4
JOURNAL_DIR = ".agents"  # where orchestrators put the journals, relative to a sweep dir
# Copies of hsm_core.taskdir's names (this file needs the standard library only; a unit
# test pins them equal).
LAYOUT = 2  # exit records carry it: hsm's records are not in result.json any more
STDOUT = "stdout.log"
STDERR = "stderr.log"
RESULTS = "results"
WORKER_RECORD = ".hsm_result.json"
# hsm's records of an attempt: removed before the next one starts in the same folder.
HSM_RECORDS = (WORKER_RECORD, "job_return.pkl", "hydra_job.json", ".hsm_job.json", ".hsm_exit.json")
# The orchestrator's record of a collected folder (taskdir.FILES_RECORD): never listed.
FILES_RECORD = ".hsm_files.json"
# Per-task records of agents before protocol 2: never copied back, removed before a launch.
OWN_FILES = (".hsm_pid.json", ".hsm_exit.json")
# How long a new agent waits for another (live) agent to write the exit record of a task
# it watched end, and how often it looks.
RECORD_WAIT_S = 30.0
RECORD_POLL_S = 0.05
ORPHAN_POLL_S = 0.5
# `stream`: how often a running task's logs are read, and how much of each per read.
STREAM_S = 0.3
STREAM_MAX = 64 * 1024
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36


# -- the protocol's messages (see the docstring), one TypedDict per kind ----------------
# The orchestrator (agent_channel and the sources) uses these same classes; a unit test
# checks every message the agent sends and receives against them. Made only where this
# file is imported (the orchestrator, Python >= 3.10): the agent itself, run from its
# source on any Python >= 3.7, needs them for nothing and starts without the cost.
if TYPE_CHECKING or __name__ != "__main__":
    from typing import TypedDict

    class _Config(TypedDict):
        op: Literal["config"]

    class ConfigOp(_Config, total=False):  # a key absent: that setting is unchanged
        journal: str
        slots: int
        gpus: list[str] | None
        inline_max: int
        exclude: list[str]
        grace: float
        listing: bool
        stream: bool
        checksums: bool

    class _Launch(TypedDict):
        op: Literal["launch"]
        id: str
        attempt: int
        dir: str
        cwd: str
        argv: list[str]
        env: dict[str, str]

    class LaunchOp(_Launch, total=False):
        timeout: float | None  # seconds; absent or null: none
        files: dict[str, str]  # path (relative to dir, or absolute) -> base64
        skip: list[str]  # names in dir the exit event leaves out (they came with the launch)

    class KillOp(TypedDict):
        op: Literal["kill"]
        ids: list[str]

    class _ScanTask(TypedDict):
        id: str
        attempt: int
        dir: str

    class ScanTask(_ScanTask, total=False):
        timeout: float | None
        skip: list[str]

    class ScanOp(TypedDict):
        op: Literal["scan"]
        tasks: list[ScanTask]

    class PingOp(TypedDict):
        op: Literal["ping"]
        seq: int
        path: str | None  # the free space of its file system comes back

    Op = ConfigOp | LaunchOp | KillOp | ScanOp | PingOp

    class HelloEvent(TypedDict):
        ev: Literal["hello"]
        protocol: int
        pid: int
        boot_id: str
        python: str
        version: list[int]
        home: str
        host: str
        keeper: int | None

    class StartedEvent(TypedDict):
        ev: Literal["started"]
        id: str
        pid: int  # the task's process group

    class RunningEvent(TypedDict):
        ev: Literal["running"]
        id: str
        pid: int | None

    class _Exit(TypedDict):
        ev: Literal["exit"]
        id: str
        record: dict[str, Any] | None  # the journal's exit record; None: lost, or never run
        error: str | None
        files: dict[str, str]  # REL -> base64
        large: list[list[str | int | float]]  # [REL, SIZE, MTIME]: for SFTP

    class ExitEvent(_Exit, total=False):
        launch_error: bool
        never_started: bool
        sums: dict[str, list[str | int]]  # REL -> [SIZE, SHA256]
        excluded: list[list[str | int]]  # [REL, SIZE]; SIZE -1: a folder

    class OutEvent(TypedDict):
        ev: Literal["out"]
        id: str
        stream: Literal["stdout", "stderr"]
        text: str
        skipped: int

    class PongEvent(TypedDict):
        ev: Literal["pong"]
        seq: int
        load: list[float]
        running: int
        queued: int
        disk_free: int | None
        cpus: int | None

    class ErrorEvent(TypedDict):
        ev: Literal["error"]
        id: str | None
        msg: str

    # After the hello: what the orchestrator reads from the agent.
    Event = StartedEvent | RunningEvent | ExitEvent | OutEvent | PongEvent | ErrorEvent


def atomic_write(path, data):
    """A shipped file (a Hydra job's pickle) appears whole or not at all."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def ticks_now() -> int | None:
    """Now, in the clock ticks since boot that /proc/PID/stat counts process starts in."""
    try:
        with open("/proc/uptime") as f:
            return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def session_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def comm_of(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError, ValueError):
        return None


def same_process(pid: int | None, start: str | None) -> bool:
    """True if `pid` runs, is not a zombie, and is the process that started at `start`."""
    if not pid:
        return False
    st = proc_stat(int(pid))
    return st is not None and st[0] not in ("Z", "X") and st[1] == start


def task_alive(rec: dict[str, Any] | None, boot: str) -> bool:
    """The task a journal start line names still runs (this boot, same process)."""
    return _alive(rec, boot, "pid", "pid_start")


def owner_alive(rec: dict[str, Any] | None, boot: str) -> bool:
    """The agent that started it, or that agent's keeper, still runs (and will write its
    exit line)."""
    return _alive(rec, boot, "agent", "agent_start") or _alive(rec, boot, "keeper", "keeper_start")


def _alive(rec: dict[str, Any] | None, boot: str, pid_key: str, start_key: str) -> bool:
    if not rec or rec.get("boot8") != boot[:8]:
        return False
    return same_process(rec.get(pid_key), rec.get(start_key))


def journal_name(boot: str, pid: int, start: str | None) -> str:
    return f"agent-{boot[:8]}-{pid}-{start}.jsonl"


class Journal:
    """What the journals in one directory say, read incrementally.

    `starts[(dir, attempt)]` is the newest start line (with the owning agent's identity
    added), `exits[(dir, attempt)]` the exit record, `launches[...]` the newest line an
    agent writes just before it starts a task (so that a task whose agent died before
    its start line is still known), `unstarted[...]` when a keeper found that such a
    launch never made a process."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.offsets: dict[str, int] = {}
        self.starts: dict[tuple[str, int], dict[str, Any]] = {}
        self.exits: dict[tuple[str, int], dict[str, Any] | None] = {}
        self.launches: dict[tuple[str, int], dict[str, Any]] = {}
        self.unstarted: dict[tuple[str, int], float] = {}

    def refresh(self, only: str | None = None) -> Journal:
        try:
            names = [only] if only else sorted(os.listdir(self.directory))
        except OSError:
            return self
        for name in names:
            if not name.endswith(".jsonl"):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets.get(name, 0))
                    data = f.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # a line still being written waits for next time
            self.offsets[name] = self.offsets.get(name, 0) + end
            owner = self._owner(name)
            for line in data[:end].splitlines():
                try:
                    entry = json.loads(line)
                    key = (entry["dir"], entry["attempt"])
                except (ValueError, KeyError, TypeError):
                    continue
                kind = entry.get("e")
                if kind in ("start", "launch"):
                    entry.update(owner)
                    entry["journal"] = name
                    (self.starts if kind == "start" else self.launches)[key] = entry
                elif kind == "exit":
                    self.exits[key] = entry.get("record")
                elif kind == "unstarted":
                    self.unstarted[key] = entry.get("time") or 0.0
        return self

    def state(self, key: tuple[str, int]) -> tuple[str | None, dict[str, Any] | None]:
        """("start", line) while the newest trace of an attempt is its start line,
        ("launch", line) while it is a launch without a start yet, else (None, None)."""
        gone = self.unstarted.get(key)
        rec = self.starts.get(key)
        if rec and (gone is None or (rec.get("start") or 0) > gone):
            return "start", rec
        launch = self.launches.get(key)
        if launch and (gone is None or (launch.get("start") or 0) > gone):
            return "launch", launch
        return None, None

    @staticmethod
    def _owner(name: str) -> dict[str, Any]:
        parts = name[: -len(".jsonl")].split("-")
        try:
            return {"agent": int(parts[2]), "agent_start": parts[3], "boot8": parts[1]}
        except (IndexError, ValueError):
            return {}


def prctl(option: int, arg: object) -> bool:
    """Linux prctl(2) through ctypes; False where it is not there."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0) == 0)
    except (OSError, AttributeError, TypeError):
        return False


def subreaper() -> bool:
    """Become a child subreaper: orphaned descendants reparent here, not to init."""
    return prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_name(name):
    """What `ps -e`, top and pkill (without -f) call this process."""
    try:
        import ctypes

        prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()))
    except (ImportError, ValueError):
        pass


def children() -> set[int]:
    """Pids of this process's children (all its threads'), from /proc."""
    me = os.getpid()
    found: set[int] = set()
    try:
        threads = os.listdir(f"/proc/{me}/task")
    except OSError:
        threads = []
    known = False
    for tid in threads:
        try:
            with open(f"/proc/{me}/task/{tid}/children") as f:
                found.update(int(p) for p in f.read().split())
            known = True
        except (OSError, ValueError):
            pass
    if known:
        return found
    for name in os.listdir("/proc"):  # a kernel without .../children: every parent
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        found.add(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def env_of(pid: int, name: str) -> str | None:
    """A variable of the environment a process was started with (None: not set, or not
    readable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(prefix):
            return os.fsdecode(item[len(prefix) :])
    return None


def leftovers(known: set[int], live: dict[str, str | None]) -> list[int]:
    """Children of this process that are not task leaders (`known`) and whose task is
    over: processes a task left behind, reparented here. `live` maps the task folder of
    each task still running to its start (clock ticks)."""
    out = []
    for pid in children():
        if pid in known:
            continue
        st = proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        owner = env_of(pid, "HSM_TASK_DIR")
        if owner is not None:
            if owner in live:
                continue
        elif any(start is not None and int(start) <= int(st[1]) for start in live.values()):
            continue  # unknown owner: any task running when it started may still want it
        out.append(pid)
    return out


def is_excluded(rel, name, patterns):
    return any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(name, g) for g in patterns)


def walk_tree(d, skip=(), exclude=()):
    """The files of a task folder that go back to the orchestrator: ([(REL, SIZE,
    MTIME)], [[REL, SIZE]] kept back by `exclude`, SIZE -1 for a whole folder). hsm's
    own per-task files, temp files (`.tmp`) and `skip` are neither."""
    found, excluded = [], []
    for root, dirs, names in os.walk(d):
        rel_root = os.path.relpath(root, d)
        keep = []
        for n in dirs:
            rel = os.path.normpath(os.path.join(rel_root, n))
            if is_excluded(rel, n, exclude):
                excluded.append([rel + "/", -1])
            else:
                keep.append(n)
        dirs[:] = keep
        for n in names:
            rel = os.path.normpath(os.path.join(rel_root, n))
            if n in OWN_FILES or rel in skip or ".tmp" in n or rel == FILES_RECORD:
                continue
            try:
                st = os.stat(os.path.join(root, n))
            except OSError:
                continue
            if is_excluded(rel, n, exclude):
                excluded.append([rel, st.st_size])
            else:
                found.append((rel, st.st_size, st.st_mtime))
    return found, excluded


HASH_CHUNK = 1 << 20


def file_sha256(path: str) -> tuple[int, str]:
    """[size, sha256 hex] of what a file holds now, read once."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(HASH_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def tree_sums(d, exclude=()):
    """What `--sums` says of one folder: every file's [size, sha256] and what `exclude`
    kept back; None if there is no such folder."""
    if not os.path.isdir(d):
        return None
    found, excluded = walk_tree(d, (), exclude)
    files = {}
    for rel, _, _ in found:
        try:
            files[rel] = list(file_sha256(os.path.join(d, rel)))
        except OSError:
            continue
    return {"files": files, "excluded": excluded}


def sums_main():
    """`--sums`: the listing of each folder named on stdin, as one JSON line."""
    request = json.loads(sys.stdin.read() or "{}")
    exclude = list(request.get("exclude") or [])
    home = os.path.expanduser("~")
    # `~/x` and relative folders start at the home folder, as a source's project_dir.
    out = {}
    for d in request.get("dirs") or []:
        out[d] = tree_sums(os.path.join(home, os.path.expanduser(d)), exclude)
    sys.stdout.write(json.dumps({"home": home, "dirs": out}) + "\n")


class Hasher:
    """One thread that hashes the large files of finished tasks, so that a big
    checkpoint does not hold up the agent's loop (pings, starts, other exits). The loop
    is woken through its wake-up pipe and sends each exit event once it is complete."""

    def __init__(self, wake_fd):
        self.wake_fd = wake_fd
        self.todo: queue.Queue[tuple[ExitEvent, str, list[str]]] = queue.Queue()
        self.finished: collections.deque[ExitEvent] = collections.deque()
        threading.Thread(target=self.run, name="hsm-hasher", daemon=True).start()

    def put(self, event: ExitEvent, d: str, names: list[str]) -> None:
        self.todo.put((event, d, names))

    def run(self):
        while True:
            event, d, names = self.todo.get()
            for rel in names:
                try:
                    event["sums"][rel] = list(file_sha256(os.path.join(d, rel)))
                except OSError:
                    pass  # gone: the pull says so
            self.finished.append(event)
            try:
                os.write(self.wake_fd, b"h")
            except OSError:
                pass

    def done(self):
        while self.finished:
            yield self.finished.popleft()


def signal_tree(pid: int, sig: int) -> None:
    """`sig` to the process group `pid` leads, or to the process alone if it leads none."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except OSError:
        pass


def status_code(info):
    """os.waitid's result as Popen's returncode (-N for signal N)."""
    if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        return -info.si_status
    return info.si_status


def peek_child(block=False):
    """The next child that ended, not reaped yet (so its /proc entry still says who it
    was): (pid, returncode), or None."""
    flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, flags)
        except ChildProcessError:
            return None
        except InterruptedError:
            continue
        if info is None:
            return None
        return info.si_pid, status_code(info)


def reap(pid):
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def exit_status(returncode):
    """Popen's returncode (-N for signal N) as a shell would say it: (code, signal)."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


def kill_group(pgid: int | None, sig: int) -> bool:
    """`sig` to a process group; False if there was nobody to send it to."""
    if pgid:
        try:
            os.killpg(int(pgid), sig)
            return True
        except OSError:
            pass
    return False


def bare_exit(task: str, record: dict[str, Any] | None, error: str | None) -> ExitEvent:
    """An exit event without the task's files (none to send, or added later)."""
    return {"ev": "exit", "id": task, "record": record, "error": error, "files": {}, "large": []}


def _id_of(msg: object) -> str | None:
    """The task an op is about, for an error event about it."""
    task = msg.get("id") if isinstance(msg, dict) else None
    return task if isinstance(task, str) else None


class Job:
    def __init__(self, spec):
        self.spec = spec
        self.id = spec["id"]
        self.proc = None  # subprocess.Popen: started by this agent
        self.pid = None  # the task's pid = its process group
        self.record = None  # journal start line of a task another agent started (adopted)
        self.pidfd = None
        self.ended = None  # adopted: when its end was seen (its record may lag)
        self.pending = False  # adopted before its start line: waiting for it
        self.gpu = None
        self.start = 0.0
        self.ticks = None  # the task process's start time (clock ticks), for leftovers
        self.deadline = None  # timeout
        self.kill_at = None  # SIGKILL once the grace period after SIGTERM is over
        self.cancelled = False
        self.timed_out = False
        self.sent = {}  # stream -> bytes of its log sent as `out` events


class Agent:
    def __init__(self, keeper=None, reaper=False):
        self.keeper = keeper  # (pid, start) of the keeper above this agent, if any
        self.keeper_fd = None  # where the keeper learns the journal's path
        self.reaper = reaper  # a child subreaper: a task's leftovers reparent here
        self.slots = 1
        self.gpus = None
        self.free_gpus = []
        self.inline_max = 64 * 1024
        self.exclude = []
        self.grace = 5.0
        self.send_files = True
        self.checksums = False  # sha256 of every listed file in exit events
        self.hasher = None  # Hasher, made at the first large file to hash
        self.wake_fd = None  # the loop's wake-up pipe (signals, the hasher)
        self.stream = False  # send tasks' output lines as they come (`out` events)
        self.next_stream = 0.0
        self.journal_dir = None
        self.journal_fd = None
        self.journal = Journal("")  # of the journal dir: for scans and adopted tasks
        self.queue: collections.deque[LaunchOp] = collections.deque()
        self.running: dict[str, Job] = {}
        self.by_pid: dict[int, Job] = {}  # tasks this agent started, by pid
        # (when, pid, group): SIGKILL then, to a task's group or to one leftover process
        self.strays: list[tuple[float, int, bool]] = []
        self.stopping: set[int] = set()  # leftovers already sent SIGTERM
        self.sel = selectors.DefaultSelector()
        self.inbuf = b""
        self.out = sys.stdout.buffer
        self.detached = False
        self.base_env = dict(os.environ)
        self.boot = boot_id()
        self.me = os.getpid()
        st = proc_stat(self.me)
        self.me_start = st[1] if st else None
        self.host = socket.gethostname()

    # -- plumbing ---------------------------------------------------------------------
    def emit(self, event: Event | HelloEvent) -> None:
        """Queue an event; `flush` sends what one turn of the loop produced together (an
        exit and the start that refills its slot: one packet instead of two)."""
        if self.detached:
            return
        try:
            self.out.write(json.dumps(event).encode("ascii") + b"\n")
        except OSError:  # nobody listens any more: finish the tasks quietly
            self.detach()

    def flush(self):
        if self.detached:
            return
        try:
            self.out.flush()
        except OSError:
            self.detach()

    def detach(self):
        """The orchestrator is gone: take no more work, keep the tasks already started."""
        if self.detached:
            return
        self.detached = True
        self.queue.clear()  # never started: no trace, so a re-attach launches them again
        try:
            self.sel.unregister(0)
        except (KeyError, ValueError):
            pass
        for job in list(self.running.values()):
            if job.proc is None:  # watched for an orchestrator that is gone
                self.forget(job)
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 1)  # let the channel close
            os.close(devnull)
        except OSError:
            pass

    def main(self):
        r, w = os.pipe()
        os.set_blocking(w, False)
        os.set_blocking(r, False)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        # A terminal's Ctrl-C or a closed session must not take the tasks' parent away;
        # handlers (not SIG_IGN) so that the tasks, after exec, get the defaults.
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, lambda s, f: None)
        signal.set_wakeup_fd(w)
        self.wake_fd = w
        self.sel.register(r, selectors.EVENT_READ, "wake")
        self.sel.register(0, selectors.EVENT_READ, "stdin")
        self.emit(
            {
                "ev": "hello",
                "protocol": PROTOCOL,
                "pid": self.me,
                "boot_id": self.boot,
                "python": sys.executable,
                "version": list(sys.version_info[:3]),
                "home": os.path.expanduser("~"),
                "host": self.host,
                "keeper": self.keeper[0] if self.keeper else None,
            }
        )
        self.flush()
        while True:
            for key, _ in self.sel.select(self.next_wakeup()):
                if key.data == "stdin":
                    self.read_ops()
                elif key.data == "wake":
                    try:
                        while os.read(r, 4096):
                            pass
                    except OSError:
                        pass
                    self.reap()
                    self.drain_hashed()
                else:  # the pidfd of an adopted task: it ended
                    self.adopted_ended(key.data)
            self.tick()
            if self.detached and not self.running and not self.strays:
                return
            self.fill()
            self.flush()

    def read_ops(self):
        try:
            data = os.read(0, 1 << 20)
        except OSError:
            data = b""
        if not data:
            self.detach()
            return
        self.inbuf += data
        while b"\n" in self.inbuf:
            line, self.inbuf = self.inbuf.split(b"\n", 1)
            if line.strip():
                self.handle(json.loads(line.decode("ascii")))

    def handle(self, msg: Op) -> None:
        try:
            if msg["op"] == "config":
                self.configure(msg)
            elif msg["op"] == "launch":
                self.receive(msg)
            elif msg["op"] == "kill":
                self.kill(set(msg.get("ids") or ()))
            elif msg["op"] == "scan":
                self.scan(msg.get("tasks") or ())
            elif msg["op"] == "ping":
                self.pong(msg)
            else:
                self.emit({"ev": "error", "id": None, "msg": f"unknown op {msg['op']!r}"})
        except Exception as exc:  # one bad message must not take the host's tasks down
            self.emit({"ev": "error", "id": _id_of(msg), "msg": f"{type(exc).__name__}: {exc}"})

    def configure(self, msg: ConfigOp) -> None:
        if "slots" in msg:
            self.slots = max(1, int(msg["slots"]))
        if "gpus" in msg:
            self.gpus = msg["gpus"]
            self.free_gpus = [str(g) for g in self.gpus] if self.gpus else []
        if "inline_max" in msg:
            self.inline_max = int(msg["inline_max"])
        if "exclude" in msg:
            self.exclude = list(msg["exclude"] or [])
        if "grace" in msg:
            self.grace = float(msg["grace"])
        if "listing" in msg:
            self.send_files = bool(msg["listing"])
        if "stream" in msg:
            self.stream = bool(msg["stream"])
        if "checksums" in msg:
            self.checksums = bool(msg["checksums"])
        if msg.get("journal") and msg["journal"] != self.journal_dir:
            if self.journal_fd is not None:
                os.close(self.journal_fd)
                self.journal_fd = None
            self.journal_dir = msg["journal"]
            self.journal = Journal(self.journal_dir)

    def journal_path(self):
        """This agent's journal file, made at the first task (so an agent that runs
        nothing leaves no trace); its keeper is told where it is."""
        if self.journal_dir is None:
            raise RuntimeError("no journal: send config with `journal` first")
        path = os.path.join(self.journal_dir, journal_name(self.boot, self.me, self.me_start))
        if self.journal_fd is None:
            os.makedirs(self.journal_dir, exist_ok=True)
            self.journal_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if self.keeper_fd is not None:
                try:
                    os.write(self.keeper_fd, path.encode("utf-8", "surrogateescape") + b"\n")
                except OSError:
                    pass  # no keeper any more: nobody to tell
        return path

    def note(self, **entry):
        """One journal line, one write (O_APPEND: lines of concurrent writers never mix)."""
        self.journal_path()
        fd = self.journal_fd
        assert fd is not None
        os.write(fd, json.dumps(entry).encode("ascii") + b"\n")

    # -- timers -----------------------------------------------------------------------
    def next_wakeup(self):
        times = [when for when, _, _ in self.strays]
        if self.stream and any(j.proc is not None for j in self.running.values()):
            times.append(self.next_stream)
        for job in self.running.values():
            times += [t for t in (job.deadline, job.kill_at) if t is not None]
            if job.proc is None:
                if job.ended is not None or job.pending:
                    times.append(time.monotonic() + RECORD_POLL_S)
                elif job.pidfd is None:
                    times.append(time.monotonic() + ORPHAN_POLL_S)
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    def tick(self):
        now = time.monotonic()
        if self.stream and now >= self.next_stream:
            self.next_stream = now + STREAM_S
            for job in list(self.running.values()):
                if job.proc is not None and job.pid:
                    self.send_output(job, final=False)
        if self.strays:
            due = [s for s in self.strays if s[0] <= now]
            self.strays = [s for s in self.strays if s[0] > now]
            for _, pid, group in due:
                if group:
                    kill_group(pid, signal.SIGKILL)
                else:
                    signal_tree(pid, signal.SIGKILL)
                    self.stopping.discard(pid)
        for job in list(self.running.values()):
            if job.proc is not None:
                if job.deadline is not None and now >= job.deadline:
                    job.deadline = None
                    job.timed_out = not job.cancelled
                    self.terminate(job)
                if job.kill_at is not None and now >= job.kill_at:
                    job.kill_at = None
                    kill_group(job.pid, signal.SIGKILL)
                continue
            if job.pending:
                self.pending_check(job)
                continue
            if job.deadline is not None and now >= job.deadline and job.ended is None:
                job.deadline = None
                job.timed_out = not job.cancelled
                self.stop_stray(job.pid)
            if job.ended is None and job.pidfd is None and not task_alive(job.record, self.boot):
                job.ended = now
            if job.ended is not None:
                self.adopted_check(job, now)

    # -- launching --------------------------------------------------------------------
    def capacity(self):
        if self.gpus:
            return min(self.slots, len(self.gpus))
        return self.slots

    def receive(self, spec: LaunchOp) -> None:
        """Write what the launch carries now, not when it starts: a later launch may rely
        on a shared file it carried (a Hydra payload, sent once per host), whether this
        one starts, waits in the queue, is killed there or dropped by a detach."""
        if spec["id"] in self.running or any(q["id"] == spec["id"] for q in self.queue):
            return  # sent again after a scan crossed it: it is here already
        try:
            for name, b64 in (spec.get("files") or {}).items():
                path = os.path.join(spec["dir"], name)  # relative to the task dir, or absolute
                os.makedirs(os.path.dirname(path), exist_ok=True)
                atomic_write(path, base64.b64decode(b64))
        except Exception as exc:
            self.launch_failed(spec, f"cannot write its files: {type(exc).__name__}: {exc}")
            return
        spec.pop("files", None)  # written: no need to hold them while it waits
        self.queue.append(spec)

    def fill(self):
        # Adopted tasks (another agent's, watched) hold slots as much as our own.
        while self.queue and len(self.running) < self.capacity():
            spec = self.queue.popleft()
            try:
                self.launch(spec)
            except Exception as exc:
                self.running.pop(spec["id"], None)
                self.launch_failed(spec, f"cannot launch: {type(exc).__name__}: {exc}")

    def launch_failed(self, spec, error):
        event = bare_exit(spec["id"], None, error)
        event["launch_error"] = True
        self.emit(event)

    def launch(self, spec):
        d = spec["dir"]
        try:
            os.mkdir(os.path.join(d, RESULTS))
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(os.path.join(d, RESULTS), exist_ok=True)
        self.journal_path()
        if spec["attempt"] > 1:
            self.stop_earlier(d, spec["attempt"])
        for name in (*OWN_FILES, *HSM_RECORDS):
            try:
                os.unlink(os.path.join(d, name))
            except FileNotFoundError:
                pass
        job = Job(spec)
        env = dict(self.base_env)
        env.update(spec.get("env") or {})
        # Which attempt this process runs: the task may want it, and a keeper finds by it
        # a task whose agent died before journaling its start.
        env["HSM_ATTEMPT"] = str(spec["attempt"])
        if self.gpus:
            job.gpu = self.free_gpus.pop(0)
            env["CUDA_VISIBLE_DEVICES"] = job.gpu
        job.start = time.time()
        self.running[job.id] = job
        who = {"keeper": self.keeper[0], "keeper_start": self.keeper[1]} if self.keeper else {}
        self.note(
            e="launch", dir=d, attempt=spec["attempt"], start=job.start, ticks=ticks_now(), **who
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        out = os.open(os.path.join(d, STDOUT), flags, 0o644)
        err = os.open(os.path.join(d, STDERR), flags, 0o644)
        try:
            job.proc = subprocess.Popen(
                [os.fsencode(a) for a in spec["argv"]],
                cwd=spec["cwd"],
                env={os.fsencode(k): os.fsencode(v) for k, v in env.items()},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own group: a kill takes its children too
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            # What a shell would do: a message on the task's stderr and exit code 127.
            try:
                os.write(err, f"hsm: cannot start {spec['argv'][:1]!r}: {exc}\n".encode())
            except OSError:
                pass
            job.proc = _NotStarted()
        finally:
            os.close(out)
            os.close(err)
        job.pid = job.proc.pid
        if job.pid:
            st = proc_stat(job.pid)
            job.ticks = st[1] if st else None
            self.by_pid[job.pid] = job
            self.note(
                e="start",
                dir=d,
                attempt=spec["attempt"],
                pid=job.pid,
                pid_start=job.ticks,
                start=job.start,
                **who,
            )
            self.emit({"ev": "started", "id": job.id, "pid": job.pid})
            if spec.get("timeout"):
                job.deadline = time.monotonic() + float(spec["timeout"])
        else:
            self.complete(job, 127)

    def stop_earlier(self, d, attempt):
        """An earlier attempt of this task that the orchestrator gave up on may still run
        here (a host that came back): stop it before the new one starts."""
        for job in list(self.running.values()):
            if job.spec["dir"] == d and job.spec["attempt"] < attempt and job.proc is not None:
                job.cancelled = True
                self.terminate(job)
        for (jd, att), rec in self.journal.refresh().starts.items():
            mine = rec.get("agent") == self.me
            if jd == d and att < attempt and not mine and task_alive(rec, self.boot):
                self.stop_stray(rec.get("pid"))

    def stop_stray(self, pgid):
        """SIGTERM to a process group now, SIGKILL after the grace period."""
        if kill_group(pgid, signal.SIGTERM):
            self.strays.append((time.monotonic() + self.grace, int(pgid), True))

    def stop_leftover(self, pid):
        """The same for one process a task left behind (and the group it leads)."""
        if pid not in self.stopping:
            self.stopping.add(pid)
            signal_tree(pid, signal.SIGTERM)
            self.strays.append((time.monotonic() + self.grace, pid, False))

    def terminate(self, job):
        """SIGTERM to the task's group now, SIGKILL after the grace period."""
        kill_group(job.pid, signal.SIGTERM)
        if job.kill_at is None:
            job.kill_at = time.monotonic() + self.grace

    def reap(self):
        """Every child that ended. A task's exit line is journaled before its zombie is
        reaped: killed at any moment, the agent leaves each exit recorded exactly once
        (by itself, or by the keeper that reaps the zombie). Then the rest of the task's
        group, and what ended tasks left outside it, is stopped."""
        while True:
            ended = peek_child()
            if ended is None:
                break
            pid, code = ended
            job = self.by_pid.pop(pid, None)
            if job is not None:
                if job.proc is not None:
                    job.proc.returncode = code  # reaped here: Popen must not wait for it
                self.complete(job, code)
            reap(pid)
            if job is None:
                continue
            if job.cancelled or job.timed_out:
                kill_group(pid, signal.SIGKILL)
            else:
                self.stop_stray(pid)
        if self.reaper:
            known = set(self.by_pid)
            live = {j.spec["dir"]: j.ticks for j in self.running.values() if j.proc is not None}
            for pid in leftovers(known, live):
                self.stop_leftover(pid)

    # -- finishing --------------------------------------------------------------------
    def complete(self, job, returncode):
        """A task this agent started has ended: journal its exit record, report it."""
        rc, sig = exit_status(returncode)
        spec = job.spec
        record = {
            "exit_code": rc,
            "signal": sig,
            "attempt": spec["attempt"],
            "start": job.start,
            "end": time.time(),
            "host": self.host,
            "cancelled": job.cancelled,
            "timed_out": job.timed_out,
            "layout": LAYOUT,
        }
        d = spec["dir"]
        if self.stream:
            self.send_output(job, final=True)  # the last lines before the exit event
        try:
            self.note(e="exit", dir=d, attempt=spec["attempt"], record=record)
        except OSError as exc:
            self.emit({"ev": "error", "id": job.id, "msg": f"cannot journal the exit: {exc}"})
        self.forget(job)
        self.report_exit(spec, record)

    def send_output(self, job, final):
        """New whole lines of the task's logs as `out` events (at the end: all of it)."""
        for stream in ("stdout", "stderr"):
            try:
                with open(os.path.join(job.spec["dir"], f"{stream}.log"), "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    start = job.sent.get(stream, 0)
                    skipped = max(0, size - start - STREAM_MAX)  # behind: jump ahead
                    f.seek(start + skipped)
                    data = f.read(STREAM_MAX)
            except OSError:
                continue
            cut = data.rfind(b"\n") + 1
            if not final and (cut or len(data) < STREAM_MAX):
                data = data[:cut]  # a line still being written waits for its end
            if not data and not skipped:
                continue
            job.sent[stream] = start + skipped + len(data)
            text = data.decode("utf-8", "replace")
            out: OutEvent = {
                "ev": "out",
                "id": job.id,
                "stream": stream,
                "text": text,
                "skipped": skipped,
            }
            self.emit(out)

    def forget(self, job: Job) -> None:
        if self.running.get(job.id) is job:
            del self.running[job.id]
        if job.pidfd is not None:
            self.sel.unregister(job.pidfd)
            os.close(job.pidfd)
            job.pidfd = None
        if job.gpu is not None:
            self.free_gpus.append(job.gpu)
            job.gpu = None

    def adopted_ended(self, job):
        if job.pidfd is not None:
            self.sel.unregister(job.pidfd)
            os.close(job.pidfd)
            job.pidfd = None
        if job.ended is None:
            job.ended = time.monotonic()
        self.adopted_check(job, time.monotonic())

    def adopted_check(self, job, now):
        """An adopted task has ended: its own agent (or that agent's keeper) writes the
        record; wait for it."""
        spec = job.spec
        key = (spec["dir"], spec["attempt"])
        done = self.journal.refresh(job.record.get("journal")).exits.get(key)
        if done is not None:
            if job.cancelled:
                done = dict(done, cancelled=True)  # killed on our request
            elif job.timed_out:
                done = dict(done, timed_out=True)
            self.forget(job)
            self.report_exit(spec, done)
        elif not owner_alive(job.record, self.boot) or now - job.ended > RECORD_WAIT_S:
            self.forget(job)
            self.report_exit(spec, None)

    def report_exit(self, spec, record):
        d = spec["dir"]
        error = None
        if record is None:
            error = "the task ended without an exit record (its agent was killed)"
        event = bare_exit(spec["id"], record, error)
        if not self.send_files:
            self.emit(event)
            return
        files, large, sums, excluded = self.listing(d, spec.get("skip") or ())
        event["files"], event["large"] = files, large
        if not self.checksums:
            self.emit(event)
            return
        event["sums"], event["excluded"] = sums, excluded
        if not large:
            self.emit(event)
            return
        # Reading a big file takes a while: a thread hashes it while the loop goes on
        # (hashlib lets go of the GIL), and the exit goes out once it is done.
        if self.hasher is None:
            self.hasher = Hasher(self.wake_fd)
        self.hasher.put(event, d, [rel for rel, _, _ in large])

    def listing(self, d, skip):
        """Small files inline (hsm's worker record first), the rest named for SFTP; with
        `checksums`, the sums of the inline ones and what `exclude` kept back."""
        found, excluded = walk_tree(d, skip, self.exclude)
        entries = [(rel != WORKER_RECORD, size, rel, mtime) for rel, size, mtime in found]
        entries.sort()
        files, large, sums, budget = {}, [], {}, self.inline_max
        for _, size, rel, mtime in entries:
            if size <= budget:
                try:
                    with open(os.path.join(d, rel), "rb") as f:
                        data = f.read(size + 1)
                except OSError:
                    continue
                if len(data) == size:
                    files[rel] = base64.b64encode(data).decode("ascii")
                    if self.checksums:
                        sums[rel] = [size, hashlib.sha256(data).hexdigest()]
                    budget -= size
                    continue
            large.append([rel, size, mtime])
        return files, large, sums, excluded

    def drain_hashed(self):
        if self.hasher is not None:
            for event in self.hasher.done():
                self.emit(event)

    # -- kill, scan, ping -------------------------------------------------------------
    def kill(self, ids):
        for spec in [s for s in self.queue if s["id"] in ids]:
            self.queue.remove(spec)
            record = {
                "exit_code": None,
                "attempt": spec["attempt"],
                "cancelled": True,
                "queued": True,
                "signal": None,
                "timed_out": False,
                "layout": LAYOUT,
            }
            self.emit(bare_exit(spec["id"], record, None))
        for job_id in ids:
            job = self.running.get(job_id)
            if job is None:
                continue
            job.cancelled = True
            job.deadline = None
            if job.proc is not None:
                self.terminate(job)
            else:  # another agent's task: it writes the record, we only stop the task
                self.stop_stray((job.record or {}).get("pid"))

    def scan(self, specs):
        journal = self.journal.refresh()
        for spec in specs:
            self.scan_one(spec, journal)

    def scan_one(self, spec, journal):
        if spec["id"] in self.running:
            self.emit({"ev": "running", "id": spec["id"], "pid": self.running[spec["id"]].pid})
            return
        if any(q["id"] == spec["id"] for q in self.queue):
            return  # sent to this agent already: it starts when a slot frees
        key = (spec["dir"], spec["attempt"])
        done = journal.exits.get(key)
        if done is not None:
            self.report_exit(spec, done)
            return
        kind, rec = journal.state(key)
        job = Job(spec)
        job.record = rec
        if kind == "launch" and owner_alive(rec, self.boot):
            # Its agent died between launching it and journaling its start: the keeper
            # is finding out whether a process runs it. It holds its slot meanwhile.
            job.pending = True
            self.running[job.id] = job
            return
        if kind == "start" and (task_alive(rec, self.boot) or owner_alive(rec, self.boot)):
            self.watch(job)
            return
        self.not_running(spec, kind)

    def watch(self, job):
        """Adopt a task another agent started: hold its slot, learn when it ends."""
        rec = job.record
        job.pid = int(rec["pid"])
        if task_alive(rec, self.boot):
            self.hold_gpu(job)
            timeout = job.spec.get("timeout")
            if timeout:
                left = float(rec.get("start") or 0) + float(timeout) - time.time()
                job.deadline = time.monotonic() + max(0.0, left)
            try:
                job.pidfd = os.pidfd_open(job.pid)
                self.sel.register(job.pidfd, selectors.EVENT_READ, job)
            except (AttributeError, OSError):
                job.pidfd = None  # no pidfd here: tick() polls /proc instead
            if job.cancelled:
                self.stop_stray(job.pid)
        else:
            job.ended = time.monotonic()  # done; its agent is writing the record
        self.running[job.id] = job
        self.emit({"ev": "running", "id": job.id, "pid": job.pid})

    def pending_check(self, job):
        key = (job.spec["dir"], job.spec["attempt"])
        journal = self.journal.refresh(job.record.get("journal"))
        done = journal.exits.get(key)
        if done is not None:
            self.forget(job)
            self.report_exit(job.spec, done)
            return
        kind, rec = journal.state(key)
        if kind == "start":
            job.pending, job.record = False, rec
            self.watch(job)
        elif kind is None or not owner_alive(job.record, self.boot):
            self.forget(job)
            self.not_running(job.spec, kind)

    def not_running(self, spec, kind):
        never = kind != "start"
        why = "no record of this attempt on the host" if never else "its task is gone"
        event = bare_exit(spec["id"], None, f"not running: {why}")
        event["never_started"] = never
        self.emit(event)

    def hold_gpu(self, job):
        """An adopted task keeps the GPU it was given: no new task gets it meanwhile."""
        gpu = env_of(job.pid, "CUDA_VISIBLE_DEVICES")
        if gpu is not None and gpu in self.free_gpus:
            self.free_gpus.remove(gpu)
            job.gpu = gpu

    def pong(self, msg: PingOp) -> None:
        disk = None
        path = msg.get("path")
        if path:
            try:
                st = os.statvfs(path)
                disk = st.f_bavail * st.f_frsize
            except OSError:
                pass
        self.emit(
            {
                "ev": "pong",
                "seq": msg["seq"],
                "load": list(os.getloadavg()),
                "running": len(self.running),
                "queued": len(self.queue),
                "disk_free": disk,
                "cpus": os.cpu_count(),
            }
        )


class _NotStarted:
    """Stands for a task whose program could not be started at all."""

    pid = None

    def poll(self):
        return 127


class Keeper:
    """The agent's parent (see the module's docstring). While the agent lives it only
    waits; once the agent is gone, the tasks it left reparent here and the keeper
    journals each one's exit, in the agent's own journal, as the agent would have, and
    stops what an ended task left behind. It exits when no child is left."""

    def __init__(self, agent, paths_fd):
        self.agent = agent
        self.paths_fd = paths_fd  # the agent writes its journal's path here
        self.paths = []
        self.journals = {}  # directory -> Journal
        self.host = socket.gethostname()
        self.status = 0

    def run(self):
        while True:
            ended = peek_child(block=True)
            if ended is None:
                return self.status
            pid, code = ended
            if pid == self.agent:
                self.agent = None
                self.status = exit_status(code)[0]
                self.read_paths()
                reap(pid)
                self.resolve_launches()
            else:
                st = proc_stat(pid)  # a zombie still says when it started
                task = self.record(pid, st[1] if st else None, code)
                reap(pid)
                if task:
                    kill_group(pid, signal.SIGKILL)  # the rest of its group
            if self.agent is None:
                self.stop_leftovers()

    def read_paths(self):
        data = b""
        try:
            while True:
                chunk = os.read(self.paths_fd, 65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        os.close(self.paths_fd)
        for line in data.decode("utf-8", "surrogateescape").splitlines():
            if line and line not in self.paths:
                self.paths.append(line)

    def refreshed(self):
        for path in self.paths:
            directory, name = os.path.split(path)
            journal = self.journals.setdefault(directory, Journal(directory))
            yield path, name, journal.refresh(only=name)

    def record(self, pid, ticks, returncode):
        """Journal the exit of the task `pid` was, if it was one of the agent's."""
        for path, name, journal in self.refreshed():
            for key, rec in journal.starts.items():
                if rec.get("journal") != name or rec.get("pid") != pid or key in journal.exits:
                    continue
                if ticks is not None and rec.get("pid_start") not in (None, ticks):
                    continue
                rc, sig = exit_status(returncode)
                record = {
                    "exit_code": rc,
                    "signal": sig,
                    "attempt": key[1],
                    "start": rec.get("start"),
                    "end": time.time(),
                    "host": self.host,
                    "cancelled": False,
                    "timed_out": False,
                    "layout": LAYOUT,
                    "keeper": True,  # recorded by the keeper: its agent had been killed
                }
                self.append(path, {"e": "exit", "dir": key[0], "attempt": key[1], "record": record})
                journal.exits[key] = record
                return True
        return False

    def resolve_launches(self):
        """The agent journals `launch` before it starts a task and `start` after; killed
        in between, it leaves a task its journal cannot name. Find that process among the
        orphans (at most one: the agent starts one task at a time) and journal its start
        for it, or journal that none was made, so that a new agent neither loses it nor
        starts it a second time."""
        for path, name, journal in list(self.refreshed()):
            known = {rec.get("pid") for rec in journal.starts.values()}
            for key, launch in list(journal.launches.items()):
                if launch.get("journal") != name or key in journal.exits:
                    continue
                if journal.state(key)[0] != "launch":
                    continue
                pid = self.find_launched(key, launch, known)
                if pid is None:
                    line = {"e": "unstarted", "dir": key[0], "attempt": key[1], "time": time.time()}
                else:
                    st = proc_stat(pid)
                    line = {"e": "start", "dir": key[0], "attempt": key[1], "pid": pid}
                    line.update(pid_start=st[1] if st else None, start=launch.get("start"))
                    line.update(
                        keeper=launch.get("keeper"), keeper_start=launch.get("keeper_start")
                    )
                self.append(path, line)
                journal.refresh(only=name)

    def find_launched(self, key, launch, known):
        """The process made for `launch`: by the HSM_TASK_DIR and HSM_ATTEMPT it was
        started with; once ended (a zombie keeps no environment), as the session leader
        that started at or after the launch. A process still between fork and exec (it
        still bears the agent's name) is waited for."""
        deadline = time.monotonic() + 5.0
        while True:
            waiting = False
            ended = []
            for pid in children():
                if pid in known:
                    continue
                st = proc_stat(pid)
                if st is None:
                    continue
                if st[0] not in ("Z", "X"):
                    if comm_of(pid) == "hsm-agent":
                        waiting = True
                    elif env_of(pid, "HSM_TASK_DIR") == key[0] and env_of(
                        pid, "HSM_ATTEMPT"
                    ) == str(key[1]):
                        return pid
                    continue
                ticks = launch.get("ticks")
                if session_of(pid) == pid and ticks is not None and int(st[1]) >= ticks - 1:
                    ended.append((int(st[1]), pid))
            if ended:
                return min(ended)[1]
            if not waiting or time.monotonic() > deadline:
                return None
            time.sleep(0.01)

    def append(self, path, line):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, json.dumps(line).encode("ascii") + b"\n")
            finally:
                os.close(fd)
        except OSError:
            pass

    def stop_leftovers(self):
        known, live = set(), {}
        for _, name, journal in self.refreshed():
            for key, rec in journal.starts.items():
                if rec.get("journal") == name and key not in journal.exits:
                    known.add(rec.get("pid"))
                    live[key[0]] = rec.get("pid_start")
        for pid in leftovers(known, live):
            signal_tree(pid, signal.SIGKILL)


def main():
    """The keeper, which forks the agent (where prctl and os.waitid exist), else the
    agent alone; `--sums`: only the listing of some folders (see the docstring)."""
    if sys.argv[1:2] == ["--sums"]:
        sums_main()
        return
    if not (hasattr(os, "fork") and hasattr(os, "waitid") and subreaper()):
        Agent().main()
        return
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, lambda s, f: None)  # as the agent: a closed terminal or channel
    keeper = os.getpid()
    st = proc_stat(keeper)
    paths_r, paths_w = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(paths_r)
            os.set_blocking(paths_w, False)  # a full pipe must never stop the agent
            os.setsid()  # its own group and session: one group kill never takes both
            agent = Agent(keeper=(keeper, st[1] if st else None), reaper=subreaper())
            agent.keeper_fd = paths_w
            set_name("hsm-agent")
            agent.main()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(paths_w)
    set_name("hsm-keeper")
    # The channel is the agent's: it must end when the agent ends, even if we live on.
    # stderr too: sshd ends a channel's output only once stdout AND stderr are closed,
    # so a keeper holding stderr kept a killed agent's channel open until the keeper
    # exited, i.e. until the last of its tasks ended (a failure drill saw 12 s with 12 s
    # tasks; hours with real ones), and no new agent took over meanwhile.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.exit(Keeper(pid, paths_r).run())


if __name__ == "__main__":
    main()
