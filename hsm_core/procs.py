"""Facts about local processes, read from /proc (zombies count as dead: PID 1 here may
reap late, and `kill -0` succeeds on a zombie)."""

from __future__ import annotations

from pathlib import Path


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def runner_alive(pid: int, task_dir: Path) -> bool:
    """True if `pid` is still our runner for this task (not a recycled pid, not a zombie)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return str(task_dir).encode() in f.read()
    except OSError:
        return False


def read_pid(task_dir: Path) -> int | None:
    try:
        return int((task_dir / "pid").read_text().strip())
    except (OSError, ValueError):
        return None
