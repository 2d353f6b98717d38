"""A fake clock for asyncio code: an event loop whose time jumps to the next timer
whenever nothing else can happen, so that a 15 s deadline or a 60 s backoff passes at
once and in order. Work in threads (run_in_executor, to_thread: the journal's writes)
runs in real time: while one is under way the clock waits for it, so a deadline never
passes just because SQLite was slow.

Code under test must take its time from the loop (`loop.time()`, asyncio.sleep,
asyncio.wait_for), not from time.monotonic().
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")

REAL_WAIT_S = 0.01  # how long a select really waits before the clock may jump


class _Selector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if self.loop.threads:  # a thread is working: real time, no jump
            wait = REAL_WAIT_S if timeout is None else min(timeout, REAL_WAIT_S)
            return list(super().select(wait))
        ready = list(super().select(0))
        if ready or timeout == 0:
            return ready
        if timeout is None:  # nothing scheduled: wait (really) for a thread's callback
            return list(super().select(REAL_WAIT_S))
        self.loop.now += timeout  # nothing can happen before the next timer: go there
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        self.threads = 0
        super().__init__(_Selector(self))

    def time(self) -> float:
        return self.now

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        fut = super().run_in_executor(executor, func, *args)
        self.threads += 1
        fut.add_done_callback(self._thread_done)
        return fut

    def _thread_done(self, _: object) -> None:
        self.threads -= 1


def run_virtual(main: Coroutine[Any, Any, T]) -> tuple[T, float]:
    """Run `main` on a VirtualClockLoop; its result and the virtual seconds it took."""
    loop = VirtualClockLoop()
    try:
        result = loop.run_until_complete(main)
        loop.run_until_complete(loop.shutdown_asyncgens())
        return result, loop.now
    finally:
        loop.close()
