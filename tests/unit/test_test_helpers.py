"""The polling helpers the other tests rely on: they return, time out, and re-raise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.helpers import async_wait_for, wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    calls: list[int] = []

    def third_time() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert wait_for(third_time, timeout=5, interval=0.001) == 3


def test_wait_for_times_out_with_the_message_and_last_value() -> None:
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"0\.2 s waiting for the moon; last: \[\]"):
        wait_for(lambda: [], timeout=0.2, interval=0.01, message="the moon")
    assert 0.2 <= time.monotonic() - start < 2


def test_wait_for_retries_only_the_listed_exceptions() -> None:
    attempts: Iterator[object] = iter([OSError("down"), OSError("down"), "up"])

    def connect() -> str:
        item = next(attempts)
        if isinstance(item, Exception):
            raise item
        return str(item)

    assert wait_for(connect, timeout=5, interval=0.001, retry_on=(OSError,)) == "up"
    with pytest.raises(ZeroDivisionError):
        wait_for(lambda: 1 / 0, timeout=5, retry_on=(OSError,))


def test_async_wait_for_accepts_coroutine_functions() -> None:
    state = {"n": 0}

    async def ready() -> bool:
        state["n"] += 1
        return state["n"] >= 2

    async def main() -> None:
        assert await async_wait_for(ready, timeout=5, interval=0.001) is True
        with pytest.raises(AssertionError, match="never"):
            await async_wait_for(lambda: False, timeout=0.05, interval=0.01, message="never")

    asyncio.run(main())
