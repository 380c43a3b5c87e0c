"""glibc malloc tuning for chunk-sized buffers."""

from __future__ import annotations

import ctypes

from shoal import config, memory, net


def test_thresholds_cover_the_largest_message() -> None:
    assert memory.MMAP_THRESHOLD >= net.MAX_MESSAGE_BYTES
    # A few default-size chunk buffers stay for reuse; beyond that freed memory goes back (RSS target).
    assert 8 * config.DEFAULT_CHUNK_SIZE <= memory.TRIM_THRESHOLD <= 2 * config.DEFAULT_INFLIGHT_BUDGET


def test_glibc_accepts_the_settings() -> None:
    # This machine (and the image) run glibc: every mallopt call must be accepted.
    assert ctypes.CDLL(None).gnu_get_libc_version() != 0
    assert memory.keep_large_buffers() is True
