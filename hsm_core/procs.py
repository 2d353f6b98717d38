"""Facts about local processes, read from /proc (zombies count as dead: PID 1 here may
reap late, and `kill -0` succeeds on a zombie)."""

from __future__ import annotations

from pathlib import Path

from hsm_core import remote_agent


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class AgentJournals:
    """What the local agents of a sweep journaled: which attempts still run, and where."""

    def __init__(self, sweep_dir: Path) -> None:
        self._journal = remote_agent.Journal(str(sweep_dir / remote_agent.JOURNAL_DIR)).refresh()
        self._boot = remote_agent.boot_id()

    def running_group(self, task_dir: Path, attempt: int) -> int | None:
        """The process group of this attempt if that very process still runs (same boot,
        same start time: not a recycled pid) and no exit is journaled."""
        key = (str(task_dir), attempt)
        rec = self._journal.starts.get(key)
        if key in self._journal.exits or not remote_agent.task_alive(rec, self._boot):
            return None
        assert rec is not None
        return int(rec["pid"])
