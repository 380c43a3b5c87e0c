"""The tracker's metrics: registry gauges and counters read at scrape time, and how stale the replica's view is."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from shoal.exporter import ProcessMetrics, counter, gauge, on_loop
from shoal.tracker.model import Limits
from shoal.tracker.registry import Registry

logger = logging.getLogger(__name__)


class WatchedRegistry(Registry):
    """A Registry that remembers when it started, on the clock it was given."""

    def __init__(
        self,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        limits: Limits | None = None,
        require_secrets: bool = False,
    ) -> None:
        super().__init__(ttl, clock, limits, require_secrets=require_secrets)
        self._watch_clock = clock
        self._started_at = clock()

    def uptime(self) -> float:
        """Seconds since this registry was made."""
        return self._watch_clock() - self._started_at

    def view_age(self) -> float:
        """0 while a session is open (its stream keeps the view live), else seconds since the last announce or
        update (since start if none yet)."""
        if self.sessions:
            return 0.0
        newest = self.heard_at if self.heard_at is not None else self._started_at
        return self._watch_clock() - newest


class TrackerCollector:
    """Reads the registry's stats, uptime and view age at scrape time."""

    def __init__(self, registry: WatchedRegistry, loop: asyncio.AbstractEventLoop) -> None:
        self._registry = registry
        self._loop = loop

    def collect(self) -> Iterable[Metric]:
        """One consistent snapshot, taken on the event loop."""
        return on_loop(self._loop, lambda: list(self._families()))

    def _families(self) -> Iterator[Metric]:
        registry = self._registry
        stats = registry.stats()
        yield gauge("shoal_tracker_live_peers", "Peers whose lease has not lapsed.", stats.peers)
        yield gauge("shoal_tracker_files", "Files held by at least one live peer.", stats.files)
        yield counter(
            "shoal_tracker_announces_total",
            "Announces received (a session's first update counts as one).",
            stats.announces_total,
        )
        yield gauge("shoal_tracker_sessions", "Live peers whose lease an open Session stream holds.", stats.sessions)
        yield counter(
            "shoal_tracker_session_updates_total",
            "Session updates applied after the first.",
            stats.session_updates_total,
        )
        yield counter("shoal_tracker_lease_expiries_total", "Peers dropped for a lapsed lease.", stats.expiries_total)
        yield gauge(
            "shoal_tracker_lease_ttl_seconds", "Lease length: a peer silent this long is dropped.", registry.ttl
        )
        limit = GaugeMetricFamily(
            "shoal_tracker_limit", "The replica's caps: peers, distinct files, (peer, file) holdings.", labels=["kind"]
        )
        for kind, value in (("peers", stats.max_peers), ("files", stats.max_files), ("holdings", stats.max_holdings)):
            limit.add_metric([kind], value)
        yield limit
        yield gauge("shoal_tracker_holdings", "(peer, file) pairs held by live peers.", stats.holdings)
        refusals = CounterMetricFamily(
            "shoal_tracker_refusals",
            "Registrations refused or trimmed: a new peer beyond the peer cap (peers_full), files left out beyond "
            "the file or holding cap (files_full), an unproven id, a missing secret or a taken address (identity).",
            labels=["reason"],
        )
        for reason, value in (
            ("peers_full", stats.refused_peers_total),
            ("files_full", stats.refused_holdings_total),
            ("identity", stats.denied_total),
        ):
            refusals.add_metric([reason], value)
        yield refusals
        yield gauge("shoal_tracker_uptime_seconds", "Seconds since this tracker replica started.", registry.uptime())
        yield gauge(
            "shoal_tracker_view_age_seconds",
            "Seconds since this replica last heard an announce or session update (since start if none yet; 0 while "
            "a session is open): how stale its view of the swarm may be.",
            registry.view_age(),
        )


def watch_tracker(metrics: ProcessMetrics, registry: WatchedRegistry) -> None:
    """Read the registry at scrape time (call on the tracker's loop)."""
    metrics.registry.register(TrackerCollector(registry, asyncio.get_running_loop()))
