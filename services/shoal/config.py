"""Every setting in one place: its flag, SHOAL_* variable, default, parser and check; the CLI is built from these."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal import units
from shoal.settings import (
    ConfigError,
    Setting,
    absolute,
    address,
    addresses,
    at_least,
    boolean,
    bracketed,
    choice,
    chunk_size,
    chunk_size_or_zero,
    env,
    integer,
    parse_cache_size,
    port,
    positive,
)

logger = logging.getLogger(__name__)

# Lease defaults: a peer announces every 3 s and is forgotten after 3 missed intervals (9 s),
# so a dead peer leaves every tracker within 10 s.
DEFAULT_ANNOUNCE_INTERVAL = 3.0
DEFAULT_TTL_INTERVALS = 3
DEFAULT_CHUNK_SIZE = 1024 * 1024
DEFAULT_UPLOAD_SLOTS = 8  # fills a node link with 1 MiB chunks; at N = 16 peak RSS 104 -> 89 MB vs 16, T unchanged
DEFAULT_MAX_PEERS_PER_DOWNLOAD = 16
DEFAULT_REQUESTS_PER_PEER = 4
DEFAULT_INFLIGHT_BUDGET = 16 * 1024 * 1024  # chunk bytes requested or received but not yet written
DEFAULT_DEMO_PEERS = 6
DEFAULT_DEMO_SIZE = 64 * 1024 * 1024
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


def _default_peer() -> str | None:
    data_dir = env("DATA_DIR")
    return f"unix:{Path(data_dir).resolve() / 'control.sock'}" if data_dir else None


# ---- the settings -------------------------------------------------------------------------------

PEER = Setting(
    "peer",
    "--peer",
    "the local daemon's control address, unix:PATH or HOST:PORT",
    env="PEER",
    fallback=_default_peer,
    metavar="ADDR",
    shown_default="unix:$SHOAL_DATA_DIR/control.sock",
)
LOG_LEVEL = Setting(
    "log_level", "--log-level", "log threshold", env="LOG_LEVEL", default="INFO",
    parse=choice(LOG_LEVELS, upper=True), metavar="{" + ",".join(LOG_LEVELS) + "}",
)  # fmt: skip
LOG_FORMAT = Setting(
    "log_format", "--log-format", "text lines, or one JSON object per line", env="LOG_FORMAT", default="text",
    parse=choice(LOG_FORMATS, upper=False), metavar="{text,json}",
)  # fmt: skip
METRICS_PORT = Setting(
    "metrics_port", "--metrics-port", "serve Prometheus metrics on this port", env="METRICS_PORT",
    parse=integer, check=port, metavar="PORT", shown_default="off",
)  # fmt: skip

TRACKER_LISTEN = Setting(
    "listen", "--listen", "address to serve on", env="LISTEN", default="0.0.0.0:7400", check=address,
    metavar="HOST:PORT",
)  # fmt: skip
ANNOUNCE_INTERVAL = Setting(
    "announce_interval", "--announce-interval", "time between a peer's announces (seconds, or 3s, 500ms)",
    env="ANNOUNCE_INTERVAL", default=DEFAULT_ANNOUNCE_INTERVAL, parse=units.parse_duration, check=positive,
    metavar="SECONDS",
)  # fmt: skip
PEER_TTL = Setting(
    "peer_ttl", "--peer-ttl", "forget a peer this long after its last announce", env="PEER_TTL",
    parse=units.parse_duration, check=positive, metavar="SECONDS", shown_default=f"{DEFAULT_TTL_INTERVALS} intervals",
)  # fmt: skip
REQUIRE_PEER_SECRETS = Setting(
    "require_secrets", "--require-peer-secrets",
    "refuse peers that do not prove their id with a secret (older builds); set once all are upgraded",
    env="REQUIRE_PEER_SECRETS", default=False, parse=boolean, switch=True, metavar="", shown_default="off",
)  # fmt: skip

PEER_LISTEN = Setting(
    "listen", "--listen", "peer-facing address", env="LISTEN", default="0.0.0.0:7401", check=address,
    metavar="HOST:PORT",
)  # fmt: skip
TRACKERS = Setting(
    "tracker", "--tracker", "the trackers, comma-separated", env="TRACKER", parse=addresses, required=True,
    metavar="ADDR[,ADDR...]",
)  # fmt: skip
DATA_DIR = Setting(
    "data_dir", "--data-dir", "where files live", env="DATA_DIR", parse=absolute, required=True, metavar="DIR"
)
ADVERTISE = Setting(
    "advertise", "--advertise", "address other peers dial", env="ADVERTISE", check=address, metavar="HOST:PORT",
    shown_default="the listen address",
)  # fmt: skip
CONTROL = Setting(
    "control", "--control", "control API address, unix:PATH or 127.0.0.1:PORT", env="CONTROL", metavar="ADDR",
    shown_default="unix:DATA_DIR/control.sock",
)  # fmt: skip
CONTROL_TOKEN_FILE = Setting(
    "control_token_file", "--control-token-file", "file holding the control API token (required for a TCP control"
    " address; mode 0600)", env="CONTROL_TOKEN_FILE", parse=absolute, metavar="FILE", shown_default="none",
)  # fmt: skip
CONTROL_GROUP = Setting(
    "control_group", "--control-group", "group allowed to use the control socket (0660); each caller's paths are"
    " checked as that caller", env="CONTROL_GROUP", metavar="GROUP", shown_default="none: 0600",
)  # fmt: skip
ZONE = Setting("zone", "--zone", "topology zone, preferred for sources", env="ZONE", default="", metavar="ZONE")
CHUNK_SIZE = Setting(
    "chunk_size", "--chunk-size", "chunk size of files this peer publishes, 16KiB-16MiB", env="CHUNK_SIZE",
    default=DEFAULT_CHUNK_SIZE, parse=units.parse_size, check=chunk_size, metavar="SIZE", shown_default="1MiB",
)  # fmt: skip
UPLOAD_LIMIT = Setting(
    "upload_limit", "--upload-limit", "upload cap (bytes/s, or 50MB/s, 50M); 0 = none", env="UPLOAD_LIMIT",
    default=0, parse=units.parse_rate, check=at_least(0), metavar="RATE",
)  # fmt: skip
DOWNLOAD_LIMIT = Setting(
    "download_limit", "--download-limit", "download cap (bytes/s, or 50MB/s, 50M); 0 = none", env="DOWNLOAD_LIMIT",
    default=0, parse=units.parse_rate, check=at_least(0), metavar="RATE",
)  # fmt: skip
UPLOAD_SLOTS = Setting(
    "upload_slots", "--upload-slots", "chunk replies served at once", env="UPLOAD_SLOTS",
    default=DEFAULT_UPLOAD_SLOTS, parse=integer, check=at_least(1), metavar="N",
)  # fmt: skip
MAX_PEERS = Setting(
    "max_peers", "--max-peers", "sources one download uses at once", env="MAX_PEERS",
    default=DEFAULT_MAX_PEERS_PER_DOWNLOAD, parse=integer, check=at_least(1), metavar="N",
)  # fmt: skip
CACHE_SIZE = Setting(
    "cache_size", "--cache-size",
    "disk quota of the data dir (10GiB, 500M, or 80% of its filesystem); past 95% the least recently used "
    "files are evicted down to 85%; 0 = no limit", env="CACHE_SIZE", default=0, parse=parse_cache_size,
    metavar="SIZE",
)  # fmt: skip
REQUESTS_PER_PEER = Setting(
    "requests_per_peer", "--requests-per-peer", "chunk requests in flight per source", env="REQUESTS_PER_PEER",
    default=DEFAULT_REQUESTS_PER_PEER, parse=integer, check=at_least(1), metavar="N",
)  # fmt: skip
INFLIGHT_BUDGET = Setting(
    "inflight_budget", "--inflight-budget",
    "chunk bytes all downloads may have requested or received but not yet written (one chunk always may)",
    env="INFLIGHT_BUDGET", default=DEFAULT_INFLIGHT_BUDGET, parse=units.parse_size, check=at_least(1),
    metavar="SIZE", shown_default="16MiB",
)  # fmt: skip

PUT_CHUNK_SIZE = Setting(
    "chunk_size", "--chunk-size", "chunk size for this file, 16KiB-16MiB", default=0, parse=units.parse_size,
    check=chunk_size_or_zero, metavar="SIZE", shown_default="the daemon's chunk size",
)  # fmt: skip
DEMO_PEERS = Setting(
    "peers", "--peers", "leechers to start", env="DEMO_PEERS", default=DEFAULT_DEMO_PEERS, parse=integer,
    check=at_least(1), metavar="N",
)  # fmt: skip
DEMO_SIZE = Setting(
    "size", "--size", "size of the demo file (bytes, or 1GiB, 500M)", env="DEMO_SIZE", default=DEFAULT_DEMO_SIZE,
    parse=units.parse_size, check=at_least(0), metavar="SIZE", shown_default="64MiB",
)  # fmt: skip

TLS_CERT = Setting(
    "tls_cert", "--tls-cert", "this process's certificate (PEM, chain first); with the key and CA: mutual TLS",
    env="TLS_CERT", parse=absolute, metavar="FILE", shown_default="off: plaintext",
)  # fmt: skip
TLS_KEY = Setting(
    "tls_key", "--tls-key", "the certificate's private key (PEM)", env="TLS_KEY", parse=absolute, metavar="FILE",
    shown_default="off",
)  # fmt: skip
TLS_CA = Setting(
    "tls_ca", "--tls-ca", "the CA every peer's and tracker's certificate must chain to (PEM)", env="TLS_CA",
    parse=absolute, metavar="FILE", shown_default="off",
)  # fmt: skip
HEALTH_LISTEN = Setting(
    "health_listen", "--health-listen", "plaintext gRPC health service only, for probes (use the pod IP)",
    env="HEALTH_LISTEN", parse=bracketed, check=address, metavar="HOST:PORT", shown_default="off",
)  # fmt: skip
TLS = (TLS_CERT, TLS_KEY, TLS_CA, HEALTH_LISTEN)
S3_ENDPOINT = Setting(
    "s3_endpoint", "--s3-endpoint", "S3-compatible endpoint URL for s3:// origins", env="S3_ENDPOINT", default="",
    metavar="URL", shown_default="AWS",
)  # fmt: skip

GLOBAL = (PEER, LOG_LEVEL, LOG_FORMAT)
# What each command reads; a variable is parsed only by a command that reads it.
COMMANDS: dict[str, tuple[Setting, ...]] = {
    "tracker": (
        LOG_LEVEL, LOG_FORMAT, TRACKER_LISTEN, ANNOUNCE_INTERVAL, PEER_TTL, METRICS_PORT, REQUIRE_PEER_SECRETS, *TLS,
    ),
    "peer": (
        LOG_LEVEL, LOG_FORMAT, PEER_LISTEN, TRACKERS, DATA_DIR, ADVERTISE, CONTROL, ZONE, CHUNK_SIZE,
        UPLOAD_LIMIT, DOWNLOAD_LIMIT, UPLOAD_SLOTS, MAX_PEERS, REQUESTS_PER_PEER, INFLIGHT_BUDGET, METRICS_PORT,
        CACHE_SIZE, CONTROL_TOKEN_FILE, CONTROL_GROUP, *TLS,
    ),
    "put": (PEER, PUT_CHUNK_SIZE, CONTROL_TOKEN_FILE),
    "rm": (PEER, CONTROL_TOKEN_FILE),
    "cancel": (PEER, CONTROL_TOKEN_FILE),
    "pin": (PEER, CONTROL_TOKEN_FILE),
    "unpin": (PEER, CONTROL_TOKEN_FILE),
    "get": (PEER, CONTROL_TOKEN_FILE, S3_ENDPOINT),
    "preheat": (PEER, CONTROL_TOKEN_FILE, S3_ENDPOINT),
    "search": (PEER, CONTROL_TOKEN_FILE),
    "peers": (PEER, CONTROL_TOKEN_FILE, S3_ENDPOINT),
    "ls": (PEER, CONTROL_TOKEN_FILE),
    "status": (PEER, CONTROL_TOKEN_FILE),
    "verify": (PEER, CONTROL_TOKEN_FILE),
    "demo": (DEMO_PEERS, DEMO_SIZE),
}  # fmt: skip


def resolve(settings: Iterable[Setting], flags: Mapping[str, str | None]) -> dict[str, Any]:
    """Each setting's value from its flag text (None: not given), its variable or its default."""
    return {s.dest: s.read(flags.get(s.dest)) for s in settings}


@dataclass(frozen=True)
class TlsFiles:
    """Where a process's certificate, key and CA live (re-read by shoal.tls when they change)."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> TlsFiles | None:
        """All three files, or None for plaintext; ConfigError when only some are given."""
        given = [values.get(s.dest) for s in (TLS_CERT, TLS_KEY, TLS_CA)]
        if not any(given):
            return None
        for setting, value in zip((TLS_CERT, TLS_KEY, TLS_CA), given, strict=True):
            if not value:
                message = f"--tls-cert, --tls-key and --tls-ca go together: {setting.flag} is missing"
                raise ConfigError(setting, message)
        cert, key, ca = (Path(str(value)) for value in given)
        return cls(cert, key, ca)


@dataclass(frozen=True)
class TrackerConfig:
    """Settings of `shoal tracker`."""

    listen: str = "0.0.0.0:7400"
    announce_interval: float = DEFAULT_ANNOUNCE_INTERVAL
    peer_ttl: float | None = None  # None: DEFAULT_TTL_INTERVALS announce intervals
    metrics_port: int | None = None
    tls: TlsFiles | None = None  # None: plaintext
    health_listen: str | None = None  # a plaintext health-only listener, for probes
    require_secrets: bool = False  # refuse announces and sessions without accepts_secret (older peers)

    @property
    def ttl(self) -> float:
        """The lease length in seconds."""
        if self.peer_ttl is not None:
            return self.peer_ttl
        return self.announce_interval * DEFAULT_TTL_INTERVALS

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> TrackerConfig:
        """Build from resolve()'s answer for the tracker's settings."""
        return cls(
            listen=values["listen"],
            announce_interval=values["announce_interval"],
            peer_ttl=values["peer_ttl"],
            metrics_port=values["metrics_port"],
            tls=TlsFiles.from_values(values),
            health_listen=values.get("health_listen"),
            require_secrets=bool(values.get("require_secrets", False)),
        )


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
    inflight_budget: int = DEFAULT_INFLIGHT_BUDGET  # bytes, across every download of this peer
    metrics_port: int | None = None
    tracker_refresh: float = 30.0  # seconds between DNS re-resolutions of tracker names
    control_token_file: Path | None = None  # required with a TCP control address
    control_group: str | None = None  # None: the control socket is 0600
    cache_size: int | float = 0  # bytes, or a fraction of the data dir's filesystem; 0 = no limit
    tls: TlsFiles | None = None  # None: plaintext
    health_listen: str | None = None  # a plaintext health-only listener, for probes

    @property
    def control_address(self) -> str:
        """The gRPC target of the control API."""
        if self.control:
            return self.control
        return f"unix:{(self.data_dir / 'control.sock').resolve()}"

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> PeerConfig:
        """Build from resolve()'s answer for the peer's settings."""
        return cls(
            listen=values["listen"],
            trackers=values["tracker"],
            data_dir=values["data_dir"],
            advertise=values["advertise"],
            control=values["control"],
            zone=values["zone"],
            chunk_size=values["chunk_size"],
            upload_limit=values["upload_limit"],
            download_limit=values["download_limit"],
            upload_slots=values["upload_slots"],
            max_peers=values["max_peers"],
            requests_per_peer=values["requests_per_peer"],
            inflight_budget=values["inflight_budget"],
            metrics_port=values["metrics_port"],
            control_token_file=values.get("control_token_file"),
            control_group=values.get("control_group"),
            cache_size=values.get("cache_size", 0),
            tls=TlsFiles.from_values(values),
            health_listen=values.get("health_listen"),
        )
