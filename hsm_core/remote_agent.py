"""The small agent hsm runs on each ssh host, one per host, over one ssh channel.

Standard library only, and runnable from its source text alone: the ssh source sends
this file's text as `python -c SOURCE`, so hosts need no hsm install for command tasks
and the agent always speaks the orchestrator's protocol version. (Hydra jobs still need
hsm on the host, for `python -m hsm_core.worker`.) `python -m hsm_core.remote_agent`
runs the same code.

Protocol: JSON lines. The orchestrator writes ops on stdin, the agent writes events on
stdout (ASCII JSON; non-UTF-8 bytes in argv travel as surrogate escapes and are restored
by os.fsencode here).

  {"op": "config", "slots": N, "gpus": [..]|null, "inline_max": BYTES, "exclude": [globs],
   "grace": S}
  {"op": "launch", "id": ID, "attempt": N, "dir": ABS, "cwd": ABS, "argv": [..], "env": {..},
   "timeout": S|null, "files": {PATH: BASE64} (relative to dir, or absolute),
   "result": "always"|"if_missing",
   "skip": [NAMES]}
  {"op": "kill", "ids": [ID..]}
  {"op": "scan", "tasks": [{"id": ID, "attempt": N, "dir": ABS, "skip": [..]}]}
  {"op": "ping", "seq": N, "path": ABS|null}

  {"ev": "hello", "protocol": 1, "pid", "boot_id", "python", "home", "host"}
  {"ev": "started", "id", "pid"}            a monitor now runs the task
  {"ev": "running", "id", "pid"}            scan: still running, now watched
  {"ev": "exit", "id", "record": {..}|null, "error": str|null, "files": {REL: BASE64},
   "large": [[REL, SIZE, MTIME]..], "launch_error": bool, "never_started": bool}
                                            record null: no exit record (lost), or
                                            launch_error: the task could not be started,
                                            never_started: scan found no trace of it
  {"ev": "pong", "seq", "load", "running", "queued", "disk_free"}
  {"ev": "error", "id": ID|null, "msg"}

Each task runs under a *monitor*: a forked process in its own session (setsid) that
forks the task into its own process group, writes `.hsm_pid.json`, waits, and writes
`.hsm_exit.json` and `result.json` atomically (temp file, fsync, rename). Monitors
outlive the agent, the ssh connection and the orchestrator; a new agent finds them again
through `scan` (pid + boot id + process start time, so a recycled pid is not mistaken
for the task). Kill = SIGTERM to the monitor, which signals the task's process group and
escalates to SIGKILL after a grace period.
"""

from __future__ import annotations

import base64
import collections
import fnmatch
import json
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

PROTOCOL = 1
PID_FILE = ".hsm_pid.json"
EXIT_FILE = ".hsm_exit.json"
RESULT_FILE = "result.json"
OWN_FILES = (PID_FILE, EXIT_FILE)


def atomic_write(path, data, durable=True):
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_json(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def proc_stat(pid):
    """(state, start time in clock ticks) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError, ValueError):
        return None


def monitor_alive(rec):
    """True if the monitor named by a pid record still runs (same boot, same process)."""
    if not rec or rec.get("boot_id") != boot_id():
        return False
    st = proc_stat(int(rec.get("monitor", 0)))
    return st is not None and st[0] not in ("Z", "X") and st[1] == rec.get("monitor_start")


def exit_code_of(status):
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return 255, None


def run_monitor(job, grace, started_fd):
    """Body of the forked monitor. Never returns.

    Writes one byte on `started_fd` once the pid record is on disk: the agent reports
    "started" only then, so a re-attach never finds a started task without its record."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)  # let the ssh channel close when the agent goes
        close_fds(keep=(0, 1, 2, null, started_fd))
        state: dict[str, Any] = {"pid": None, "cancelled": False, "timed_out": False}

        def stop(signum, frame):
            if signum == signal.SIGTERM:
                state["cancelled"] = True
            elif not state["cancelled"] and not state["timed_out"]:
                state["timed_out"] = True
            else:  # second alarm: the grace period is over
                kill_group(state["pid"], signal.SIGKILL)
                return
            kill_group(state["pid"], signal.SIGTERM)
            signal.alarm(max(1, int(grace)))

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGALRM, stop)
        d = job["dir"]
        start = time.time()
        pid = os.fork()
        if pid == 0:
            exec_task(job, null)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        state["pid"] = pid
        me = os.getpid()
        st = proc_stat(me)
        rec = {
            "attempt": job["attempt"],
            "monitor": me,
            "monitor_start": st[1] if st else None,
            "pid": pid,
            "pgid": pid,
            "boot_id": boot_id(),
            "start": start,
        }
        # No fsync: after a host crash the boot id differs and this record means nothing.
        atomic_write(os.path.join(d, PID_FILE), json.dumps(rec).encode(), durable=False)
        os.write(started_fd, b"1")
        os.close(started_fd)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # a kill may now land
        if job.get("timeout"):
            signal.alarm(max(1, round(job["timeout"])))
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                status = 255 << 8
                break
        signal.alarm(0)
        if state["cancelled"] or state["timed_out"]:
            kill_group(pid, signal.SIGKILL)  # leftovers of the group
        rc, sig = exit_code_of(status)
        record = {
            "exit_code": rc,
            "signal": sig,
            "attempt": job["attempt"],
            "start": start,
            "end": time.time(),
            "host": socket.gethostname(),
            "cancelled": state["cancelled"],
            "timed_out": state["timed_out"],
        }
        data = json.dumps(record).encode()
        result = os.path.join(d, RESULT_FILE)
        if job.get("result", "always") == "always" or not os.path.exists(result):
            atomic_write(result, data)
        atomic_write(os.path.join(d, EXIT_FILE), data)  # last: it marks the attempt done
        code = 0
    finally:
        os._exit(code)


def exec_task(job, null):
    """Body of the task child: own process group, files as stdio, then exec. Never returns."""
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        out = os.open(os.path.join(job["dir"], "stdout.log"), flags, 0o644)
        err = os.open(os.path.join(job["dir"], "stderr.log"), flags, 0o644)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (out, err, null):
            os.close(fd)
        os.chdir(job["cwd"])
        argv = [os.fsencode(a) for a in job["argv"]]
        env = {os.fsencode(k): os.fsencode(v) for k, v in job["env"].items()}
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:
        try:
            os.write(2, ("hsm: cannot start {!r}: {}\n".format(job["argv"][:1], exc)).encode())
        except OSError:
            pass
    os._exit(127)


def kill_group(pgid, sig):
    if pgid:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass


def close_fds(keep):
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 256))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


class Job:
    def __init__(self, spec):
        self.spec = spec
        self.id = spec["id"]
        self.monitor = None  # pid
        self.child = False  # forked by this agent (reaped by waitpid) or adopted (pidfd)
        self.pidfd = None
        self.started_fd = None  # read end: readable once the monitor wrote its pid record
        self.gpu = None


class Agent:
    def __init__(self):
        self.slots = 1
        self.gpus = None
        self.free_gpus = []
        self.inline_max = 64 * 1024
        self.exclude = []
        self.grace = 5.0
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.running: dict[str, Job] = {}
        self.by_monitor: dict[int, Job] = {}  # monitor pid -> Job (children only)
        self.sel = selectors.DefaultSelector()
        self.inbuf = b""
        self.out = sys.stdout.buffer
        self.base_env = dict(os.environ)

    # -- plumbing ---------------------------------------------------------------------
    def emit(self, **event):
        self.out.write(json.dumps(event).encode("ascii") + b"\n")
        self.out.flush()

    def main(self):
        r, w = os.pipe()
        os.set_blocking(w, False)
        os.set_blocking(r, False)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.set_wakeup_fd(w)
        self.sel.register(r, selectors.EVENT_READ, "wake")
        self.sel.register(0, selectors.EVENT_READ, "stdin")
        self.emit(
            ev="hello",
            protocol=PROTOCOL,
            pid=os.getpid(),
            boot_id=boot_id(),
            python=sys.executable,
            version=list(sys.version_info[:3]),
            home=os.path.expanduser("~"),
            host=socket.gethostname(),
        )
        polling = False
        while True:
            for key, _ in self.sel.select(0.5 if polling else None):
                if key.data == "stdin":
                    data = os.read(0, 1 << 20)
                    if not data:
                        return  # orchestrator gone: monitors keep running
                    self.inbuf += data
                    while b"\n" in self.inbuf:
                        line, self.inbuf = self.inbuf.split(b"\n", 1)
                        if line.strip():
                            self.handle(json.loads(line.decode("ascii")))
                elif key.data == "wake":
                    try:
                        while os.read(r, 4096):
                            pass
                    except OSError:
                        pass
                    self.reap()
                elif isinstance(key.data, tuple):
                    self.started(key.data[1])
                else:  # a pidfd of an adopted monitor
                    self.finish(key.data)
            polling = False
            for job in list(self.running.values()):
                if not job.child and job.pidfd is None:
                    polling = True
                    if not monitor_alive(read_json(os.path.join(job.spec["dir"], PID_FILE))):
                        self.finish(job)
            self.fill()

    def handle(self, msg):
        op = msg.get("op")
        try:
            if op == "config":
                self.slots = max(1, int(msg.get("slots", 1)))
                self.gpus = msg.get("gpus")
                self.free_gpus = [str(g) for g in self.gpus] if self.gpus else []
                self.inline_max = int(msg.get("inline_max", self.inline_max))
                self.exclude = list(msg.get("exclude") or [])
                self.grace = float(msg.get("grace", self.grace))
            elif op == "launch":
                self.queue.append(msg)
            elif op == "kill":
                self.kill(set(msg.get("ids") or ()))
            elif op == "scan":
                for spec in msg.get("tasks") or ():
                    self.scan(spec)
            elif op == "ping":
                self.pong(msg)
            else:
                self.emit(ev="error", id=None, msg=f"unknown op {op!r}")
        except Exception as exc:  # one bad message must not take the host's tasks down
            self.emit(ev="error", id=msg.get("id"), msg=f"{type(exc).__name__}: {exc}")

    # -- launching --------------------------------------------------------------------
    def capacity(self):
        if self.gpus:
            return min(self.slots, len(self.gpus))
        return self.slots

    def fill(self):
        while self.queue and len(self.running) < self.capacity():
            spec = self.queue.popleft()
            try:
                self.launch(spec)
            except Exception as exc:
                self.running.pop(spec["id"], None)
                self.emit(
                    ev="exit",
                    id=spec["id"],
                    record=None,
                    files={},
                    large=[],
                    launch_error=True,
                    error=f"cannot launch: {type(exc).__name__}: {exc}",
                )

    def launch(self, spec):
        d = spec["dir"]
        os.makedirs(os.path.join(d, "results"), exist_ok=True)
        old = read_json(os.path.join(d, PID_FILE))
        if old and old.get("attempt") != spec["attempt"] and monitor_alive(old):
            # An earlier attempt that the orchestrator gave up on still runs here: stop it.
            try:
                os.kill(int(old["monitor"]), signal.SIGTERM)
            except OSError:
                pass
        for name in (*OWN_FILES, RESULT_FILE):
            try:
                os.unlink(os.path.join(d, name))
            except FileNotFoundError:
                pass
        for name, b64 in (spec.get("files") or {}).items():
            path = os.path.join(d, name)  # relative to the task dir, or absolute
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, base64.b64decode(b64))
        job = Job(spec)
        env = dict(self.base_env)
        env.update(spec.get("env") or {})
        if self.gpus:
            job.gpu = self.free_gpus.pop(0)
            env["CUDA_VISIBLE_DEVICES"] = job.gpu
        spec["env"] = env
        # SIGTERM stays blocked in the monitor until it can forward it to the task group.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        r, w = os.pipe()
        try:
            pid = os.fork()
            if pid == 0:
                os.close(r)
                run_monitor(spec, self.grace, w)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            os.close(w)
        job.monitor, job.child = pid, True
        job.started_fd = r
        self.sel.register(r, selectors.EVENT_READ, ("started", job))
        self.running[job.id] = job
        self.by_monitor[pid] = job

    def started(self, job):
        """The monitor's pid record is on disk (or the monitor died first)."""
        fd, job.started_fd = job.started_fd, None
        if fd is None:
            return
        self.sel.unregister(fd)
        try:
            ok = os.read(fd, 1) == b"1"
        except OSError:
            ok = False
        os.close(fd)
        if ok:
            self.emit(ev="started", id=job.id, pid=job.monitor)

    def reap(self):
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.by_monitor.pop(pid, None)
            if job is not None:
                self.finish(job)

    # -- finishing --------------------------------------------------------------------
    def finish(self, job: Job) -> None:
        if self.running.get(job.id) is not job:
            return
        del self.running[job.id]
        self.started(job)  # "started" always comes before "exit"
        if job.pidfd is not None:
            self.sel.unregister(job.pidfd)
            os.close(job.pidfd)
        if job.gpu is not None:
            self.free_gpus.append(job.gpu)
        self.report_exit(job.spec)

    def report_exit(self, spec):
        d = spec["dir"]
        record = read_json(os.path.join(d, EXIT_FILE))
        error = None
        if record is None or record.get("attempt") != spec["attempt"]:
            record, error = None, "the task's monitor ended without an exit record"
        files, large = self.listing(d, spec.get("skip") or ())
        self.emit(ev="exit", id=spec["id"], record=record, error=error, files=files, large=large)

    def listing(self, d, skip):
        """Small files inline (result.json first), the rest named for SFTP."""
        entries = []
        for root, dirs, names in os.walk(d):
            rel_root = os.path.relpath(root, d)
            dirs[:] = [
                n for n in dirs if not self.excluded(os.path.normpath(os.path.join(rel_root, n)), n)
            ]
            for n in names:
                rel = os.path.normpath(os.path.join(rel_root, n))
                if n in OWN_FILES or rel in skip or ".tmp" in n or self.excluded(rel, n):
                    continue
                try:
                    st = os.stat(os.path.join(root, n))
                except OSError:
                    continue
                entries.append((rel != RESULT_FILE, st.st_size, rel, st.st_mtime))
        entries.sort()
        files, large, budget = {}, [], self.inline_max
        for _, size, rel, mtime in entries:
            if size <= budget:
                try:
                    with open(os.path.join(d, rel), "rb") as f:
                        data = f.read(size + 1)
                except OSError:
                    continue
                if len(data) == size:
                    files[rel] = base64.b64encode(data).decode("ascii")
                    budget -= size
                    continue
            large.append([rel, size, mtime])
        return files, large

    def excluded(self, rel, name):
        return any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(name, g) for g in self.exclude)

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
            }
            self.emit(ev="exit", id=spec["id"], record=record, error=None, files={}, large=[])
        for job_id in ids:
            job = self.running.get(job_id)
            if job is None:
                continue
            rec = read_json(os.path.join(job.spec["dir"], PID_FILE))
            if rec and rec.get("attempt") == job.spec["attempt"] and monitor_alive(rec):
                try:
                    os.kill(int(rec["monitor"]), signal.SIGTERM)
                except OSError:
                    kill_group(rec.get("pgid"), signal.SIGKILL)
            elif job.child and job.monitor:
                try:  # pid record not written yet: the blocked SIGTERM waits for it
                    os.kill(job.monitor, signal.SIGTERM)
                except OSError:
                    pass

    def scan(self, spec):
        d = spec["dir"]
        if spec["id"] in self.running:
            self.emit(ev="running", id=spec["id"], pid=self.running[spec["id"]].monitor)
            return
        done = read_json(os.path.join(d, EXIT_FILE))
        if done and done.get("attempt") == spec["attempt"]:
            self.report_exit(spec)
            return
        rec = read_json(os.path.join(d, PID_FILE))
        if rec and rec.get("attempt") == spec["attempt"] and monitor_alive(rec):
            job = Job(spec)
            job.monitor = int(rec["monitor"])
            try:
                job.pidfd = os.pidfd_open(job.monitor)
                self.sel.register(job.pidfd, selectors.EVENT_READ, job)
            except (AttributeError, OSError):
                job.pidfd = None  # no pidfd here: main() polls /proc instead
            self.running[job.id] = job
            self.emit(ev="running", id=job.id, pid=job.monitor)
            return
        never = not rec or rec.get("attempt") != spec["attempt"]
        why = "no record of this attempt on the host" if never else "its monitor is gone"
        self.emit(
            ev="exit",
            id=spec["id"],
            record=None,
            files={},
            large=[],
            never_started=never,
            error=f"not running: {why}",
        )

    def pong(self, msg):
        disk = None
        path = msg.get("path")
        if path:
            try:
                st = os.statvfs(path)
                disk = st.f_bavail * st.f_frsize
            except OSError:
                pass
        self.emit(
            ev="pong",
            seq=msg.get("seq"),
            load=list(os.getloadavg()),
            running=len(self.running),
            queued=len(self.queue),
            disk_free=disk,
            cpus=os.cpu_count(),
        )


def main():
    Agent().main()


if __name__ == "__main__":
    main()
