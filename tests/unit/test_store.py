"""The on-disk store: publish, partial downloads, verification, resume and export (tmp_path, no sockets)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.clocks import FakeClock
from unit.manifests import CS, build, chunks_of, pattern

from shoal import content, ingest
from shoal.content import ManifestBuilder
from shoal.store import NotHeld, SourceChanged, Store, StoreError
from shoal.v1 import common_pb2


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def opened(data_dir: Path) -> Iterator[list[Store]]:
    """Every Store a test opens, closed afterwards."""
    stores: list[Store] = []
    yield stores
    for store in stores:
        store.close()


@pytest.fixture
def store(data_dir: Path, opened: list[Store]) -> Store:
    return reopen(data_dir, opened)


def reopen(data_dir: Path, opened: list[Store]) -> Store:
    store = Store(data_dir)
    store.open()
    opened.append(store)
    return store


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---- layout -------------------------------------------------------------------------------------


def test_open_creates_layout(store: Store, data_dir: Path) -> None:
    assert (data_dir / "files").is_dir()
    assert (data_dir / "partial").is_dir()
    assert (data_dir / "tmp").is_dir()
    assert store.entries() == []


def test_open_empties_tmp(data_dir: Path, opened: list[Store]) -> None:
    (data_dir / "tmp" / "leftover-dir").mkdir(parents=True)
    (data_dir / "tmp" / "leftover-file").write_bytes(b"junk")
    reopen(data_dir, opened)
    assert listing(data_dir / "tmp") == []


def test_peer_id_persists(data_dir: Path, opened: list[Store]) -> None:
    first = reopen(data_dir, opened).peer_id()
    assert re.fullmatch(r"[0-9a-f]{32}", first), first
    assert reopen(data_dir, opened).peer_id() == first
    assert (data_dir / "peer_id").read_text().strip() == first
    assert listing(data_dir / "tmp") == []


def test_peer_ids_differ_between_data_dirs(tmp_path: Path, opened: list[Store]) -> None:
    assert reopen(tmp_path / "a", opened).peer_id() != reopen(tmp_path / "b", opened).peer_id()


# ---- publish ------------------------------------------------------------------------------------


def test_publish_copies_content_and_ids_match_builder(store: Store, tmp_path: Path, data_dir: Path) -> None:
    data = pattern(3 * CS + 123)
    source = tmp_path / "src.bin"
    source.write_bytes(data)
    entry = store.publish(source, "published.bin", CS)
    expected_id, expected_manifest = build(data, "published.bin")
    assert entry.file_id == expected_id
    assert entry.manifest == expected_manifest
    assert entry.complete
    assert entry.have.complete and entry.have.count == 4
    assert entry.directory == data_dir / "files" / expected_id
    assert (entry.directory / "data").read_bytes() == data
    assert common_pb2.Manifest.FromString((entry.directory / "manifest.pb").read_bytes()) == expected_manifest
    assert store.get(expected_id) is entry
    assert entry.info.file_id == expected_id and entry.info.name == "published.bin" and entry.info.size == len(data)
    assert listing(data_dir / "tmp") == []


def test_publish_is_a_copy_not_a_link(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(pattern(CS))
    entry = store.publish(source, "f", CS)
    source.write_bytes(b"changed afterwards")
    assert (entry.directory / "data").read_bytes() == pattern(CS)


def test_publish_twice_returns_existing(store: Store, tmp_path: Path, data_dir: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(pattern(2 * CS))
    first = store.publish(source, "one", CS)
    second = store.publish(source, "two", CS)
    assert second is first
    assert second.manifest.name == "one"
    assert len(store.entries()) == 1
    assert listing(data_dir / "files") == [first.file_id]
    assert listing(data_dir / "tmp") == []


def test_publish_missing_file(store: Store, tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(StoreError, match="no such file"):
        store.publish(tmp_path / "nope", "nope", CS)
    assert store.entries() == []
    assert listing(data_dir / "tmp") == []


def test_publish_directory(store: Store, tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(StoreError):
        store.publish(folder, "folder", CS)
    assert store.entries() == []
    assert listing(data_dir / "files") == []
    assert listing(data_dir / "tmp") == []


def test_publish_replaces_partial_of_same_content(store: Store, tmp_path: Path, data_dir: Path) -> None:
    data = pattern(2 * CS)
    file_id, manifest = build(data)
    store.begin(file_id, manifest, "")
    source = tmp_path / "src.bin"
    source.write_bytes(data)
    entry = store.publish(source, "f.bin", CS)
    assert entry.complete
    assert store.get(file_id) is entry
    assert listing(data_dir / "partial") == []


def test_publish_and_export_empty_file(store: Store, tmp_path: Path, opened: list[Store], data_dir: Path) -> None:
    source = tmp_path / "empty"
    source.write_bytes(b"")
    entry = store.publish(source, "empty", CS)
    assert entry.file_id == build(b"", "empty")[0]
    assert entry.manifest.size == 0 and len(entry.manifest.chunk_sha256) == 0
    assert entry.complete and entry.have.complete
    out = tmp_path / "out" / "empty.copy"
    out.parent.mkdir()
    store.export(entry, out)
    assert out.read_bytes() == b""
    again = reopen(data_dir, opened).get(entry.file_id)
    assert again is not None and again.complete


# ---- partial downloads --------------------------------------------------------------------------


def test_download_flow_out_of_order(store: Store, data_dir: Path) -> None:
    data = pattern(4 * CS + 17, seed=1)
    file_id, manifest = build(data)
    parts = chunks_of(data)
    entry = store.begin(file_id, manifest, "/somewhere/out.bin")
    assert not entry.complete
    assert entry.directory == data_dir / "partial" / file_id
    assert entry.output == "/somewhere/out.bin"
    assert (entry.directory / "data").stat().st_size == len(data)  # sparse, full length
    for index in (4, 0, 2, 3, 1):
        assert store.write_chunk(entry, index, parts[index]) is True
        assert store.read_chunk(entry, index) == parts[index]
        assert listing(data_dir / "files") == []
    assert store.write_chunk(entry, 2, parts[2]) is False  # already held
    assert entry.have.complete
    assert store.finish(entry) is entry
    assert entry.complete
    assert entry.directory == data_dir / "files" / file_id
    assert (entry.directory / "data").read_bytes() == data
    assert listing(entry.directory) == ["data", "manifest.pb", "verified"]
    assert listing(data_dir / "partial") == []
    assert store.read_chunk(entry, 4) == parts[4]
    assert store.finish(entry) is entry  # idempotent once complete


def test_begin_returns_existing_and_updates_output(store: Store, data_dir: Path) -> None:
    file_id, manifest = build(pattern(2 * CS))
    entry = store.begin(file_id, manifest, "/a")
    assert store.begin(file_id, manifest, "/b") is entry
    assert entry.output == "/b"
    assert (entry.directory / "output").read_text() == "/b"
    assert store.begin(file_id, manifest, "") is entry
    assert entry.output == "/b"


def test_begin_rejects_manifest_not_matching_id(store: Store, data_dir: Path) -> None:
    _, manifest = build(pattern(2 * CS))
    with pytest.raises(ValueError):
        store.begin("0" * 64, manifest, "")
    assert listing(data_dir / "partial") == []
    assert store.entries() == []


def test_read_chunk_not_held(store: Store) -> None:
    file_id, manifest = build(pattern(2 * CS))
    entry = store.begin(file_id, manifest, "")
    with pytest.raises(StoreError, match="not held"):
        store.read_chunk(entry, 0)


def test_have_file_tracks_written_chunks(store: Store) -> None:
    data = pattern(10 * CS)
    file_id, manifest = build(data)
    entry = store.begin(file_id, manifest, "")
    parts = chunks_of(data)
    for index in (0, 9, 3):
        store.write_chunk(entry, index, parts[index])
    assert (entry.directory / "have").read_bytes() == bytes([0b0000_1001, 0b0000_0010])


def test_finish_with_missing_chunk(store: Store, data_dir: Path) -> None:
    data = pattern(3 * CS)
    file_id, manifest = build(data)
    entry = store.begin(file_id, manifest, "")
    parts = chunks_of(data)
    store.write_chunk(entry, 0, parts[0])
    store.write_chunk(entry, 2, parts[2])
    with pytest.raises(StoreError, match="missing chunks"):
        store.finish(entry)
    assert not entry.complete
    assert listing(data_dir / "files") == []


def test_finish_trusts_verified_chunks_and_verify_finds_edits(store: Store, data_dir: Path) -> None:
    data = pattern(3 * CS + 5, seed=4)
    file_id, manifest = build(data)
    entry = store.begin(file_id, manifest, "")
    for index, part in enumerate(chunks_of(data)):
        store.write_chunk(entry, index, part)
    with open(entry.directory / "data", "r+b") as raw:  # flip a byte of chunk 1 behind the store's back
        raw.seek(CS + 100)
        byte = raw.read(1)
        raw.seek(CS + 100)
        raw.write(bytes([byte[0] ^ 0xFF]))
    assert store.finish(entry).complete  # no whole-file re-hash: every chunk was verified when it arrived
    assert store.verify(entry) == [1]  # on demand, the edit is found


def test_remove_deletes_partial(store: Store, data_dir: Path) -> None:
    data = pattern(2 * CS)
    file_id, manifest = build(data)
    entry = store.begin(file_id, manifest, "")
    store.write_chunk(entry, 0, chunks_of(data)[0])  # opens the cached fd
    store.remove(file_id)
    assert store.get(file_id) is None
    assert entry.fd == -1
    assert listing(data_dir / "partial") == []
    store.remove(file_id)  # removing twice is harmless


# ---- resume -------------------------------------------------------------------------------------


def test_resume_reloads_partial(data_dir: Path, opened: list[Store]) -> None:
    data = pattern(5 * CS - 3, seed=7)
    file_id, manifest = build(data)
    parts = chunks_of(data)
    first = reopen(data_dir, opened)
    entry = first.begin(file_id, manifest, "/out/file.bin")
    for index in (4, 1, 2):
        first.write_chunk(entry, index, parts[index])
    first.close()

    second = reopen(data_dir, opened)
    resumed = second.get(file_id)
    assert resumed is not None
    assert not resumed.complete
    assert resumed.have.count == 3
    assert [i for i in range(5) if i in resumed.have] == [1, 2, 4]
    assert resumed.output == "/out/file.bin"
    assert resumed.manifest == manifest
    for index in (4, 1, 2):
        assert second.read_chunk(resumed, index) == parts[index]
    for index in (0, 3):
        assert second.write_chunk(resumed, index, parts[index])
    second.finish(resumed)
    assert (data_dir / "files" / file_id / "data").read_bytes() == data


def test_resume_reloads_complete_files(data_dir: Path, tmp_path: Path, opened: list[Store]) -> None:
    source = tmp_path / "src"
    source.write_bytes(pattern(2 * CS + 1))
    entry = reopen(data_dir, opened).publish(source, "kept", CS)
    again = reopen(data_dir, opened).get(entry.file_id)
    assert again is not None
    assert again.complete and again.have.complete
    assert again.manifest == entry.manifest


def test_garbage_entries_discarded_on_open(data_dir: Path, opened: list[Store]) -> None:
    file_id, manifest = build(pattern(2 * CS))
    bad_id = build(pattern(2 * CS, seed=99))[0]
    for kind in ("files", "partial"):
        (data_dir / kind / "not-an-id").mkdir(parents=True)
    # A well-formed manifest stored under the wrong id.
    (data_dir / "partial" / bad_id).mkdir()
    (data_dir / "partial" / bad_id / "manifest.pb").write_bytes(manifest.SerializeToString())
    # A complete file whose data is the wrong size.
    (data_dir / "files" / file_id).mkdir()
    (data_dir / "files" / file_id / "manifest.pb").write_bytes(manifest.SerializeToString())
    (data_dir / "files" / file_id / "data").write_bytes(b"short")
    store = reopen(data_dir, opened)
    assert store.entries() == []
    assert listing(data_dir / "files") == []
    assert listing(data_dir / "partial") == []


def test_partial_with_wrong_length_have_discarded(data_dir: Path, opened: list[Store]) -> None:
    file_id, manifest = build(pattern(3 * CS))
    entry = reopen(data_dir, opened).begin(file_id, manifest, "")
    (entry.directory / "have").write_bytes(b"\x00\x00\x00")
    assert reopen(data_dir, opened).get(file_id) is None
    assert listing(data_dir / "partial") == []


@pytest.mark.parametrize("kind", ["files", "partial"])
def test_unparseable_manifest_discarded_on_open(data_dir: Path, opened: list[Store], kind: str) -> None:
    file_id, manifest = build(pattern(2 * CS))
    good_id, good_manifest = build(pattern(CS, seed=5))
    reopen(data_dir, opened).begin(good_id, good_manifest, "")
    broken = data_dir / kind / file_id
    broken.mkdir(parents=True)
    (broken / "manifest.pb").write_bytes(b"\xff\xff\xff garbage")
    (broken / "data").write_bytes(pattern(2 * CS))
    (broken / "have").write_bytes(b"\x00")
    store = reopen(data_dir, opened)
    assert store.get(file_id) is None
    assert not broken.exists()
    assert store.get(good_id) is not None  # the healthy entry still loads


# ---- export -------------------------------------------------------------------------------------


def test_export_writes_through_temp_and_replace(store: Store, tmp_path: Path) -> None:
    data = pattern(2 * CS + 9, seed=3)
    source = tmp_path / "src"
    source.write_bytes(data)
    entry = store.publish(source, "x", CS)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "result.bin"
    output.write_bytes(b"old contents to be replaced")
    old_inode = output.stat().st_ino
    store.export(entry, output)
    assert output.read_bytes() == data
    assert output.stat().st_ino != old_inode  # a rename over the old file, not an in-place rewrite
    assert listing(out_dir) == ["result.bin"]
    assert not any(".shoal-" in name for name in listing(out_dir))


def test_export_uses_a_hidden_temp_name(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "src"
    source.write_bytes(pattern(CS))
    entry = store.publish(source, "x", CS)
    output = tmp_path / "result.bin"
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append((os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    store.export(entry, output)
    assert len(seen) == 1
    src, dst = seen[0]
    assert Path(dst) == output
    assert Path(src).parent == tmp_path
    assert Path(src).name.startswith(".result.bin.shoal-")


def test_export_to_missing_directory(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.write_bytes(pattern(CS))
    entry = store.publish(source, "x", CS)
    with pytest.raises(StoreError, match="output directory does not exist"):
        store.export(entry, tmp_path / "missing" / "out.bin")
    assert not (tmp_path / "missing").exists()


def test_export_onto_a_directory_cleans_temp(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.write_bytes(pattern(CS))
    entry = store.publish(source, "x", CS)
    out_dir = tmp_path / "out"
    (out_dir / "taken").mkdir(parents=True)
    (out_dir / "taken" / "inside").write_bytes(b"keep")
    with pytest.raises(StoreError):
        store.export(entry, out_dir / "taken")
    assert listing(out_dir) == ["taken"]


def test_export_partial_refused(store: Store, tmp_path: Path) -> None:
    file_id, manifest = build(pattern(CS))
    entry = store.begin(file_id, manifest, "")
    with pytest.raises(StoreError, match="not complete"):
        store.export(entry, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


# ---- bookkeeping: bytes used, last use, pins, rm, cancel, stop ----------------------------------


def clocked(data_dir: Path, opened: list[Store], clock: FakeClock) -> Store:
    store = Store(data_dir, clock=clock)
    store.open()
    opened.append(store)
    return store


def held_sum(store: Store) -> int:
    return sum(e.held_bytes for e in store.entries())


def source_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_bytes_used_follows_publish_writes_finish_remove_and_open(
    store: Store, tmp_path: Path, data_dir: Path, opened: list[Store]
) -> None:
    assert store.bytes_used == 0
    published = store.publish(source_file(tmp_path, "a", pattern(2 * CS + 1)), "a", CS)
    assert store.bytes_used == 2 * CS + 1
    data = pattern(3 * CS + 5, seed=2)
    file_id, manifest = build(data)
    entry = store.begin(file_id, manifest, "")
    parts = chunks_of(data)
    assert store.bytes_used == 2 * CS + 1  # a sparse file holds nothing yet
    store.write_chunk(entry, 3, parts[3])
    store.write_chunk(entry, 3, parts[3])  # already held: counted once
    assert entry.held_bytes == 5 and store.bytes_used == 2 * CS + 6
    store.write_chunk(entry, 0, parts[0])
    assert store.bytes_used == 3 * CS + 6 == held_sum(store)
    store.close()
    again = reopen(data_dir, opened)
    assert again.bytes_used == 3 * CS + 6 == held_sum(again)
    resumed = again.get(file_id)
    assert resumed is not None
    for index in (1, 2):
        again.write_chunk(resumed, index, parts[index])
    again.finish(resumed)
    assert again.bytes_used == 2 * CS + 1 + len(data) == held_sum(again)
    again.delete(published.file_id)
    assert again.bytes_used == len(data)
    again.remove(file_id)
    assert again.bytes_used == 0


def test_last_use_set_on_publish_finish_export_and_serve(data_dir: Path, tmp_path: Path, opened: list[Store]) -> None:
    clock = FakeClock(1_700_000_000.0)
    store = clocked(data_dir, opened, clock)
    entry = store.publish(source_file(tmp_path, "a", pattern(2 * CS)), "a", CS)
    assert entry.last_used == 1_700_000_000.0
    assert float((entry.directory / "used").read_text()) == 1_700_000_000.0  # written with the entry
    clock.advance(100)
    store.read_chunk(entry, 1)
    assert entry.last_used == 1_700_000_100.0
    assert float((entry.directory / "used").read_text()) == 1_700_000_000.0  # serving touches memory only
    clock.advance(100)
    store.export(entry, tmp_path / "out.bin")
    assert entry.last_used == 1_700_000_200.0
    data = pattern(CS, seed=9)
    file_id, manifest = build(data)
    clock.advance(100)
    partial = store.begin(file_id, manifest, "")
    assert partial.last_used == 1_700_000_300.0
    store.write_chunk(partial, 0, data)
    clock.advance(100)
    store.finish(partial)
    assert partial.last_used == 1_700_000_400.0
    assert store.flush_usage() == 2
    assert store.flush_usage() == 0  # nothing new
    store.close()
    again = clocked(data_dir, opened, FakeClock(0.0))
    assert again.get(entry.file_id).last_used == 1_700_000_200.0  # type: ignore[union-attr]
    assert again.get(file_id).last_used == 1_700_000_400.0  # type: ignore[union-attr]


def test_close_flushes_last_use_and_a_missing_record_falls_back_to_the_manifest_time(
    data_dir: Path, tmp_path: Path, opened: list[Store]
) -> None:
    clock = FakeClock(2_000_000_000.0)
    store = clocked(data_dir, opened, clock)
    entry = store.publish(source_file(tmp_path, "a", pattern(CS)), "a", CS)
    clock.advance(7)
    store.read_chunk(entry, 0)
    store.close()
    assert float((entry.directory / "used").read_text()) == 2_000_000_007.0
    (entry.directory / "used").write_text("garbage")
    mtime = (entry.directory / "manifest.pb").stat().st_mtime
    assert clocked(data_dir, opened, clock).get(entry.file_id).last_used == mtime  # type: ignore[union-attr]


def test_pin_persists_moves_with_completion_and_unpins(data_dir: Path, opened: list[Store]) -> None:
    store = reopen(data_dir, opened)
    data = pattern(2 * CS, seed=4)
    file_id, manifest = build(data)
    entry = store.begin(file_id, manifest, "")
    assert store.pin(file_id) is entry and entry.pinned
    for index, part in enumerate(chunks_of(data)):
        store.write_chunk(entry, index, part)
    store.finish(entry)
    store.close()
    again = reopen(data_dir, opened)
    loaded = again.get(file_id)
    assert loaded is not None and loaded.complete and loaded.pinned
    again.pin(file_id, False)
    assert not loaded.pinned
    assert not reopen(data_dir, opened).get(file_id).pinned  # type: ignore[union-attr]
    with pytest.raises(NotHeld):
        again.pin("f" * 64)


def test_delete_complete_and_partial_and_not_held(store: Store, tmp_path: Path, data_dir: Path) -> None:
    complete = store.publish(source_file(tmp_path, "a", pattern(CS)), "a", CS)
    file_id, manifest = build(pattern(2 * CS, seed=5))
    store.begin(file_id, manifest, "")
    assert store.delete(complete.file_id) is complete
    assert store.delete(file_id).file_id == file_id
    assert store.entries() == [] and listing(data_dir / "files") == [] and listing(data_dir / "partial") == []
    with pytest.raises(NotHeld):
        store.delete(file_id)
    assert issubclass(NotHeld, StoreError)


def test_cancel_drops_the_partial_so_nothing_resumes(data_dir: Path, tmp_path: Path, opened: list[Store]) -> None:
    store = reopen(data_dir, opened)
    data = pattern(3 * CS, seed=6)
    file_id, manifest = build(data)
    entry = store.begin(file_id, manifest, "/out")
    store.write_chunk(entry, 0, chunks_of(data)[0])
    complete = store.publish(source_file(tmp_path, "a", pattern(CS)), "a", CS)
    with pytest.raises(NotHeld, match="nothing to cancel"):
        store.cancel(complete.file_id)
    assert store.get(complete.file_id) is complete
    assert store.cancel(file_id) is entry
    assert store.bytes_used == CS
    with pytest.raises(NotHeld):
        store.cancel(file_id)
    store.close()
    again = reopen(data_dir, opened)
    assert again.get(file_id) is None and again.resumable() == []
    assert listing(data_dir / "partial") == []


def test_stop_keeps_chunks_but_not_resumed_until_asked_again(data_dir: Path, opened: list[Store]) -> None:
    store = reopen(data_dir, opened)
    data = pattern(3 * CS, seed=7)
    file_id, manifest = build(data)
    parts = chunks_of(data)
    entry = store.begin(file_id, manifest, "/out")
    store.write_chunk(entry, 1, parts[1])
    assert store.resumable() == [entry]
    store.stop(file_id)
    store.stop(file_id)  # twice is harmless
    assert entry.stopped and store.resumable() == []
    store.close()
    again = reopen(data_dir, opened)
    loaded = again.get(file_id)
    assert loaded is not None and loaded.stopped and loaded.have.count == 1
    assert again.resumable() == []
    assert again.begin(file_id, manifest, "/out") is loaded  # `get` again: resume from here
    assert not loaded.stopped and again.resumable() == [loaded]
    assert not (loaded.directory / "stopped").exists()
    with pytest.raises(NotHeld):
        again.stop("e" * 64)


def test_stopped_marker_is_gone_once_complete(store: Store) -> None:
    data = pattern(CS, seed=8)
    file_id, manifest = build(data)
    entry = store.begin(file_id, manifest, "")
    store.stop(file_id)
    store.write_chunk(entry, 0, data)
    store.finish(entry)
    assert not entry.stopped and listing(entry.directory) == ["data", "manifest.pb", "verified"]
    store.stop(file_id)  # a complete file: nothing to stop
    assert not entry.stopped


def test_evict_skips_pinned_and_missing(store: Store, tmp_path: Path) -> None:
    entry = store.publish(source_file(tmp_path, "a", pattern(CS)), "a", CS)
    store.pin(entry.file_id)
    assert store.evict(entry.file_id) is None and store.get(entry.file_id) is entry
    store.pin(entry.file_id, False)
    assert store.evict(entry.file_id) is entry and store.get(entry.file_id) is None
    assert store.evict(entry.file_id) is None


def test_remove_while_a_chunk_is_read_deletes_after_the_read(
    store: Store, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = pattern(2 * CS, seed=3)
    entry = store.publish(source_file(tmp_path, "a", data), "a", CS)
    real_pread = os.pread
    seen: list[list[str]] = []

    def pread(fd: int, length: int, offset: int) -> bytes:
        store.delete(entry.file_id)  # `rm` lands while the reply is reading
        seen.append(listing(data_dir / "files"))
        assert store.get(entry.file_id) is None
        assert entry.directory.exists() and entry.complete  # set aside under tmp/, still readable
        return real_pread(fd, length, offset)

    monkeypatch.setattr("shoal.store.os.pread", pread)
    assert store.read_chunk(entry, 1) == chunks_of(data)[1]
    monkeypatch.setattr("shoal.store.os.pread", real_pread)
    assert seen == [[]]  # the id was free at once: the same content could be held again
    assert not entry.directory.exists() and entry.fd == -1
    assert listing(data_dir / "tmp") == []
    with pytest.raises(NotHeld):
        store.read_chunk(entry, 0)
    assert store.bytes_used == 0


# ---- put: move, reflink, link, copy; content already held ----------------------------------------


def test_put_copies_by_default_and_leaves_the_source_alone(store: Store, tmp_path: Path) -> None:
    source = source_file(tmp_path, "src", pattern(2 * CS))
    source.chmod(0o640)
    placed = store.put(source, "f", CS)
    assert placed.method in ("copy", "reflink")  # reflink where this filesystem has it
    data = placed.entry.directory / "data"
    assert data.stat().st_ino != source.stat().st_ino
    assert stat.S_IMODE(data.stat().st_mode) == 0o444
    assert stat.S_IMODE(source.stat().st_mode) == 0o640
    assert (placed.held_as, placed.added_name) == ("", False)


def test_put_link_shares_the_inode_and_makes_it_read_only(store: Store, tmp_path: Path) -> None:
    data = pattern(3 * CS + 7, seed=1)
    source = source_file(tmp_path, "src", data)
    placed = store.put(source, "f", CS, link=True)
    assert placed.method in ("link", "reflink")
    if placed.method == "reflink":  # a filesystem with clones: nothing is shared, nothing made read-only
        return
    stored = placed.entry.directory / "data"
    assert stored.stat().st_ino == source.stat().st_ino and stored.stat().st_nlink == 2
    assert stat.S_IMODE(source.stat().st_mode) == 0o444  # the user's file is read-only now, as documented
    assert placed.entry.file_id == build(data)[0]
    assert store.read_chunk(placed.entry, 3) == chunks_of(data)[3]


def test_put_link_falls_back_to_copy(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shoal.ingest.reflink", lambda src, dst: False)

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr("shoal.ingest.os.link", no_link)
    source = source_file(tmp_path, "src", pattern(2 * CS))
    source.chmod(0o600)
    placed = store.put(source, "f", CS, link=True)
    assert placed.method == "copy"
    assert (placed.entry.directory / "data").read_bytes() == pattern(2 * CS)
    assert stat.S_IMODE(source.stat().st_mode) == 0o600


def test_put_reflink_when_the_filesystem_clones(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_clone(src: int, dst: int) -> bool:  # what FICLONE gives: the same bytes in an independent file
        os.write(dst, os.pread(src, 1 << 20, 0))
        return True

    monkeypatch.setattr("shoal.ingest.reflink", fake_clone)
    source = source_file(tmp_path, "src", pattern(2 * CS + 3))
    source.chmod(0o644)
    placed = store.put(source, "f", CS, link=True)
    assert placed.method == "reflink"
    assert stat.S_IMODE(source.stat().st_mode) == 0o644  # the user's file stays theirs
    assert (placed.entry.directory / "data").stat().st_ino != source.stat().st_ino
    assert placed.entry.file_id == build(pattern(2 * CS + 3))[0]


def test_real_reflink_attempt_falls_back_cleanly(tmp_path: Path) -> None:
    source = source_file(tmp_path, "src", pattern(CS))
    with open(source, "rb") as src, open(tmp_path / "clone", "wb") as dst:
        cloned = ingest.reflink(src.fileno(), dst.fileno())
    assert (tmp_path / "clone").read_bytes() == (pattern(CS) if cloned else b"")


def test_put_move_takes_the_file_in(store: Store, tmp_path: Path, data_dir: Path) -> None:
    data = pattern(2 * CS, seed=2)
    source = source_file(tmp_path, "src", data)
    inode = source.stat().st_ino
    placed = store.put(source, "f", CS, move=True)
    assert placed.method == "move" and not source.exists()
    stored = placed.entry.directory / "data"
    assert stored.stat().st_ino == inode and stored.read_bytes() == data
    assert stat.S_IMODE(stored.stat().st_mode) == 0o444
    assert listing(data_dir / "tmp") == []


def test_put_move_across_filesystems_copies_then_deletes(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = source_file(tmp_path, "src", pattern(2 * CS, seed=3))
    real_rename = os.rename

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(src) == source:
            raise OSError(errno.EXDEV, "cross-device link")
        real_rename(src, dst)

    monkeypatch.setattr("shoal.ingest.os.rename", rename)
    placed = store.put(source, "f", CS, move=True)
    assert placed.method in ("copy", "reflink") and not source.exists()
    assert (placed.entry.directory / "data").read_bytes() == pattern(2 * CS, seed=3)


def grow_source_while_hashing(monkeypatch: pytest.MonkeyPatch, source: Path) -> contextlib.closing[Any]:
    """Append to the source when the first chunk is hashed, as a writer still writing (fd open) would."""
    real_add = ManifestBuilder.add
    fd = os.open(source, os.O_WRONLY | os.O_APPEND)

    def add(builder: ManifestBuilder, chunk: bytes) -> None:
        if not getattr(builder, "_grown", False):
            builder._grown = True  # type: ignore[attr-defined]
            os.write(fd, b"more bytes")
        real_add(builder, chunk)

    monkeypatch.setattr(ManifestBuilder, "add", add)
    return contextlib.closing(os.fdopen(fd, "wb"))


@pytest.mark.parametrize("how", ["copy", "link", "move"])
def test_put_refuses_a_source_that_changes_while_read(
    store: Store, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr("shoal.ingest.reflink", lambda src, dst: False)
    source = source_file(tmp_path, "src", pattern(3 * CS))
    source.chmod(0o640)
    writer = grow_source_while_hashing(monkeypatch, source)
    with writer, pytest.raises(SourceChanged, match="changed while it was being read"):
        store.put(source, "f", CS, link=how == "link", move=how == "move")
    assert store.entries() == [] and listing(data_dir / "files") == [] and listing(data_dir / "tmp") == []
    assert source.exists() and source.read_bytes() == pattern(3 * CS) + b"more bytes"  # moved back if moved
    assert stat.S_IMODE(source.stat().st_mode) == 0o640
    assert issubclass(SourceChanged, StoreError)


def test_put_of_held_content_adds_the_name(data_dir: Path, tmp_path: Path, opened: list[Store]) -> None:
    store = reopen(data_dir, opened)
    data = pattern(2 * CS, seed=11)
    first = store.put(source_file(tmp_path, "one.src", data), "one", CS)
    second_source = source_file(tmp_path, "two.src", data)
    second_source.chmod(0o600)
    second = store.put(second_source, "two", CS, link=True)
    assert second.entry is first.entry and second.entry.file_id == first.entry.file_id
    assert (second.held_as, second.added_name) == ("one", True)
    assert stat.S_IMODE(second_source.stat().st_mode) == 0o600  # not kept, so not left read-only
    assert first.entry.names == ["one", "two"]
    assert store.put(source_file(tmp_path, "three.src", data), "two", CS).added_name is False
    assert store.put(source_file(tmp_path, "four.src", data), "one", CS).held_as == "one"
    assert len(store.entries()) == 1 and store.bytes_used == 2 * CS
    store.close()
    assert reopen(data_dir, opened).get(first.entry.file_id).names == ["one", "two"]  # type: ignore[union-attr]


def test_put_keeps_the_pin_of_a_partial_it_replaces(store: Store, tmp_path: Path) -> None:
    data = pattern(2 * CS, seed=12)
    file_id, manifest = build(data)
    store.begin(file_id, manifest, "")
    store.pin(file_id)
    entry = store.publish(source_file(tmp_path, "src", data), "f.bin", CS)
    assert entry.complete and entry.pinned and (entry.directory / "pinned").exists()
    assert store.bytes_used == 2 * CS


def test_cancel_during_a_download_stops_its_writes_and_finish(store: Store, data_dir: Path) -> None:
    data = pattern(3 * CS, seed=13)
    file_id, manifest = build(data)
    parts = chunks_of(data)
    entry = store.begin(file_id, manifest, "")
    store.write_chunk(entry, 0, parts[0])
    store.cancel(file_id)
    assert store.bytes_used == 0
    for index in (1, 2):
        with pytest.raises(StoreError):  # the partial file is gone
            store.write_chunk(entry, index, parts[index])
    entry.have = content.Bitfield.full(3)  # as if the last chunks had landed just before the cancel
    with pytest.raises(StoreError):  # a typed error, never a raw OSError, and nothing lands in files/
        store.finish(entry)
    assert store.bytes_used == 0 and listing(data_dir / "files") == [] and listing(data_dir / "partial") == []


def test_a_download_is_flushed_as_it_is_written(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shoal.store.SYNC_EVERY", 2 * CS)
    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr("shoal.store.os.fdatasync", fdatasync)
    data = pattern(5 * CS, seed=3)
    file_id, manifest = build(data)
    entry = store.begin(file_id, manifest, "")
    parts = chunks_of(data)
    store.write_chunk(entry, 3, parts[3])
    assert synced == []  # one chunk: below SYNC_EVERY
    store.write_chunk(entry, 0, parts[0])
    assert len(synced) == 1 and entry.unsynced == 0
    for index in (1, 2, 4):
        store.write_chunk(entry, index, parts[index])
    assert len(synced) == 2
    assert store.finish(entry).complete


def test_open_keeps_a_volume_root_it_cannot_chmod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Kubernetes volume's root is root's (group fsGroup): the store still opens, its own dirs stay 0700."""
    root = tmp_path / "volume"
    root.mkdir(mode=0o775)
    os.chmod(root, 0o2775)
    real_chmod = os.chmod

    def chmod(path: Any, mode: int, **kwargs: Any) -> None:
        if Path(path) == root:
            raise PermissionError(1, "Operation not permitted", str(path))
        real_chmod(path, mode, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)
    store = Store(root)
    store.open()
    try:
        assert (root / "files").stat().st_mode & 0o777 == 0o700  # setgid inherited from the volume is fine
        assert stat.S_IMODE(root.stat().st_mode) == 0o2775
    finally:
        store.close()
