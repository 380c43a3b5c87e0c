"""TokenBucket arithmetic on a fake clock, and a long simulated transfer against the cap."""

from __future__ import annotations

import bisect

import pytest
from helpers.clocks import FakeClock

from shoal import ratelimit
from shoal.ratelimit import TokenBucket

MIB = 1024 * 1024


def bucket_on(clock: FakeClock, rate: int) -> TokenBucket:
    """A bucket reading `clock`."""
    return TokenBucket(rate, clock)


def test_pay_before_send_delay() -> None:
    clock = FakeClock(100.0)
    bucket = bucket_on(clock, 1000)
    assert bucket.reserve(500) == pytest.approx(0.5)  # starts empty: 500 B at 1000 B/s
    assert bucket.reserve(500) == pytest.approx(1.0)  # queued behind the first reservation
    clock.advance(1.0)
    assert bucket.reserve(0) == pytest.approx(0.0)  # the debt is paid off exactly
    assert bucket.reserve(250) == pytest.approx(0.25)


def test_idle_time_accumulates_tokens() -> None:
    clock = FakeClock(100.0)
    bucket = bucket_on(clock, 1000)
    clock.advance(0.1)
    assert bucket.reserve(100) == pytest.approx(0.0, abs=1e-9)
    assert bucket.reserve(100) == pytest.approx(0.1)


def test_burst_capped_at_a_fifth_of_a_second() -> None:
    clock = FakeClock(100.0)
    bucket = bucket_on(clock, 1000)
    clock.advance(3600.0)  # a long idle spell earns no more than 0.2 s of rate
    assert bucket.reserve(200) == 0.0
    assert bucket.reserve(1) == pytest.approx(0.001)


def test_burst_cap_then_large_request() -> None:
    clock = FakeClock(100.0)
    bucket = bucket_on(clock, 10_000)
    clock.advance(10.0)
    assert bucket.reserve(12_000) == pytest.approx(1.0)  # 2000 burst, 10_000 more at 10_000/s


@pytest.mark.parametrize("rate", [0, -5])
def test_unlimited(rate: int) -> None:
    clock = FakeClock(100.0)
    bucket = bucket_on(clock, rate)
    assert bucket.unlimited
    for _ in range(10):
        assert bucket.reserve(1 << 40) == 0.0
    assert bucket.reserve(1) == 0.0


def test_limited_is_not_unlimited() -> None:
    assert not TokenBucket(1).unlimited


async def test_take_sleeps_for_the_reserved_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(100.0)
    bucket = bucket_on(clock, 1000)
    sleeps: list[float] = []

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)
        clock.advance(delay)

    monkeypatch.setattr(ratelimit.asyncio, "sleep", fake_sleep)
    await bucket.take(250)
    await bucket.take(250)
    assert sleeps == [pytest.approx(0.25), pytest.approx(0.25)]
    assert bucket.waits == 2
    assert bucket.waited_seconds == pytest.approx(0.5)
    clock.advance(1.0)
    await bucket.take(100)  # paid from idle tokens: no sleep
    assert len(sleeps) == 2 and bucket.waits == 2


async def test_take_unlimited_never_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    async def forbidden(delay: float) -> None:
        raise AssertionError("must not sleep")

    monkeypatch.setattr(ratelimit.asyncio, "sleep", forbidden)
    bucket = TokenBucket(0)
    await bucket.take(1 << 30)
    assert bucket.waits == 0


def simulate(
    bucket: TokenBucket, clock: FakeClock, duration: float, size: int, idle: float = 0.0, idle_every: int = 0
) -> list[float]:
    """One sender: reserve, wait, send, repeat (idling `idle` s after every `idle_every` sends); return send times."""
    sent: list[float] = []
    i = 0
    while clock.now < duration:
        i += 1
        clock.advance(bucket.reserve(size))
        if clock.now >= duration:
            break
        sent.append(clock.now)
        if idle_every and i % idle_every == 0:
            clock.advance(idle)
    return sent


def window_totals(times: list[float], size: int, window: float, start: float, end: float) -> list[int]:
    """Bytes sent in every window [t, t + window) with t stepping 0.05 s."""
    totals = []
    t = start
    while t + window <= end:
        count = bisect.bisect_left(times, t + window) - bisect.bisect_left(times, t)
        totals.append(count * size)
        t += 0.05
    return totals


def test_steady_sender_stays_within_five_percent_of_cap() -> None:
    rate = 10_000_000
    clock = FakeClock(0.0)
    bucket = bucket_on(clock, rate)
    times = simulate(bucket, clock, 60.0, MIB)
    totals = window_totals(times, MIB, 5.0, 0.0, 60.0)
    assert len(totals) > 1000
    cap = rate * 5
    assert max(totals) <= cap * 1.05, max(totals) / cap
    assert min(totals) >= cap * 0.95, min(totals) / cap
    assert sum(1 for _ in times) * MIB == pytest.approx(rate * 60, rel=0.03)


def test_bursty_sender_never_exceeds_cap_plus_burst() -> None:
    """Idle spells refill at most 0.2 s of tokens, so a 5 s window stays within 4% (plus one chunk of rounding)."""
    rate = 10_000_000
    clock = FakeClock(0.0)
    bucket = bucket_on(clock, rate)
    times = simulate(bucket, clock, 60.0, MIB, idle=0.3, idle_every=50)
    totals = window_totals(times, MIB, 5.0, 0.0, 60.0)
    assert max(totals) <= rate * 5 * 1.05, max(totals) / (rate * 5)
    assert max(totals) > rate * 5 * 1.01  # the idle spells really did let bursts through
