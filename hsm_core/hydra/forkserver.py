"""A single-threaded fork server: one fresh process per job, forked from a warm parent.

The server is forked from the launcher before the engine (and its threads) start, so
every job process starts from a copy of a process that had one thread: no lock held by
another thread can be inherited. It speaks JSON lines over two pipes:

    launcher -> server: {"op": "run", "id", "job"} | {"op": "go", "id", "env"}
                        | {"op": "kill", "id", "sig", "grace", "why": "cancel"|"timeout"}
                        EOF = shut down
    server -> launcher: {"ev": "started", "id", "pid"} | {"ev": "exit", "id", "status"}
                        | {"ev": "error", "id", "msg"}
    (one TypedDict per kind in fork_messages.py)

A job process first does its set-up (compose, output dir, logging), then waits at a gate
until "go" hands it a slot (and the environment for that slot, e.g. CUDA_VISIBLE_DEVICES);
EOF on the gate means cancelled. Each job runs in its own process group so that a kill
reaches everything it started. Nothing here writes the store: SQLite connections never
cross a fork; a job reports through files, the server through its pipe.

A job that names a `journal` folder and its `attempt` is also journaled the way the local
agents journal their tasks (remote_agent.Journal reads both): a start line when it is
forked, an exit line with its wait status when it is reaped. At EOF the server stops what
still runs (the launcher is gone) and journals no outcome for those: they are LOST and run
again. The next orchestrator (`hsm complete`, the same multirun again) learns from the
journal which jobs had finished, and never runs those twice.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hsm_core import remote_agent
from hsm_core.errors import ForkServerError
from hsm_core.hydra.fork_messages import Event, JobRequest, Op

Gate = Callable[[], None]


class ForkJobs(Protocol):
    """What the server runs, given each job's request (the "job" of a "run" command)."""

    def prefork(self, job: JobRequest) -> None:
        """In the server, before it forks the job: work that later jobs then inherit."""

    def run(self, job: JobRequest, gate: Gate) -> int:
        """In the job's own process, its output and environment set: the job, which
        calls `gate()` once set up, to wait for a slot; returns the exit code."""


EXIT_INTERNAL = 70  # the job process failed outside the job (hsm's own bug or set-up)
EXIT_CANCELLED = 75  # cancelled while waiting at the gate


@dataclass
class _Child:
    pid: int
    go_w: int | None
    kill_at: float | None = None
    job: Mapping[str, Any] = field(default_factory=dict)
    started: float = 0.0
    why: str | None = None  # why the server signalled it: cancel, timeout, orphaned
    ticks: str | None = None  # its start (clock ticks): whose leftovers are whose


@dataclass
class _State:
    cmd_r: int
    evt_w: int
    wake_r: int
    wake_w: int
    sel: selectors.BaseSelector
    jobs: ForkJobs
    children: dict[str, _Child] = field(default_factory=dict)
    pids: dict[int, str] = field(default_factory=dict)
    buf: bytes = b""
    closing: bool = False
    journal: _Journal | None = None
    reaper: bool = False  # a child subreaper: what a job leaves behind reparents here


class _Journal:
    """The server's lines in the agents' journal format, one write each (O_APPEND)."""

    def __init__(self) -> None:
        from hsm_core import remote_agent

        self._agent = remote_agent
        self.boot = remote_agent.boot_id()
        self.me = os.getpid()
        st = remote_agent.proc_stat(self.me)
        self.me_start = st[1] if st else None
        self.host = socket.gethostname()
        self.fd: int | None = None

    def start(self, child: _Child) -> None:
        st = self._agent.proc_stat(child.pid)
        pid_start = st[1] if st else None
        self._note(child.job, e="start", pid=child.pid, pid_start=pid_start, start=child.started)

    def exit(self, child: _Child, status: int) -> None:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = 128 + sig if sig else os.WEXITSTATUS(status)
        killed = code != 0 and child.why
        if killed == "orphaned":
            return  # stopped because its launcher is gone: no outcome of its own (LOST)
        record = {
            "exit_code": code,
            "signal": sig,
            "attempt": child.job.get("attempt"),
            "start": child.started,
            "end": time.time(),
            "host": self.host,
            "cancelled": killed == "cancel",
            "timed_out": killed == "timeout",
            "layout": child.job.get("layout"),
        }
        self._note(child.job, e="exit", record=record)

    def _note(self, job: Mapping[str, Any], **entry: Any) -> None:
        folder, attempt = job.get("journal"), job.get("attempt")
        if not folder or attempt is None:
            return
        try:
            if self.fd is None:
                os.makedirs(str(folder), exist_ok=True)
                name = self._agent.journal_name(self.boot, self.me, self.me_start)
                path = os.path.join(str(folder), name)
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            line = {**entry, "dir": job.get("task_dir"), "attempt": attempt}
            os.write(self.fd, (json.dumps(line) + "\n").encode())
        except OSError:
            pass  # the pipe still tells a live launcher; only a recovery loses this line


class ForkServer:
    """The launcher's handle on the server process."""

    def __init__(self, jobs: ForkJobs) -> None:
        self.jobs = jobs
        self.pid: int | None = None
        self.cmd_w: int | None = None
        self.evt_r: int | None = None

    def start(self) -> None:
        if threading.active_count() != 1:
            names = ", ".join(t.name for t in threading.enumerate())
            raise ForkServerError(f"cannot fork safely: this process runs threads ({names})")
        cmd_r, cmd_w = os.pipe()
        evt_r, evt_w = os.pipe()
        _flush_all()
        gc.freeze()  # keep the inherited objects' pages shared (no refcount-less GC writes)
        try:
            pid = os.fork()
        except OSError:
            gc.unfreeze()
            for fd in (cmd_r, cmd_w, evt_r, evt_w):
                os.close(fd)
            raise
        if pid == 0:  # the server
            code = 0
            try:
                os.close(cmd_w)
                os.close(evt_r)
                _serve(self.jobs, cmd_r, evt_w)
            except BaseException:
                traceback.print_exc()
                code = EXIT_INTERNAL
            finally:
                os._exit(code)
        gc.unfreeze()
        os.close(cmd_r)
        os.close(evt_w)
        self.pid, self.cmd_w, self.evt_r = pid, cmd_w, evt_r

    def send(self, msg: Op) -> None:
        if self.cmd_w is None:
            raise ForkServerError("the fork server is not running")
        try:
            os.write(self.cmd_w, (json.dumps(msg) + "\n").encode())
        except BrokenPipeError:
            raise ForkServerError("the fork server is gone") from None

    def close(self) -> None:
        """EOF tells the server to kill what still runs and exit; wait for it."""
        if self.cmd_w is not None:
            os.close(self.cmd_w)
            self.cmd_w = None
        if self.pid is not None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None
        if self.evt_r is not None:
            os.close(self.evt_r)
            self.evt_r = None


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
    for ref in list(getattr(logging, "_handlerList", [])):
        handler = ref()
        if handler is not None:
            try:
                handler.flush()
            except Exception:
                pass


# ----------------------------------------------------------------- the server
_PRCTL: Any = None


def _serve(jobs: ForkJobs, cmd_r: int, evt_w: int) -> None:
    global _PRCTL
    _PRCTL = _load_prctl()  # once, in the server: every job process inherits it
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        # The launcher decides what to cancel; the server only dies with its pipe.
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    st = _State(cmd_r, evt_w, wake_r, wake_w, sel, jobs, journal=_Journal())
    st.reaper = remote_agent.subreaper()
    sel.register(cmd_r, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while True:
        _reap(st)
        if st.closing and not st.children:
            return
        deadlines = [c.kill_at for c in st.children.values() if c.kill_at is not None]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        for key, _ in sel.select(timeout):
            if key.fd == wake_r:
                _drain(wake_r)
            elif key.fd == cmd_r:
                _read_commands(st)
        _escalate(st)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _emit(st: _State, msg: Event) -> None:
    try:
        os.write(st.evt_w, (json.dumps(msg) + "\n").encode())
    except BrokenPipeError:
        st.closing = True


def _read_commands(st: _State) -> None:
    data = os.read(st.cmd_r, 65536)
    if not data:
        _shutdown(st)
        return
    st.buf += data
    *lines, st.buf = st.buf.split(b"\n")
    for line in lines:
        if line.strip():
            _command(st, json.loads(line))


def _command(st: _State, msg: Op) -> None:
    jid = str(msg["id"])
    child = st.children.get(jid)
    if msg["op"] == "run":
        _spawn(st, jid, msg["job"])
    elif msg["op"] == "go" and child is not None and child.go_w is not None:
        try:
            os.write(child.go_w, (json.dumps(msg.get("env") or {}) + "\n").encode())
        except BrokenPipeError:
            pass  # it died before the gate; its exit is on the way
        os.close(child.go_w)
        child.go_w = None
    elif msg["op"] == "kill" and child is not None:
        child.why = child.why or str(msg.get("why") or "cancel")
        _signal(child, int(msg.get("sig", signal.SIGTERM)))
        if child.go_w is not None:
            os.close(child.go_w)
            child.go_w = None
        grace = float(msg.get("grace", 3.0))
        if child.kill_at is None:
            child.kill_at = time.monotonic() + grace


def _signal(child: _Child, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _escalate(st: _State) -> None:
    now = time.monotonic()
    for child in st.children.values():
        if child.kill_at is not None and now >= child.kill_at:
            _signal(child, signal.SIGKILL)
            child.kill_at = None


def _reap(st: _State) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        jid = st.pids.pop(pid, None)
        if jid is None:
            continue  # a process a job left behind (reparented here), now gone
        child = st.children.pop(jid)
        if child.go_w is not None:
            os.close(child.go_w)
        # The job's process group may outlive its leader (a daemon it started): end it.
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if st.journal is not None:
            st.journal.exit(child, status)
        _emit(st, {"ev": "exit", "id": jid, "status": status})
    if st.reaper:
        # Processes a job left outside its group end with it too (remote_agent.leftovers).
        live = {str(c.job.get("task_dir") or ""): c.ticks for c in st.children.values()}
        for pid in remote_agent.leftovers(set(st.pids), live):
            remote_agent.signal_tree(pid, signal.SIGKILL)


def _shutdown(st: _State) -> None:
    st.closing = True
    st.sel.unregister(st.cmd_r)
    os.close(st.cmd_r)
    for child in st.children.values():
        child.why = child.why or "orphaned"
        _signal(child, signal.SIGTERM)
        if child.go_w is not None:
            os.close(child.go_w)
            child.go_w = None
        child.kill_at = time.monotonic() + 2.0


def _spawn(st: _State, jid: str, job: JobRequest) -> None:
    try:
        st.jobs.prefork(job)
    except Exception:
        traceback.print_exc()  # an optimisation failed: the job still runs
    go_r, go_w = os.pipe()
    _flush_all()
    gc.freeze()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(go_r)
        os.close(go_w)
        _emit(st, {"ev": "error", "id": jid, "msg": f"fork failed: {exc}"})
        return
    if pid == 0:
        _die_with_parent()
        _child_main(st, job, go_r, go_w)  # never returns
    os.close(go_r)
    try:
        os.setpgid(pid, pid)  # also done by the child: whichever runs first wins the race
    except OSError:
        pass
    ticks = (remote_agent.proc_stat(pid) or (None, None))[1]
    child = _Child(pid, go_w, job=job, started=time.time(), ticks=ticks)
    st.children[jid] = child
    st.pids[pid] = jid
    if st.journal is not None:
        st.journal.start(child)
    _emit(st, {"ev": "started", "id": jid, "pid": pid})


# ------------------------------------------------------------------ the job
def _die_with_parent() -> None:
    """Linux: a job process dies with the server (no orphan runs on unobserved)."""
    if _PRCTL is None:
        return
    try:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the server died before the call
            os._exit(EXIT_INTERNAL)
    except Exception:
        pass


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _child_main(st: _State, job: JobRequest, go_r: int, go_w: int) -> None:
    code = EXIT_INTERNAL
    try:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # Close the server's descriptors. The selector is closed by fd only: unregistering
        # would edit the epoll set the server still shares with us.
        inherited = [st.cmd_r, st.evt_w, st.wake_r, st.wake_w, go_w]
        if st.journal is not None and st.journal.fd is not None:
            inherited.append(st.journal.fd)
        inherited += [c.go_w for c in st.children.values() if c.go_w is not None]
        sel_fd = getattr(st.sel, "fileno", None)
        if sel_fd is not None:
            inherited.append(sel_fd())
        for fd in inherited:
            try:
                os.close(fd)
            except OSError:
                pass
        _redirect(job)
        fresh_random_state()
        os.environ.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
        # Handlers inherited from the launcher (console, sweep logs) are not this job's.
        logging.getLogger().handlers.clear()
        code = st.jobs.run(job, _make_gate(go_r))
    except BaseException:
        try:
            traceback.print_exc()
        except Exception:
            pass
        code = EXIT_INTERNAL
    finally:
        try:
            logging.shutdown()
            _flush_all()
        finally:
            os._exit(code)


def fresh_random_state() -> None:
    """Give the global generators the entropy a fresh interpreter would have: a fork
    copies the launcher's state, so every job that does not seed would draw the numbers
    the launcher drew next. CPython reseeds `random` at fork itself; NumPy's global
    RandomState and torch's CPU generator are reseeded here, if the app imported them
    (an app that seeds in its task function does so after this, and keeps its numbers).
    torch's CUDA generators are left alone: CUDA cannot be used in a forked process
    that inherited it, and a child that initialises it gets fresh generators anyway."""
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        try:
            np_random.seed()  # no argument: from the OS's entropy, as at numpy's import
        except Exception:
            pass
    torch = sys.modules.get("torch")
    generator = getattr(torch, "default_generator", None)
    if generator is not None:
        try:
            generator.seed()  # non-deterministic, as torch seeds it at start-up
        except Exception:
            pass


def _redirect(job: Mapping[str, Any]) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, key in ((1, "stdout"), (2, "stderr")):
        path = job.get(key)
        if path:
            out = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, fd)
            os.close(out)
    # The parent may have replaced sys.stdout (a notebook, a test runner, a rich console):
    # the job's prints go to its own files whatever the parent did.
    opts: dict[str, Any] = {"encoding": "utf-8", "errors": "backslashreplace", "buffering": 1}
    sys.stdout = open(1, "w", closefd=False, **opts)  # noqa: SIM115 - lives as long as the job
    sys.stderr = open(2, "w", closefd=False, **opts)  # noqa: SIM115


def _make_gate(go_r: int) -> Gate:
    def gate() -> None:
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(go_r, 65536)
            if not chunk:  # cancelled before it got a slot
                logging.shutdown()
                os._exit(EXIT_CANCELLED)
            data += chunk
        os.close(go_r)
        env = json.loads(data)
        os.environ.update({str(k): str(v) for k, v in env.items()})

    return gate
