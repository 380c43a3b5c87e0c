"""Every setting in one place: flags, their SHOAL_* env vars and their defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Lease defaults: a peer announces every 3 s and is forgotten after 3 missed intervals (9 s),
# so a dead peer leaves every tracker within 10 s.
DEFAULT_ANNOUNCE_INTERVAL = 3.0
DEFAULT_TTL_INTERVALS = 3
DEFAULT_CHUNK_SIZE = 1024 * 1024
DEFAULT_UPLOAD_SLOTS = 16
DEFAULT_MAX_PEERS_PER_DOWNLOAD = 16
DEFAULT_REQUESTS_PER_PEER = 4


def env(name: str, default: str | None = None) -> str | None:
    """Read SHOAL_<NAME>, treating an empty value as unset."""
    value = os.environ.get(f"SHOAL_{name}")
    return value if value else default


@dataclass(frozen=True)
class TrackerConfig:
    """Settings of `shoal tracker`."""

    listen: str = "0.0.0.0:7400"
    announce_interval: float = DEFAULT_ANNOUNCE_INTERVAL
    peer_ttl: float | None = None  # None: DEFAULT_TTL_INTERVALS announce intervals
    metrics_port: int | None = None

    @property
    def ttl(self) -> float:
        """The lease length in seconds."""
        if self.peer_ttl is not None:
            return self.peer_ttl
        return self.announce_interval * DEFAULT_TTL_INTERVALS


@dataclass(frozen=True)
class PeerConfig:
    """Settings of `shoal peer`."""

    listen: str
    trackers: tuple[str, ...]
    data_dir: Path
    advertise: str | None = None
    control: str | None = None  # None: unix socket <data_dir>/control.sock
    zone: str = ""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    upload_limit: int = 0  # bytes/s, 0 = unlimited
    download_limit: int = 0  # bytes/s, 0 = unlimited
    upload_slots: int = DEFAULT_UPLOAD_SLOTS
    max_peers: int = DEFAULT_MAX_PEERS_PER_DOWNLOAD
    requests_per_peer: int = DEFAULT_REQUESTS_PER_PEER
    metrics_port: int | None = None
    tracker_refresh: float = 30.0  # seconds between DNS re-resolutions of tracker names
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def control_address(self) -> str:
        """The gRPC target of the control API."""
        if self.control:
            return self.control
        return f"unix:{(self.data_dir / 'control.sock').resolve()}"
