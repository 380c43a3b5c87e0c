"""A hostile raw gRPC client against a real tracker on 127.0.0.1: refused with its status code, honest peers kept."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from helpers.tls import dial

from shoal import net
from shoal.config import TrackerConfig
from shoal.localswarm import LocalSwarm
from shoal.peer.credentials import FILE_NAME
from shoal.tracker.registry import Limits
from shoal.tracker.server import MAX_FILES_PER_ANNOUNCE, RunningTracker, start_tracker
from shoal.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

A = "a" * 64
B = "b" * 64
HONEST = "honest-peer"
HONEST_ADDRESS = "10.0.0.1:7401"
MiB = 1024 * 1024


@pytest.fixture
async def tracker() -> AsyncIterator[RunningTracker]:
    running = await start_tracker(
        TrackerConfig(listen="127.0.0.1:0", announce_interval=1.0),
        limits=Limits(max_peers=20, max_files=50, max_holdings=100),
    )
    try:
        yield running
    finally:
        await running.stop(grace=0)


@pytest.fixture
async def stub(tracker: RunningTracker) -> AsyncIterator[tracker_pb2_grpc.TrackerStub]:
    async with net.open_channel(f"127.0.0.1:{tracker.port}") as chan:
        yield tracker_pb2_grpc.TrackerStub(chan)


def announcement(
    peer_id: str,
    address: str,
    files: list[tuple[str, str]],
    *,
    secret: str = "",
    accepts: bool = True,
) -> tracker_pb2.AnnounceRequest:
    return tracker_pb2.AnnounceRequest(
        peer=common_pb2.PeerInfo(peer_id=peer_id, address=address),
        files=[
            tracker_pb2.HeldFile(file=common_pb2.FileInfo(file_id=fid, name=name, size=42), complete=True)
            for fid, name in files
        ],
        peer_secret=secret,
        accepts_secret=accepts,
    )


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def holders(stub: tracker_pb2_grpc.TrackerStub, file_id: str = A) -> list[tuple[str, str]]:
    reply = await stub.GetPeers(tracker_pb2.GetPeersRequest(file_id=file_id), timeout=3)
    return sorted((h.peer.peer_id, h.peer.address) for h in reply.holders)


async def honest_joins(stub: tracker_pb2_grpc.TrackerStub) -> str:
    reply = await stub.Announce(announcement(HONEST, HONEST_ADDRESS, [(A, "ubuntu.iso")]), timeout=3)
    assert reply.peer_secret
    return reply.peer_secret


async def test_leave_as_another_peer_is_denied(stub: tracker_pb2_grpc.TrackerStub) -> None:
    secret = await honest_joins(stub)
    for forged in ("", "guess", secret[:-1] + "x"):
        err = await refused(stub.Leave(tracker_pb2.LeaveRequest(peer_id=HONEST, peer_secret=forged), timeout=3))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert secret not in (err.details() or "")
    assert await holders(stub) == [(HONEST, HONEST_ADDRESS)]
    await stub.Leave(tracker_pb2.LeaveRequest(peer_id=HONEST, peer_secret=secret), timeout=3)
    assert await holders(stub) == []


async def test_announce_as_another_peer_is_denied(stub: tracker_pb2_grpc.TrackerStub) -> None:
    secret = await honest_joins(stub)
    for accepts in (True, False):
        hijack = announcement(HONEST, "10.6.6.6:7401", [(B, "evil.bin")], secret="x" * 43, accepts=accepts)
        err = await refused(stub.Announce(hijack, timeout=3))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await holders(stub) == [(HONEST, HONEST_ADDRESS)]
    assert await holders(stub, B) == []
    renewed = await stub.Announce(announcement(HONEST, HONEST_ADDRESS, [(A, "ubuntu.iso")], secret=secret), timeout=3)
    assert renewed.peer_secret == secret


async def test_a_live_address_cannot_be_taken(stub: tracker_pb2_grpc.TrackerStub) -> None:
    await honest_joins(stub)
    err = await refused(stub.Announce(announcement("thief", HONEST_ADDRESS, [(A, "evil.bin")]), timeout=3))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await holders(stub) == [(HONEST, HONEST_ADDRESS)]


async def test_older_peers_without_secrets_keep_working(stub: tracker_pb2_grpc.TrackerStub) -> None:
    old = tracker_pb2.AnnounceRequest(
        peer=common_pb2.PeerInfo(peer_id="old-peer", address="10.0.0.2:7401"),
        files=[tracker_pb2.HeldFile(file=common_pb2.FileInfo(file_id=A, name="x", size=1), complete=True)],
    )
    for _ in range(2):
        reply = await stub.Announce(old, timeout=3)
        assert reply.peer_secret == ""
    assert await holders(stub) == [("old-peer", "10.0.0.2:7401")]
    await stub.Leave(tracker_pb2.LeaveRequest(peer_id="old-peer"), timeout=3)
    assert await holders(stub) == []


async def test_multi_mib_strings_are_refused_and_honest_peers_served(
    stub: tracker_pb2_grpc.TrackerStub, caplog: pytest.LogCaptureFixture
) -> None:
    await honest_joins(stub)
    huge_address = "h" * (3 * MiB) + ":1"
    err = await refused(stub.Announce(announcement("big", huge_address, [(B, "x")]), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(err.details() or "") < 300
    too_big = "h" * (5 * MiB) + ":1"  # over the tracker's request cap: grpc refuses it before parsing
    err = await refused(stub.Announce(announcement("bigger", too_big, []), timeout=10))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for bad in (
        announcement("n" * 200, "10.0.0.9:1", []),
        announcement("ctl\x1b[31m", "10.0.0.9:1", []),
        announcement("z", "10.0.0.9:1", [(B, "n" * 256)]),
        tracker_pb2.AnnounceRequest(peer=common_pb2.PeerInfo(peer_id="z", address="10.0.0.9:1", zone="z" * 300)),
    ):
        err = await refused(stub.Announce(bad, timeout=3))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = await refused(stub.SearchFiles(tracker_pb2.SearchFilesRequest(term="t" * MiB), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = await refused(stub.GetPeers(tracker_pb2.GetPeersRequest(file_id=A, exclude_peer_id="e" * MiB), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await holders(stub) == [(HONEST, HONEST_ADDRESS)]
    listed = await stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=3)
    assert [p.peer_id for p in listed.peers] == [HONEST]
    assert "hhhhhhhhhh" in caplog.text and "h" * 200 not in caplog.text  # logged, shortened
    assert "\\x1b[31m" in caplog.text and "\x1b[31m" not in caplog.text  # escaped, never raw


async def test_huge_announces_hit_the_caps_not_the_honest(stub: tracker_pb2_grpc.TrackerStub) -> None:
    secret = await honest_joins(stub)
    many = [(f"{i:064x}", "n" * 255) for i in range(MAX_FILES_PER_ANNOUNCE)]
    for n in range(3):  # ~3.4 MB each: accepted, but only up to the tracker's file and holding caps
        await stub.Announce(announcement(f"flood-{n}", f"10.9.0.{n}:1", many), timeout=20)
    err = await refused(stub.Announce(announcement("flood-x", "10.9.1.1:1", many + many[:1]), timeout=20))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    for n in range(30):  # more peers than the cap
        try:
            await stub.Announce(announcement(f"crowd-{n}", f"10.8.0.{n}:1", []), timeout=3)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "maximum of 20 peers" in (err.details() or "")
            break
    else:
        raise AssertionError("the peer cap never refused anyone")
    listed = await stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=3)
    assert len(listed.peers) == 20
    found = await stub.SearchFiles(tracker_pb2.SearchFilesRequest(limit=10**6), timeout=3)
    assert len(found.results) == 50  # max_files
    await stub.Announce(announcement(HONEST, HONEST_ADDRESS, [(A, "ubuntu.iso")], secret=secret), timeout=3)
    assert await holders(stub) == [(HONEST, HONEST_ADDRESS)]


async def test_name_comes_from_current_holders_not_the_first_announcer(stub: tracker_pb2_grpc.TrackerStub) -> None:
    await stub.Announce(announcement("liar", "10.6.6.6:1", [(A, "invoice.pdf.exe")]), timeout=3)
    for n in (1, 2):
        await stub.Announce(announcement(f"seeder-{n}", f"10.0.0.{n}:1", [(A, "ubuntu.iso")]), timeout=3)
    reply = await stub.GetPeers(tracker_pb2.GetPeersRequest(file_id=A), timeout=3)
    assert reply.file.name == "ubuntu.iso"
    found = await stub.SearchFiles(tracker_pb2.SearchFilesRequest(term="exe"), timeout=3)
    assert list(found.results) == []
    found = await stub.SearchFiles(tracker_pb2.SearchFilesRequest(term="ubuntu"), timeout=3)
    assert [(r.file.name, r.complete_holders) for r in found.results] == [("ubuntu.iso", 3)]


# A tracker in a process of its own that answers each line on stdin with the bytes Python holds (tracemalloc).
FLOOD_TRACKER = textwrap.dedent(
    """
    import asyncio, gc, sys, tracemalloc
    from shoal.config import TrackerConfig
    from shoal.tracker.registry import Limits
    from shoal.tracker.server import start_tracker

    async def main() -> None:
        tracemalloc.start()
        running = await start_tracker(
            TrackerConfig(listen="127.0.0.1:0"), limits=Limits(max_peers=100, max_files=5000, max_holdings=20000)
        )
        print(running.port, flush=True)
        while await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline):
            gc.collect()
            print(tracemalloc.get_traced_memory()[0], flush=True)
        await running.stop(0)

    asyncio.run(main())
    """
)


async def test_tracker_memory_stays_bounded_under_a_flood() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FLOOD_TRACKER,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def held() -> int:
        stdin.write(b"measure\n")
        await stdin.drain()
        return int(await asyncio.wait_for(stdout.readline(), 10))

    try:
        port = int(await asyncio.wait_for(stdout.readline(), 20))
        async with net.open_channel(f"127.0.0.1:{port}") as chan:
            stub = tracker_pb2_grpc.TrackerStub(chan)
            await stub.Announce(announcement(HONEST, HONEST_ADDRESS, [(A, "ubuntu.iso")]), timeout=3)
            start = await held()
            huge = "h" * (3 * MiB) + ":1"
            many = [(f"{i:064x}", "n" * 255) for i in range(MAX_FILES_PER_ANNOUNCE)]
            plateau = 0
            for round_ in range(5):  # the caps are reached in round 0: from then on, what it holds must stay flat
                floods = [stub.Announce(announcement(f"f{round_}-{n}", huge, []), timeout=20) for n in range(8)]
                floods += [
                    stub.Announce(announcement(f"g{round_}-{n}", f"10.7.{round_}.{n}:1", many), timeout=20)
                    for n in range(4)
                ]
                results = await asyncio.gather(*floods, return_exceptions=True)
                codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
                assert codes <= {grpc.StatusCode.INVALID_ARGUMENT}, codes
                assert await holders(stub) == [(HONEST, HONEST_ADDRESS)]
                if round_ == 0:
                    plateau = await held()
            end = await held()
            print(f"tracker holds {start / MiB:.1f} MiB, {plateau / MiB:.1f} at the caps, {end / MiB:.1f} at the end")
            assert end - plateau < 2 * MiB, f"tracker kept growing: {plateau / MiB:.1f} -> {end / MiB:.1f} MiB"
            assert end - start < 40 * MiB, "20,000 holdings should take far less"
    finally:
        stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.mark.swarm_config(announce_interval=10.0)  # a 30 s lease: the peer's listing can only go by a Leave
def test_a_real_peer_keeps_its_listing_against_an_impersonator(swarm: LocalSwarm) -> None:
    peer = swarm.start_peer()
    assert peer.data_dir is not None
    peer_id = (peer.data_dir / "peer_id").read_text().strip()
    secrets_file = peer.data_dir / FILE_NAME
    deadline = time.monotonic() + 15
    while not secrets_file.exists():
        assert time.monotonic() < deadline, "the peer never saved its tracker secret"
        time.sleep(0.05)
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    with dial(swarm, swarm.trackers[0]) as channel:  # under TLS a member's certificate: the insider
        hostile = tracker_pb2_grpc.TrackerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            hostile.Leave(tracker_pb2.LeaveRequest(peer_id=peer_id), timeout=3)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as info:
            hostile.Announce(announcement(peer_id, "10.6.6.6:1", []), timeout=3)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        listed = hostile.ListPeers(tracker_pb2.ListPeersRequest(), timeout=3)
        assert [(p.peer_id, p.address) for p in listed.peers] == [(peer_id, peer.address)]
    assert swarm.stop_proc(peer) == 0  # and its own Leave, with the secret, still works
    with dial(swarm, swarm.trackers[0]) as channel:
        listed = tracker_pb2_grpc.TrackerStub(channel).ListPeers(tracker_pb2.ListPeersRequest(), timeout=3)
    assert list(listed.peers) == []
