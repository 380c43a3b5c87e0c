"""Malformed requests straight over gRPC to a real peer, tracker and control socket: clean status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.cli import ok, shoal
from helpers.tls import dial_aio

from shoal.localswarm import LocalSwarm, Proc
from shoal.v1 import (
    common_pb2,
    control_pb2,
    control_pb2_grpc,
    peer_pb2,
    peer_pb2_grpc,
    tracker_pb2,
    tracker_pb2_grpc,
)

UNKNOWN_ID = "0123456789abcdef" * 4
MALFORMED_IDS = ["", "not-hex", "0" * 63, "0" * 65, "g" * 64, "../" + "0" * 61]
CHUNKS = 3
RPC_TIMEOUT = 15.0


@dataclass
class Target:
    """One peer holding one small file, and its tracker."""

    swarm: LocalSwarm
    peer: Proc
    file_id: str
    source: Path


@pytest.fixture(scope="module")
def target(module_swarm: LocalSwarm, tmp_path_factory: pytest.TempPathFactory) -> Target:
    peer = module_swarm.start_peer()
    source = tmp_path_factory.mktemp("files") / "three-chunks.bin"
    source.write_bytes(bytes(range(256)) * 64 * 3 * 4)  # 3 chunks of 64 KiB
    put = ok(shoal(module_swarm, peer, "put", str(source), "--chunk-size", "65536"))
    assert ", 3 chunks)" in put
    return Target(module_swarm, peer, put.splitlines()[-1], source)


@pytest.fixture
async def peer_stub(target: Target) -> AsyncIterator[peer_pb2_grpc.PeerStub]:
    # No client-side size limits: the server must enforce its own.
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    async with dial_aio(target.swarm, target.peer, options) as channel:
        yield peer_pb2_grpc.PeerStub(channel)


@pytest.fixture
async def tracker_stub(target: Target) -> AsyncIterator[tracker_pb2_grpc.TrackerStub]:
    async with dial_aio(target.swarm, target.swarm.trackers[0]) as channel:
        yield tracker_pb2_grpc.TrackerStub(channel)


@pytest.fixture
async def control_stub(target: Target) -> AsyncIterator[control_pb2_grpc.ControlStub]:
    async with grpc.aio.insecure_channel(target.peer.control) as channel:
        yield control_pb2_grpc.ControlStub(channel)


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    """Await a unary call that must fail; return its status code."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.details(), "every error carries a message"
    return info.value.code()


def peer_calls(stub: peer_pb2_grpc.PeerStub, file_id: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Each peer-facing RPC asked about `file_id`."""
    return {
        "GetManifest": lambda: stub.GetManifest(peer_pb2.GetManifestRequest(file_id=file_id), timeout=RPC_TIMEOUT),
        "GetChunk": lambda: stub.GetChunk(peer_pb2.GetChunkRequest(file_id=file_id, index=0), timeout=RPC_TIMEOUT),
        "Exchange": lambda: stub.Exchange(peer_pb2.ExchangeRequest(file_id=file_id), timeout=RPC_TIMEOUT),
    }


@pytest.mark.parametrize("file_id", MALFORMED_IDS)
async def test_peer_rejects_malformed_ids(peer_stub: peer_pb2_grpc.PeerStub, file_id: str) -> None:
    for name, call in peer_calls(peer_stub, file_id).items():
        assert await status_of(call()) == grpc.StatusCode.INVALID_ARGUMENT, name


async def test_peer_answers_not_found_for_unknown_ids(peer_stub: peer_pb2_grpc.PeerStub) -> None:
    for name, call in peer_calls(peer_stub, UNKNOWN_ID).items():
        assert await status_of(call()) == grpc.StatusCode.NOT_FOUND, name


@pytest.mark.parametrize("index", [CHUNKS, CHUNKS + 1, 2**32 - 1])
async def test_peer_rejects_chunk_index_out_of_range(
    peer_stub: peer_pb2_grpc.PeerStub, target: Target, index: int
) -> None:
    request = peer_pb2.GetChunkRequest(file_id=target.file_id, index=index)
    assert await status_of(peer_stub.GetChunk(request, timeout=RPC_TIMEOUT)) == grpc.StatusCode.OUT_OF_RANGE
    last = await peer_stub.GetChunk(peer_pb2.GetChunkRequest(file_id=target.file_id, index=CHUNKS - 1), timeout=15)
    assert last.data == target.source.read_bytes()[(CHUNKS - 1) * 65536 :]


async def test_peer_refuses_an_oversized_message_and_keeps_serving(
    peer_stub: peer_pb2_grpc.PeerStub, target: Target
) -> None:
    huge = peer_pb2.GetChunkRequest(file_id="a" * (20 * 1024 * 1024), index=0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await peer_stub.GetChunk(huge, timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Received message larger than max" in (info.value.details() or "")  # the server refused it
    async with dial_aio(target.swarm, target.peer) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    manifest = await peer_stub.GetManifest(peer_pb2.GetManifestRequest(file_id=target.file_id), timeout=RPC_TIMEOUT)
    assert manifest.manifest.size == CHUNKS * 65536


def announce(peer_id: str, file_ids: list[str]) -> tracker_pb2.AnnounceRequest:
    return tracker_pb2.AnnounceRequest(
        peer=common_pb2.PeerInfo(peer_id=peer_id, address="127.0.0.1:9"),
        files=[
            tracker_pb2.HeldFile(file=common_pb2.FileInfo(file_id=f, name="x", size=1), complete=True) for f in file_ids
        ],
    )


@pytest.mark.parametrize("file_id", [*MALFORMED_IDS, UNKNOWN_ID.upper()])
async def test_tracker_rejects_announce_with_malformed_file_id(
    tracker_stub: tracker_pb2_grpc.TrackerStub, file_id: str
) -> None:
    call = tracker_stub.Announce(announce("bad-ids", [UNKNOWN_ID, file_id]), timeout=RPC_TIMEOUT)
    assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    listed = await tracker_stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=RPC_TIMEOUT)
    assert "bad-ids" not in {p.peer_id for p in listed.peers}


async def test_tracker_rejects_announce_of_10001_files(tracker_stub: tracker_pb2_grpc.TrackerStub) -> None:
    many = announce("hoarder", [f"{i:064x}" for i in range(10_001)])
    assert await status_of(tracker_stub.Announce(many, timeout=60)) == grpc.StatusCode.INVALID_ARGUMENT
    listed = await tracker_stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=RPC_TIMEOUT)
    assert "hoarder" not in {p.peer_id for p in listed.peers}


@pytest.mark.parametrize(
    "path",
    ["relative/file.bin", "file.bin", "", "/tmp/with\x00nul", "\x00"],
    ids=["relative", "bare-name", "empty", "nul-inside", "only-nul"],
)
async def test_control_put_rejects_paths_that_are_not_absolute(
    control_stub: control_pb2_grpc.ControlStub, path: str
) -> None:
    call = control_stub.Put(control_pb2.PutRequest(path=path), timeout=RPC_TIMEOUT)
    assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("name", ["a/b", "/abs", "..", ".", "nul\x00name", "back\\slash", "n" * 256])
async def test_control_put_rejects_bad_names(
    control_stub: control_pb2_grpc.ControlStub, target: Target, name: str
) -> None:
    call = control_stub.Put(control_pb2.PutRequest(path=str(target.source), name=name), timeout=RPC_TIMEOUT)
    assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("chunk_size", [1, 16 * 1024 - 1, 16 * 1024 * 1024 + 1])
async def test_control_put_rejects_chunk_size_out_of_range(
    control_stub: control_pb2_grpc.ControlStub, target: Target, chunk_size: int
) -> None:
    call = control_stub.Put(control_pb2.PutRequest(path=str(target.source), chunk_size=chunk_size), timeout=15)
    assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("file_id", "output"),
    [("not-hex", "/tmp/x"), (UNKNOWN_ID, "relative/out"), (UNKNOWN_ID, "/tmp/with\x00nul")],
    ids=["bad-id", "relative-output", "nul-output"],
)
async def test_control_get_rejects_bad_requests(
    control_stub: control_pb2_grpc.ControlStub, file_id: str, output: str
) -> None:
    stream = control_stub.Get(control_pb2.GetRequest(file_id=file_id, output=output), timeout=RPC_TIMEOUT)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stream:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
