"""The scrape-time collectors and the exporter, without Prometheus: a fresh registry per test."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from shoal.config import PeerConfig
from shoal.metrics import PeerCollector, PeerObserver, ProcessMetrics, TrackerCollector, WatchedRegistry, on_loop
from shoal.peer.node import Node
from shoal.store import Store
from shoal.tracker.registry import Holding, Peer

FILE_ID = "ab" * 32


def make_node(tmp_path: Path) -> Node:
    store = Store(tmp_path)
    store.open()
    config = PeerConfig(listen="127.0.0.1:0", trackers=("127.0.0.1:1",), data_dir=tmp_path)
    return Node(config, store, store.peer_id(), "127.0.0.1:7401")


async def test_peer_collector_reads_stats_at_scrape_time(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    registry = CollectorRegistry()
    registry.register(PeerCollector(node, asyncio.get_running_loop(), lambda: 0))
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
    assert registry.get_sample_value("shoal_peer_uploaded_bytes_total") == 25


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
    clock = [100.0]
    tracker = WatchedRegistry(ttl=5.0, clock=lambda: clock[0])
    registry = CollectorRegistry()
    registry.register(TrackerCollector(tracker, asyncio.get_running_loop()))
    assert registry.get_sample_value("shoal_tracker_live_peers") == 0
    assert registry.get_sample_value("shoal_tracker_view_age_seconds") is not None
    tracker.announce(Peer("p1", "10.0.0.1:7401"), [Holding(FILE_ID, "a.iso", 1, True)])
    tracker.announce(Peer("p2", "10.0.0.2:7401"), [])
    assert registry.get_sample_value("shoal_tracker_live_peers") == 2
    assert registry.get_sample_value("shoal_tracker_files") == 1
    assert registry.get_sample_value("shoal_tracker_announces_total") == 2
    assert registry.get_sample_value("shoal_tracker_lease_ttl_seconds") == 5.0
    age = registry.get_sample_value("shoal_tracker_view_age_seconds")
    assert age is not None and 0 <= age < 1.0
    clock[0] += 6
    tracker.expire()
    assert registry.get_sample_value("shoal_tracker_lease_expiries_total") == 2
    assert registry.get_sample_value("shoal_tracker_live_peers") == 0


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
    metrics.watch_peer(node, lambda: 0)
    tracker = WatchedRegistry(ttl=5.0)
    tracker.announce(Peer("peer-secret", "10.0.0.1:7401"), [Holding(FILE_ID, "a.iso", 1, True)])
    metrics.watch_tracker(tracker)
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
