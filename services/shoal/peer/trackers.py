"""Talking to every tracker replica: announces to all, queries merged from whoever answers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import grpc

from shoal import net, tls
from shoal.peer.credentials import TrackerSecrets
from shoal.peer.errors import TrackersUnavailable
from shoal.peer.tracker_stream import ReplicaSession, Snapshot, StreamUnsupported
from shoal.store import Entry
from shoal.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

MERGE_GRACE = 0.25  # seconds other replicas get to join a merged answer once one has answered


class _Replica:
    def __init__(self, address: str, transport: tls.Transport, secrets: TrackerSecrets, snapshot: Snapshot) -> None:
        self.address = address
        self.transport = transport
        self.generation = transport.generation
        self.channel = transport.open_channel(address, tls.TRACKER_NAME)
        self.stub = tracker_pb2_grpc.TrackerStub(self.channel)
        self.session = ReplicaSession(address, self.current_stub, secrets, snapshot)
        self.up = False
        self.failures = 0
        self.next_announce = 0.0
        self.in_flight: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def current_stub(self) -> tracker_pb2_grpc.TrackerStub:
        """The stub to open a call on, on a channel with the current certificate."""
        self.renew()
        return self.stub

    def renew(self) -> None:
        """After the TLS files changed, dial with the new certificate; the old channel finishes its calls first."""
        if self.generation == self.transport.current():
            return
        old = self.channel
        self.generation = self.transport.generation
        self.channel = self.transport.open_channel(self.address, tls.TRACKER_NAME)
        self.stub = tracker_pb2_grpc.TrackerStub(self.channel)
        task = asyncio.get_running_loop().create_task(old.close(net.TRACKER_DEADLINE))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def resolve(spec: str) -> list[str]:
    """Expand 'host:port' to one 'ip:port' per address the name resolves to (a headless Service)."""
    host, port = net.split_host_port(spec)
    try:
        ipaddress.ip_address(host)
        return [spec]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = []
    for family, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0])
        addresses.append(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(set(addresses))


def held_files(entries: Iterable[Entry]) -> list[tracker_pb2.HeldFile]:
    """What to announce: every complete file, and every partial one with at least a chunk to serve."""
    return [
        tracker_pb2.HeldFile(file=entry.info, complete=entry.complete)
        for entry in entries
        if entry.complete or entry.have.count
    ]


class TrackerClient:
    """Keeps a lease at every tracker replica and answers queries with failover across them.

    It owns the "announce now" signal: whoever changes what this peer holds calls `announce_soon`.
    """

    def __init__(
        self,
        me: common_pb2.PeerInfo,
        holdings: Callable[[], list[tracker_pb2.HeldFile]],
        specs: tuple[str, ...],
        secrets: TrackerSecrets,
        refresh_seconds: float = 30.0,
        transport: tls.Transport | None = None,
    ) -> None:
        self._me = me
        self._holdings = holdings
        self._announce_now = asyncio.Event()
        self._leaving = False  # set by leave(): the replica set is frozen so no channel closes under a Leave call
        self._specs = specs
        self._refresh = refresh_seconds
        self._replicas: dict[str, _Replica] = {}
        self.interval = 3.0
        self.secrets = secrets
        self._transport = transport if transport is not None else tls.plaintext()

    @property
    def addresses(self) -> list[str]:
        """Every replica address currently known."""
        return sorted(self._replicas)

    @property
    def up(self) -> list[str]:
        """Replicas that answered the last announce."""
        return sorted(a for a, r in self._replicas.items() if r.up or r.session.up)

    async def refresh(self) -> None:
        """Re-resolve tracker names; add new replicas, drop vanished ones."""
        if self._leaving:
            return
        wanted: set[str] = set()
        failed = False
        for spec in self._specs:
            try:
                wanted.update(await resolve(spec))
            except (OSError, ValueError) as err:
                logger.warning("cannot resolve tracker %s: %s", spec, err)
                failed = True
        if failed:  # keep what we had; drop nothing on a failed lookup
            wanted.update(self._replicas)
        if self._leaving:  # leave() began while names were being resolved
            return
        for address in wanted - set(self._replicas):
            logger.info("tracker replica %s added", address)
            self._replicas[address] = _Replica(address, self._transport, self.secrets, self._announcement)
        for address in set(self._replicas) - wanted:
            logger.info("tracker replica %s gone", address)
            gone = self._replicas.pop(address)
            if gone.in_flight is not None:
                gone.in_flight.cancel()
            await gone.channel.close(None)

    def announce_soon(self) -> None:
        """What this peer holds changed: announce to every replica now rather than at the next interval."""
        self._announce_now.set()

    def _announcement(self) -> tracker_pb2.AnnounceRequest:
        return tracker_pb2.AnnounceRequest(peer=self._me, files=self._holdings())

    async def _announce_one(self, replica: _Replica, request: tracker_pb2.AnnounceRequest) -> None:
        if replica.session.wanted():  # a Session stream holds the lease until the peer leaves
            replica.up = False
            try:
                return await replica.session.run()
            except StreamUnsupported:  # an older tracker: announce as before
                pass
        request = await self.secrets.announcement(request, replica.address)
        try:
            # wait_for_ready: a replica that just came back is reached as soon as the channel reconnects,
            # instead of failing at once and waiting a whole interval (the deadline still bounds it).
            reply = await replica.stub.Announce(request, timeout=net.TRACKER_DEADLINE, wait_for_ready=True)
        except grpc.aio.AioRpcError as err:
            if replica.up or replica.failures == 0:
                logger.warning(
                    "tracker %s unreachable (%s: %s); retrying with backoff",
                    replica.address,
                    err.code().name,
                    err.details(),
                )
            replica.up = False
            replica.failures += 1
            backoff = min(self.interval, 0.2 * 2 ** min(replica.failures, 6)) * random.uniform(0.5, 1.0)
            replica.next_announce = time.monotonic() + backoff
            return
        await self.secrets.remember(replica.address, reply.peer_secret)
        if not replica.up:
            logger.info("tracker %s reachable; lease held", replica.address)
        replica.up = True
        replica.failures = 0
        if reply.interval_seconds > 0:
            self.interval = reply.interval_seconds
        replica.next_announce = time.monotonic() + self.interval * random.uniform(0.9, 1.0)

    async def announce_all(self, *, force: bool = False, wait: bool = False) -> None:
        """Announce full state to every replica that is due (or all, when forced).

        Each replica's announce runs on its own, so a hung replica never delays the others' leases.
        """
        if force:
            for replica in self._replicas.values():
                replica.session.poke()
        now = time.monotonic()
        due = [
            r
            for r in self._replicas.values()
            if (r.in_flight is None or r.in_flight.done()) and (force or r.next_announce <= now)
        ]
        if not due:
            return
        request = self._announcement()
        started = []
        for replica in due:
            replica.renew()
            replica.next_announce = now + net.TRACKER_DEADLINE  # not due again while this one runs
            replica.in_flight = asyncio.create_task(self._announce_one(replica, request))
            started.append(replica.in_flight)
        if wait and started:
            await asyncio.gather(*started, return_exceptions=True)

    async def run(self) -> None:
        """Announce loop: keeps leases fresh, re-resolves names, announces at once on changes."""
        last_refresh = 0.0
        while True:
            now = time.monotonic()
            if now - last_refresh >= self._refresh or not self._replicas:
                await self.refresh()
                last_refresh = now
            force = self._announce_now.is_set()
            self._announce_now.clear()
            await self.announce_all(force=force)
            wake = min((r.next_announce for r in self._replicas.values()), default=now + 1.0)
            # Capped so a replica whose announce just finished is rescheduled promptly.
            timeout = min(0.25, max(0.05, wake - time.monotonic()))
            try:
                await asyncio.wait_for(self._announce_now.wait(), timeout)
            except TimeoutError:
                pass

    async def leave(self) -> None:
        """Tell every replica we are leaving (best effort, short deadline)."""

        self._leaving = True

        async def one(replica: _Replica) -> None:
            await replica.session.leave()
            try:
                await replica.stub.Leave(self.secrets.leave_request(self._me.peer_id, replica.address), timeout=1.0)
            except grpc.aio.AioRpcError as err:
                logger.info("leave to %s failed: %s", replica.address, err.code().name)

        replicas = list(self._replicas.values())
        results = await asyncio.gather(*(one(r) for r in replicas), return_exceptions=True)
        for replica, result in zip(replicas, results, strict=True):
            if isinstance(result, BaseException):  # best effort: the lease lapses on its own; stopping goes on
                logger.info("leave to %s failed: %r", replica.address, result)

    async def close(self) -> None:
        """Close every channel."""
        for replica in self._replicas.values():
            if replica.in_flight is not None:
                replica.in_flight.cancel()
            await replica.channel.close(None)

    async def _ask_all(self, call: Callable[[tracker_pb2_grpc.TrackerStub], Awaitable[T]]) -> list[T]:
        if not self._replicas:
            await self.refresh()
        replicas = list(self._replicas.values())

        async def one(replica: _Replica) -> T:
            return await net.with_retries(lambda: call(replica.stub), attempts=2, what=replica.address)

        # Ask every replica at once; once one has answered, give the others a moment to add to the
        # merge, but never wait out a dead replica's deadline (that is the failover).
        pending = {asyncio.create_task(one(r)) for r in replicas}
        answers: list[T] = []
        errors: list[BaseException] = []
        grace_ends: float | None = None
        try:
            while pending:
                timeout = None if grace_ends is None else max(0.0, grace_ends - time.monotonic())
                done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break
                for task in done:
                    if task.exception() is None:
                        answers.append(task.result())
                    else:
                        errors.append(task.exception())  # type: ignore[arg-type]
                if answers and grace_ends is None:
                    grace_ends = time.monotonic() + MERGE_GRACE
        finally:
            for task in pending:
                task.cancel()
        if not answers:
            reasons = {r.code().name if isinstance(r, grpc.aio.AioRpcError) else type(r).__name__ for r in errors}
            raise TrackersUnavailable(
                f"no tracker answered ({', '.join(sorted(reasons)) or 'none configured'}): {', '.join(self._specs)}"
            )
        return answers

    async def search(self, term: str) -> list[tracker_pb2.SearchFileResult]:
        """Search every replica and merge: the highest holder counts any replica reports win."""
        answers = await self._ask_all(
            lambda stub: stub.SearchFiles(tracker_pb2.SearchFilesRequest(term=term), timeout=net.TRACKER_DEADLINE)
        )
        merged: dict[str, tracker_pb2.SearchFileResult] = {}
        for answer in answers:
            for result in answer.results:
                best = merged.get(result.file.file_id)
                if best is None or (result.complete_holders, result.partial_holders) > (
                    best.complete_holders,
                    best.partial_holders,
                ):
                    merged[result.file.file_id] = result
        return sorted(merged.values(), key=lambda r: (r.file.name, r.file.file_id))

    async def live_peers(self) -> list[common_pb2.PeerInfo]:
        """Every live peer, the union over every replica that answers."""
        answers = await self._ask_all(
            lambda stub: stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=net.TRACKER_DEADLINE)
        )
        return list({p.peer_id: p for answer in answers for p in answer.peers}.values())

    async def holders(self, file_id: str, limit: int = 0) -> list[tracker_pb2.Holder]:
        """Holders of a file, the union over every replica that answers."""
        request = tracker_pb2.GetPeersRequest(file_id=file_id, limit=limit, exclude_peer_id=self._me.peer_id)
        answers = await self._ask_all(lambda stub: stub.GetPeers(request, timeout=net.TRACKER_DEADLINE))
        merged: dict[str, tracker_pb2.Holder] = {}
        for answer in answers:
            for holder in answer.holders:
                seen = merged.get(holder.peer.peer_id)
                if seen is None or (holder.complete and not seen.complete):
                    merged[holder.peer.peer_id] = holder
        return sorted(merged.values(), key=lambda h: not h.complete)
