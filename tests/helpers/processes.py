"""Starting tracker and peer processes for a test: one LocalSwarm per test or module, peers started in parallel."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shoal.config import TlsFiles
from shoal.localswarm import LocalSwarm, Proc, wait_serving

logger = logging.getLogger(__name__)

START_TIMEOUT = 60.0


def clean_env() -> dict[str, str]:
    """Blank every SHOAL_* setting of whoever runs the tests (but the log level), so none leaks into a daemon."""
    return {name: "" for name in os.environ if name.startswith("SHOAL_") and name != "SHOAL_LOG_LEVEL"}


@contextmanager
def running_swarm(
    workdir: Path, announce_interval: float, trackers: int = 1, tls: TlsFiles | None = None
) -> Iterator[LocalSwarm]:
    """A LocalSwarm with `trackers` trackers serving (mutual TLS with `tls`); every process it started is stopped."""
    swarm = LocalSwarm(workdir, announce_interval=announce_interval, extra_env=clean_env(), tls=tls)
    try:
        start_trackers(swarm, trackers)
        yield swarm
    finally:
        swarm.stop()


def start_trackers(swarm: LocalSwarm, count: int, timeout: float = START_TIMEOUT) -> list[Proc]:
    """Start `count` trackers at once; return once every one reports SERVING."""
    trackers = [swarm.start_tracker(wait=False) for _ in range(count)]
    for tracker in trackers:
        wait_serving(tracker.probe_address, timeout=timeout)
    return trackers


def start_peers(swarm: LocalSwarm, count: int, *extra: str, timeout: float = START_TIMEOUT) -> list[Proc]:
    """Start `count` peers with the same extra flags at once; return once every one reports SERVING."""
    peers = [swarm.start_peer(*extra, wait=False) for _ in range(count)]
    for peer in peers:
        wait_serving(peer.probe_address, timeout=timeout)
    return peers
