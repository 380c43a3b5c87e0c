"""The cache quota: which held files to evict, and whether a new download fits (pure; no I/O but statvfs).

Rules (docs/storage.md has the table):
- Usage is counted in bytes the store holds: complete files plus the verified part of partial downloads,
  plus, for a download running now, the bytes it will still write ("pending").
- High water mark HIGH_WATER (95%) and low water mark LOW_WATER (85%) of the quota. Past the high mark,
  files are evicted down to the low mark: least-recently-used complete files first, then partial downloads
  nobody is running (stopped or interrupted), oldest first.
- Never evicted: pinned files and files with a download running now (`active`). A file being served right
  now is evictable; the store withdraws it at once and deletes it after its current replies.
- `admit(size)`: a new download is let in only if, once evictable files go, usage including it stays at or
  below the high mark (so the download never pushes the cache into evicting what it just fetched); else
  QuotaExceeded says why, before anything is evicted or written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

HIGH_WATER = 0.95
LOW_WATER = 0.85


class QuotaExceeded(Exception):
    """A new download cannot fit in the cache quota even after evicting every evictable file."""


@dataclass(frozen=True)
class QuotaSpec:
    """A parsed --cache-size: absolute bytes, or a fraction of the data dir's filesystem; 0 and 0.0 = no limit."""

    bytes: int = 0
    fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.bytes < 0 or not 0.0 <= self.fraction <= 1.0 or (self.bytes and self.fraction):
            raise ValueError(f"invalid cache size: bytes={self.bytes} fraction={self.fraction}")

    @classmethod
    def of(cls, value: int | float) -> QuotaSpec:
        """An int is bytes; a float in (0, 1] is a fraction of the filesystem (80% parses to 0.8)."""
        if isinstance(value, float):
            return cls(fraction=value)
        return cls(bytes=value)

    def resolve(self, data_dir: Path, statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> int:
        """The quota in bytes (0 = no limit); a fraction is of the filesystem's total size, read once at start."""
        if not self.fraction:
            return self.bytes
        fs = statvfs(str(data_dir))
        return max(1, int(fs.f_blocks * fs.f_frsize * self.fraction))


@dataclass(frozen=True)
class Usage:
    """One store entry as the policy sees it."""

    file_id: str
    name: str
    size: int  # bytes on disk now (verified bytes for a partial download)
    last_used: float  # unix time of the last publish, completion, export or chunk served
    complete: bool
    pinned: bool = False
    active: bool = False  # a download of it is running now
    pending: int = 0  # bytes a running download will still write


def human(size: float) -> str:
    """Bytes in binary units, e.g. 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _evictable(entries: Iterable[Usage]) -> list[Usage]:
    """Eviction order: LRU complete files, then idle partial downloads, oldest first."""
    candidates = [u for u in entries if not u.pinned and not u.active]
    return sorted(candidates, key=lambda u: (not u.complete, u.last_used, u.file_id))


class Quota:
    """The policy for one quota, with the counters its metrics report."""

    def __init__(self, limit: int, *, high: float = HIGH_WATER, low: float = LOW_WATER) -> None:
        if limit < 0 or not 0.0 < low <= high <= 1.0:
            raise ValueError(f"invalid quota {limit} with marks low={low} high={high}")
        self.limit = limit  # shoal_peer_cache_quota_bytes; 0 = no limit
        self.high_bytes = int(limit * high)
        self.low_bytes = int(limit * low)
        self.evictions_total = 0  # shoal_peer_evictions_total
        self.evicted_bytes_total = 0  # shoal_peer_evicted_bytes_total

    @property
    def unlimited(self) -> bool:
        """True when --cache-size is 0."""
        return self.limit == 0

    def plan(self, entries: Iterable[Usage]) -> list[Usage]:
        """What to evict now: nothing at or below the high mark, else LRU evictable files down to the low mark."""
        entries = list(entries)
        used = sum(u.size + u.pending for u in entries)
        if self.unlimited or used <= self.high_bytes:
            return []
        return self._down_to(entries, used, self.low_bytes)

    def admit(self, size: int, entries: Iterable[Usage]) -> list[Usage]:
        """Files to evict so a new download of `size` bytes fits; QuotaExceeded (evicting nothing) if it cannot."""
        entries = list(entries)
        used = sum(u.size + u.pending for u in entries)
        if self.unlimited or size == 0 or used + size <= self.high_bytes:
            return []  # an empty file adds nothing, even to a cache already past its mark
        victims = self._down_to(entries, used + size, self.low_bytes)
        if used + size - sum(v.size for v in victims) <= self.high_bytes:
            return victims
        raise QuotaExceeded(self._why(size, entries, used))

    def record(self, victim: Usage) -> None:
        """Count an eviction the caller carried out."""
        self.evictions_total += 1
        self.evicted_bytes_total += victim.size
        logger.info(
            "evicted %s (%s, %s, idle since %.0f)", victim.file_id, victim.name, human(victim.size), victim.last_used
        )

    @staticmethod
    def _down_to(entries: list[Usage], used: int, target: int) -> list[Usage]:
        victims: list[Usage] = []
        for candidate in _evictable(entries):
            if used <= target:
                break
            victims.append(candidate)
            used -= candidate.size
        return victims

    def _why(self, size: int, entries: list[Usage], used: int) -> str:
        pinned = sum(u.size for u in entries if u.pinned)
        active = sum(u.size + u.pending for u in entries if u.active and not u.pinned)
        head = f"cannot fit {human(size)} in the cache quota of {human(self.limit)}"
        if size > self.high_bytes:
            return f"{head}: the file is larger than the {human(self.high_bytes)} high-water mark"
        return (
            f"{head} (high-water mark {human(self.high_bytes)}): {human(used)} held, "
            f"{human(pinned)} pinned and {human(active)} in downloads running now; "
            "unpin or remove files, or raise --cache-size"
        )
