"""swarm.Download against in-memory peers that serve, lie, stall, die, say busy or drop the file, and a fake
tracker client: no sockets, a fake clock for the timing rules, the real store in tmp_path."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from helpers.clocks import FakeClock
from unit.manifests import build, chunks_of, pattern

from shoal import content
from shoal.config import PeerConfig
from shoal.peer import sources, swarm
from shoal.peer.errors import Busy, Lied, NoHolders, NotHeld, TrackersUnavailable, Unreachable
from shoal.peer.node import Node
from shoal.peer.swarm import Download
from shoal.peer.wire import ChunkReply
from shoal.store import DiskFull, Store
from shoal.v1 import common_pb2, peer_pb2, tracker_pb2

CS = 16 * 1024
NCHUNKS = 16
DATA = pattern(NCHUNKS * CS - 100, seed=3)  # a short last chunk
FILE_ID, MANIFEST = build(DATA, chunk_size=CS)
CHUNKS = chunks_of(DATA, CS)
FULL = content.Bitfield.full(NCHUNKS).to_bytes()


class FakePeer:
    """One other peer, in memory. `mode`: honest, liar (wrong bytes), lied (the link saw a lie), stall, dead, busy."""

    def __init__(self, n: int, mode: str = "honest") -> None:
        self.info = common_pb2.PeerInfo(peer_id=f"peer-{n}", address=f"10.0.0.{n}:7401")
        self.mode = mode
        self.gate: asyncio.Event | None = None  # honest chunk replies wait for it, when set
        self.not_held: set[int] = set()  # chunks it advertises but answers NOT_FOUND for
        self.bad_manifest = False
        self.gone = False  # exchanges say the file is no longer held
        self.asked: list[int] = []
        self.hanging = 0
        self.exchanges = 0

    async def fetch_manifest(self, file_id: str) -> common_pb2.Manifest:
        if self.mode == "dead":
            raise Unreachable("UNAVAILABLE")
        if self.bad_manifest:
            raise Lied("manifest does not match the id")
        return MANIFEST

    async def fetch_chunk(
        self, file_id: str, index: int, peer_id: str, timeout: float, spread: bool = False
    ) -> ChunkReply:
        assert file_id == FILE_ID and timeout > 0
        self.asked.append(index)
        if self.mode == "dead":
            raise Unreachable("UNAVAILABLE")
        if self.mode == "busy":
            raise Busy("RESOURCE_EXHAUSTED")
        if self.mode == "stall":
            self.hanging += 1
            await asyncio.Event().wait()
        if self.mode == "lied":
            raise Lied("a 18874368-byte reply, larger than any chunk")
        if index in self.not_held:
            raise NotHeld("NOT_FOUND")
        if self.gate is not None:
            await self.gate.wait()
        data = os.urandom(len(CHUNKS[index])) if self.mode == "liar" else CHUNKS[index]
        return ChunkReply(data=memoryview(data), source_complete=True, bitfield=FULL)

    async def exchange_with(
        self, file_id: str, me: common_pb2.PeerInfo, bitfield: bytes, known: list[common_pb2.PeerInfo]
    ) -> peer_pb2.ExchangeResponse:
        self.exchanges += 1
        if self.mode == "dead" and self.exchanges > 1:  # it died after telling us what it holds
            raise Unreachable("DEADLINE_EXCEEDED")
        if self.gone:
            raise NotHeld("NOT_FOUND")
        return peer_pb2.ExchangeResponse(bitfield=FULL, complete=True)


class FakeLinks:
    """Links by address to the fake peers; remembers which ones the download dropped."""

    def __init__(self, *peers: FakePeer) -> None:
        self.peers = {p.info.address: p for p in peers}
        self.dropped: list[str] = []

    def link(self, address: str) -> FakePeer:
        return self.peers[address]

    async def drop(self, address: str) -> None:
        self.dropped.append(address)


class FakeTrackers:
    """The trackers' holder lookup: these peers, or no tracker answering."""

    def __init__(self, *peers: FakePeer, down: bool = False) -> None:
        self.holders_of = [tracker_pb2.Holder(peer=p.info, complete=True) for p in peers]
        self.down = down
        self.asked = 0

    async def holders(self, file_id: str, limit: int = 0) -> list[tracker_pb2.Holder]:
        self.asked += 1
        if self.down:
            raise TrackersUnavailable("no tracker answered")
        return list(self.holders_of)


def make_node(tmp_path: Path, **settings: int) -> Node:
    store = Store(tmp_path / "me")
    store.open()
    config = PeerConfig(listen="127.0.0.1:0", trackers=("t:1",), data_dir=tmp_path / "me", **settings)  # type: ignore[arg-type]
    return Node(config, store, "me", "10.0.0.250:7401")


def download(node: Node, links: FakeLinks, trackers: FakeTrackers, clock: FakeClock, **kw: object) -> Download:
    return Download(node, trackers, links, FILE_ID, clock=clock, rng=random.Random(5), tick=0.005, **kw)  # type: ignore[arg-type]


async def until(what: str, check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll (real time) until `check` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.002)


async def finish(run: Awaitable[object]) -> None:
    await asyncio.wait_for(run, 5.0)


def assert_complete(node: Node) -> None:
    entry = node.store.get(FILE_ID)
    assert entry is not None and entry.complete
    assert (entry.directory / "data").read_bytes() == DATA


# ---- tests ---------------------------------------------------------------------------------------
async def test_fetches_from_honest_peers_and_announces_once_it_can_serve(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    a, b = FakePeer(1), FakePeer(2)
    announced: list[int] = []
    dl = download(node, FakeLinks(a, b), FakeTrackers(a, b), FakeClock(), announce_soon=lambda: announced.append(1))
    entry = await asyncio.wait_for(dl.run(), 5.0)
    assert entry.complete
    assert_complete(node)
    assert dl.done_bytes == len(DATA)
    assert dl.summary.from_complete_bytes == len(DATA) and dl.summary.from_partial_bytes == 0
    assert dl.summary.peers <= {a.info.address, b.info.address}
    assert node.stats.chunks_verified == NCHUNKS and node.stats.downloaded_bytes == len(DATA)
    assert announced == [1]
    assert a.exchanges + b.exchanges >= 2  # an exchange at admission, and the farewell


@pytest.mark.parametrize("mode", ["liar", "lied"])
async def test_a_liar_is_banned_after_three_bad_chunks(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node(tmp_path)
    liar, honest = FakePeer(1, mode), FakePeer(2)
    honest.gate = asyncio.Event()  # the honest peer answers only once the liar has had its chances
    check = Download._verify_and_write

    def slow_check(self: Download, *args: object) -> bool | None:
        time.sleep(0.02)  # hashing a large chunk: the liar, answering at once, could get ahead of its verdicts
        return check(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Download, "_verify_and_write", slow_check)
    dl = download(node, FakeLinks(liar, honest), FakeTrackers(liar, honest), FakeClock())
    run = asyncio.create_task(dl.run())
    await until("three bad chunks", lambda: len(liar.asked) >= sources.BAN_AFTER_BAD_CHUNKS)
    await until("the ban", lambda: dl.summary.banned_peers == 1)
    asked = len(liar.asked)
    # Never proven, the liar holds each request slot until its chunk's verdict: at most one other was out at the ban.
    assert asked <= sources.BAN_AFTER_BAD_CHUNKS + sources.FIRST_WINDOW - 1, liar.asked
    honest.gate.set()
    await finish(run)
    assert_complete(node)
    assert len(liar.asked) == asked, "a banned source got more requests"
    assert dl.summary.rejected_chunks >= sources.BAN_AFTER_BAD_CHUNKS
    assert node.stats.peers_banned == 1 and node.stats.chunks_rejected == dl.summary.rejected_chunks
    assert dl.summary.peers == {honest.info.address}
    assert liar.info.peer_id not in node.known.get(FILE_ID, {})
    assert f"banning {liar.info.address}" in caplog.text


async def test_a_stalled_source_hands_its_chunks_to_another(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    node = make_node(tmp_path)
    stalled, other = FakePeer(1, "stall"), FakePeer(2, "busy")
    clock = FakeClock()
    links = FakeLinks(stalled, other)
    dl = download(node, links, FakeTrackers(stalled, other), clock)
    run = asyncio.create_task(dl.run())
    await until("a hung request and a busy answer", lambda: stalled.hanging >= 1 and len(other.asked) >= 1)
    other.mode = "honest"
    clock.advance(2 * sources.SOURCE_STALL + 1)  # silence past the stall timeout; the busy pause is over too
    await finish(run)
    assert_complete(node)
    assert f"source {stalled.info.address} sent nothing" in caplog.text
    assert dl.summary.peers == {other.info.address}


async def test_the_only_holder_is_kept_through_a_pause(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    node = make_node(tmp_path)
    slow = FakePeer(1)
    slow.gate = asyncio.Event()
    clock = FakeClock()
    dl = download(node, FakeLinks(slow), FakeTrackers(slow), clock)
    run = asyncio.create_task(dl.run())
    await until("requests in flight", lambda: len(slow.asked) >= 1)
    clock.advance(5 * sources.SOURCE_STALL)
    await asyncio.sleep(0.05)  # several dispatcher rounds see it stalled, with nobody to take over
    slow.gate.set()
    await finish(run)
    assert_complete(node)
    assert "sent nothing" not in caplog.text


async def test_a_dead_source_is_dropped_after_three_failures(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    dead, alive = FakePeer(1, "dead"), FakePeer(2)
    alive.gate = asyncio.Event()
    links = FakeLinks(dead, alive)
    dl = download(node, links, FakeTrackers(dead, alive), FakeClock())
    run = asyncio.create_task(dl.run())
    await until("the dead link dropped", lambda: links.dropped == [dead.info.address])
    assert len(dead.asked) == sources.DEAD_AFTER_FAILURES
    alive.gate.set()
    await finish(run)
    assert_complete(node)
    assert dl.summary.peers == {alive.info.address}
    assert dead.info.peer_id not in node.known.get(FILE_ID, {})


async def test_a_busy_source_is_asked_again_after_a_pause(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    busy = FakePeer(1, "busy")
    clock = FakeClock()
    dl = download(node, FakeLinks(busy), FakeTrackers(busy), clock)
    run = asyncio.create_task(dl.run())
    await until("a busy answer", lambda: len(busy.asked) >= 1)
    await asyncio.sleep(0.03)
    assert len(busy.asked) <= 2, "asked again before its pause was over"  # one window's worth
    busy.mode = "honest"
    clock.advance(sources.BUSY_PAUSE[1])
    await finish(run)
    assert_complete(node)


async def test_a_chunk_not_held_after_all_comes_from_someone_else(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    a, b = FakePeer(1), FakePeer(2)
    a.not_held = set(range(NCHUNKS))
    b.gate = asyncio.Event()
    dl = download(node, FakeLinks(a, b), FakeTrackers(a, b), FakeClock())
    run = asyncio.create_task(dl.run())
    await until("NOT_FOUND answers", lambda: len(a.asked) >= 2)
    b.gate.set()
    await finish(run)
    assert_complete(node)
    assert dl.summary.peers == {b.info.address} and dl.summary.rejected_chunks == 0


async def test_a_source_that_no_longer_holds_the_file_is_dropped(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    gone, other = FakePeer(1), FakePeer(2)
    gone.gone = True
    other.gate = asyncio.Event()
    dl = download(node, FakeLinks(gone, other), FakeTrackers(gone, other), FakeClock())
    run = asyncio.create_task(dl.run())
    await until("the exchange", lambda: gone.exchanges >= 1)
    other.gate.set()
    await finish(run)
    assert_complete(node)
    assert gone.asked == [] and gone.info.peer_id not in node.known.get(FILE_ID, {})


async def test_no_holders_fails_at_once(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    with pytest.raises(NoHolders, match="no live peer holds file"):
        await finish(download(node, FakeLinks(), FakeTrackers(), FakeClock()).run())


async def test_a_bad_manifest_is_skipped_and_its_sender_forgotten(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    forger, honest = FakePeer(1), FakePeer(2)
    forger.bad_manifest = True
    only_forger = download(node, FakeLinks(forger), FakeTrackers(forger), FakeClock())
    with pytest.raises(NoHolders, match="bad manifest"):
        await finish(only_forger.run())
    dl = download(node, FakeLinks(forger, honest), FakeTrackers(forger, honest), FakeClock())
    await finish(dl.run())
    assert_complete(node)


async def test_known_holders_serve_when_no_tracker_answers(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    peer = FakePeer(1)
    node.learn(FILE_ID, [peer.info])
    trackers = FakeTrackers(down=True)
    await finish(download(node, FakeLinks(peer), trackers, FakeClock()).run())
    assert_complete(node)
    assert trackers.asked >= 1


async def test_a_full_disk_fails_the_download_with_the_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node(tmp_path)
    peer = FakePeer(1)

    def full(*args: object) -> bool:
        raise DiskFull("disk full while writing chunk 0")

    monkeypatch.setattr(node.store, "write_chunk", full)
    with pytest.raises(DiskFull):
        await finish(download(node, FakeLinks(peer), FakeTrackers(peer), FakeClock()).run())


async def test_resume_fetches_only_missing_chunks(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    entry = node.store.begin(FILE_ID, MANIFEST, "")
    for index in range(0, NCHUNKS, 2):
        node.store.write_chunk(entry, index, CHUNKS[index])
    peer = FakePeer(1)
    trackers = FakeTrackers(peer)
    clock = FakeClock()
    dl = download(node, FakeLinks(peer), trackers, clock)
    run = asyncio.create_task(dl.run())
    await asyncio.sleep(0.02)
    assert trackers.asked == 0  # no manifest needed: the trackers are first asked on the refresh schedule
    clock.advance(swarm.FIRST_REFRESH)
    await finish(run)
    assert_complete(node)
    assert trackers.asked == 1
    assert sorted(peer.asked) == list(range(1, NCHUNKS, 2))
    assert dl.summary.resumed_chunks == NCHUNKS // 2


async def test_holders_heard_during_the_download_become_sources(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    late = FakePeer(1)
    dl = download(node, FakeLinks(late), FakeTrackers(down=True), FakeClock())
    node.learn(FILE_ID, [late.info])  # the manifest comes from it
    dl.add_sources([late.info, node.info])  # myself is never a source
    await finish(dl.run())
    assert_complete(node)
    assert dl.summary.peers == {late.info.address}


async def test_bytes_in_flight_stay_within_the_budget(tmp_path: Path) -> None:
    node = make_node(tmp_path, inflight_budget=3 * CS, requests_per_peer=4)
    peers = [FakePeer(n) for n in (1, 2, 3)]
    gate = asyncio.Event()
    for peer in peers:
        peer.gate = gate
    dl = download(node, FakeLinks(*peers), FakeTrackers(*peers), FakeClock())
    run = asyncio.create_task(dl.run())
    await until("the budget filled", lambda: node.stats.inflight_bytes >= 3 * CS - 100)
    await asyncio.sleep(0.05)  # several ticks: nothing more goes out while the budget is full
    assert sum(len(p.asked) for p in peers) == 3 and node.stats.inflight_bytes <= 3 * CS
    gate.set()
    await finish(run)
    assert_complete(node)
    assert node.stats.inflight_bytes == 0  # every request's bytes given back, the cancelled ones too


async def test_a_budget_below_one_chunk_still_moves_one_at_a_time(tmp_path: Path) -> None:
    node = make_node(tmp_path, inflight_budget=1)
    peer = FakePeer(1)
    await finish(download(node, FakeLinks(peer), FakeTrackers(peer), FakeClock()).run())
    assert_complete(node)
    assert node.stats.inflight_bytes == 0


async def test_an_idle_download_does_not_poll(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    peer = FakePeer(1)
    peer.gate = asyncio.Event()
    dl = Download(node, FakeTrackers(peer), FakeLinks(peer), FILE_ID, clock=FakeClock(), rng=random.Random(5))  # type: ignore[arg-type]
    passes = 0
    real = dl._drop_stalled

    def counted() -> None:
        nonlocal passes
        passes += 1
        real()

    dl._drop_stalled = counted  # type: ignore[method-assign]
    run = asyncio.create_task(dl.run())
    await until("a request out", lambda: len(peer.asked) >= 1)
    await asyncio.sleep(0.05)
    settled = passes
    await asyncio.sleep(0.3)  # the old loop woke every 0.25 s with nothing to do
    assert passes == settled
    peer.gate.set()
    await finish(run)
    assert_complete(node)
