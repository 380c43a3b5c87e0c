"""What the tracker registry speaks in: peers, caps, answers, counters and the errors it raises."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

from shoal.tracker.files import FileMeta, Holding

logger = logging.getLogger(__name__)


class RegistryError(Exception):
    """A request the registry refuses; the registry is left as it was."""


class NotOwner(RegistryError):
    """The request cannot prove the peer id it names (the id is bound to a secret it does not carry)."""


class SecretRequired(RegistryError):
    """The registry requires secrets (require_secrets) and the request does not accept one: an older peer."""


class AddressTaken(RegistryError):
    """Another live peer holds the address."""


class RegistryFull(RegistryError):
    """The registry holds its maximum of peers."""


class SessionLost(RegistryError):
    """The session no longer holds its peer's lease: a newer session, an announce or a leave took it over."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on the registry's size: peers, distinct files, and (peer, file) holdings."""

    max_peers: int = 20_000
    max_files: int = 200_000
    max_holdings: int = 2_000_000


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer as other peers dial it."""

    peer_id: str
    address: str
    zone: str = ""


class SearchHit(NamedTuple):
    """A file matching a search and how many live peers hold it."""

    file: FileMeta
    complete_holders: int
    partial_holders: int


class Holder(NamedTuple):
    """A live peer holding a file."""

    peer: Peer
    complete: bool


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters for metrics."""

    peers: int
    files: int
    announces_total: int
    expiries_total: int
    holdings: int = 0
    max_peers: int = 0
    max_files: int = 0
    max_holdings: int = 0
    refused_peers_total: int = 0  # announces of new peers refused because the registry was full
    refused_holdings_total: int = 0  # announced files left out because a file or holding cap was reached
    denied_total: int = 0  # announces and leaves refused: unproven id, no secret where required, or a taken address
    sessions: int = 0  # leases held by a live Session stream rather than by announces
    session_updates_total: int = 0  # updates applied after a session's first


class Announced(NamedTuple):
    """What an announce did: whether the peer joined, and the secret its lease is bound to ("" if none)."""

    joined: bool
    secret: str


class Opened(NamedTuple):
    """What opening a session did: as Announced, plus the session's token and the files left out for caps."""

    joined: bool
    secret: str
    session: int
    left_out: int


@dataclass(slots=True)
class Lease:
    """A peer's lease: until when it lives, what it holds, its secret and the session keeping it."""

    peer: Peer
    expires_at: float
    holdings: dict[str, Holding]
    secret: str = ""  # "" : not bound (registered by a peer that does not keep secrets)
    session: int = 0  # token of the Session stream holding the lease (expires_at is then inf); 0: announces do
