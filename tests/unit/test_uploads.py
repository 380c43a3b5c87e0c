"""Uploads.serve: upload slots, draining, the cap, corrupt-file eviction, super-seeding and the bitfield piggyback."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from helpers.clocks import FakeClock
from unit.manifests import CS, pattern

from shoal import content
from shoal.peer import uploads
from shoal.peer.errors import Busy, Corrupt, Draining, NotHeld
from shoal.peer.node import Stats
from shoal.peer.uploads import Uploads
from shoal.ratelimit import TokenBucket
from shoal.store import Entry, Store

NCHUNKS = 8


class Setup:
    def __init__(self, tmp_path: Path, slots: int = 2, rate: int = 0) -> None:
        self.store = Store(tmp_path / "data")
        self.store.open()
        source = tmp_path / "f.bin"
        source.write_bytes(pattern(NCHUNKS * CS))
        self.entry = self.store.publish(source, "f.bin", CS)
        self.stats = Stats()
        self.clock = FakeClock()
        self.bucket = TokenBucket(rate, self.clock)
        self.announced = 0
        self.uploads = Uploads(self.store, self.stats, self.bucket, slots, self.announce, self.clock)

    def announce(self) -> None:
        self.announced += 1


async def test_serves_a_held_chunk_and_counts_it(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    served = await s.uploads.serve(s.entry, 3, "them")
    assert served.data == pattern(NCHUNKS * CS)[3 * CS : 4 * CS]
    assert served.complete and served.bitfield == s.entry.have.to_bytes()  # one downloader: everything offered
    assert s.stats.uploaded_bytes == CS and s.stats.chunks_uploaded == 1
    assert s.stats.active_uploads == 1  # held until the reply's bytes are sent
    served.release()
    served.release()  # twice is harmless
    assert s.stats.active_uploads == 0


async def test_refuses_a_chunk_not_held(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    partial = Entry("cd" * 32, s.entry.manifest, tmp_path, content.Bitfield(NCHUNKS))
    with pytest.raises(NotHeld):
        await s.uploads.serve(partial, 0, "them")


async def test_refuses_while_draining(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.uploads.drain()
    with pytest.raises(Draining):
        await s.uploads.serve(s.entry, 0, "them")


async def test_busy_when_every_slot_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Setup(tmp_path, slots=2)
    gate = asyncio.Event()

    async def held(nbytes: int) -> None:
        await gate.wait()

    monkeypatch.setattr(s.bucket, "take", held)
    first = asyncio.create_task(s.uploads.serve(s.entry, 0, "a"))
    second = asyncio.create_task(s.uploads.serve(s.entry, 1, "b"))
    await asyncio.sleep(0)
    assert s.stats.active_uploads == 2
    with pytest.raises(Busy):
        await s.uploads.serve(s.entry, 2, "c")
    assert s.stats.busy_rejections == 1
    gate.set()
    replies = await asyncio.gather(first, second)
    assert s.stats.active_uploads == 2  # read, but not yet sent
    with pytest.raises(Busy):
        await s.uploads.serve(s.entry, 2, "c")
    for reply in replies:
        reply.release()
    assert s.stats.active_uploads == 0
    (await s.uploads.serve(s.entry, 2, "c")).release()  # a slot is free again


async def test_the_cap_is_paid_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Setup(tmp_path, rate=CS)
    sleeps: list[float] = []

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)

    monkeypatch.setattr("shoal.ratelimit.asyncio.sleep", fake_sleep)
    await s.uploads.serve(s.entry, 0, "a")
    assert sleeps == [pytest.approx(1.0)] and s.bucket.waits == 1


async def test_a_corrupt_file_is_dropped_and_announced(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    data = s.entry.directory / "data"
    os.link(data, tmp_path / "exported")  # the store re-verifies files with another link
    os.chmod(data, 0o644)
    fd = os.open(data, os.O_WRONLY)
    os.pwrite(fd, b"X", 0)
    os.close(fd)
    with pytest.raises(Corrupt, match="changed on disk"):
        await s.uploads.serve(s.entry, 0, "a")
    assert s.store.get(s.entry.file_id) is None and s.announced == 1
    assert s.stats.active_uploads == 0


async def test_super_seeding_offers_few_chunks_to_each_of_several_downloaders(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    await s.uploads.serve(s.entry, 0, "a")
    served = await s.uploads.serve(s.entry, 1, "b")  # two active downloaders now
    offered = content.Bitfield(NCHUNKS, served.bitfield)
    assert 0 < offered.count < NCHUNKS
    s.clock.advance(60)  # both idle: back to offering everything
    assert s.uploads.bitfield_for(s.entry, "a") == s.entry.have.to_bytes()


async def test_no_piggyback_for_huge_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Setup(tmp_path)
    monkeypatch.setattr(uploads, "PIGGYBACK_MAX_CHUNKS", NCHUNKS - 1)
    assert (await s.uploads.serve(s.entry, 0, "a")).bitfield == b""


async def test_origin_part_chunks_take_a_slot_and_count(tmp_path: Path) -> None:
    s = Setup(tmp_path, slots=1)
    calls = []

    async def read() -> bytes:
        calls.append(1)
        return b"p" * CS

    served = await s.uploads.serve_read(read)
    assert served is not None and served.data == b"p" * CS and not served.complete
    assert s.stats.active_uploads == 1 and s.stats.uploaded_bytes == CS and s.stats.chunks_uploaded == 1
    with pytest.raises(Busy):  # the one slot is held until the reply is sent: part chunks share the slots
        await s.uploads.serve_read(read)
    assert len(calls) == 1  # refused before reading
    served.release()
    assert s.stats.active_uploads == 0


async def test_origin_part_without_the_chunk_or_failing_gives_the_slot_back(tmp_path: Path) -> None:
    s = Setup(tmp_path, slots=1)

    async def nothing() -> None:
        return None

    async def broken() -> bytes:
        raise OSError("part file gone")

    assert await s.uploads.serve_read(nothing) is None
    with pytest.raises(OSError):
        await s.uploads.serve_read(broken)
    assert s.stats.active_uploads == 0 and s.stats.uploaded_bytes == 0
    s.uploads.drain()
    with pytest.raises(Draining):
        await s.uploads.serve_read(nothing)
