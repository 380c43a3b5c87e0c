"""Bounded retries of transient origin failures: exponential backoff with full jitter, sleep and randomness injected."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from shoal.origins.errors import OriginUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; attempt n waits U(0, min(cap, base * 2**n)) seconds.

    `sleep` and `rand` are injected so a test runs every retry instantly and deterministically.
    """

    attempts: int = 5
    base: float = 0.25
    cap: float = 8.0
    sleep: Sleep = asyncio.sleep
    rand: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base < 0 or self.cap < 0:
            raise ValueError("RetryPolicy needs attempts >= 1 and non-negative base and cap")

    def delay(self, attempt: int) -> float:
        """Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015): spreads retrying clients."""
        return self.rand() * min(self.cap, self.base * (2**attempt))


async def with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
) -> T:
    """Run `call`, retrying OriginUnavailable up to policy.attempts in all; every other error passes at once."""
    for attempt in range(policy.attempts):
        try:
            return await call()
        except OriginUnavailable as err:
            if attempt == policy.attempts - 1:
                raise
            pause = policy.delay(attempt)
            logger.info("%s: %s; retry %d/%d in %.2fs", what, err.line(), attempt + 1, policy.attempts - 1, pause)
            await policy.sleep(pause)
    raise AssertionError("unreachable")
