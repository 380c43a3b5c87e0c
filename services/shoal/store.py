"""The data dir: complete files, partial downloads with resume state, atomic publish and export.

Layout under DATA_DIR:
  peer_id                       this peer's stable id
  files/<id>/{manifest.pb,data} complete, verified files
  partial/<id>/{manifest.pb,data,have,output}  downloads in progress (have = bitfield of verified chunks)
  <entry>/used, pinned, stopped, names           bookkeeping: last use (unix time, written lazily), pin marker,
                                                 "do not resume at start" marker, extra names (one a line)
  tmp/                          scratch; emptied at start
A download becomes visible under files/ only after every chunk is verified and flushed (directory rename).
Every method here blocks: the daemon calls them through asyncio.to_thread.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import DecodeError

from shoal import content, ingest, stamps
from shoal.bookkeeping import Bookkeeping
from shoal.entries import (
    CorruptChunk,
    DiskFull,
    Entry,
    NotHeld,
    Placed,
    SourceChanged,
    StoreError,
    check_output,
    check_source,
    explain,
)
from shoal.v1 import common_pb2
from shoal.verification import Verification

__all__ = [
    "CorruptChunk",
    "DiskFull",
    "Entry",
    "NotHeld",
    "Placed",
    "SourceChanged",
    "Store",
    "StoreError",
    "check_output",
    "check_source",
]

logger = logging.getLogger(__name__)

SYNC_EVERY = 64 * 1024 * 1024  # flush a download's data file every 64 MiB written, so finishing has little left


class Store(Bookkeeping, Verification):
    """The files this peer holds and the downloads it is running, on disk."""

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = data_dir
        self._clock = clock  # wall clock: last use is shown to users and kept across restarts
        self.bytes_used = 0  # shoal_peer_store_bytes: held_bytes summed over every entry
        self._used_lock = threading.Lock()
        self._dirty: set[str] = set()  # entries whose last use is newer than their `used` file
        self._files = data_dir / "files"
        self._partial = data_dir / "partial"
        self._tmp = data_dir / "tmp"
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def open(self) -> None:
        """Create the layout, clear scratch, and load every complete and partial file."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.root.stat().st_mode & 0o077:
            try:
                os.chmod(self.root, 0o700)  # not readable by other users (the daemon may open it to a control group)
            except PermissionError:  # a volume's root owned by root with an fsGroup, as Kubernetes mounts it
                logger.warning("data dir %s is not this user's to chmod; what it holds is still 0700/0600", self.root)
        for directory in (self._files, self._partial):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(mode=0o700, parents=True)
        for directory in sorted(self._files.iterdir()):
            self._load(directory, complete=True)
        for directory in sorted(self._partial.iterdir()):
            self._load(directory, complete=False)

    def _load(self, directory: Path, *, complete: bool) -> None:
        try:
            file_id = content.parse_file_id(directory.name)
            manifest = common_pb2.Manifest.FromString((directory / "manifest.pb").read_bytes())
            content.validate_manifest(manifest, file_id)
            nchunks = len(manifest.chunk_sha256)
            if complete:
                if (directory / "data").stat().st_size != manifest.size:
                    raise content.ContentError("data size does not match manifest")
                have = content.Bitfield.full(nchunks)
            else:
                have = content.Bitfield(nchunks, (directory / "have").read_bytes())
            output_file = directory / "output"
            output = output_file.read_text() if output_file.exists() else ""
        except (OSError, ValueError, DecodeError) as err:
            logger.warning("discarding unreadable store entry %s: %s", directory, err)
            shutil.rmtree(directory, ignore_errors=True)
            return
        entry = self._entries[file_id] = Entry(file_id, manifest, directory, have, output)
        if complete:
            entry.verified = stamps.recorded(directory)  # None: changed while we were down, re-hashed as served
        self._load_bookkeeping(entry)
        self._count(entry.held_bytes)
        logger.info("loaded %s %s (%d/%d chunks)", "file" if complete else "partial", file_id, have.count, nchunks)

    def peer_id(self) -> str:
        """This peer's id, created once and kept in the data dir."""
        path = self.root / "peer_id"
        if path.exists():
            return path.read_text().strip()
        new_id = uuid.uuid4().hex
        tmp = self._tmp / "peer_id"
        tmp.write_text(new_id)
        os.replace(tmp, path)
        return new_id

    def get(self, file_id: str) -> Entry | None:
        """The entry for a file, complete or partial."""
        return self._entries.get(file_id)

    def entries(self) -> list[Entry]:
        """Every entry."""
        return list(self._entries.values())

    def publish(self, source: Path, name: str, chunk_size: int, *, move: bool = False, link: bool = False) -> Entry:
        """Take a local file into the store while chunking and hashing it, then add it atomically (see put)."""
        return self.put(source, name, chunk_size, move=move, link=link).entry

    def put(self, source: Path, name: str, chunk_size: int, *, move: bool = False, link: bool = False) -> Placed:
        """Publish a local file: move it in, reflink it, hard-link it (link=True) or copy it, as ingest explains.

        Content already held keeps its id and entry (the name is not part of the id); a new name is added
        to its aliases and Placed.held_as gives the name it was held under.
        """
        builder = content.ManifestBuilder(name, chunk_size)
        scratch = self._tmp / uuid.uuid4().hex
        scratch.mkdir()
        method: ingest.Method | None = None
        try:
            try:
                mode = source.stat().st_mode
                method = ingest.place(source, scratch / "data", builder, move=move, link=link)
                file_id, manifest = builder.finish()
                placed = self._add_published(file_id, manifest, scratch, name, method)
            except ingest.ChangedWhileReading as err:
                raise SourceChanged(str(err)) from err
            except FileNotFoundError as err:
                raise StoreError(f"no such file: {source}") from err
            except IsADirectoryError as err:
                raise StoreError(f"not a file: {source}") from err
            except OSError as err:
                raise explain(err, f"publishing {source}") from err
        except BaseException:
            if method == "move":  # renamed in but not kept: give the user's file back
                os.rename(scratch / "data", source)
            if method in ("move", "link"):
                ingest.restore_mode(source, mode)
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if placed.held_as and method == "link":
            ingest.restore_mode(source, mode)
        if move and method != "move":  # moved across filesystems: the copy is kept, so the original goes
            source.unlink(missing_ok=True)
        return placed

    def _add_published(
        self, file_id: str, manifest: common_pb2.Manifest, scratch: Path, name: str, method: ingest.Method
    ) -> Placed:
        with self._lock:
            existing = self._entries.get(file_id)
            if existing is not None and existing.complete:
                added = name not in existing.names
                if added:
                    existing.aliases.append(name)
                    self._write_small(
                        existing.directory / "names", "".join(f"{n}\n" for n in existing.aliases).encode()
                    )
                self.touch(existing)
                return Placed(existing, method, held_as=existing.manifest.name, added_name=added)
            (scratch / "manifest.pb").write_bytes(manifest.SerializeToString())
            now = self._clock()
            (scratch / "used").write_text(repr(now))
            pinned = existing is not None and existing.pinned
            if pinned:
                (scratch / "pinned").touch()
            final = self._files / file_id
            if existing is not None:  # a partial download of the same content: the local copy wins
                self._drop(existing)
            verified = stamps.record(scratch)  # hashed while it was placed
            os.rename(scratch, final)
            entry = Entry(file_id, manifest, final, content.Bitfield.full(len(manifest.chunk_sha256)))
            entry.last_used, entry.pinned, entry.verified = now, pinned, verified
            self._entries[file_id] = entry
            self._count(entry.held_bytes)
            return Placed(entry, method)

    def begin(self, file_id: str, manifest: common_pb2.Manifest, output: str) -> Entry:
        """Start (or find) a partial download: a sparse data file and an empty bitfield on disk."""
        with self._lock:
            existing = self._entries.get(file_id)
            if existing is not None:
                if output and not existing.complete and existing.output != output:
                    self._write_small(existing.directory / "output", output.encode())
                    existing.output = output
                if existing.stopped:  # asked for again: resume it, now and at the next start
                    (existing.directory / "stopped").unlink(missing_ok=True)
                    existing.stopped = False
                return existing
            content.validate_manifest(manifest, file_id)
            nchunks = len(manifest.chunk_sha256)
            scratch = self._tmp / uuid.uuid4().hex
            try:
                scratch.mkdir()
                (scratch / "manifest.pb").write_bytes(manifest.SerializeToString())
                (scratch / "have").write_bytes(bytes((nchunks + 7) // 8))
                (scratch / "output").write_text(output)
                with open(scratch / "data", "wb") as data:
                    data.truncate(manifest.size)
                final = self._partial / file_id
                os.rename(scratch, final)
            except OSError as err:
                shutil.rmtree(scratch, ignore_errors=True)
                raise explain(err, "starting download") from err
            entry = Entry(file_id, manifest, final, content.Bitfield(nchunks), output, last_used=self._clock())
            self._entries[file_id] = entry
            return entry

    def _count(self, delta: int) -> None:
        with self._used_lock:
            self.bytes_used += delta

    def _fd(self, entry: Entry, writable: bool) -> int:
        with entry.lock:
            if entry.fd < 0:
                entry.fd = os.open(entry.directory / "data", os.O_RDWR if writable else os.O_RDONLY)
            return entry.fd

    def read_chunk(self, entry: Entry, index: int) -> bytes:
        """Read a chunk this peer has verified.

        A complete file with another hard link (an exported copy) could have been edited through
        that link, so its chunks are re-verified before they leave; a mismatch raises CorruptChunk.
        """
        if index not in entry.have:
            raise StoreError(f"chunk {index} not held")
        with entry.lock:
            if entry.retired:
                raise NotHeld(f"file {entry.file_id} was removed from this peer")
            entry.readers += 1
            entry.last_used = self._clock()  # in memory; flush_usage persists it
        self._dirty.add(entry.file_id)
        try:
            offset, length = content.chunk_span(entry.manifest, index)
            fd = self._fd(entry, writable=not entry.complete)
            data = os.pread(fd, length, offset)
            changed = entry.complete and not self._still_good(entry, fd, index, data)
        finally:
            with entry.lock:
                entry.readers -= 1
                last_out = entry.retired and entry.readers == 0
            if last_out:
                self._delete(entry)
        if changed:
            raise CorruptChunk(f"chunk {index} of {entry.file_id} changed on disk (edited through an exported link?)")
        return data

    def write_chunk(self, entry: Entry, index: int, data: bytes | memoryview) -> bool:
        """Write a verified chunk, then record it in the on-disk bitfield; False if already held."""
        if index in entry.have:
            return False
        offset, _ = content.chunk_span(entry.manifest, index)
        try:
            fd = self._fd(entry, writable=True)
            with entry.write_lock:
                written = os.pwrite(fd, data, offset)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write")
            with entry.lock:
                if not entry.have.set(index):
                    return False
                position, value = entry.have.byte(index)
                if entry.have_fd < 0:
                    entry.have_fd = os.open(entry.directory / "have", os.O_WRONLY)
                os.pwrite(entry.have_fd, bytes([value]), position)
                if not entry.retired:  # a dropped entry's bytes were already taken off
                    self._count(len(data))
                entry.unsynced += len(data)
                flush = entry.unsynced >= SYNC_EVERY
                if flush:
                    entry.unsynced = 0
            if flush:  # the disk writes while the download runs; the fsync in finish has only the tail
                os.fdatasync(fd)
        except OSError as err:
            raise explain(err, f"writing chunk {index}") from err
        return True

    def finish(self, entry: Entry) -> Entry:
        """Flush a download whose every chunk is verified, then show it as complete.

        No whole-file re-hash: the file id commits to every chunk hash, so verified chunks are the published file.
        """
        if entry.complete:
            return entry
        if not entry.have.complete:
            raise StoreError("download is missing chunks")
        try:
            os.fsync(self._fd(entry, writable=True))
        except OSError as err:
            raise explain(err, "flushing download") from err
        with self._lock:
            if entry.retired:  # cancelled or removed while it was being flushed
                raise NotHeld(f"the download of {entry.file_id} was cancelled")
            if entry.have_fd >= 0:
                os.close(entry.have_fd)
                entry.have_fd = -1
            final = self._files / entry.file_id
            os.chmod(entry.directory / "data", 0o444)
            entry.verified = stamps.record(entry.directory)  # the chunks were verified as they arrived
            os.rename(entry.directory, final)
            (final / "have").unlink(missing_ok=True)
            (final / "output").unlink(missing_ok=True)
            (final / "stopped").unlink(missing_ok=True)
            entry.directory = final
            entry.stopped = False
            self.touch(entry)
        return entry

    def export(self, entry: Entry, output: Path, *, link: bool = True) -> None:
        """Place a complete file at `output` via a temporary name and a rename.

        On the same filesystem it is a hard link to the store's read-only copy (no bytes copied,
        as Dragonfly's dfget does); elsewhere, or with link=False, a copy.
        """
        if not entry.complete:
            raise StoreError("file is not complete")
        check_output(output)
        tmp = output.parent / f".{output.name}.shoal-{uuid.uuid4().hex[:8]}"
        try:
            try:
                if not link:
                    raise OSError(errno.EXDEV, "copy requested")
                os.link(entry.directory / "data", tmp)
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                shutil.copyfile(entry.directory / "data", tmp)
                os.chmod(tmp, 0o644)
            os.replace(tmp, output)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise explain(err, f"writing {output}") from err
        self.touch(entry)

    def _write_small(self, path: Path, data: bytes) -> None:
        tmp = self._tmp / uuid.uuid4().hex
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def close(self) -> None:
        """Write pending last-use times and close cached file descriptors."""
        self.flush_usage()
        for entry in self._entries.values():
            self._close(entry)
