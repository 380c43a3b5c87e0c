"""Known-good copies: chunks are served unhashed while the stamp holds, re-hashed once it moves, never served bad."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import stamps
from shoal.store import CorruptChunk, Entry, Store

CHUNK = 16 * 1024
SIZE = 5 * CHUNK + 100


@pytest.fixture
def stores() -> Iterator[list[Store]]:
    opened: list[Store] = []
    yield opened
    for store in opened:
        store.close()


def open_store(data_dir: Path, stores: list[Store]) -> Store:
    store = Store(data_dir)
    store.open()
    stores.append(store)
    return store


@pytest.fixture
def published(tmp_path: Path, stores: list[Store]) -> tuple[Store, Entry, bytes]:
    source = tmp_path / "source.bin"
    data = os.urandom(SIZE)
    source.write_bytes(data)
    store = open_store(tmp_path / "data", stores)
    return store, store.publish(source, "source.bin", CHUNK), data


def flip(entry: Entry, offset: int) -> None:
    with open(entry.directory / "data", "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


def test_published_copy_is_known_good_and_stamped(published: tuple[Store, Entry, bytes]) -> None:
    store, entry, data = published
    assert store.known_good(entry)
    assert stamps.recorded(entry.directory) == entry.verified
    assert store.read_chunk(entry, 0) == data[:CHUNK]


def test_single_link_copy_changed_in_place_is_never_served(published: tuple[Store, Entry, bytes]) -> None:
    store, entry, data = published
    assert os.stat(entry.directory / "data").st_nlink == 1
    flip(entry, 2 * CHUNK + 5)
    assert not store.known_good(entry)
    assert store.read_chunk(entry, 1) == data[CHUNK : 2 * CHUNK]  # intact chunks still go out, hashed
    with pytest.raises(CorruptChunk):
        store.read_chunk(entry, 2)
    assert store.verify(entry) == [2]


def test_a_chmod_moves_the_stamp_and_a_full_pass_restores_it(published: tuple[Store, Entry, bytes]) -> None:
    store, entry, data = published
    os.chmod(entry.directory / "data", 0o400)
    assert not store.known_good(entry)
    for index in range(entry.have.size):
        assert store.read_chunk(entry, index) == data[index * CHUNK : (index + 1) * CHUNK]
    assert store.known_good(entry)  # every chunk passed at the new stamp


def test_verify_restamps_an_intact_copy(published: tuple[Store, Entry, bytes]) -> None:
    store, entry, _ = published
    os.utime(entry.directory / "data")
    assert not store.known_good(entry)
    assert store.verify(entry) == []
    assert store.known_good(entry)
    assert stamps.recorded(entry.directory) == entry.verified


def test_a_change_while_down_is_caught_at_the_next_start(
    published: tuple[Store, Entry, bytes], tmp_path: Path, stores: list[Store]
) -> None:
    store, entry, _ = published
    store.close()
    stores.remove(store)
    reopened = open_store(tmp_path / "data", stores)
    same = reopened.get(entry.file_id)
    assert same is not None and reopened.known_good(same)  # unchanged: still known-good after a restart
    reopened.close()
    stores.remove(reopened)
    flip(entry, 10)
    again = open_store(tmp_path / "data", stores)
    changed = again.get(entry.file_id)
    assert changed is not None and changed.verified is None and not again.known_good(changed)
    with pytest.raises(CorruptChunk):
        again.read_chunk(changed, 0)


def test_data_dir_is_private(tmp_path: Path, stores: list[Store]) -> None:
    root = tmp_path / "loose"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    open_store(root, stores)
    assert root.stat().st_mode & 0o777 == 0o700
    for sub in ("files", "partial", "tmp"):
        assert (root / sub).stat().st_mode & 0o077 == 0
