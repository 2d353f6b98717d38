"""Helpers shared by the tests: poll with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Raises AssertionError (with ``message`` and the last value) once ``timeout`` seconds
    have passed. Exceptions of the types in ``retry_on`` count as "not yet"; any other
    exception propagates at once.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise _timed_out(predicate, timeout, message, last)
        time.sleep(interval)


@overload
async def async_wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    message: str | None = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
) -> T: ...
@overload
async def async_wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    message: str | None = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
) -> T: ...
async def async_wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Any:
    """Like :func:`wait_for` inside an event loop; ``predicate`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
            value = await result if inspect.isawaitable(result) else result
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise _timed_out(predicate, timeout, message, last)
        await asyncio.sleep(interval)


def _timed_out(
    predicate: object, timeout: float, message: str | None, last: object
) -> AssertionError:
    what = message or getattr(predicate, "__name__", repr(predicate))
    return AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")


class CPUHog:
    """A busy-loop process per core beside a test: the machine is busy, as users' are.

    Use as ``with CPUHog():``; the processes are killed (and reaped) at the end."""

    def __init__(self, per_core: int = 1) -> None:
        self.count = max(1, (os.cpu_count() or 1) * per_core)
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> CPUHog:
        for _ in range(self.count):
            self.procs.append(
                subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def assert_golden(golden: Any, text: str) -> None:
    """`text` equals the golden file (a pathlib.Path); HSM_REGEN_GOLDEN=1 rewrites it."""
    if os.environ.get("HSM_REGEN_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"{golden} is missing: regenerate with HSM_REGEN_GOLDEN=1"
    assert text == golden.read_text(), f"{golden.name} differs; HSM_REGEN_GOLDEN=1 rewrites it"
