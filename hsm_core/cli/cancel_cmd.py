"""`hsm cancel SWEEP`: stop a sweep and everything it started."""

from __future__ import annotations

import argparse
import shlex


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep id or folder")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the stop")


def run(args: argparse.Namespace) -> int:
    from hsm_core.cancel import cancel_sweep
    from hsm_core.config import check_at_least
    from hsm_core.store import SweepStore
    from hsm_core.sweeps import find_sweep

    check_at_least(args.timeout, 0.1, "--timeout", "a number of seconds")
    folder = find_sweep(args.sweep)
    store = SweepStore.open(folder)
    sweep_id = store.sweep_id
    try:
        res = cancel_sweep(store, args.timeout)
    finally:
        store.close()
    how = "the running orchestrator stopped" if res.via_orchestrator else "settled the journal"
    extra = f", killed {res.killed} task process groups" if res.killed else ""
    print(f"cancelled {sweep_id}: {how}; {res.cancelled} tasks cancelled{extra}")
    if res.cancelled:
        print(f"to finish it later: hsm complete {shlex.quote(str(folder))}")
    return 0
