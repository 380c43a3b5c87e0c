"""The tracker over real gRPC on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoal import net
from shoal.config import TrackerConfig
from shoal.tracker.server import RunningTracker, run_tracker, start_tracker
from shoal.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

A = "a" * 64
B = "b" * 64


@pytest.fixture
async def tracker() -> AsyncIterator[RunningTracker]:
    running = await start_tracker(TrackerConfig(listen="127.0.0.1:0", announce_interval=1.0))
    try:
        yield running
    finally:
        await running.stop(grace=0)


@pytest.fixture
async def channel(tracker: RunningTracker) -> AsyncIterator[grpc.aio.Channel]:
    async with net.open_channel(f"127.0.0.1:{tracker.port}") as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> tracker_pb2_grpc.TrackerStub:
    return tracker_pb2_grpc.TrackerStub(channel)


def announce_request(peer_id: str, address: str, files: list[tuple[str, str, bool]]) -> tracker_pb2.AnnounceRequest:
    return tracker_pb2.AnnounceRequest(
        peer=common_pb2.PeerInfo(peer_id=peer_id, address=address, zone="z1"),
        files=[
            tracker_pb2.HeldFile(file=common_pb2.FileInfo(file_id=fid, name=name, size=42), complete=complete)
            for fid, name, complete in files
        ],
    )


async def test_announce_search_get_peers_list_leave(stub: tracker_pb2_grpc.TrackerStub) -> None:
    reply = await stub.Announce(
        announce_request("p1", "10.0.0.1:7401", [(A, "Ubuntu.iso", True), (B, "notes.txt", False)]),
        timeout=net.TRACKER_DEADLINE,
    )
    assert reply.interval_seconds == 1.0
    assert reply.ttl_seconds == 3.0
    await stub.Announce(announce_request("p2", "10.0.0.2:7401", [(A, "Ubuntu.iso", False)]), timeout=3)

    found = await stub.SearchFiles(tracker_pb2.SearchFilesRequest(term="UBU"), timeout=3)
    assert [(r.file.file_id, r.file.name, r.file.size) for r in found.results] == [(A, "Ubuntu.iso", 42)]
    assert (found.results[0].complete_holders, found.results[0].partial_holders) == (1, 1)
    everything = await stub.SearchFiles(tracker_pb2.SearchFilesRequest(), timeout=3)
    assert [r.file.name for r in everything.results] == ["Ubuntu.iso", "notes.txt"]

    peers = await stub.GetPeers(tracker_pb2.GetPeersRequest(file_id=A), timeout=3)
    assert [(h.peer.peer_id, h.complete) for h in peers.holders] == [("p1", True), ("p2", False)]
    assert peers.holders[0].peer.address == "10.0.0.1:7401"
    assert peers.holders[0].peer.zone == "z1"
    assert peers.file.name == "Ubuntu.iso"
    excluded = await stub.GetPeers(tracker_pb2.GetPeersRequest(file_id=A, exclude_peer_id="p1"), timeout=3)
    assert [h.peer.peer_id for h in excluded.holders] == ["p2"]

    listed = await stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=3)
    assert [p.peer_id for p in listed.peers] == ["p1", "p2"]

    await stub.Leave(tracker_pb2.LeaveRequest(peer_id="p1"), timeout=3)
    listed = await stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=3)
    assert [p.peer_id for p in listed.peers] == ["p2"]
    gone = await stub.GetPeers(tracker_pb2.GetPeersRequest(file_id=B), timeout=3)
    assert list(gone.holders) == []
    assert gone.file.file_id == ""


async def test_unknown_file_has_no_holders(stub: tracker_pb2_grpc.TrackerStub) -> None:
    reply = await stub.GetPeers(tracker_pb2.GetPeersRequest(file_id=B), timeout=3)
    assert list(reply.holders) == []
    assert not reply.HasField("file")


async def test_peer_expires_after_ttl() -> None:
    running = await start_tracker(TrackerConfig(listen="127.0.0.1:0", announce_interval=0.2, peer_ttl=0.5))
    try:
        async with net.open_channel(f"127.0.0.1:{running.port}") as chan:
            stub = tracker_pb2_grpc.TrackerStub(chan)
            reply = await stub.Announce(announce_request("p1", "10.0.0.1:7401", [(A, "x", True)]), timeout=3)
            assert reply.ttl_seconds == 0.5
            listed = await stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=3)
            assert [p.peer_id for p in listed.peers] == ["p1"]
            deadline = time.monotonic() + 3
            while running.registry.stats().expiries_total == 0:
                assert time.monotonic() < deadline, "lease was never swept"
                await asyncio.sleep(0.05)
            listed = await stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=3)
            assert list(listed.peers) == []
            found = await stub.SearchFiles(tracker_pb2.SearchFilesRequest(), timeout=3)
            assert list(found.results) == []
    finally:
        await running.stop(grace=0)


@pytest.mark.parametrize(
    "request_",
    [
        announce_request("p1", "10.0.0.1:7401", [("ABC", "x", True)]),
        announce_request("p1", "10.0.0.1:7401", [(A.upper(), "x", True)]),
        announce_request("p1", "10.0.0.1:7401", [(A, "n" * 256, True)]),
        announce_request("p1", "no-port", [(A, "x", True)]),
        announce_request("p1", "host:99999", [(A, "x", True)]),
        announce_request("", "10.0.0.1:7401", []),
        announce_request("p" * 129, "10.0.0.1:7401", []),
        announce_request("é" * 65, "10.0.0.1:7401", []),
        announce_request("p1\n", "10.0.0.1:7401", []),
        announce_request("p1", "h" * 256 + ":1", []),
        announce_request("p1", "10.0.0.1:7401", [(A, "é" * 128, True)]),
    ],
    ids=[
        "short-id",
        "upper-id",
        "long-name",
        "no-port",
        "bad-port",
        "no-peer-id",
        "long-peer-id",
        "peer-id-over-128-bytes",
        "control-char-id",
        "long-address",
        "name-over-255-bytes",
    ],
)
async def test_announce_rejects_bad_input(
    stub: tracker_pb2_grpc.TrackerStub, request_: tracker_pb2.AnnounceRequest
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Announce(request_, timeout=3)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=3)
    assert list(listed.peers) == []


async def test_announce_rejects_too_many_files(stub: tracker_pb2_grpc.TrackerStub) -> None:
    files = [(f"{i:064x}", "f", True) for i in range(10_001)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Announce(announce_request("p1", "10.0.0.1:7401", files), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10000" in (info.value.details() or "")


async def test_get_peers_rejects_malformed_file_id(stub: tracker_pb2_grpc.TrackerStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetPeers(tracker_pb2.GetPeersRequest(file_id="not-hex"), timeout=3)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "file_id" in (info.value.details() or "")


async def test_leave_rejects_empty_peer_id(stub: tracker_pb2_grpc.TrackerStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Leave(tracker_pb2.LeaveRequest(), timeout=3)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_reports_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "shoal.v1.Tracker"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_run_tracker_logs_port_and_stops_on_sigterm(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shoal.tracker")
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_tracker(TrackerConfig(listen="127.0.0.1:0"), ready.set_result))
    try:
        port = await asyncio.wait_for(ready, 5)
        assert f"tracker listening on 127.0.0.1:{port}" in caplog.text
        async with net.open_channel(f"127.0.0.1:{port}") as chan:
            await tracker_pb2_grpc.TrackerStub(chan).ListPeers(tracker_pb2.ListPeersRequest(), timeout=3)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
    assert "tracker stopping" in caplog.text
