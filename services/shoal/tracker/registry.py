"""Soft-state registry of live peers and their files, kept alive by announce leases."""

from __future__ import annotations

import hmac
import logging
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from shoal.tracker.files import FileIndex, FileMeta, Holding

logger = logging.getLogger(__name__)

DEFAULT_SEARCH_LIMIT = 100
MAX_SEARCH_LIMIT = 1000
DEFAULT_HOLDERS_LIMIT = 50
MAX_HOLDERS_LIMIT = 1000
MAX_LIST_PEERS = 20_000  # ListPeers reply: 20,000 peers of at most ~520 bytes stay under the 17 MiB message cap
SECRET_BYTES = 32  # random bytes in a secret the registry issues (43 characters of base64url)
MIN_SECRET = 22  # characters a secret the peer brings needs to be kept (~128 bits in base64url)
CAP_LOG_EVERY = 10.0  # seconds between log lines about files left out for a cap


class RegistryError(Exception):
    """A request the registry refuses; the registry is left as it was."""


class NotOwner(RegistryError):
    """The request cannot prove the peer id it names (the id is bound to a secret it does not carry)."""


class AddressTaken(RegistryError):
    """Another live peer holds the address."""


class RegistryFull(RegistryError):
    """The registry holds its maximum of peers."""


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
    denied_total: int = 0  # announces and leaves refused: unproven id or an address another live peer holds


class Announced(NamedTuple):
    """What an announce did: whether the peer joined, and the secret its lease is bound to ("" if none)."""

    joined: bool
    secret: str


@dataclass(slots=True)
class _Lease:
    peer: Peer
    expires_at: float
    holdings: dict[str, Holding]
    secret: str = ""  # "" : not bound (registered by a peer that does not keep secrets)


def clamp_limit(limit: int, default: int, maximum: int) -> int:
    """Map 0 (or less) to the default and cap at the maximum."""
    return default if limit <= 0 else min(limit, maximum)


class Registry:
    """Live peers with leases, and an index from file id to holders.

    Lease rule: a peer is live while clock() < expires_at, where expires_at = last announce + ttl.
    Every read ignores lapsed peers at once; expire() only reclaims their memory. Because ttl is fixed and the
    clock never goes back, leases expire in the order they were last renewed, so they are kept in an
    OrderedDict in that order: renewing is move_to_end, expiring pops from the front.

    Identity rule (announce_as, leave_as): a lease that starts while its id has no live lease is bound to a secret
    when the announce sets accepts_secret, and unbound otherwise. The secret is the one the request carries if it
    has at least MIN_SECRET characters (a peer keeps its secret across replica restarts and lost replies), else a
    fresh random one; the reply returns it. While the lease stays live, a bound id is renewed or ended only by a
    request carrying that secret (else NotOwner); an unbound id stays unbound and open to anyone, as before secrets
    existed, so older peers keep working during a rolling upgrade. Once the lease lapses the id is free again: the
    next announce starts a new lease (this is also all a restarted replica sees, so it never fails a peer). Each
    replica keeps its own bindings; nothing is shared between replicas.
    Address rule: an address held by a live peer is never taken by another id (AddressTaken).

    Name rule (FileIndex): a file's name and size are those most of its current holders report; on a tie, those
    of the holder that has held it longest (a lapsed holder counts until expire() sweeps it, every 0.5 s).

    Caps (Limits): a new peer beyond max_peers is refused (RegistryFull); files beyond max_files or holdings
    beyond max_holdings are left out of the announce that brings them, which is otherwise applied.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic, limits: Limits | None = None) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        self._ttl = ttl
        self._clock = clock
        self.limits = limits if limits is not None else Limits()
        self._leases: OrderedDict[str, _Lease] = OrderedDict()  # oldest lease first
        self._by_address: dict[str, str] = {}
        self._files = FileIndex()
        self._holdings = 0
        self._announces = 0
        self._expiries = 0
        self._refused_peers = 0
        self._refused_holdings = 0
        self._denied = 0
        self._cap_logged_at = float("-inf")

    @property
    def ttl(self) -> float:
        """Lease length in seconds."""
        return self._ttl

    def announce_as(
        self, peer: Peer, holdings: Iterable[Holding], secret: str = "", accepts_secret: bool = False
    ) -> Announced:
        """Announce after checking the identity rule (see the class docstring); raise NotOwner if unproven."""
        lease = self._live_lease(peer.peer_id)
        if lease is not None and lease.secret and not _same(secret, lease.secret):
            self._denied += 1
            raise NotOwner(peer.peer_id)
        joined = self.announce(peer, holdings)
        lease = self._leases[peer.peer_id]
        if joined and not accepts_secret:
            lease.secret = ""
        elif joined:
            lease.secret = secret if len(secret) >= MIN_SECRET else secrets.token_urlsafe(SECRET_BYTES)
        return Announced(joined, lease.secret)

    def leave_as(self, peer_id: str, secret: str = "") -> bool:
        """Leave after checking the identity rule; raise NotOwner if the live lease is bound to another secret."""
        lease = self._live_lease(peer_id)
        if lease is not None and lease.secret and not _same(secret, lease.secret):
            self._denied += 1
            raise NotOwner(peer_id)
        return self.leave(peer_id)

    def announce(self, peer: Peer, holdings: Iterable[Holding]) -> bool:
        """Renew the peer's lease and replace its holdings; True if the peer was unknown or had lapsed.

        Trusts the caller with the id (announce_as checks it); raises AddressTaken or RegistryFull, changing nothing.
        """
        now = self._clock()
        lease = self._leases.get(peer.peer_id)
        joined = lease is None or lease.expires_at <= now

        other = self._by_address.get(peer.address)
        if other is not None and other != peer.peer_id:
            if self._leases[other].expires_at > now:
                self._denied += 1
                raise AddressTaken(peer.address)
            self._drop(other)
        if lease is None and len(self._leases) >= self.limits.max_peers:
            self.expire()
            if len(self._leases) >= self.limits.max_peers:
                self._refused_peers += 1
                raise RegistryFull(peer.peer_id)
        self._announces += 1

        if lease is None:
            lease = _Lease(peer, now + self._ttl, {})
            self._leases[peer.peer_id] = lease
        else:
            if lease.peer.address != peer.address:
                self._forget_address(lease.peer)
            lease.peer = peer
            lease.expires_at = now + self._ttl
            self._leases.move_to_end(peer.peer_id)
        self._by_address[peer.address] = peer.peer_id
        self._replace_holdings(lease, {h.file_id: h for h in holdings})
        return joined

    def leave(self, peer_id: str) -> bool:
        """Forget a peer at once; True if it was live."""
        lease = self._leases.get(peer_id)
        if lease is None:
            return False
        live = lease.expires_at > self._clock()
        self._drop(peer_id)
        return live

    def expire(self) -> list[str]:
        """Drop every peer whose lease has passed and return their ids (O(expired), not O(peers))."""
        now = self._clock()
        gone: list[str] = []
        while self._leases:
            peer_id, lease = next(iter(self._leases.items()))
            if lease.expires_at > now:
                break
            self._drop(peer_id)
            gone.append(peer_id)
        self._expiries += len(gone)
        return gone

    def search(self, term: str, limit: int = DEFAULT_SEARCH_LIMIT) -> list[SearchHit]:
        """Files whose name contains term (case-insensitive) with live holders, sorted by (name, file_id)."""
        limit = clamp_limit(limit, DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT)
        folded = term.casefold()
        now = self._clock()
        hits: list[SearchHit] = []
        for file_id in self._files.sorted_ids():
            entry = self._files.entries[file_id]
            if folded not in entry.folded_name:
                continue
            complete = partial = 0
            for peer_id, holding in entry.holders.items():
                if self._leases[peer_id].expires_at > now:
                    if holding.complete:
                        complete += 1
                    else:
                        partial += 1
            if complete or partial:
                hits.append(SearchHit(entry.meta, complete, partial))
                if len(hits) >= limit:
                    break
        return hits

    def holders(self, file_id: str, limit: int = DEFAULT_HOLDERS_LIMIT, exclude_peer_id: str = "") -> list[Holder]:
        """Live holders of a file, complete ones first, each group in random order to spread load."""
        limit = clamp_limit(limit, DEFAULT_HOLDERS_LIMIT, MAX_HOLDERS_LIMIT)
        entry = self._files.get(file_id)
        if entry is None:
            return []
        now = self._clock()
        complete: list[Peer] = []
        partial: list[Peer] = []
        for peer_id, holding in entry.holders.items():
            lease = self._leases[peer_id]
            if peer_id != exclude_peer_id and lease.expires_at > now:
                (complete if holding.complete else partial).append(lease.peer)
        picked = [Holder(p, True) for p in random.sample(complete, min(limit, len(complete)))]
        rest = limit - len(picked)
        picked += [Holder(p, False) for p in random.sample(partial, min(rest, len(partial)))]
        return picked

    def file_meta(self, file_id: str) -> FileMeta | None:
        """The file as its current holders report it, or None when no live peer holds it."""
        entry = self._files.get(file_id)
        if entry is None:
            return None
        now = self._clock()
        if any(self._leases[peer_id].expires_at > now for peer_id in entry.holders):
            return entry.meta
        return None

    def live_peers(self, limit: int = MAX_LIST_PEERS) -> list[Peer]:
        """Live peers sorted by peer id, at most `limit` of them."""
        now = self._clock()
        peers = [lease.peer for lease in self._leases.values() if lease.expires_at > now]
        peers.sort(key=lambda p: p.peer_id)
        return peers[:limit]

    def stats(self) -> Stats:
        """Live peer and file counts, caps, and lifetime totals."""
        now = self._clock()
        lapsed = 0
        for lease in self._leases.values():  # oldest first: stops at the first live lease
            if lease.expires_at > now:
                break
            lapsed += 1
        if lapsed:
            files = sum(
                1
                for entry in self._files.entries.values()
                if any(self._leases[peer_id].expires_at > now for peer_id in entry.holders)
            )
        else:
            files = len(self._files)
        return Stats(
            peers=len(self._leases) - lapsed,
            files=files,
            announces_total=self._announces,
            expiries_total=self._expiries,
            holdings=self._holdings,
            max_peers=self.limits.max_peers,
            max_files=self.limits.max_files,
            max_holdings=self.limits.max_holdings,
            refused_peers_total=self._refused_peers,
            refused_holdings_total=self._refused_holdings,
            denied_total=self._denied,
        )

    def _live_lease(self, peer_id: str) -> _Lease | None:
        lease = self._leases.get(peer_id)
        return lease if lease is not None and lease.expires_at > self._clock() else None

    def _replace_holdings(self, lease: _Lease, new: dict[str, Holding]) -> None:
        """Unindex what the peer dropped first (freeing room), then index the rest while the caps allow."""
        old = lease.holdings
        if new == old:
            return
        peer_id = lease.peer.peer_id
        for file_id in old.keys() - new.keys():
            self._unindex(file_id, peer_id)
        kept: dict[str, Holding] = {}
        refused = 0
        for file_id, holding in new.items():
            if file_id not in old:
                if self._holdings >= self.limits.max_holdings or (
                    file_id not in self._files and len(self._files) >= self.limits.max_files
                ):
                    refused += 1
                    continue
                self._holdings += 1
            if old.get(file_id) != holding:
                self._files.add(holding, peer_id)
            kept[file_id] = holding
        lease.holdings = kept
        if refused:
            self._refused_holdings += refused
            now = self._clock()
            if now - self._cap_logged_at < CAP_LOG_EVERY:
                return
            self._cap_logged_at = now
            logger.warning(
                "peer %r: %d announced files left out (caps: %d files, %d holdings; %d left out in all)",
                peer_id[:64],
                refused,
                self.limits.max_files,
                self.limits.max_holdings,
                self._refused_holdings,
            )

    def _unindex(self, file_id: str, peer_id: str) -> None:
        self._files.remove(file_id, peer_id)
        self._holdings -= 1

    def _drop(self, peer_id: str) -> None:
        lease = self._leases.pop(peer_id)
        self._forget_address(lease.peer)
        for file_id in lease.holdings:
            self._unindex(file_id, peer_id)

    def _forget_address(self, peer: Peer) -> None:
        if self._by_address.get(peer.address) == peer.peer_id:
            del self._by_address[peer.address]


def _same(given: str, expected: str) -> bool:
    """Compare secrets in constant time (bytes: compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))
