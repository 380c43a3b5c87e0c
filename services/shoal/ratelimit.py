"""Token buckets for upload and download caps (bytes per second)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class TokenBucket:
    """Pay-before-send token bucket: over any window T at most rate*T + burst bytes pass.

    burst is 0.2 s of rate, so a 5 s window stays within 4% of the cap.
    """

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._burst = rate * 0.2
        self._tokens = 0.0
        self._clock = clock
        self._stamp = self._clock()
        self.waits = 0
        self.waited_seconds = 0.0

    @property
    def unlimited(self) -> bool:
        """True when no cap is set."""
        return self.rate <= 0

    def reserve(self, nbytes: int) -> float:
        """Take `nbytes` now and return how long the caller must wait before sending them."""
        if self.unlimited:
            return 0.0
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= nbytes
        return max(0.0, -self._tokens / self.rate)

    async def take(self, nbytes: int) -> None:
        """Wait until `nbytes` may pass."""
        delay = self.reserve(nbytes)
        if delay > 0:
            self.waits += 1
            self.waited_seconds += delay
            await asyncio.sleep(delay)
