"""Session streams against a real tracker on 127.0.0.1: deltas, crash, hang, restart, and mixed old and new peers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from helpers.polling import wait_until_async

from shoal import net
from shoal.config import TrackerConfig
from shoal.peer.credentials import TrackerSecrets
from shoal.peer.tracker_stream import ReplicaSession, StreamUnsupported
from shoal.peer.trackers import TrackerClient
from shoal.tracker.registry import MIN_SECRET
from shoal.tracker.server import RunningTracker, start_tracker
from shoal.tracker.session import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS
from shoal.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

A = "a" * 64
B = "b" * 64
C = "c" * 64
SECRET = "s" * MIN_SECRET
TTL = 1.5
Call = grpc.aio.StreamStreamCall[tracker_pb2.SessionUpdate, tracker_pb2.SessionReply]


def held(file_id: str, complete: bool = True) -> tracker_pb2.HeldFile:
    return tracker_pb2.HeldFile(
        file=common_pb2.FileInfo(file_id=file_id, name=f"{file_id[0]}.bin", size=42), complete=complete
    )


def info(peer_id: str, n: int = 1) -> common_pb2.PeerInfo:
    return common_pb2.PeerInfo(peer_id=peer_id, address=f"10.0.0.{n}:7401")


def hello(peer_id: str, files: list[str], *, n: int = 1, secret: str = "") -> tracker_pb2.SessionUpdate:
    return tracker_pb2.SessionUpdate(
        peer=info(peer_id, n), files=[held(f) for f in files], peer_secret=secret, accepts_secret=True
    )


async def start(port: int = 0) -> RunningTracker:
    return await start_tracker(TrackerConfig(listen=f"127.0.0.1:{port}", announce_interval=0.5, peer_ttl=TTL))


@pytest.fixture
async def tracker() -> AsyncIterator[RunningTracker]:
    running = await start()
    try:
        yield running
    finally:
        await running.stop(grace=0)


@pytest.fixture
async def stub(tracker: RunningTracker) -> AsyncIterator[tracker_pb2_grpc.TrackerStub]:
    async with net.open_channel(f"127.0.0.1:{tracker.port}") as chan:
        yield tracker_pb2_grpc.TrackerStub(chan)


async def holders(stub: tracker_pb2_grpc.TrackerStub, file_id: str = A) -> list[str]:
    reply = await stub.GetPeers(tracker_pb2.GetPeersRequest(file_id=file_id), timeout=3)
    return sorted(h.peer.peer_id for h in reply.holders)


async def listed(stub: tracker_pb2_grpc.TrackerStub) -> list[str]:
    reply = await stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=3)
    return [p.peer_id for p in reply.peers]


async def opened(stub: tracker_pb2_grpc.TrackerStub, first: tracker_pb2.SessionUpdate) -> tuple[Call, str]:
    call = stub.Session()
    await call.write(first)
    reply = await asyncio.wait_for(call.read(), 5)
    assert isinstance(reply, tracker_pb2.SessionReply)
    return call, reply.peer_secret


async def refused(call: Call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(call.read(), 5)
    return err.value


async def test_stream_registers_applies_deltas_and_outlives_the_ttl(
    tracker: RunningTracker, stub: tracker_pb2_grpc.TrackerStub
) -> None:
    call, secret = await opened(stub, hello("p1", [A, B], secret=SECRET))
    assert secret == SECRET
    assert await holders(stub, A) == ["p1"] and await holders(stub, B) == ["p1"]
    await call.write(tracker_pb2.SessionUpdate(files=[held(C)], dropped_file_ids=[A]))
    await wait_until_async(lambda: holders(stub, C), timeout=5, what="the delta to apply")
    assert await holders(stub, A) == [] and await holders(stub, B) == ["p1"]
    await asyncio.sleep(TTL * 2)  # no announce, no update: the stream alone keeps the lease
    assert await listed(stub) == ["p1"]
    stats = tracker.registry.stats()
    assert (stats.sessions, stats.session_updates_total, stats.expiries_total) == (1, 1, 0)
    await call.done_writing()  # the peer leaves: dropped at once
    assert await call.code() == grpc.StatusCode.OK
    assert await listed(stub) == []


async def test_first_update_is_checked_like_an_announce(stub: tracker_pb2_grpc.TrackerStub) -> None:
    bad = stub.Session()
    await bad.write(hello("p1", ["NOT-AN-ID"]))
    assert (await refused(bad)).code() == grpc.StatusCode.INVALID_ARGUMENT
    first, _ = await opened(stub, hello("p1", [A], secret=SECRET))
    thief = stub.Session()
    await thief.write(hello("p1", [B], n=2))  # the id without its secret
    assert (await refused(thief)).code() == grpc.StatusCode.PERMISSION_DENIED
    squatter = stub.Session()
    await squatter.write(hello("p2", [B], n=1))  # another id on p1's live address
    assert (await refused(squatter)).code() == grpc.StatusCode.ALREADY_EXISTS
    assert await holders(stub, A) == ["p1"] and await holders(stub, B) == []
    first.cancel()


async def test_a_bad_later_update_ends_the_stream_and_the_lease(stub: tracker_pb2_grpc.TrackerStub) -> None:
    call, _ = await opened(stub, hello("p1", [A]))
    await call.write(tracker_pb2.SessionUpdate(peer=info("p9")))  # the peer belongs in the first update only
    assert (await refused(call)).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await listed(stub) == []
    call, _ = await opened(stub, hello("p1", [A]))
    await call.write(tracker_pb2.SessionUpdate(dropped_file_ids=["zz"]))
    assert (await refused(call)).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await listed(stub) == []


async def test_a_newer_stream_supersedes_the_old_one(stub: tracker_pb2_grpc.TrackerStub) -> None:
    old, _ = await opened(stub, hello("p1", [A], secret=SECRET))
    new, _ = await opened(stub, hello("p1", [B], secret=SECRET))
    await old.write(tracker_pb2.SessionUpdate(files=[held(C)]))
    assert (await refused(old)).code() == grpc.StatusCode.ABORTED
    assert await holders(stub, B) == ["p1"] and await holders(stub, C) == []  # the old stream's end kept it
    new.cancel()
    await wait_until_async(lambda: _empty(stub), timeout=5, what="the cancelled stream's peer to go")


async def _empty(stub: tracker_pb2_grpc.TrackerStub) -> bool:
    return await listed(stub) == []


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from shoal import net
    from shoal.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

    async def main() -> None:
        async with net.open_channel(sys.argv[1]) as channel:
            call = tracker_pb2_grpc.TrackerStub(channel).Session()
            held = tracker_pb2.HeldFile(file=common_pb2.FileInfo(file_id="a" * 64, name="a.bin", size=1))
            peer = common_pb2.PeerInfo(peer_id="child", address="10.0.0.9:7401")
            await call.write(tracker_pb2.SessionUpdate(peer=peer, files=[held]))
            await call.read()
            print("ready", flush=True)
            await call.read()

    asyncio.run(main())
    """
)


@contextlib.asynccontextmanager
async def child_peer(address: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A peer process holding one Session stream to `address` (the tracker runs on this loop); killed at the end."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, address, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready"
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
            os.kill(proc.pid, signal.SIGCONT)
        await asyncio.wait_for(proc.wait(), 10)


async def seconds_until_gone(stub: tracker_pb2_grpc.TrackerStub, limit: float) -> float:
    started = time.monotonic()
    await wait_until_async(lambda: _empty(stub), timeout=limit, interval=0.05, what="the peer to be dropped")
    return time.monotonic() - started


async def test_a_crashed_peer_is_dropped_at_once(tracker: RunningTracker, stub: tracker_pb2_grpc.TrackerStub) -> None:
    async with child_peer(f"127.0.0.1:{tracker.port}") as proc:
        assert await listed(stub) == ["child"]
        os.kill(proc.pid, signal.SIGKILL)
        assert await seconds_until_gone(stub, 2.0) < 2.0


async def test_a_hung_peer_is_dropped_when_it_misses_keepalives(
    tracker: RunningTracker, stub: tracker_pb2_grpc.TrackerStub
) -> None:
    async with child_peer(f"127.0.0.1:{tracker.port}") as proc:
        assert await listed(stub) == ["child"]
        os.kill(proc.pid, signal.SIGSTOP)  # the connection stays open; nothing answers the pings
        bound = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000
        assert bound < 10
        gone = await seconds_until_gone(stub, 10.0)
        assert gone < 10.0
        assert gone > KEEPALIVE_TIMEOUT_MS / 1000 - 0.5  # it was the keepalive, not something else, that ended it


def fake_node(root: Path, peer_id: str, files: list[str]) -> Any:
    """What a TrackerClient is given: identity, what is held, the data dir for secrets; `poke` is set by client()."""
    return SimpleNamespace(info=info(peer_id), peer_id=peer_id, root=root, files=files, poke=None)


@contextlib.asynccontextmanager
async def client(node: Any, address: str) -> AsyncIterator[TrackerClient]:
    trackers = TrackerClient(node.info, lambda: [held(f) for f in node.files], (address,), TrackerSecrets(node.root))
    node.poke = trackers.announce_soon
    task = asyncio.create_task(trackers.run())
    try:
        yield trackers
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await trackers.close()


async def test_peer_client_streams_deltas_and_leaves(
    tracker: RunningTracker, stub: tracker_pb2_grpc.TrackerStub, tmp_path: Path
) -> None:
    files = [A]
    node = fake_node(tmp_path, "p1", files)
    address = f"127.0.0.1:{tracker.port}"
    async with client(node, address) as trackers:
        await wait_until_async(lambda: holders(stub, A), timeout=5, what="the session to open")
        assert tracker.registry.sessions == 1
        await wait_until_async(lambda: asyncio.sleep(0, trackers.up == [address]), timeout=5, what="up")
        files[:] = [B]
        node.poke()
        await wait_until_async(lambda: holders(stub, B), timeout=5, what="the delta")
        assert await holders(stub, A) == []
        await asyncio.sleep(TTL * 2)
        assert tracker.registry.stats().announces_total == 1  # one registration, then only the delta
        await trackers.leave()
        assert await listed(stub) == []
        assert tracker.registry.sessions == 0


async def test_peers_re_register_when_the_tracker_restarts(tmp_path: Path) -> None:
    first = await start()
    port = first.port
    files = [A]
    node = fake_node(tmp_path, "p1", files)
    async with client(node, f"127.0.0.1:{port}"):
        await wait_until_async(lambda: asyncio.sleep(0, first.registry.sessions == 1), timeout=5, what="a session")
        secret = first.registry._leases["p1"].secret
        await first.stop(grace=0)
        files.append(B)  # changed while the tracker is down: the new one must hear of it
        node.poke()
        second = await start(port)
        try:
            await wait_until_async(
                lambda: asyncio.sleep(0, second.registry.holders(B)), timeout=10, what="the peer to re-register"
            )
            assert {h.peer.peer_id for h in second.registry.holders(A)} == {"p1"}
            assert second.registry._leases["p1"].secret == secret  # the peer brings its own secret back
        finally:
            await second.stop(grace=0)


async def test_old_and_new_peers_side_by_side(tracker: RunningTracker, stub: tracker_pb2_grpc.TrackerStub) -> None:
    await stub.Announce(
        tracker_pb2.AnnounceRequest(peer=info("old", 2), files=[held(A)], accepts_secret=False), timeout=3
    )
    call, _ = await opened(stub, hello("new", [A]))
    assert await holders(stub, A) == ["new", "old"]
    await asyncio.sleep(TTL + 0.6)  # the old peer stopped announcing: its lease lapses, the stream's does not
    assert await holders(stub, A) == ["new"]
    call.cancel()


class OldTracker(tracker_pb2_grpc.TrackerServicer):
    """A tracker from before the Session rpc: Announce works, Session is the generated UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.announced: list[str] = []

    async def Announce(
        self, request: tracker_pb2.AnnounceRequest, context: grpc.aio.ServicerContext
    ) -> tracker_pb2.AnnounceResponse:
        self.announced.append(request.peer.peer_id)
        return tracker_pb2.AnnounceResponse(interval_seconds=0.2, ttl_seconds=1.0)


async def test_new_peer_falls_back_to_announce_against_an_old_tracker(tmp_path: Path) -> None:
    server = grpc.aio.server()
    old = OldTracker()
    tracker_pb2_grpc.add_TrackerServicer_to_server(old, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        address = f"127.0.0.1:{port}"
        async with net.open_channel(address) as channel:
            secrets = TrackerSecrets(tmp_path)
            session = ReplicaSession(
                address, lambda: tracker_pb2_grpc.TrackerStub(channel), secrets, lambda: hello_request()
            )
            with pytest.raises(StreamUnsupported):
                await asyncio.wait_for(session.run(), 5)
            assert not session.wanted()  # announces from now on, for a while
        async with client(fake_node(tmp_path, "p1", [A]), address) as trackers:
            await wait_until_async(lambda: asyncio.sleep(0, len(old.announced) >= 2), timeout=5, what="announces")
            assert trackers.up == [address]
    finally:
        await server.stop(0)


def hello_request() -> tracker_pb2.AnnounceRequest:
    return tracker_pb2.AnnounceRequest(peer=info("p1"), files=[held(A)])
