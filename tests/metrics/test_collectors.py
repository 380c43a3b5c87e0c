"""The scrape-time collectors and the exporter, without Prometheus: a fresh registry per test."""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from shoal.cache import Cache
from shoal.config import PeerConfig
from shoal.exporter import ProcessMetrics, on_loop
from shoal.peer.metrics import PeerCollector, PeerObserver, watch_peer
from shoal.peer.node import Node, Observer, Stats
from shoal.quota import Quota
from shoal.ratelimit import TokenBucket
from shoal.store import Store
from shoal.tracker.metrics import TrackerCollector, WatchedRegistry, watch_tracker
from shoal.tracker.model import Limits, NotOwner, RegistryFull
from shoal.tracker.registry import Holding, Peer

FILE_ID = "ab" * 32


class Clock:
    """A clock that moves only when told (helpers.clocks.FakeClock, once mypy can see tests/helpers)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_node(tmp_path: Path) -> Node:
    store = Store(tmp_path)
    store.open()
    config = PeerConfig(listen="127.0.0.1:0", trackers=("127.0.0.1:1",), data_dir=tmp_path)
    return Node(config, store, store.peer_id(), "127.0.0.1:7401")


async def test_peer_collector_reads_stats_at_scrape_time(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    registry = CollectorRegistry()
    active = [0]
    registry.register(PeerCollector(node, lambda: active[0], asyncio.get_running_loop()))
    node.stats.uploaded_bytes = 10
    node.stats.from_partial_bytes = 3
    node.stats.from_complete_bytes = 7
    node.stats.chunks_rejected = 2
    node.upload_bucket.waits = 4
    # Scrapes arrive on the exporter's thread: the snapshot must still be taken on this loop.
    value = await asyncio.to_thread(registry.get_sample_value, "shoal_peer_uploaded_bytes_total")
    assert value == 10
    assert registry.get_sample_value("shoal_peer_downloaded_bytes_total", {"source": "partial"}) == 3
    assert registry.get_sample_value("shoal_peer_downloaded_bytes_total", {"source": "complete"}) == 7
    assert registry.get_sample_value("shoal_peer_chunks_rejected_total") == 2
    assert registry.get_sample_value("shoal_peer_cap_waits_total", {"direction": "upload"}) == 4
    assert registry.get_sample_value("shoal_peer_active_downloads") == 0
    node.stats.uploaded_bytes = 25
    active[0] = 2
    assert registry.get_sample_value("shoal_peer_uploaded_bytes_total") == 25
    assert registry.get_sample_value("shoal_peer_active_downloads") == 2


@dataclass
class BarePeer:
    """Only what the peer's metrics may read: no downloads table, no Node."""

    store: Store
    stats: Stats = field(default_factory=lambda: Stats(started_at=50.0))
    observer: Observer = field(default_factory=Observer)
    upload_bucket: TokenBucket = field(default_factory=lambda: TokenBucket(0))
    download_bucket: TokenBucket = field(default_factory=lambda: TokenBucket(0))


async def test_watch_peer_needs_no_node_and_uses_its_clock(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.open()
    peer = BarePeer(store)
    clock = Clock(80.0)
    metrics = ProcessMetrics(0, "127.0.0.1")
    watch_peer(metrics, peer, lambda: 3, clock)
    assert isinstance(peer.observer, PeerObserver)
    peer.observer.chunk_fetched(0.01, 1 << 20)
    peer.stats.chunks_verified = 1
    registry = metrics.registry
    assert registry.get_sample_value("shoal_peer_uptime_seconds") == 30.0
    clock.advance(5)
    assert registry.get_sample_value("shoal_peer_uptime_seconds") == 35.0
    assert registry.get_sample_value("shoal_peer_active_downloads") == 3
    assert registry.get_sample_value("shoal_peer_chunks_verified_total") == 1
    assert registry.get_sample_value("shoal_peer_chunk_fetch_duration_seconds_count") == 1
    assert registry.get_sample_value("shoal_peer_files", {"state": "complete"}) == 0


def test_observer_fills_histograms() -> None:
    registry = CollectorRegistry()
    observer = PeerObserver(registry)
    observer.chunk_fetched(0.003, 1 << 20)
    observer.download_finished(2.0, "completed")
    observer.download_finished(1.0, "surprising")
    assert registry.get_sample_value("shoal_peer_chunk_fetch_duration_seconds_count") == 1
    assert registry.get_sample_value("shoal_peer_chunk_fetch_duration_seconds_bucket", {"le": "0.005"}) == 1
    assert registry.get_sample_value("shoal_peer_download_duration_seconds_sum", {"outcome": "completed"}) == 2.0
    assert registry.get_sample_value("shoal_peer_download_duration_seconds_count", {"outcome": "failed"}) == 0
    assert registry.get_sample_value("shoal_peer_download_duration_seconds_count", {"outcome": "other"}) == 1


async def test_tracker_collector_and_view_age() -> None:
    clock = Clock(100.0)
    tracker = WatchedRegistry(ttl=5.0, clock=clock)
    registry = CollectorRegistry()
    registry.register(TrackerCollector(tracker, asyncio.get_running_loop()))
    assert registry.get_sample_value("shoal_tracker_live_peers") == 0
    clock.advance(2)
    # No announce yet: the view is as old as the replica.
    assert registry.get_sample_value("shoal_tracker_view_age_seconds") == 2.0
    assert registry.get_sample_value("shoal_tracker_uptime_seconds") == 2.0
    tracker.announce(Peer("p1", "10.0.0.1:7401"), [Holding(FILE_ID, "a.iso", 1, True)])
    tracker.announce(Peer("p2", "10.0.0.2:7401"), [])
    assert registry.get_sample_value("shoal_tracker_live_peers") == 2
    assert registry.get_sample_value("shoal_tracker_files") == 1
    assert registry.get_sample_value("shoal_tracker_announces_total") == 2
    assert registry.get_sample_value("shoal_tracker_lease_ttl_seconds") == 5.0
    assert registry.get_sample_value("shoal_tracker_view_age_seconds") == 0.0
    clock.advance(6)
    assert registry.get_sample_value("shoal_tracker_view_age_seconds") == 6.0
    assert registry.get_sample_value("shoal_tracker_uptime_seconds") == 8.0
    tracker.expire()
    assert registry.get_sample_value("shoal_tracker_lease_expiries_total") == 2
    assert registry.get_sample_value("shoal_tracker_live_peers") == 0


async def test_tracker_caps_and_refusals_are_metrics() -> None:
    tracker = WatchedRegistry(ttl=5.0, clock=Clock(100.0), limits=Limits(max_peers=1, max_files=1, max_holdings=10))
    registry = CollectorRegistry()
    registry.register(TrackerCollector(tracker, asyncio.get_running_loop()))
    assert registry.get_sample_value("shoal_tracker_limit", {"kind": "peers"}) == 1
    assert registry.get_sample_value("shoal_tracker_limit", {"kind": "holdings"}) == 10
    other = "b" * 64
    holdings = [Holding(FILE_ID, "a.iso", 1, True), Holding(other, "b", 1, True)]
    tracker.announce_as(Peer("p1", "10.0.0.1:7401"), holdings, accepts_secret=True)
    with pytest.raises(RegistryFull):
        tracker.announce(Peer("p2", "10.0.0.2:7401"), [])
    with pytest.raises(NotOwner):
        tracker.leave_as("p1", "not the secret")
    assert registry.get_sample_value("shoal_tracker_holdings") == 1
    assert registry.get_sample_value("shoal_tracker_refusals_total", {"reason": "peers_full"}) == 1
    assert registry.get_sample_value("shoal_tracker_refusals_total", {"reason": "files_full"}) == 1
    assert registry.get_sample_value("shoal_tracker_refusals_total", {"reason": "identity"}) == 1


async def test_on_loop_runs_on_the_loop_from_another_thread() -> None:
    loop = asyncio.get_running_loop()
    seen = await asyncio.to_thread(on_loop, loop, lambda: asyncio.get_running_loop() is loop)
    assert seen


def test_on_loop_gives_up_when_the_loop_does_not_run() -> None:
    loop = asyncio.new_event_loop()  # never run: stands in for a loop stuck in a long call
    try:
        with pytest.raises(TimeoutError):
            on_loop(loop, lambda: 1, timeout=0.1)
    finally:
        loop.close()


async def test_exporter_serves_and_stops(tmp_path: Path) -> None:
    metrics = ProcessMetrics(0, "127.0.0.1")
    node = make_node(tmp_path)
    watch_peer(metrics, node, lambda: 0)
    tracker = WatchedRegistry(ttl=5.0)
    tracker.announce(Peer("peer-secret", "10.0.0.1:7401"), [Holding(FILE_ID, "a.iso", 1, True)])
    watch_tracker(metrics, tracker)
    port = metrics.serve()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    finally:
        await asyncio.to_thread(metrics.stop)
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert "shoal_peer_uploaded_bytes" in families
    assert "shoal_tracker_live_peers" in families
    assert "shoal_process_cpu_seconds" in families
    assert all(name.startswith("shoal_") for name in families)
    assert "_created" not in body
    values = {v for f in families.values() for s in f.samples for v in s.labels.values()}
    assert not values & {FILE_ID, "peer-secret", node.peer_id}
    with pytest.raises(OSError):
        await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read())


async def test_peer_collector_reports_the_store_quota_and_evictions(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    source = tmp_path / "src.bin"
    source.write_bytes(b"x" * 100_000)
    node.store.publish(source, "src.bin", 16 * 1024)
    cache = Cache(node.store, Quota(50_000))
    registry = CollectorRegistry()
    registry.register(PeerCollector(node, lambda: 0, asyncio.get_running_loop(), cache=cache))
    assert registry.get_sample_value("shoal_peer_store_bytes") == 100_000
    assert registry.get_sample_value("shoal_peer_cache_quota_bytes") == 50_000
    assert registry.get_sample_value("shoal_peer_evictions_total") == 0
    (held,) = node.store.entries()
    assert [v.file_id for v in cache.sweep()] == [held.file_id]
    assert registry.get_sample_value("shoal_peer_store_bytes") == 0
    assert registry.get_sample_value("shoal_peer_evictions_total") == 1
    assert registry.get_sample_value("shoal_peer_evicted_bytes_total") == 100_000


async def test_peer_collector_without_a_cache_reports_no_quota(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(PeerCollector(make_node(tmp_path), lambda: 0, asyncio.get_running_loop()))
    assert registry.get_sample_value("shoal_peer_cache_quota_bytes") == 0
    assert registry.get_sample_value("shoal_peer_evicted_bytes_total") == 0
