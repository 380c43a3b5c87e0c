"""What every shoal process's metrics share: a registry of its own, the gRPC interceptor and the HTTP exporter.

The role-specific collectors live with their role (shoal.peer.metrics, shoal.tracker.metrics), so each process loads
only its own code. Counters and gauges are read at scrape time from state the process keeps anyway, so nothing is
counted twice; label values are bounded sets, never file ids or peer ids.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from shoal.interceptor import MetricsInterceptor

logger = logging.getLogger(__name__)

SCRAPE_TIMEOUT = 5.0  # seconds a scrape waits for the event loop to hand over a snapshot

T = TypeVar("T")


def on_loop(loop: asyncio.AbstractEventLoop, read: Callable[[], T], timeout: float = SCRAPE_TIMEOUT) -> T:
    """Run `read` on the loop that owns the state: scrapes arrive on the exporter's thread, and the state they read
    (dicts, counters) is mutated by the loop. Raises TimeoutError if the loop does not get to it."""
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


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """An unlabelled counter read at scrape time."""
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    """An unlabelled gauge read at scrape time."""
    return GaugeMetricFamily(name, doc, value=value)


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
