"""The peer process: peer-facing server, local control server, announcer and downloads, from start to stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import grpc

from shoal import net, tls
from shoal.cache import Cache
from shoal.config import PeerConfig
from shoal.exporter import ProcessMetrics
from shoal.health import Health
from shoal.peer import access
from shoal.peer.control import ControlServicer
from shoal.peer.credentials import TrackerSecrets
from shoal.peer.downloads import Downloads
from shoal.peer.imports import OriginImports, origin_bytes_counter
from shoal.peer.keeper import Keeper
from shoal.peer.links import LinkPool
from shoal.peer.metrics import watch_peer
from shoal.peer.node import Node
from shoal.peer.server import PeerServicer, add_to_server
from shoal.peer.swarm import Download
from shoal.peer.trackers import TrackerClient, held_files
from shoal.peer.uploads import Uploads
from shoal.quota import QuotaSpec
from shoal.store import Entry, Store
from shoal.v1 import common_pb2, control_pb2_grpc
from shoal.zone import detect_zone

logger = logging.getLogger(__name__)

SERVICE_NAME = "shoal.v1.Peer"
STOP_GRACE = 3.0


def check_control_address(address: str) -> str:
    """The control API must be local: a unix socket or a loopback address."""
    if address.startswith("unix:"):
        return address
    host, _ = net.split_host_port(address)
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"control address must be unix:PATH or loopback, got {address}")
    return address


def advertised(listen: str, port: int, advertise: str | None) -> str:
    """The address other peers should dial: --advertise, else the listen host with the bound port."""
    if advertise:
        host, sep, port_text = advertise.rpartition(":")
        if sep and ":" in host and not host.startswith("["):
            advertise = f"[{host}]:{port_text}"  # a bare IPv6 pod IP, as $(POD_IP):7401 gives on IPv6 clusters
        net.split_host_port(advertise)
        return advertise
    host, _ = net.split_host_port(listen)
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostbyname(socket.gethostname())
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PeerDaemon:
    """Owns one peer's servers and tasks from start to graceful stop."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.store = Store(config.data_dir)
        self.transport = tls.Transport(config.tls)
        self.links = LinkPool(self.transport)
        self.node: Node
        self.trackers: TrackerClient
        self.uploads: Uploads
        self.downloads: Downloads
        self.keeper: Keeper
        self.imports: OriginImports
        self.port = 0
        self.health = Health([SERVICE_NAME])
        self.metrics = ProcessMetrics(config.metrics_port) if config.metrics_port is not None else None
        interceptors: list[grpc.aio.ServerInterceptor] = [self.metrics.interceptor] if self.metrics is not None else []
        self._peer_server = grpc.aio.server(options=net.PEER_SERVER_OPTIONS, interceptors=interceptors)
        self._control_gid = access.group_id(config.control_group) if config.control_group else None
        self._control_token: bytes | None = None
        if not config.control_address.startswith("unix:"):
            if config.control_token_file is None:
                raise access.AccessError("a TCP control address needs --control-token-file (a 0600 file)")
            self._control_token = access.read_token(config.control_token_file)
            interceptors = [*interceptors, access.TokenInterceptor(self._control_token)]
        self._tickets: access.Tickets | None = None
        self._ticket_server: asyncio.Server | None = None
        self._control_server = grpc.aio.server(options=net.SERVER_OPTIONS, interceptors=interceptors)
        self._background: list[asyncio.Task[None]] = []
        self._health_server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Open the store, bind both servers, start announcing and resume unfinished downloads."""
        control_address = check_control_address(self.config.control_address)
        self.config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        await asyncio.to_thread(self.store.open)
        cache = await asyncio.to_thread(
            Cache.open, self.store, QuotaSpec.of(self.config.cache_size), self.config.data_dir
        )
        peer_id = await asyncio.to_thread(self.store.peer_id)
        self.transport.warn_if_plaintext("peer")
        self.port = self.transport.bind(self._peer_server, self.config.listen)
        zone = await asyncio.to_thread(detect_zone, self.config.zone)
        self.config = dataclasses.replace(self.config, zone=zone)
        self.node = Node(
            self.config, self.store, peer_id, advertised(self.config.listen, self.port, self.config.advertise)
        )
        node, store = self.node, self.store
        trackers = self.trackers = TrackerClient(
            node.info,
            lambda: held_files(store.entries()) + self.imports.held(),
            self.config.trackers,
            TrackerSecrets(store.root),
            self.config.tracker_refresh,
            self.transport,
        )
        announce_soon = trackers.announce_soon
        self.uploads = Uploads(store, node.stats, node.upload_bucket, self.config.upload_slots, announce_soon)

        def make(file_id: str, output: str) -> Download:
            return Download(
                node, trackers, self.links, file_id, output, announce_soon=announce_soon, admit=self.keeper.admit
            )

        def changed() -> None:  # a download ended: announce, and sweep if it pushed usage past the mark
            announce_soon()
            self.keeper.sweep_soon()

        self.downloads = Downloads(node, make, changed)
        self.keeper = Keeper(cache, self.downloads, announce_soon)

        async def fetch(file_id: str, holders: list[common_pb2.PeerInfo]) -> Entry:
            return await self.downloads.start(file_id, "")[1]

        count = origin_bytes_counter(self.metrics.registry if self.metrics is not None else None)
        self.imports = OriginImports(node, trackers, self.links, fetch, announce_soon, count)
        await asyncio.to_thread(self.imports.load)
        if self.metrics is not None:
            watch_peer(self.metrics, node, lambda: len(self.downloads), cache=cache)
        add_to_server(PeerServicer(node, self.uploads, self.downloads, origins=self.imports), self._peer_server)
        self.health.attach(self._peer_server)
        if control_address.startswith("unix:"):
            self._tickets = access.Tickets(required=self._control_gid is not None)
        control = ControlServicer(node, self.downloads, trackers, self.keeper, self._tickets, imports=self.imports)
        control_pb2_grpc.add_ControlServicer_to_server(control, self._control_server)
        if control_address.startswith("unix:"):
            path = Path(control_address.removeprefix("unix:"))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        net.bind(self._control_server, control_address, "control address")
        await self._peer_server.start()
        await self._control_server.start()
        if control_address.startswith("unix:"):
            await self._open_control_socket(Path(control_address.removeprefix("unix:")))
        else:
            logger.info("control API on TCP %s: every call must carry the token", control_address)
        self._background.append(asyncio.create_task(self.trackers.run(), name="announcer"))
        self._background.append(asyncio.create_task(self.keeper.run(), name="cache-keeper"))
        self.keeper.sweep_soon()  # a smaller --cache-size than last time takes effect at start
        for entry in self.store.resumable():  # not the ones stopped by Ctrl-C: those wait for `get`
            logger.info("resuming download of %s (%d/%d chunks)", entry.file_id, entry.have.count, entry.have.size)
            self.downloads.start(entry.file_id, entry.output, export=True)
        if self.metrics is not None:
            self.metrics.serve()
        if self.config.health_listen:
            self._health_server = await self.health.serve_plaintext(self.config.health_listen)
        await self.health.serving()
        if cache.quota_bytes:
            logger.info("cache quota %d bytes (%d held)", cache.quota_bytes, self.store.bytes_used)
        logger.info(
            "peer %s listening on %s (advertised %s), control on %s, trackers %s",
            peer_id,
            self.config.listen.rsplit(":", 1)[0] + f":{self.port}",
            self.node.info.address,
            control_address,
            ",".join(self.config.trackers),
        )

    async def _open_control_socket(self, path: Path) -> None:
        """0600 (or 0660 for --control-group, with the data dir 0710 so the group can reach it), checked."""
        gid = self._control_gid
        access.open_socket(path, gid)
        assert self._tickets is not None
        try:
            self._ticket_server = await self._tickets.serve(path.with_name(path.name + ".cred"), gid)
        except OSError as err:  # e.g. a path too long for a unix socket
            if gid is not None:
                raise access.AccessError(f"cannot open the caller-credential socket next to {path}: {err}") from err
            logger.warning("no caller-credential socket (%s); the 0600 control socket admits only this user", err)
        if gid is not None and path.parent == self.config.data_dir.resolve():
            os.chown(path.parent, -1, gid)
            os.chmod(path.parent, 0o710)

    async def stop(self) -> None:
        """Drain: NOT_SERVING, leave the trackers, stop downloads (kept for resume), stop servers."""
        if not hasattr(self, "downloads"):  # start() failed early: only the servers and the store exist
            await self._control_server.stop(None)
            await self._peer_server.stop(None)
            await asyncio.to_thread(self.store.close)
            return
        self.uploads.drain()
        await self.health.draining()
        await self.trackers.leave()
        for task in self._background:
            task.cancel()
        if hasattr(self, "imports"):
            await self.imports.stop()
        downloads = self.downloads.cancel_all()
        await asyncio.gather(*self._background, *downloads, return_exceptions=True)
        await self._control_server.stop(1.0)
        if self._ticket_server is not None:
            self._ticket_server.close()
        await self._peer_server.stop(STOP_GRACE)
        if self._health_server is not None:
            await self._health_server.stop(None)
        await self.trackers.close()
        await self.links.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        await asyncio.to_thread(self.store.close)


async def run_peer(config: PeerConfig, ready: Callable[[PeerDaemon], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then leave gracefully."""
    daemon = PeerDaemon(config)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stopping.set)
    try:
        await daemon.start()
        if ready is not None:
            ready(daemon)
        await stopping.wait()
        logger.info("peer stopping")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await daemon.stop()
