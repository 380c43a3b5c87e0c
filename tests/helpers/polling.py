"""Waiting for a condition: one poll loop with one argument order, for blocking and async tests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 15.0,
    interval: float = 0.1,
    what: str = "the condition",
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Call `predicate` until it returns something truthy and return that; fail naming `what` on timeout.

    Exceptions of the `ignoring` types count as "not yet" (a server still starting, say).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignoring:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], Awaitable[T | None]],
    timeout: float = 15.0,
    interval: float = 0.1,
    what: str = "the condition",
) -> T:
    """wait_until for a test on the event loop: awaits the coroutine `predicate` and sleeps without blocking."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
