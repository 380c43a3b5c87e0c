"""gRPC front of the tracker: validates requests, calls the registry, builds replies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import NoReturn

import grpc

from shoal import net, tls
from shoal.config import TrackerConfig
from shoal.exporter import ProcessMetrics
from shoal.health import Health
from shoal.tracker.checks import (
    MAX_FILES_PER_ANNOUNCE,
    MAX_REQUEST_BYTES,
    MAX_TERM,
    REFUSAL_LOGS_PER_SECOND,
    RefusalLog,
    check_file_id,
    check_peer_id,
    check_secret,
    holdings_from_proto,
    peer_from_proto,
    peer_to_proto,
    refusal,
    shown,
)
from shoal.tracker.metrics import WatchedRegistry, watch_tracker
from shoal.tracker.registry import Limits, NotOwner, Registry, RegistryError
from shoal.tracker.session import KEEPALIVE_OPTIONS, hold_session
from shoal.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = "shoal.v1.Tracker"
EXPIRE_EVERY = 0.5  # seconds between sweeps of lapsed leases
STOP_GRACE = 2.0
__all__ = ["MAX_FILES_PER_ANNOUNCE", "MAX_REQUEST_BYTES", "RunningTracker", "TrackerServicer", "start_tracker"]


class TrackerServicer(tracker_pb2_grpc.TrackerServicer):
    """Tracker RPCs over one Registry."""

    def __init__(self, registry: Registry, cfg: TrackerConfig) -> None:
        self._registry = registry
        self._cfg = cfg
        self._log_refusal = RefusalLog(REFUSAL_LOGS_PER_SECOND)

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
        except RegistryError as err:
            await self._refuse(context, "Announce", *refusal(err, peer, self._registry.limits.max_peers))
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

    async def Session(
        self, request_iterator: AsyncIterator[tracker_pb2.SessionUpdate], context: grpc.aio.ServicerContext
    ) -> None:
        """Hold the caller's lease while the stream lives (shoal.tracker.session)."""
        await hold_session(self._registry, context, self._refuse)

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


_OWN = {"grpc.max_receive_message_length", *(name for name, _ in KEEPALIVE_OPTIONS)}
SERVER_OPTIONS = [o for o in net.SERVER_OPTIONS if o[0] not in _OWN] + [
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    *KEEPALIVE_OPTIONS,
]


async def start_tracker(
    cfg: TrackerConfig, registry: WatchedRegistry | None = None, limits: Limits | None = None
) -> RunningTracker:
    """Bind cfg.listen (port 0 picks a free port), start serving and report SERVING.

    limits (None: the registry's own, by default Limits()) caps the peers, files and holdings it keeps; a registry
    given keeps its own require_secrets (else cfg.require_secrets applies)."""
    host, _ = net.split_host_port(cfg.listen)
    registry = registry if registry is not None else WatchedRegistry(cfg.ttl, require_secrets=cfg.require_secrets)
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
    if registry.require_secrets:
        logger.info("tracker requires peer secrets: announces and sessions without accepts_secret are refused")
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
