"""Keep chunk-sized buffers in the heap instead of mapping fresh memory for every one.

glibc serves allocations above its mmap threshold (128 KiB at start) with mmap and gives them back
with munmap, so each 1 MiB chunk read, sent, received and written costs hundreds of page faults and
the kernel zeroing the pages again. Raising the threshold above the largest message lets freed
chunk buffers be reused (a 16 MiB trim threshold keeps a few and gives the rest back): in
bench/pair.py the serving peer spends about 40% less CPU per GiB. Memory stays bounded by the peak
of buffers alive at once (upload slots and the in-flight budget), which bench/pair.py checks against
its RSS target.
"""

from __future__ import annotations

import ctypes
import logging

from shoal import net

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 2 * net.MAX_MESSAGE_BYTES  # every gRPC message, and a copy of it, stays in the heap
TRIM_THRESHOLD = 16 * 1024 * 1024  # free memory above this at a heap top goes back: RSS follows bytes in flight
ARENA_MAX = 4  # worker threads share a few arenas, so retained free memory does not multiply


def keep_large_buffers() -> bool:
    """Tune glibc malloc for chunk-sized buffers; False (and nothing changed) on other C libraries."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        logger.debug("no mallopt in this C library; leaving malloc as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_ARENA_MAX, ARENA_MAX))
    return all(mallopt(option, value) == 1 for option, value in settings)
