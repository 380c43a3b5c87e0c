"""glibc malloc tuning for chunk-sized buffers."""

from __future__ import annotations

import ctypes

from shoal import memory, net


def test_thresholds_cover_the_largest_message() -> None:
    assert memory.MMAP_THRESHOLD >= net.MAX_MESSAGE_BYTES
    assert memory.TRIM_THRESHOLD >= memory.MMAP_THRESHOLD


def test_glibc_accepts_the_settings() -> None:
    # This machine (and the image) run glibc: every mallopt call must be accepted.
    assert ctypes.CDLL(None).gnu_get_libc_version() != 0
    assert memory.keep_large_buffers() is True
