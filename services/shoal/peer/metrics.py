"""The peer's metrics: chunk and download histograms fed by node.observer, and its state read at scrape time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from shoal.exporter import ProcessMetrics, counter, gauge, on_loop
from shoal.peer.node import Observer

if TYPE_CHECKING:
    from shoal.cache import Cache
    from shoal.peer.node import Stats
    from shoal.ratelimit import TokenBucket
    from shoal.store import Store

logger = logging.getLogger(__name__)

# A 1 MiB chunk takes milliseconds on a LAN and seconds behind a cap or a slow link.
CHUNK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DOWNLOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
OUTCOMES = ("completed", "failed", "cancelled")


class WatchedPeer(Protocol):
    """What the peer's metrics read of its state (Node has it); the downloads table is not part of it."""

    observer: Observer

    @property
    def stats(self) -> Stats: ...

    @property
    def upload_bucket(self) -> TokenBucket: ...

    @property
    def download_bucket(self) -> TokenBucket: ...

    @property
    def store(self) -> Store: ...


class PeerObserver(Observer):
    """Chunk fetch latency and download duration histograms (node.observer)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.chunk_fetch = Histogram(
            "shoal_peer_chunk_fetch_duration_seconds",
            "Time from sending GetChunk to receiving the chunk, for chunks that then verified.",
            buckets=CHUNK_BUCKETS,
            registry=registry,
        )
        self.download = Histogram(
            "shoal_peer_download_duration_seconds",
            "Duration of downloads that ended, by outcome (completed, failed, cancelled).",
            ["outcome"],
            buckets=DOWNLOAD_BUCKETS,
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.download.labels(outcome)

    def chunk_fetched(self, seconds: float, nbytes: int) -> None:
        """A chunk arrived and verified."""
        self.chunk_fetch.observe(seconds)

    def download_finished(self, seconds: float, outcome: str) -> None:
        """A download ended."""
        self.download.labels(outcome if outcome in OUTCOMES else "other").observe(seconds)


class PeerCollector:
    """Reads the peer's stats, store and token buckets, and the active-download count, at scrape time."""

    def __init__(
        self,
        peer: WatchedPeer,
        active_downloads: Callable[[], int],
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.monotonic,
        cache: Cache | None = None,
    ) -> None:
        self._peer = peer
        self._cache = cache
        self._active_downloads = active_downloads
        self._loop = loop
        self._clock = clock  # the clock that stamped stats.started_at

    def collect(self) -> Iterable[Metric]:
        """One consistent snapshot, taken on the event loop."""
        return on_loop(self._loop, lambda: list(self._families()))

    def _families(self) -> Iterator[Metric]:
        peer = self._peer
        stats = peer.stats
        yield counter("shoal_peer_uploaded_bytes_total", "Chunk bytes sent to other peers.", stats.uploaded_bytes)
        yield counter("shoal_peer_uploaded_chunks_total", "Chunks sent to other peers.", stats.chunks_uploaded)
        received = CounterMetricFamily(
            "shoal_peer_downloaded_bytes_total",
            "Verified chunk bytes received, by whether the sender was still downloading (partial) "
            "or held the whole file (complete); partial / all is the offload ratio.",
            labels=["source"],
        )
        received.add_metric(["partial"], stats.from_partial_bytes)
        received.add_metric(["complete"], stats.from_complete_bytes)
        yield received
        yield counter(
            "shoal_peer_chunks_verified_total", "Chunks received whose sha256 matched.", stats.chunks_verified
        )
        yield counter(
            "shoal_peer_chunks_rejected_total", "Chunks received that failed verification.", stats.chunks_rejected
        )
        yield counter(
            "shoal_peer_peers_banned_total", "Peers banned from a download for bad chunks.", stats.peers_banned
        )
        yield counter(
            "shoal_peer_upload_busy_rejections_total",
            "GetChunk calls refused because every upload slot was busy.",
            stats.busy_rejections,
        )
        yield counter("shoal_peer_downloads_started_total", "Downloads started.", stats.downloads_started)
        yield counter("shoal_peer_downloads_completed_total", "Downloads completed.", stats.downloads_completed)
        yield counter("shoal_peer_downloads_failed_total", "Downloads that failed.", stats.downloads_failed)
        yield gauge("shoal_peer_active_downloads", "Downloads in progress.", self._active_downloads())
        yield gauge("shoal_peer_active_uploads", "GetChunk calls being served now.", stats.active_uploads)
        yield gauge(
            "shoal_peer_download_inflight_bytes",
            "Chunk bytes requested or received but not yet written, all downloads (bounded by --inflight-budget).",
            stats.inflight_bytes,
        )
        waits = CounterMetricFamily(
            "shoal_peer_cap_waits_total", "Transfers that waited for the rate cap, by direction.", labels=["direction"]
        )
        waited = CounterMetricFamily(
            "shoal_peer_cap_wait_seconds_total", "Seconds spent waiting for the rate cap.", labels=["direction"]
        )
        for direction, bucket in (("upload", peer.upload_bucket), ("download", peer.download_bucket)):
            waits.add_metric([direction], bucket.waits)
            waited.add_metric([direction], bucket.waited_seconds)
        yield waits
        yield waited
        files = GaugeMetricFamily("shoal_peer_files", "Files in the data dir, by state.", labels=["state"])
        entries = peer.store.entries()
        complete = sum(1 for entry in entries if entry.complete)
        files.add_metric(["complete"], complete)
        files.add_metric(["partial"], len(entries) - complete)
        yield files
        yield from self._cache_families()
        yield gauge("shoal_peer_uptime_seconds", "Seconds since the peer started.", self._clock() - stats.started_at)

    def _cache_families(self) -> Iterator[Metric]:
        cache = self._cache
        yield gauge(
            "shoal_peer_store_bytes",
            "Bytes held in the data dir: complete files plus verified chunks of partial downloads.",
            self._peer.store.bytes_used,
        )
        yield gauge(
            "shoal_peer_cache_quota_bytes",
            "The cache quota (--cache-size) in bytes; 0 when there is none.",
            cache.quota_bytes if cache is not None else 0,
        )
        yield counter(
            "shoal_peer_evictions_total",
            "Files the cache quota evicted.",
            cache.evictions_total if cache is not None else 0,
        )
        yield counter(
            "shoal_peer_evicted_bytes_total",
            "Bytes the files the cache quota evicted held.",
            cache.evicted_bytes_total if cache is not None else 0,
        )


def watch_peer(
    metrics: ProcessMetrics,
    peer: WatchedPeer,
    active_downloads: Callable[[], int],
    clock: Callable[[], float] = time.monotonic,
    *,
    cache: Cache | None = None,
) -> None:
    """Feed the histograms from peer.observer and read the peer's state at scrape time (call on the peer's loop)."""
    peer.observer = PeerObserver(metrics.registry)
    metrics.registry.register(PeerCollector(peer, active_downloads, asyncio.get_running_loop(), clock, cache))
