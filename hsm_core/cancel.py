"""Cancelling a sweep from outside its orchestrator (`hsm cancel`).

If the orchestrator is alive on this machine it gets SIGTERM and cancels everything it
started itself (the same path as Ctrl-C). If it is gone, the journal is settled here:
local tasks still running are killed by process group, and every unsettled attempt is
marked CANCELLED.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass

from hsm_core.errors import HsmError
from hsm_core.model import TaskEvent, TaskState
from hsm_core.procs import AgentJournals, pid_alive
from hsm_core.store import SweepStore


@dataclass
class CancelResult:
    via_orchestrator: bool
    cancelled: int
    killed: int


def orchestrator_pid(store: SweepStore) -> int | None:
    orch = store.meta("orchestrator")
    if not orch:
        return None
    if orch.get("host") != socket.gethostname():
        raise HsmError(
            f"the sweep is run by pid {orch.get('pid')} on {orch.get('host')}",
            f"run `hsm cancel` on {orch.get('host')}",
        )
    pid = int(orch["pid"])
    return pid if pid_alive(pid) else None


def cancel_sweep(store: SweepStore, timeout_s: float = 60.0) -> CancelResult:
    pid = orchestrator_pid(store)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if store.meta("orchestrator") is None or not pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            raise HsmError(
                f"the orchestrator (pid {pid}) did not stop within {timeout_s:.0f} s",
                f"check it with `ps -p {pid}`; `kill -9 {pid}` then `hsm cancel` again",
            )
        if store.meta("orchestrator") is None:
            counts = store.counts()
            return CancelResult(True, counts.get(TaskState.CANCELLED, 0), 0)
    return _settle_offline(store)


def _settle_offline(store: SweepStore) -> CancelResult:
    from hsm_core.sources.hpc_cancel import cancel_recorded

    killed = cancel_recorded(store)  # cluster jobs outlive their orchestrator
    events = []
    tasks = {t.key: t for t in store.tasks()}
    journals = AgentJournals(store.sweep_dir)  # local tasks: their agent may outlive hsm
    for key, att in store.latest_attempts().items():
        if att.state.terminal:
            continue
        tdir = store.task_dir(tasks[key])
        group = journals.running_group(tdir, att.attempt) if att.source else None
        if group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
                killed += 1
        events.append(
            TaskEvent(key, att.attempt, TaskState.CANCELLED, att.source, error="cancelled")
        )
    store.apply_many(events)
    if store.meta("orchestrator"):
        store.set_meta("orchestrator", None)  # it is dead (orchestrator_pid said so)
    store.write_views()  # every view, not only these tasks': the dead one left some behind
    return CancelResult(False, len(events), killed)
