"""gRPC front of the tracker: validates requests, calls the registry, builds replies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from shoal import content, net
from shoal.config import TrackerConfig
from shoal.exporter import ProcessMetrics
from shoal.health import Health
from shoal.tracker.metrics import WatchedRegistry, watch_tracker
from shoal.tracker.registry import Holding, Peer, Registry
from shoal.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = "shoal.v1.Tracker"
EXPIRE_EVERY = 0.5  # seconds between sweeps of lapsed leases
STOP_GRACE = 2.0

MAX_PEER_ID = 128
MAX_ZONE = 128
MAX_NAME = 255
MAX_FILES_PER_ANNOUNCE = 10_000


def check_file_id(file_id: str) -> str:
    """Return file_id if it is 64 lowercase hex characters, else raise ValueError."""
    if not content.FILE_ID.fullmatch(file_id):  # strict: the canonical form only, no normalising
        raise ValueError(f"file_id must be 64 lowercase hex characters, got {file_id[:80]!r}")
    return file_id


def check_peer_id(peer_id: str) -> str:
    """Return peer_id if it is non-empty and at most MAX_PEER_ID characters, else raise ValueError."""
    if not peer_id:
        raise ValueError("peer_id is required")
    if len(peer_id) > MAX_PEER_ID:
        raise ValueError(f"peer_id longer than {MAX_PEER_ID} characters")
    return peer_id


def peer_from_proto(info: common_pb2.PeerInfo) -> Peer:
    """Validate a PeerInfo and convert it; raise ValueError on bad input."""
    check_peer_id(info.peer_id)
    try:
        net.split_host_port(info.address)
    except ValueError as err:
        raise ValueError(f"peer address must be host:port: {err}") from None
    if len(info.zone) > MAX_ZONE:
        raise ValueError(f"zone longer than {MAX_ZONE} characters")
    return Peer(info.peer_id, info.address, info.zone)


def holdings_from_proto(files: list[tracker_pb2.HeldFile]) -> list[Holding]:
    """Validate announced files and convert them; raise ValueError on bad input."""
    if len(files) > MAX_FILES_PER_ANNOUNCE:
        raise ValueError(f"at most {MAX_FILES_PER_ANNOUNCE} files per announce, got {len(files)}")
    holdings = []
    for held in files:
        info = held.file
        check_file_id(info.file_id)
        if len(info.name) > MAX_NAME:
            raise ValueError(f"name of file {info.file_id} longer than {MAX_NAME} characters")
        holdings.append(Holding(info.file_id, info.name, info.size, held.complete))
    return holdings


def peer_to_proto(peer: Peer) -> common_pb2.PeerInfo:
    """Convert a registry peer to its wire form."""
    return common_pb2.PeerInfo(peer_id=peer.peer_id, address=peer.address, zone=peer.zone)


class TrackerServicer(tracker_pb2_grpc.TrackerServicer):
    """Tracker RPCs over one Registry."""

    def __init__(self, registry: Registry, cfg: TrackerConfig) -> None:
        self._registry = registry
        self._cfg = cfg

    async def Announce(
        self, request: tracker_pb2.AnnounceRequest, context: grpc.aio.ServicerContext
    ) -> tracker_pb2.AnnounceResponse:
        """Renew the caller's lease and replace its holdings."""
        try:
            peer = peer_from_proto(request.peer)
            holdings = holdings_from_proto(list(request.files))
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if self._registry.announce(peer, holdings):
            logger.info("peer %s joined from %s with %d files", peer.peer_id, peer.address, len(holdings))
        return tracker_pb2.AnnounceResponse(
            interval_seconds=self._cfg.announce_interval, ttl_seconds=self._registry.ttl
        )

    async def Leave(
        self, request: tracker_pb2.LeaveRequest, context: grpc.aio.ServicerContext
    ) -> tracker_pb2.LeaveResponse:
        """Forget the caller at once."""
        try:
            check_peer_id(request.peer_id)
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if self._registry.leave(request.peer_id):
            logger.info("peer %s left", request.peer_id)
        return tracker_pb2.LeaveResponse()

    async def SearchFiles(
        self, request: tracker_pb2.SearchFilesRequest, context: grpc.aio.ServicerContext
    ) -> tracker_pb2.SearchFilesResponse:
        """Find files by name substring."""
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
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
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
        """List every live peer."""
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

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Report NOT_SERVING, stop sweeping, and let in-flight calls finish within grace seconds."""
        await self.health.draining()
        self.sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.sweeper
        await self.server.stop(grace)
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


async def start_tracker(cfg: TrackerConfig, registry: WatchedRegistry | None = None) -> RunningTracker:
    """Bind cfg.listen (port 0 picks a free port), start serving and report SERVING."""
    host, _ = net.split_host_port(cfg.listen)
    registry = registry if registry is not None else WatchedRegistry(cfg.ttl)
    metrics = ProcessMetrics(cfg.metrics_port) if cfg.metrics_port is not None else None
    interceptors = [metrics.interceptor] if metrics is not None else []
    server = grpc.aio.server(options=net.SERVER_OPTIONS, interceptors=interceptors)
    tracker_pb2_grpc.add_TrackerServicer_to_server(TrackerServicer(registry, cfg), server)
    health = Health([SERVICE_NAME])
    health.attach(server)
    port = net.bind(server, cfg.listen, "tracker address")
    await server.start()
    sweeper = asyncio.create_task(sweep_leases(registry), name="tracker-lease-sweep")
    try:
        if metrics is not None:
            watch_tracker(metrics, registry)
            metrics.serve()
        await health.serving()
    except BaseException:
        sweeper.cancel()
        await server.stop(0)
        if metrics is not None:
            metrics.stop()
        raise
    shown = f"[{host}]" if ":" in host else host
    logger.info("tracker listening on %s:%d", shown, port)
    return RunningTracker(port, registry, server, health, sweeper, metrics)


async def run_tracker(cfg: TrackerConfig, ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop."""
    running = await start_tracker(cfg)
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
