"""Taking a local file into the store without a second copy where the filesystem allows, hashing it on the way.

Order of attempts (each falls back cleanly to the next):
  move=True  rename into the store (same filesystem), else copy (the caller deletes the source once it is kept);
  reflink    a copy-on-write clone (ioctl FICLONE on btrfs, XFS, bcachefs...): no bytes copied, the user's
             file stays independent and writable;
  link=True  a hard link; the shared inode is made read-only (0444), so the user's file becomes read-only
             too: editing it would change the published bytes (the store re-verifies linked chunks anyway);
  copy       read and write every byte.
The source must not change while it is read: its size and mtime are compared before and after.
Blocking; the daemon calls it through asyncio.to_thread.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Literal

from shoal import content

logger = logging.getLogger(__name__)

Method = Literal["move", "reflink", "link", "copy"]
FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h
_NO_CLONE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.EBADF, errno.ENOSYS}
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP}


class ChangedWhileReading(Exception):
    """The file changed (size or mtime) while it was being read; nothing was published."""


def _mark(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def _check_same(source: Path, before: os.stat_result, after: os.stat_result, hashed: int | None = None) -> None:
    if _mark(before) != _mark(after) or (hashed is not None and hashed != before.st_size):
        raise ChangedWhileReading(f"{source} changed while it was being read; publish it once it is fully written")


def reflink(src_fd: int, dst_fd: int) -> bool:
    """Clone src into dst copy-on-write; False where the filesystem cannot."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as err:
        if err.errno in _NO_CLONE:
            return False
        raise
    return True


def _hash_file(path: Path, builder: content.ManifestBuilder) -> tuple[os.stat_result, os.stat_result, int]:
    """Feed a file's chunks to the builder; its stat before and after, and the bytes read."""
    with open(path, "rb") as data:
        before = os.fstat(data.fileno())
        total = 0
        while chunk := data.read(builder.chunk_size):
            builder.add(chunk)
            total += len(chunk)
        os.fsync(data.fileno())
        return before, os.fstat(data.fileno()), total


def _copy(src: int, dest: Path, builder: content.ManifestBuilder) -> int:
    total = 0
    with open(dest, "wb") as dst:
        while chunk := os.read(src, builder.chunk_size):
            while len(chunk) < builder.chunk_size and (more := os.read(src, builder.chunk_size - len(chunk))):
                chunk += more
            builder.add(chunk)
            dst.write(chunk)
            total += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return total


def place(source: Path, dest: Path, builder: content.ManifestBuilder, *, move: bool, link: bool) -> Method:
    """Put `source`'s bytes at `dest` (read-only), feeding every chunk to `builder`; how it was done."""
    if move:
        try:
            os.rename(source, dest)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
        else:
            try:
                before, after, total = _hash_file(dest, builder)
                _check_same(source, before, after, total)
                os.chmod(dest, 0o444)
            except BaseException:
                os.rename(dest, source)  # give the user's file back
                raise
            return "move"
    with open(source, "rb") as src:
        before = os.fstat(src.fileno())
        method: Method = "copy"
        with open(dest, "wb") as dst:
            cloned = reflink(src.fileno(), dst.fileno())
        if cloned:
            _check_same(source, before, os.fstat(src.fileno()))
            clone_before, clone_after, total = _hash_file(dest, builder)
            _check_same(source, clone_before, clone_after, total)  # the clone is whole and stayed so
            if total != before.st_size:
                raise ChangedWhileReading(f"{source} changed while it was being cloned")
            method = "reflink"
        elif link and _hard_link(source, dest, before):
            try:
                linked_before, after, total = _hash_file(dest, builder)
                _check_same(source, before, linked_before)
                _check_same(source, before, after, total)
            except BaseException:
                restore_mode(source, before.st_mode)
                raise
            method = "link"
        else:
            total = _copy(src.fileno(), dest, builder)
            _check_same(source, before, os.fstat(src.fileno()), total)
    if method != "link":
        os.chmod(dest, 0o444)
    return method  # for move=True across filesystems, the caller deletes the source once the copy is kept


def _hard_link(source: Path, dest: Path, before: os.stat_result) -> bool:
    """Replace `dest` by a hard link to the source and make the shared inode read-only; False if not allowed."""
    dest.unlink()
    try:
        os.link(source, dest)
    except OSError as err:
        if err.errno not in _NO_LINK:
            raise
        return False
    try:
        if os.stat(dest).st_ino != before.st_ino:
            raise ChangedWhileReading(f"{source} was replaced while it was being read")
        os.chmod(dest, 0o444)
    except PermissionError:  # not the owner: a copy leaves the user's file alone
        dest.unlink()
        return False
    return True


def restore_mode(dest: Path, mode: int) -> None:
    """Give a hard-linked source its permissions back when the store did not keep it."""
    try:
        os.chmod(dest, mode & 0o7777)
    except OSError as err:
        logger.warning("could not restore the mode of %s: %s", dest, err)
