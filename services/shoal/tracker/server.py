"""gRPC front of the tracker: validates requests, calls the registry, builds replies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import grpc

from shoal import content, net, tls
from shoal.config import TrackerConfig
from shoal.exporter import ProcessMetrics
from shoal.health import Health
from shoal.tracker.metrics import WatchedRegistry, watch_tracker
from shoal.tracker.registry import AddressTaken, Holding, Limits, NotOwner, Peer, Registry, RegistryFull
from shoal.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = "shoal.v1.Tracker"
EXPIRE_EVERY = 0.5  # seconds between sweeps of lapsed leases
STOP_GRACE = 2.0

# Caps on what a request may carry (UTF-8 bytes for strings); anything over one is INVALID_ARGUMENT.
MAX_PEER_ID = 128
MAX_ADDRESS = 256
MAX_ZONE = 128
MAX_NAME = content.MAX_NAME_BYTES
MAX_SECRET = 128
MAX_TERM = 255
MAX_FILES_PER_ANNOUNCE = 10_000
# A full announce (10,000 files with 255-byte names) is ~3.4 MB; grpc refuses bigger requests with RESOURCE_EXHAUSTED.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
SHOWN = 64  # characters of an attacker's string kept in replies and logs
REFUSAL_LOGS_PER_SECOND = 20


def shown(text: str) -> str:
    """A caller's string for a reply or a log line: shortened, and repr'd so control characters stay escaped."""
    return repr(text[:SHOWN] + ("..." if len(text) > SHOWN else ""))


def _check_text(value: str, what: str, cap: int, *, required: bool = False) -> str:
    if required and not value:
        raise ValueError(f"{what} is required")
    if len(value.encode("utf-8", "surrogatepass")) > cap:
        raise ValueError(f"{what} longer than {cap} bytes: {shown(value)}")
    if not value.isprintable():
        raise ValueError(f"{what} has control characters: {shown(value)}")
    return value


def check_file_id(file_id: str) -> str:
    """Return file_id if it is 64 lowercase hex characters, else raise ValueError."""
    if not content.FILE_ID.fullmatch(file_id):  # strict: the canonical form only, no normalising
        raise ValueError(f"file_id must be 64 lowercase hex characters, got {shown(file_id)}")
    return file_id


def check_peer_id(peer_id: str) -> str:
    """Return peer_id if it is non-empty, printable and at most MAX_PEER_ID bytes, else raise ValueError."""
    return _check_text(peer_id, "peer_id", MAX_PEER_ID, required=True)


def check_secret(secret: str) -> str:
    """Return a presented peer secret if it is at most MAX_SECRET bytes, else raise ValueError."""
    if len(secret.encode("utf-8", "surrogatepass")) > MAX_SECRET:
        raise ValueError(f"peer_secret longer than {MAX_SECRET} bytes")  # never echoed: it may be someone's secret
    return secret


def peer_from_proto(info: common_pb2.PeerInfo) -> Peer:
    """Validate a PeerInfo and convert it; raise ValueError on bad input."""
    check_peer_id(info.peer_id)
    _check_text(info.address, "peer address", MAX_ADDRESS, required=True)
    try:
        net.split_host_port(info.address)
    except ValueError:
        raise ValueError(f"peer address must be host:port, got {shown(info.address)}") from None
    _check_text(info.zone, "zone", MAX_ZONE)
    return Peer(info.peer_id, info.address, info.zone)


def holdings_from_proto(files: Sequence[tracker_pb2.HeldFile]) -> list[Holding]:
    """Validate announced files and convert them; raise ValueError on bad input."""
    if len(files) > MAX_FILES_PER_ANNOUNCE:
        raise ValueError(f"at most {MAX_FILES_PER_ANNOUNCE} files per announce, got {len(files)}")
    holdings = []
    for held in files:
        info = held.file
        check_file_id(info.file_id)
        if len(info.name.encode("utf-8", "surrogatepass")) > MAX_NAME:
            raise ValueError(f"name of file {info.file_id} longer than {MAX_NAME} bytes: {shown(info.name)}")
        if info.size > content.MAX_FILE_SIZE:
            raise ValueError(f"size of file {info.file_id} over {content.MAX_FILE_SIZE} bytes: {info.size}")
        holdings.append(Holding(info.file_id, info.name, info.size, held.complete))
    return holdings


def peer_to_proto(peer: Peer) -> common_pb2.PeerInfo:
    """Convert a registry peer to its wire form."""
    return common_pb2.PeerInfo(peer_id=peer.peer_id, address=peer.address, zone=peer.zone)


class _RefusalLog:
    """One warning per refused request, at most `per_second` a second (a flood must not become a log flood)."""

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_second = per_second
        self._clock = clock
        self._window = 0.0
        self._logged = 0
        self._suppressed = 0

    def __call__(self, rpc: str, code: grpc.StatusCode, caller: str, detail: str) -> None:
        now = self._clock()
        if now - self._window >= 1.0:
            self._window, self._logged = now, 0
        if self._logged >= self._per_second:
            self._suppressed += 1
            return
        self._logged += 1
        extra = f" ({self._suppressed} more refusals not logged)" if self._suppressed else ""
        self._suppressed = 0
        logger.warning("%s from %s refused with %s: %s%s", rpc, caller, code.name, detail, extra)


class TrackerServicer(tracker_pb2_grpc.TrackerServicer):
    """Tracker RPCs over one Registry."""

    def __init__(self, registry: Registry, cfg: TrackerConfig) -> None:
        self._registry = registry
        self._cfg = cfg
        self._log_refusal = _RefusalLog(REFUSAL_LOGS_PER_SECOND)

    async def _refuse(
        self, context: grpc.aio.ServicerContext, rpc: str, code: grpc.StatusCode, detail: str
    ) -> NoReturn:
        self._log_refusal(rpc, code, context.peer(), detail)
        await context.abort(code, detail)
        raise AssertionError("abort returned")  # for type checkers: abort always raises

    async def Announce(
        self, request: tracker_pb2.AnnounceRequest, context: grpc.aio.ServicerContext
    ) -> tracker_pb2.AnnounceResponse:
        """Renew the caller's lease and replace its holdings, if it can prove its id."""
        try:
            peer = peer_from_proto(request.peer)
            holdings = holdings_from_proto(request.files)
            check_secret(request.peer_secret)
        except ValueError as err:
            await self._refuse(context, "Announce", grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if not tls.address_allowed(peer.address, tls.proven_ips(context)):
            await self._refuse(
                context,
                "Announce",
                grpc.StatusCode.PERMISSION_DENIED,
                f"address {shown(peer.address)} is not one the caller's certificate names",
            )
        try:
            announced = self._registry.announce_as(peer, holdings, request.peer_secret, request.accepts_secret)
        except NotOwner:
            await self._refuse(
                context,
                "Announce",
                grpc.StatusCode.PERMISSION_DENIED,
                f"peer id {shown(peer.peer_id)} is bound to a secret this request does not carry",
            )
        except AddressTaken:
            await self._refuse(
                context,
                "Announce",
                grpc.StatusCode.ALREADY_EXISTS,
                f"address {shown(peer.address)} is held by another live peer",
            )
        except RegistryFull:
            await self._refuse(
                context,
                "Announce",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"tracker holds its maximum of {self._registry.limits.max_peers} peers",
            )
        if announced.joined:
            logger.info(
                "peer %r joined from %r with %d files%s",
                peer.peer_id,
                peer.address,
                len(holdings),
                "" if announced.secret else " (no secret: an older peer)",
            )
        return tracker_pb2.AnnounceResponse(
            interval_seconds=self._cfg.announce_interval, ttl_seconds=self._registry.ttl, peer_secret=announced.secret
        )

    async def Leave(
        self, request: tracker_pb2.LeaveRequest, context: grpc.aio.ServicerContext
    ) -> tracker_pb2.LeaveResponse:
        """Forget the caller at once, if it can prove its id."""
        try:
            check_peer_id(request.peer_id)
            check_secret(request.peer_secret)
        except ValueError as err:
            await self._refuse(context, "Leave", grpc.StatusCode.INVALID_ARGUMENT, str(err))
        try:
            left = self._registry.leave_as(request.peer_id, request.peer_secret)
        except NotOwner:
            await self._refuse(
                context,
                "Leave",
                grpc.StatusCode.PERMISSION_DENIED,
                f"peer id {shown(request.peer_id)} is bound to a secret this request does not carry",
            )
        if left:
            logger.info("peer %r left", request.peer_id)
        return tracker_pb2.LeaveResponse()

    async def SearchFiles(
        self, request: tracker_pb2.SearchFilesRequest, context: grpc.aio.ServicerContext
    ) -> tracker_pb2.SearchFilesResponse:
        """Find files by name substring."""
        if len(request.term.encode("utf-8", "surrogatepass")) > MAX_TERM:
            await self._refuse(
                context,
                "SearchFiles",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"search term longer than {MAX_TERM} bytes: {shown(request.term)}",
            )
        hits = self._registry.search(request.term, request.limit)
        return tracker_pb2.SearchFilesResponse(
            results=[
                tracker_pb2.SearchFileResult(
                    file=common_pb2.FileInfo(file_id=f.file_id, name=f.name, size=f.size),
                    complete_holders=complete,
                    partial_holders=partial,
                )
                for f, complete, partial in hits
            ]
        )

    async def GetPeers(
        self, request: tracker_pb2.GetPeersRequest, context: grpc.aio.ServicerContext
    ) -> tracker_pb2.GetPeersResponse:
        """List live holders of a file, complete ones first."""
        try:
            check_file_id(request.file_id)
            if request.exclude_peer_id:
                check_peer_id(request.exclude_peer_id)
        except ValueError as err:
            await self._refuse(context, "GetPeers", grpc.StatusCode.INVALID_ARGUMENT, str(err))
        reply = tracker_pb2.GetPeersResponse(
            holders=[
                tracker_pb2.Holder(peer=peer_to_proto(h.peer), complete=h.complete)
                for h in self._registry.holders(request.file_id, request.limit, request.exclude_peer_id)
            ]
        )
        meta = self._registry.file_meta(request.file_id)
        if meta is not None:
            reply.file.CopyFrom(common_pb2.FileInfo(file_id=meta.file_id, name=meta.name, size=meta.size))
        return reply

    async def ListPeers(
        self, request: tracker_pb2.ListPeersRequest, context: grpc.aio.ServicerContext
    ) -> tracker_pb2.ListPeersResponse:
        """List live peers (at most MAX_LIST_PEERS)."""
        return tracker_pb2.ListPeersResponse(peers=[peer_to_proto(p) for p in self._registry.live_peers()])


@dataclass
class RunningTracker:
    """A started tracker server, its registry and the task sweeping lapsed leases."""

    port: int
    registry: Registry
    server: grpc.aio.Server
    health: Health
    sweeper: asyncio.Task[None]
    metrics: ProcessMetrics | None = None
    health_server: grpc.aio.Server | None = None

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Report NOT_SERVING, stop sweeping, and let in-flight calls finish within grace seconds."""
        await self.health.draining()
        self.sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.sweeper
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(None)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)


async def sweep_leases(registry: Registry, every: float = EXPIRE_EVERY) -> None:
    """Expire lapsed leases forever, logging each peer that goes."""
    while True:
        await asyncio.sleep(every)
        try:
            for peer_id in registry.expire():
                logger.info("peer %s expired: no announce for %.1fs", peer_id, registry.ttl)
        except Exception:
            logger.exception("lease sweep failed")


SERVER_OPTIONS = [o for o in net.SERVER_OPTIONS if o[0] != "grpc.max_receive_message_length"] + [
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES)
]


async def start_tracker(
    cfg: TrackerConfig, registry: WatchedRegistry | None = None, limits: Limits | None = None
) -> RunningTracker:
    """Bind cfg.listen (port 0 picks a free port), start serving and report SERVING.

    limits (None: the registry's own, by default Limits()) caps the peers, files and holdings it keeps."""
    host, _ = net.split_host_port(cfg.listen)
    registry = registry if registry is not None else WatchedRegistry(cfg.ttl)
    if limits is not None:
        registry.limits = limits
    metrics = ProcessMetrics(cfg.metrics_port) if cfg.metrics_port is not None else None
    interceptors = [metrics.interceptor] if metrics is not None else []
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    tracker_pb2_grpc.add_TrackerServicer_to_server(TrackerServicer(registry, cfg), server)
    health = Health([SERVICE_NAME])
    health.attach(server)
    transport = tls.Transport(cfg.tls)
    transport.warn_if_plaintext("tracker")
    port = transport.bind(server, cfg.listen, "tracker address")
    await server.start()
    sweeper = asyncio.create_task(sweep_leases(registry), name="tracker-lease-sweep")
    health_server = None
    try:
        if cfg.health_listen:
            health_server = await health.serve_plaintext(cfg.health_listen)
        if metrics is not None:
            watch_tracker(metrics, registry)
            metrics.serve()
        await health.serving()
    except BaseException:
        sweeper.cancel()
        await server.stop(0)
        if health_server is not None:
            await health_server.stop(0)
        if metrics is not None:
            metrics.stop()
        raise
    shown_host = f"[{host}]" if ":" in host else host
    logger.info("tracker listening on %s:%d", shown_host, port)
    caps = registry.limits
    logger.info(
        "tracker caps: %d peers, %d files, %d holdings; %d files per announce, requests up to %d bytes",
        caps.max_peers,
        caps.max_files,
        caps.max_holdings,
        MAX_FILES_PER_ANNOUNCE,
        MAX_REQUEST_BYTES,
    )
    return RunningTracker(port, registry, server, health, sweeper, metrics, health_server)


async def run_tracker(
    cfg: TrackerConfig, ready: Callable[[int], None] | None = None, limits: Limits | None = None
) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop."""
    running = await start_tracker(cfg, limits=limits)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stopping.set)
    try:
        if ready is not None:
            ready(running.port)
        await stopping.wait()
        logger.info("tracker stopping")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await running.stop()
