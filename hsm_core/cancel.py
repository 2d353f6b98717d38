"""Cancelling a sweep from outside its orchestrator (`hsm cancel`).

If a command owns the sweep (its lock is held) and it is that very process on this
machine (pid + start time + boot id, never a pid alone), it gets SIGTERM and cancels
everything it started itself (the same path as Ctrl-C). Once nobody owns the sweep, this
command takes it and settles what is left: local tasks still running are killed by
process group, and every unsettled attempt is marked CANCELLED.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from hsm_core import ownership
from hsm_core.errors import HsmError
from hsm_core.model import TaskEvent, TaskState
from hsm_core.procs import AgentJournals
from hsm_core.store import SweepStore


@dataclass
class CancelResult:
    via_orchestrator: bool
    cancelled: int
    killed: int


def cancel_sweep(store: SweepStore, timeout_s: float = 60.0) -> CancelResult:
    via = False
    try:
        lock = ownership.acquire(store.sweep_dir)
    except ownership.SweepBusy as busy:
        _stop_owner(store, busy.owner, timeout_s)
        via = True
        lock = ownership.acquire(store.sweep_dir)  # a newcomer meanwhile: SweepBusy
    with lock:
        res = _settle_offline(store)
    if via:
        counts = store.counts()
        return CancelResult(True, counts.get(TaskState.CANCELLED, 0), res.killed)
    return res


def _stop_owner(store: SweepStore, owner: ownership.Owner, timeout_s: float) -> None:
    """SIGTERM to the process that owns the sweep, then wait until it lets go."""
    where = store.sweep_dir
    if owner.pid is None:
        raise HsmError(
            f"sweep {where} is in use by a command that has not written its name yet",
            "run `hsm cancel` again in a moment",
        )
    if not owner.on_this_host():
        raise HsmError(
            f"the sweep is run by pid {owner.pid} on {owner.host}",
            f"run `hsm cancel` on {owner.host}",
        )
    if not owner.alive_here():
        # The lock is held, but not by the process its record names: signal nobody.
        raise HsmError(
            f"sweep {where} is in use, but not by pid {owner.pid} as recorded",
            f"find its owner with `fuser {where / ownership.LOCK_NAME}`",
        )
    pid = int(owner.pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        raise HsmError(
            f"not allowed to stop pid {owner.pid} ({owner.command})",
            "run `hsm cancel` as the user who started the sweep",
        ) from None
    except ProcessLookupError:
        return  # it ended on its own meanwhile
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _still_owned_by(where, owner):
            return
        time.sleep(0.1)
    raise HsmError(
        f"the orchestrator (pid {pid}) did not stop within {timeout_s:.0f} s",
        f"check it with `ps -p {pid}`; `kill -9 {pid}` then `hsm cancel` again",
    )


def _still_owned_by(sweep_dir: Path, owner: ownership.Owner) -> bool:
    try:
        now = ownership.holder(sweep_dir)
    except LookupError:
        return owner.alive_here()
    return now is not None and now.pid == owner.pid and now.start == owner.start


def _settle_offline(store: SweepStore) -> CancelResult:
    from hsm_core.sources.hpc.cancel import cancel_recorded

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
