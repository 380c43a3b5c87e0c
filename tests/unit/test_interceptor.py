"""The gRPC metrics interceptor on a real grpc.aio server on 127.0.0.1:0, one fresh registry per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest
from helpers.polling import wait_until_async
from prometheus_client import CollectorRegistry

from shoal.interceptor import MetricsInterceptor, split_method
from shoal.v1 import control_pb2, control_pb2_grpc, tracker_pb2, tracker_pb2_grpc

TRACKER = "shoal.v1.Tracker"
CONTROL = "shoal.v1.Control"


class FakeTracker(tracker_pb2_grpc.TrackerServicer):
    """Leave answers by peer id: ok, bad (INVALID_ARGUMENT), boom (raises), set (sets NOT_FOUND and returns)."""

    async def Leave(
        self, request: tracker_pb2.LeaveRequest, context: grpc.aio.ServicerContext
    ) -> tracker_pb2.LeaveResponse:
        if request.peer_id == "bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad peer id")
        if request.peer_id == "boom":
            raise RuntimeError("unexpected")
        if request.peer_id == "set":
            context.set_code(grpc.StatusCode.NOT_FOUND)
        if request.peer_id == "slow":
            await asyncio.sleep(0.05)
        return tracker_pb2.LeaveResponse()

    # ListPeers stays the generated synchronous stub, which answers UNIMPLEMENTED.


class FakeControl(control_pb2_grpc.ControlServicer):
    """Get streams progress: 3 messages, or 1 then NOT_FOUND, or 1 then waits to be cancelled."""

    async def Get(
        self, request: control_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.GetProgress]:
        yield control_pb2.GetProgress(done_bytes=1)
        if request.output == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such file")
        if request.output == "hang":
            await asyncio.sleep(60)
        yield control_pb2.GetProgress(done_bytes=2)
        yield control_pb2.GetProgress(done_bytes=3, done=True)


@dataclass
class Served:
    registry: CollectorRegistry
    channel: grpc.aio.Channel

    @property
    def tracker(self) -> tracker_pb2_grpc.TrackerStub:
        return tracker_pb2_grpc.TrackerStub(self.channel)

    @property
    def control(self) -> control_pb2_grpc.ControlStub:
        return control_pb2_grpc.ControlStub(self.channel)

    def handled(self, service: str, method: str, kind: str, code: str) -> float:
        labels = {"grpc_service": service, "grpc_method": method, "grpc_type": kind, "grpc_code": code}
        return self.registry.get_sample_value("shoal_grpc_server_handled_total", labels) or 0.0

    def started(self, service: str, method: str, kind: str) -> float:
        labels = {"grpc_service": service, "grpc_method": method, "grpc_type": kind}
        return self.registry.get_sample_value("shoal_grpc_server_started_total", labels) or 0.0

    def latency(self, service: str, method: str, kind: str, suffix: str) -> float:
        labels = {"grpc_service": service, "grpc_method": method, "grpc_type": kind}
        return self.registry.get_sample_value(f"shoal_grpc_server_handling_seconds_{suffix}", labels) or 0.0


async def wait_for(value: Callable[[], float], want: float, timeout: float = 3.0) -> None:
    """Poll until value() == want: the server may finish its bookkeeping just after the client has its answer."""

    async def reached() -> bool:
        return value() == want

    await wait_until_async(reached, timeout=timeout, interval=0.01, what=f"a count of {want}")


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    registry = CollectorRegistry()
    server = grpc.aio.server(interceptors=[MetricsInterceptor(registry)])
    tracker_pb2_grpc.add_TrackerServicer_to_server(FakeTracker(), server)
    control_pb2_grpc.add_ControlServicer_to_server(FakeControl(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Served(registry, channel)
    finally:
        await server.stop(0)


async def test_success_is_counted_with_latency(served: Served) -> None:
    for _ in range(3):
        await served.tracker.Leave(tracker_pb2.LeaveRequest(peer_id="ok"), timeout=5)
    await served.tracker.Leave(tracker_pb2.LeaveRequest(peer_id="slow"), timeout=5)
    await wait_for(lambda: served.handled(TRACKER, "Leave", "unary", "OK"), 4)
    assert served.started(TRACKER, "Leave", "unary") == 4
    assert served.latency(TRACKER, "Leave", "unary", "count") == 4
    assert served.latency(TRACKER, "Leave", "unary", "sum") >= 0.05
    # Which bucket each call lands in is checked exactly on a fake clock below; real time under load is not exact.


async def test_abort_counts_its_code(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.tracker.Leave(tracker_pb2.LeaveRequest(peer_id="bad"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await wait_for(lambda: served.handled(TRACKER, "Leave", "unary", "INVALID_ARGUMENT"), 1)
    assert served.handled(TRACKER, "Leave", "unary", "OK") == 0
    assert served.latency(TRACKER, "Leave", "unary", "count") == 1


async def test_unexpected_exception_is_unknown(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.tracker.Leave(tracker_pb2.LeaveRequest(peer_id="boom"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    await wait_for(lambda: served.handled(TRACKER, "Leave", "unary", "UNKNOWN"), 1)


async def test_code_set_without_abort_is_what_the_client_sees(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.tracker.Leave(tracker_pb2.LeaveRequest(peer_id="set"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await wait_for(lambda: served.handled(TRACKER, "Leave", "unary", "NOT_FOUND"), 1)


async def test_sync_generated_stub_is_unimplemented(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.tracker.ListPeers(tracker_pb2.ListPeersRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    await wait_for(lambda: served.handled(TRACKER, "ListPeers", "unary", "UNIMPLEMENTED"), 1)


async def test_server_stream_is_counted_once_per_call(served: Served) -> None:
    replies = [r async for r in served.control.Get(control_pb2.GetRequest(file_id="x"), timeout=5)]
    assert [r.done_bytes for r in replies] == [1, 2, 3]
    await wait_for(lambda: served.handled(CONTROL, "Get", "server_stream", "OK"), 1)
    assert served.started(CONTROL, "Get", "server_stream") == 1
    assert served.latency(CONTROL, "Get", "server_stream", "count") == 1


async def test_stream_abort_midway_counts_its_code(served: Served) -> None:
    call = served.control.Get(control_pb2.GetRequest(output="missing"), timeout=5)
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for reply in call:
            got.append(reply.done_bytes)
    assert got == [1]
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await wait_for(lambda: served.handled(CONTROL, "Get", "server_stream", "NOT_FOUND"), 1)


async def test_client_cancel_counts_cancelled(served: Served) -> None:
    call = served.control.Get(control_pb2.GetRequest(output="hang"), timeout=5)
    first = await call.read()
    assert isinstance(first, control_pb2.GetProgress) and first.done_bytes == 1
    call.cancel()
    await wait_for(lambda: served.handled(CONTROL, "Get", "server_stream", "CANCELLED"), 1)
    assert served.latency(CONTROL, "Get", "server_stream", "count") == 1


async def test_unregistered_method_uses_fixed_labels(served: Served) -> None:
    call = served.channel.unary_unary(
        "/evil.Service/Method-" + "x" * 40, request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    await wait_for(lambda: served.handled("unknown", "unknown", "unknown", "UNIMPLEMENTED"), 1)
    names = {s.labels.get("grpc_method") for m in served.registry.collect() for s in m.samples}
    assert not any(name and name.startswith("Method-") for name in names)


async def test_registries_are_independent(served: Served) -> None:
    other = CollectorRegistry()
    MetricsInterceptor(other)  # a second process's worth of metrics in the same test process
    await served.tracker.Leave(tracker_pb2.LeaveRequest(peer_id="ok"), timeout=5)
    await wait_for(lambda: served.handled(TRACKER, "Leave", "unary", "OK"), 1)
    assert other.get_sample_value("shoal_grpc_server_handled_total", {"grpc_code": "OK"}) is None


class Clock:
    """A clock that moves only when told (helpers.clocks.FakeClock, once mypy can see tests/helpers)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowTracker(tracker_pb2_grpc.TrackerServicer):
    """Every Leave takes 0.375 s of the fake clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def Leave(
        self, request: tracker_pb2.LeaveRequest, context: grpc.aio.ServicerContext
    ) -> tracker_pb2.LeaveResponse:
        self.clock.now += 0.375
        return tracker_pb2.LeaveResponse()


class SlowControl(control_pb2_grpc.ControlServicer):
    """Get streams two messages, each 1 s of the fake clock after the last."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def Get(
        self, request: control_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.GetProgress]:
        for done in (1, 2):
            self.clock.now += 1.0
            yield control_pb2.GetProgress(done_bytes=done)


async def test_latency_is_read_from_the_injected_clock() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    server = grpc.aio.server(interceptors=[MetricsInterceptor(registry, clock)])
    tracker_pb2_grpc.add_TrackerServicer_to_server(SlowTracker(clock), server)
    control_pb2_grpc.add_ControlServicer_to_server(SlowControl(clock), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            served = Served(registry, channel)
            for _ in range(2):
                await served.tracker.Leave(tracker_pb2.LeaveRequest(peer_id="ok"), timeout=5)
            await wait_for(lambda: served.latency(TRACKER, "Leave", "unary", "count"), 2)
            assert served.latency(TRACKER, "Leave", "unary", "sum") == 0.75
            bucket = {"grpc_service": TRACKER, "grpc_method": "Leave", "grpc_type": "unary"}
            assert registry.get_sample_value("shoal_grpc_server_handling_seconds_bucket", {**bucket, "le": "0.25"}) == 0
            assert registry.get_sample_value("shoal_grpc_server_handling_seconds_bucket", {**bucket, "le": "0.5"}) == 2
            replies = [r async for r in served.control.Get(control_pb2.GetRequest(), timeout=5)]
            assert [r.done_bytes for r in replies] == [1, 2]
            await wait_for(lambda: served.latency(CONTROL, "Get", "server_stream", "count"), 1)
            assert served.latency(CONTROL, "Get", "server_stream", "sum") == 2.0
    finally:
        await server.stop(0)


def test_split_method() -> None:
    assert split_method("/shoal.v1.Peer/GetChunk") == ("shoal.v1.Peer", "GetChunk")
    assert split_method("nonsense") == ("unknown", "nonsense")
