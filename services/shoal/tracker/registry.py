"""Soft-state registry of live peers and their files, kept alive by announce leases or by open sessions."""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from shoal.tracker.files import FileIndex, FileMeta, Holding
from shoal.tracker.model import (
    AddressTaken,
    Announced,
    Holder,
    Lease,
    Limits,
    NotOwner,
    Opened,
    Peer,
    RegistryError,
    RegistryFull,
    SearchHit,
    SecretRequired,
    SessionLost,
    Stats,
)
from shoal.tracker.queries import (
    DEFAULT_HOLDERS_LIMIT,
    DEFAULT_SEARCH_LIMIT,
    MAX_HOLDERS_LIMIT,
    MAX_LIST_PEERS,
    MAX_SEARCH_LIMIT,
    Queries,
    clamp_limit,
)

__all__ = [
    "DEFAULT_HOLDERS_LIMIT",
    "DEFAULT_SEARCH_LIMIT",
    "MAX_HOLDERS_LIMIT",
    "MAX_LIST_PEERS",
    "MAX_SEARCH_LIMIT",
    "AddressTaken",
    "Announced",
    "FileMeta",
    "Holder",
    "Holding",
    "Limits",
    "NotOwner",
    "Opened",
    "Peer",
    "Registry",
    "RegistryError",
    "RegistryFull",
    "SearchHit",
    "SecretRequired",
    "SessionLost",
    "Stats",
    "clamp_limit",
]

logger = logging.getLogger(__name__)

SECRET_BYTES = 32  # random bytes in a secret the registry issues (43 characters of base64url)
MIN_SECRET = 22  # characters a secret the peer brings needs to be kept (~128 bits in base64url)
CAP_LOG_EVERY = 10.0  # seconds between log lines about files left out for a cap


class Registry(Queries):
    """Live peers with leases, and an index from file id to holders.

    Lease rule: a peer is live while clock() < expires_at. An announce sets expires_at = now + ttl; a lease held
    by an open session (open_session) has expires_at = inf and ends only when close_session says the stream ended
    (no timer, no per-peer work while it lives). Every read ignores lapsed peers at once; expire() only reclaims
    their memory. Because ttl is fixed and the clock never goes back, timed leases expire in the order they were
    last renewed, so they are kept in an OrderedDict in that order: renewing is move_to_end, expiring pops from
    the front. The newest registration of an id owns its lease: an announce detaches it from its session, a new
    session supersedes the old one, and a superseded session can neither update nor end the lease (SessionLost).

    Identity rule (announce_as, leave_as, open_session): a lease that starts while its id has no live lease is
    bound to a secret when the announce sets accepts_secret, and unbound otherwise. The secret is the one the
    request carries if it has at least MIN_SECRET characters (a peer keeps its secret across replica restarts and
    lost replies), else a fresh random one; the reply returns it. While the lease stays live, a bound id is renewed
    or ended only by a request carrying that secret (else NotOwner); an unbound id stays unbound and open to anyone,
    as before secrets existed, so older peers keep working during a rolling upgrade. Once the lease lapses the id
    is free again: the next announce starts a new lease (this is also all a restarted replica sees, so it never
    fails a peer). Each replica keeps its own bindings; nothing is shared between replicas. A session's later
    updates need no secret: the stream itself proves it is the one that opened the lease. With require_secrets
    (set once every peer is upgraded) an announce or session that does not set accepts_secret is refused
    (SecretRequired) before anything else is looked at, so no lease is ever unbound; leaves are unchanged.
    Address rule: an address held by a live peer is never taken by another id (AddressTaken).

    Name rule (FileIndex): a file's name and size are those most of its current holders report; on a tie, those
    of the holder that has held it longest (a lapsed holder counts until expire() sweeps it, every 0.5 s).

    Caps (Limits): a new peer beyond max_peers is refused (RegistryFull); files beyond max_files or holdings
    beyond max_holdings are left out of the announce or update that brings them, which is otherwise applied.
    """

    def __init__(
        self,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        limits: Limits | None = None,
        *,
        require_secrets: bool = False,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        self._ttl = ttl
        self._clock = clock
        self.limits = limits if limits is not None else Limits()
        self.require_secrets = require_secrets  # refuse announces and sessions that do not accept a secret
        self._leases: dict[str, Lease] = {}  # every lease, timed or held by a session
        self._timed: OrderedDict[str, Lease] = OrderedDict()  # leases kept by announces, oldest renewal first
        self._by_address: dict[str, str] = {}
        self._files = FileIndex()
        self._holdings = 0
        self._announces = 0
        self._expiries = 0
        self._refused_peers = 0
        self._refused_holdings = 0
        self._denied = 0
        self._updates = 0
        self._last_session = 0
        self._cap_logged_at = float("-inf")
        self.heard_at: float | None = None  # clock() of the last announce or session update; None before any

    @property
    def ttl(self) -> float:
        """Lease length in seconds."""
        return self._ttl

    @property
    def sessions(self) -> int:
        """Leases held by an open session."""
        return len(self._leases) - len(self._timed)

    def announce_as(
        self, peer: Peer, holdings: Iterable[Holding], secret: str = "", accepts_secret: bool = False
    ) -> Announced:
        """Announce after checking the identity rule (see the class docstring); raise NotOwner if unproven,
        SecretRequired if the registry requires secrets and the request does not accept one."""
        joined, secret, _ = self._announce_as(peer, holdings, secret, accepts_secret)
        return Announced(joined, secret)

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
        return self._announce(peer, holdings)[0]

    def open_session(
        self, peer: Peer, holdings: Iterable[Holding], secret: str = "", accepts_secret: bool = False
    ) -> Opened:
        """Announce as announce_as does, then tie the lease to a new session: it lives until close_session."""
        joined, secret, left_out = self._announce_as(peer, holdings, secret, accepts_secret)
        lease = self._timed.pop(peer.peer_id)
        lease.expires_at = math.inf
        self._last_session += 1
        lease.session = self._last_session
        return Opened(joined, secret, lease.session, left_out)

    def update_session(self, peer_id: str, session: int, held: Iterable[Holding], dropped: Iterable[str] = ()) -> int:
        """Apply a session's delta (dropped ids first, then held files); return how many files caps left out.

        O(size of the delta). Raises SessionLost, changing nothing, if the session no longer holds the lease.
        """
        lease = self._leases.get(peer_id)
        if lease is None or lease.session != session:
            raise SessionLost(peer_id)
        self._updates += 1
        self.heard_at = self._clock()
        for file_id in dropped:
            if lease.holdings.pop(file_id, None) is not None:
                self._unindex(file_id, peer_id)
        refused = 0
        for holding in held:
            if not self._hold(lease, holding):
                refused += 1
        self._left_out(peer_id, refused)
        return refused

    def close_session(self, peer_id: str, session: int) -> bool:
        """The session's stream ended: drop its peer at once; False if the session had lost the lease already."""
        lease = self._leases.get(peer_id)
        if lease is None or lease.session != session:
            return False
        self._drop(peer_id)
        return True

    def leave(self, peer_id: str) -> bool:
        """Forget a peer at once; True if it was live."""
        lease = self._leases.get(peer_id)
        if lease is None:
            return False
        live = lease.expires_at > self._clock()
        self._drop(peer_id)
        return live

    def expire(self) -> list[str]:
        """Drop every peer whose timed lease has passed and return their ids (O(expired), not O(peers))."""
        now = self._clock()
        gone: list[str] = []
        while self._timed:
            peer_id, lease = next(iter(self._timed.items()))
            if lease.expires_at > now:
                break
            self._drop(peer_id)
            gone.append(peer_id)
        self._expiries += len(gone)
        return gone

    def stats(self) -> Stats:
        """Live peer and file counts, caps, and lifetime totals."""
        now = self._clock()
        lapsed = 0
        for lease in self._timed.values():  # oldest first: stops at the first live lease
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
            sessions=self.sessions,
            session_updates_total=self._updates,
        )

    def _live_lease(self, peer_id: str) -> Lease | None:
        lease = self._leases.get(peer_id)
        return lease if lease is not None and lease.expires_at > self._clock() else None

    def _announce_as(
        self, peer: Peer, holdings: Iterable[Holding], secret: str, accepts_secret: bool
    ) -> tuple[bool, str, int]:
        """(joined, bound secret, files left out) after the identity rule; raise NotOwner or SecretRequired."""
        if self.require_secrets and not accepts_secret:
            self._denied += 1
            raise SecretRequired(peer.peer_id)
        lease = self._live_lease(peer.peer_id)
        if lease is not None and lease.secret and not _same(secret, lease.secret):
            self._denied += 1
            raise NotOwner(peer.peer_id)
        joined, left_out = self._announce(peer, holdings)
        lease = self._leases[peer.peer_id]
        if joined and not accepts_secret:
            lease.secret = ""
        elif joined:
            lease.secret = secret if len(secret) >= MIN_SECRET else secrets.token_urlsafe(SECRET_BYTES)
        return joined, lease.secret, left_out

    def _announce(self, peer: Peer, holdings: Iterable[Holding]) -> tuple[bool, int]:
        """(joined, files left out): a timed lease renewed (detached from any session) with these holdings."""
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
        self.heard_at = now

        if lease is None:
            lease = Lease(peer, now + self._ttl, {})
            self._leases[peer.peer_id] = lease
        else:
            if lease.peer.address != peer.address:
                self._forget_address(lease.peer)
            lease.peer = peer
            lease.expires_at = now + self._ttl
            lease.session = 0
        self._timed[peer.peer_id] = lease
        self._timed.move_to_end(peer.peer_id)
        self._by_address[peer.address] = peer.peer_id
        return joined, self._replace_holdings(lease, {h.file_id: h for h in holdings})

    def _replace_holdings(self, lease: Lease, new: dict[str, Holding]) -> int:
        """Unindex what the peer dropped first (freeing room), then index the rest while the caps allow."""
        old = lease.holdings
        if new == old:
            return 0
        peer_id = lease.peer.peer_id
        for file_id in old.keys() - new.keys():
            del old[file_id]
            self._unindex(file_id, peer_id)
        refused = 0
        for holding in new.values():
            if not self._hold(lease, holding):
                refused += 1
        self._left_out(peer_id, refused)
        return refused

    def _hold(self, lease: Lease, holding: Holding) -> bool:
        """Index one holding of the lease (new, or replacing its own); False if a cap leaves a new one out."""
        file_id = holding.file_id
        before = lease.holdings.get(file_id)
        if before is None:
            if self._holdings >= self.limits.max_holdings or (
                file_id not in self._files and len(self._files) >= self.limits.max_files
            ):
                return False
            self._holdings += 1
        elif before == holding:
            return True
        self._files.add(holding, lease.peer.peer_id)
        lease.holdings[file_id] = holding
        return True

    def _left_out(self, peer_id: str, refused: int) -> None:
        """Count files a cap left out, and say so in the log at most every CAP_LOG_EVERY seconds."""
        if not refused:
            return
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
        self._timed.pop(peer_id, None)
        self._forget_address(lease.peer)
        for file_id in lease.holdings:
            self._unindex(file_id, peer_id)

    def _forget_address(self, peer: Peer) -> None:
        if self._by_address.get(peer.address) == peer.peer_id:
            del self._by_address[peer.address]


def _same(given: str, expected: str) -> bool:
    """Compare secrets in constant time (bytes: compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))
