"""What a running task can ask hsm: its attempt, whether it resumes, and a hook for the
scheduler's "time limit near" warning (like submitit's ``checkpoint()``).

Stdlib only, cheap to import from a training script::

    from hsm_core import job

    state = load("results/ckpt.pt") if job.resumed() else fresh()
    job.on_stop(lambda: save(state, "results/ckpt.pt"))

On an hpc source the scheduler sends the warning signal (``signal``, default URG)
``signal_delay_s`` before the time limit (Slurm: up to a minute earlier). A Hydra job runs
inside hsm's job wrapper, which calls the hooks; a command task that calls
:func:`on_stop` gets a handler for that signal in its own process. Hook errors are
written to stderr, never raised into the training loop. After the warning, keep going
(the limit stops the job and the next attempt resumes) or exit non-zero: exiting 0
means the task is done.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from types import FrameType

_hooks: list[Callable[[], object]] = []
_stop = False
# True inside hsm's job wrapper (the hooks run from its signal handler).
_managed = False
_installed = False


def attempt() -> int:
    """1 for the first attempt of the task, 2 for the next, ..."""
    return int(os.environ.get("HSM_ATTEMPT", "1") or 1)


def resumed() -> bool:
    """This attempt goes on where an earlier one stopped (time limit or preemption):
    the task folder's `results/` and the Hydra job's output dir are as it left them."""
    return os.environ.get("HSM_RESUME") == "1"


def stop_requested() -> bool:
    """The scheduler warned that this job will be stopped soon."""
    return _stop


def on_stop(fn: Callable[[], object]) -> None:
    """Call `fn` (in the main thread) when the scheduler warns of the job's end; at
    once if it has warned already (Slurm may warn as the job starts)."""
    global _installed
    _hooks.append(fn)
    if _stop:
        _call(fn)
    name = os.environ.get("HSM_STOP_SIGNAL")
    if _managed or _installed or not name:
        return
    signum = getattr(signal, f"SIG{name}", None)
    if signum is None:
        return
    previous = signal.getsignal(signum)

    def handler(num: int, frame: FrameType | None) -> None:
        stop()
        if callable(previous):
            previous(num, frame)

    signal.signal(signum, handler)
    _installed = True


def stop() -> None:
    """Run the hooks once (hsm's wrapper calls this on the warning signal)."""
    global _stop
    if _stop:
        return
    _stop = True
    for fn in list(_hooks):
        _call(fn)


def _call(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:
        print("[hsm] an on_stop hook failed:", file=sys.stderr)
        traceback.print_exc()
