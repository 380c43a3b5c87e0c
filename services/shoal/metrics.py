"""Prometheus metrics of one tracker or peer process, on a registry of its own, served on --metrics-port.

Counters and gauges are read at scrape time from the state the process keeps anyway (node.stats, Registry.stats(),
the token buckets), so nothing is counted twice; latencies and durations are real histograms fed by the Observer
hooks and the gRPC interceptor. Label values are bounded sets: never file ids or peer ids.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, disable_created_metrics, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from shoal.interceptor import MetricsInterceptor
from shoal.peer.node import Node, Observer
from shoal.tracker.registry import Holding, Peer, Registry

logger = logging.getLogger(__name__)

# A 1 MiB chunk takes milliseconds on a LAN and seconds behind a cap or a slow link.
CHUNK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DOWNLOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
OUTCOMES = ("completed", "failed", "cancelled")
SCRAPE_TIMEOUT = 5.0  # seconds a scrape waits for the event loop to hand over a snapshot

T = TypeVar("T")


def on_loop(loop: asyncio.AbstractEventLoop, read: Callable[[], T], timeout: float = SCRAPE_TIMEOUT) -> T:
    """Run `read` on the loop that owns the state: scrapes arrive on the exporter's thread, and
    Registry.stats() iterates dicts the loop mutates. Raises TimeoutError if the loop does not get to it."""
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    if current is loop:
        return read()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(read())
        except BaseException as err:
            future.set_exception(err)

    loop.call_soon_threadsafe(run)
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


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
    """Reads node.stats, the downloads table, the store and the token buckets at scrape time."""

    def __init__(self, node: Node, loop: asyncio.AbstractEventLoop, active_downloads: Callable[[], int]) -> None:
        self._node = node
        self._loop = loop
        self._active_downloads = active_downloads

    def collect(self) -> Iterable[Metric]:
        """One consistent snapshot, taken on the event loop."""
        return on_loop(self._loop, lambda: list(self._families()))

    def _families(self) -> Iterator[Metric]:
        node = self._node
        stats = node.stats
        yield _counter("shoal_peer_uploaded_bytes_total", "Chunk bytes sent to other peers.", stats.uploaded_bytes)
        yield _counter("shoal_peer_uploaded_chunks_total", "Chunks sent to other peers.", stats.chunks_uploaded)
        received = CounterMetricFamily(
            "shoal_peer_downloaded_bytes_total",
            "Verified chunk bytes received, by whether the sender was still downloading (partial) "
            "or held the whole file (complete); partial / all is the offload ratio.",
            labels=["source"],
        )
        received.add_metric(["partial"], stats.from_partial_bytes)
        received.add_metric(["complete"], stats.from_complete_bytes)
        yield received
        yield _counter(
            "shoal_peer_chunks_verified_total", "Chunks received whose sha256 matched.", stats.chunks_verified
        )
        yield _counter(
            "shoal_peer_chunks_rejected_total", "Chunks received that failed verification.", stats.chunks_rejected
        )
        yield _counter(
            "shoal_peer_peers_banned_total", "Peers banned from a download for bad chunks.", stats.peers_banned
        )
        yield _counter(
            "shoal_peer_upload_busy_rejections_total",
            "GetChunk calls refused because every upload slot was busy.",
            stats.busy_rejections,
        )
        yield _counter("shoal_peer_downloads_started_total", "Downloads started.", stats.downloads_started)
        yield _counter("shoal_peer_downloads_completed_total", "Downloads completed.", stats.downloads_completed)
        yield _counter("shoal_peer_downloads_failed_total", "Downloads that failed.", stats.downloads_failed)
        yield _gauge("shoal_peer_active_downloads", "Downloads in progress.", self._active_downloads())
        yield _gauge("shoal_peer_active_uploads", "GetChunk calls being served now.", stats.active_uploads)
        waits = CounterMetricFamily(
            "shoal_peer_cap_waits_total", "Transfers that waited for the rate cap, by direction.", labels=["direction"]
        )
        waited = CounterMetricFamily(
            "shoal_peer_cap_wait_seconds_total", "Seconds spent waiting for the rate cap.", labels=["direction"]
        )
        for direction, bucket in (("upload", node.upload_bucket), ("download", node.download_bucket)):
            waits.add_metric([direction], bucket.waits)
            waited.add_metric([direction], bucket.waited_seconds)
        yield waits
        yield waited
        files = GaugeMetricFamily("shoal_peer_files", "Files in the data dir, by state.", labels=["state"])
        entries = node.store.entries()
        complete = sum(1 for entry in entries if entry.complete)
        files.add_metric(["complete"], complete)
        files.add_metric(["partial"], len(entries) - complete)
        yield files
        yield _gauge(
            "shoal_peer_uptime_seconds", "Seconds since the peer started.", time.monotonic() - stats.started_at
        )


class WatchedRegistry(Registry):
    """A Registry that remembers when it last heard an announce, for shoal_tracker_view_age_seconds."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ttl, clock)
        self.created_at = time.monotonic()
        self.last_announce_at: float | None = None

    def announce(self, peer: Peer, holdings: Iterable[Holding]) -> bool:
        """Registry.announce, stamped."""
        self.last_announce_at = time.monotonic()
        return super().announce(peer, holdings)


class TrackerCollector:
    """Reads Registry.stats() at scrape time."""

    def __init__(self, registry: Registry, loop: asyncio.AbstractEventLoop) -> None:
        self._registry = registry
        self._loop = loop
        self._started = registry.created_at if isinstance(registry, WatchedRegistry) else time.monotonic()

    def collect(self) -> Iterable[Metric]:
        """One consistent snapshot, taken on the event loop."""
        return on_loop(self._loop, lambda: list(self._families()))

    def _families(self) -> Iterator[Metric]:
        registry = self._registry
        stats = registry.stats()
        now = time.monotonic()
        yield _gauge("shoal_tracker_live_peers", "Peers whose lease has not lapsed.", stats.peers)
        yield _gauge("shoal_tracker_files", "Files held by at least one live peer.", stats.files)
        yield _counter("shoal_tracker_announces_total", "Announces received.", stats.announces_total)
        yield _counter("shoal_tracker_lease_expiries_total", "Peers dropped for a lapsed lease.", stats.expiries_total)
        yield _gauge(
            "shoal_tracker_lease_ttl_seconds", "Lease length: a peer silent this long is dropped.", registry.ttl
        )
        yield _gauge("shoal_tracker_uptime_seconds", "Seconds since this tracker replica started.", now - self._started)
        if isinstance(registry, WatchedRegistry):
            newest = registry.last_announce_at if registry.last_announce_at is not None else self._started
            yield _gauge(
                "shoal_tracker_view_age_seconds",
                "Seconds since this replica last heard an announce (since start if none yet): "
                "how stale its view of the swarm may be.",
                now - newest,
            )


class ProcessMetrics:
    """One process's metrics registry, its gRPC interceptor and the HTTP exporter for --metrics-port."""

    def __init__(self, port: int, addr: str = "0.0.0.0") -> None:
        self.registry = CollectorRegistry()
        self.interceptor = MetricsInterceptor(self.registry)
        self.port = port
        self._addr = addr
        self._http: tuple[WSGIServer, threading.Thread] | None = None
        disable_created_metrics()  # process-wide: no *_created series beside every counter and histogram
        ProcessCollector(namespace="shoal", registry=self.registry)

    def watch_peer(self, node: Node, active_downloads: Callable[[], int]) -> None:
        """Feed the histograms from node.observer and read node state at scrape time."""
        node.observer = PeerObserver(self.registry)
        self.registry.register(PeerCollector(node, asyncio.get_running_loop(), active_downloads))

    def watch_tracker(self, registry: Registry) -> None:
        """Read the registry at scrape time."""
        self.registry.register(TrackerCollector(registry, asyncio.get_running_loop()))

    def serve(self) -> int:
        """Start the exporter thread; returns the bound port (useful when asked for port 0)."""
        server, thread = start_http_server(self.port, self._addr, registry=self.registry)
        self._http = (server, thread)
        self.port = int(server.server_port)
        logger.info("metrics on http://%s:%d/metrics", self._addr, self.port)
        return self.port

    def stop(self) -> None:
        """Stop the exporter thread and close its socket."""
        if self._http is None:
            return
        server, thread = self._http
        self._http = None
        server.shutdown()
        server.server_close()
        thread.join(timeout=2.0)


def scrape_config(jobs: dict[str, list[str]], interval: str = "1s") -> str:
    """A prometheus.yml scraping each job's host:port targets (for the demo and the metrics tests)."""
    lines = ["global:", f"  scrape_interval: {interval}", f"  evaluation_interval: {interval}", "scrape_configs:"]
    for job, targets in jobs.items():
        lines += [f"  - job_name: {job}", "    static_configs:", "      - targets:"]
        lines += [f"          - {target}" for target in targets]
    return "\n".join(lines) + "\n"
