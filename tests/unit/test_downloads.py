"""The daemon's downloads table: one download per file, joined by every client, stopped by the last to cancel,
and the target of what callers' exchanges tell (Swarms)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shoal.config import PeerConfig
from shoal.peer.downloads import Downloads
from shoal.peer.errors import NoHolders
from shoal.peer.node import Node
from shoal.peer.swarm import Download
from shoal.store import Entry, Store
from shoal.v1 import common_pb2

FILE = "ab" * 32


class Scripted(Download):
    """A download whose run the test decides: it waits for `release`, then fails or returns."""

    def __init__(self, node: Node, file_id: str) -> None:
        super().__init__(node, None, None, file_id)  # type: ignore[arg-type]
        self.release = asyncio.Event()
        self.fail = False
        self.heard: list[common_pb2.PeerInfo] = []
        self.bits: list[tuple[str, bytes]] = []

    async def run(self) -> Entry:
        await self.release.wait()
        if self.fail:
            raise NoHolders("no live peer holds it")
        return Entry(self.file_id, common_pb2.Manifest(), Path("/nonexistent/files/x"), None)  # type: ignore[arg-type]

    def add_sources(self, peers: list[common_pb2.PeerInfo]) -> None:
        self.heard.extend(peers)

    def update_bitfield(self, address: str, bitfield: bytes, *, complete: bool) -> None:
        self.bits.append((address, bitfield))


def setup(tmp_path: Path) -> tuple[Node, Downloads, list[Scripted], list[int]]:
    store = Store(tmp_path)
    node = Node(PeerConfig(listen="127.0.0.1:0", trackers=("t:1",), data_dir=tmp_path), store, "me", "a:1")
    made: list[Scripted] = []
    announced: list[int] = []

    def make(file_id: str, output: str) -> Download:
        made.append(Scripted(node, file_id))
        return made[-1]

    return node, Downloads(node, make, lambda: announced.append(1)), made, announced


async def test_a_second_client_joins_the_running_download(tmp_path: Path) -> None:
    node, downloads, made, announced = setup(tmp_path)
    first, task = downloads.start(FILE, "")
    again, same = downloads.start(FILE, "")
    assert again is first and same is task and len(made) == 1 and len(downloads) == 1
    made[0].release.set()
    await task
    assert len(downloads) == 0 and announced == [1]
    assert node.stats.downloads_started == 1 and node.stats.downloads_completed == 1


async def test_failure_is_counted_and_raised(tmp_path: Path) -> None:
    node, downloads, made, _ = setup(tmp_path)
    _, task = downloads.start(FILE, "")
    made[0].fail = True
    made[0].release.set()
    with pytest.raises(NoHolders):
        await task
    assert node.stats.downloads_failed == 1 and len(downloads) == 0


async def test_only_the_last_client_to_cancel_stops_it(tmp_path: Path) -> None:
    _, downloads, made, _ = setup(tmp_path)
    _, task = downloads.start(FILE, "")
    downloads.attach(FILE)
    downloads.attach(FILE)
    downloads.detach(FILE, cancelled=True)
    await asyncio.sleep(0)
    assert not task.done()
    downloads.detach(FILE, cancelled=True)
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_exchange_news_reaches_the_running_download_only(tmp_path: Path) -> None:
    _, downloads, made, _ = setup(tmp_path)
    downloads.holders_heard(FILE, [common_pb2.PeerInfo(peer_id="p", address="b:1")])  # nothing runs yet: dropped
    _, task = downloads.start(FILE, "")
    holder = common_pb2.PeerInfo(peer_id="p", address="b:1")
    downloads.holders_heard(FILE, [holder])
    downloads.holders_heard(FILE, [])
    downloads.bitfield_heard(FILE, "b:1", b"\x01")
    downloads.bitfield_heard("cd" * 32, "b:1", b"\x01")
    assert made[0].heard == [holder] and made[0].bits == [("b:1", b"\x01")]
    for task in downloads.cancel_all():
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
