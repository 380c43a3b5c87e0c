"""Address parsing, backoff and retries (no sockets: errors are built by hand, sleeps are faked)."""

from __future__ import annotations

import random

import grpc
import pytest

from shoal import net


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="x", debug_error_string="")


# ---- split_host_port ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:7400", ("127.0.0.1", 7400)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:7401", ("::1", 7401)),
        ("[fe80::1:2]:65535", ("fe80::1:2", 65535)),
        ("tracker.shoal.svc.cluster.local:7400", ("tracker.shoal.svc.cluster.local", 7400)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_split_host_port_valid(address: str, expected: tuple[str, int]) -> None:
    assert net.split_host_port(address) == expected


@pytest.mark.parametrize(
    "address",
    [
        "",
        "localhost",
        "localhost:",
        ":7400",
        "host:port",
        "host:-1",
        "host:+80",
        "host:80a",
        "host: 80",
        "[::1]",
    ],
)
def test_split_host_port_malformed(address: str) -> None:
    with pytest.raises(ValueError, match="not a host:port"):
        net.split_host_port(address)


@pytest.mark.parametrize("address", ["host:65536", "host:99999", "[::1]:70000"])
def test_split_host_port_out_of_range(address: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        net.split_host_port(address)


@pytest.mark.parametrize("address", ["::1", "[::1", "fe80::1", "::1]:80"])
def test_split_host_port_rejects_unbracketed_ipv6(address: str) -> None:
    with pytest.raises(ValueError):
        net.split_host_port(address)


@pytest.mark.parametrize("address", ["host:\uff17\uff14\uff10\uff10", "host:\u0661\u0662"])
def test_split_host_port_rejects_non_ascii_digits(address: str) -> None:
    with pytest.raises(ValueError):
        net.split_host_port(address)


# ---- backoff_delays -----------------------------------------------------------------------------


def test_backoff_delays_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(net, "random", random.Random(42))
    delay = net.backoff_delays(base=0.1, cap=2.0)
    for attempt in range(12):
        ceiling = min(2.0, 0.1 * 2**attempt)
        samples = [delay(attempt) for _ in range(300)]
        assert all(0.0 <= s <= ceiling for s in samples), attempt
        assert max(samples) > ceiling * 0.8  # full jitter spans the range, not a fixed value
        assert min(samples) < ceiling * 0.2


def test_backoff_delays_uses_upper_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(net.random, "uniform", lambda low, high: high)
    delay = net.backoff_delays(base=0.5, cap=3.0)
    assert [delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


# ---- with_retries -------------------------------------------------------------------------------


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the backoff pauses instead of waiting."""
    pauses: list[float] = []

    async def fake_sleep(delay: float) -> None:
        pauses.append(delay)

    monkeypatch.setattr(net.asyncio, "sleep", fake_sleep)
    return pauses


class Flaky:
    """An async call that fails with the given codes, then returns 'ok'."""

    def __init__(self, *codes: grpc.StatusCode) -> None:
        self.codes = list(codes)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.codes:
            raise rpc_error(self.codes.pop(0))
        return "ok"


async def test_with_retries_success_first_try(sleeps: list[float]) -> None:
    call = Flaky()
    assert await net.with_retries(call) == "ok"
    assert call.calls == 1
    assert sleeps == []


@pytest.mark.parametrize("code", sorted(net.RETRYABLE, key=str))
async def test_with_retries_retries_retryable(code: grpc.StatusCode, sleeps: list[float]) -> None:
    call = Flaky(code, code)
    assert await net.with_retries(call, attempts=4, base=0.1, cap=2.0) == "ok"
    assert call.calls == 3
    assert len(sleeps) == 2
    assert 0.0 <= sleeps[0] <= 0.1 and 0.0 <= sleeps[1] <= 0.2


def test_retryable_set() -> None:
    assert net.RETRYABLE == {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.OUT_OF_RANGE,
    ],
)
async def test_with_retries_does_not_retry_other_codes(code: grpc.StatusCode, sleeps: list[float]) -> None:
    call = Flaky(code)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await net.with_retries(call, attempts=4)
    assert caught.value.code() == code
    assert call.calls == 1
    assert sleeps == []


async def test_with_retries_gives_up_after_attempts(sleeps: list[float]) -> None:
    call = Flaky(*[grpc.StatusCode.UNAVAILABLE] * 10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await net.with_retries(call, attempts=3, what="test call")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert call.calls == 3
    assert len(sleeps) == 2  # no pause after the last attempt


async def test_with_retries_single_attempt(sleeps: list[float]) -> None:
    call = Flaky(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(grpc.aio.AioRpcError):
        await net.with_retries(call, attempts=1)
    assert call.calls == 1
    assert sleeps == []


async def test_with_retries_stops_on_non_retryable_after_retryable(sleeps: list[float]) -> None:
    call = Flaky(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await net.with_retries(call, attempts=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert call.calls == 2
    assert len(sleeps) == 1


async def test_with_retries_passes_other_exceptions_through(sleeps: list[float]) -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("not a grpc error")

    with pytest.raises(RuntimeError):
        await net.with_retries(broken)
    assert calls == 1 and sleeps == []


def test_channel_options_carry_message_limits() -> None:
    options = dict(net.CHANNEL_OPTIONS)
    assert options["grpc.max_receive_message_length"] == net.MAX_MESSAGE_BYTES
    assert options["grpc.max_send_message_length"] == net.MAX_MESSAGE_BYTES
    assert net.MAX_MESSAGE_BYTES > 16 * 1024 * 1024  # room for a max-size chunk plus framing
    assert dict(net.SERVER_OPTIONS)["grpc.max_receive_message_length"] == net.MAX_MESSAGE_BYTES
