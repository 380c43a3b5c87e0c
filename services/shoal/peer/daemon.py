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

from shoal import net
from shoal.config import PeerConfig
from shoal.exporter import ProcessMetrics
from shoal.health import Health
from shoal.peer.control import ControlServicer
from shoal.peer.credentials import TrackerSecrets
from shoal.peer.downloads import Downloads
from shoal.peer.imports import OriginImports, origin_bytes_counter
from shoal.peer.links import LinkPool
from shoal.peer.metrics import watch_peer
from shoal.peer.node import Node
from shoal.peer.server import PeerServicer, add_to_server
from shoal.peer.swarm import Download
from shoal.peer.trackers import TrackerClient, held_files
from shoal.peer.uploads import Uploads
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
        self.links = LinkPool()
        self.node: Node
        self.trackers: TrackerClient
        self.uploads: Uploads
        self.downloads: Downloads
        self.imports: OriginImports
        self.port = 0
        self.health = Health([SERVICE_NAME])
        self.metrics = ProcessMetrics(config.metrics_port) if config.metrics_port is not None else None
        interceptors = [self.metrics.interceptor] if self.metrics is not None else []
        self._peer_server = grpc.aio.server(options=net.SERVER_OPTIONS, interceptors=interceptors)
        self._control_server = grpc.aio.server(options=net.SERVER_OPTIONS, interceptors=interceptors)
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Open the store, bind both servers, start announcing and resume unfinished downloads."""
        control_address = check_control_address(self.config.control_address)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.store.open)
        peer_id = await asyncio.to_thread(self.store.peer_id)
        self.port = net.bind(self._peer_server, self.config.listen)
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
        )
        announce_soon = trackers.announce_soon
        self.uploads = Uploads(store, node.stats, node.upload_bucket, self.config.upload_slots, announce_soon)

        def make(file_id: str, output: str) -> Download:
            return Download(node, trackers, self.links, file_id, output, announce_soon=announce_soon)

        self.downloads = Downloads(node, make, announce_soon)

        async def fetch(file_id: str, holders: list[common_pb2.PeerInfo]) -> Entry:
            return await self.downloads.start(file_id, "")[1]

        count = origin_bytes_counter(self.metrics.registry if self.metrics is not None else None)
        self.imports = OriginImports(node, trackers, self.links, fetch, announce_soon, count)
        await asyncio.to_thread(self.imports.load)
        if self.metrics is not None:
            watch_peer(self.metrics, node, lambda: len(self.downloads))
        add_to_server(
            PeerServicer(node, self.uploads, self.downloads, origins=self.imports),
            self._peer_server,
        )
        self.health.attach(self._peer_server)
        control = ControlServicer(node, self.downloads, trackers, imports=self.imports)
        control_pb2_grpc.add_ControlServicer_to_server(control, self._control_server)
        if control_address.startswith("unix:"):
            path = Path(control_address.removeprefix("unix:"))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        net.bind(self._control_server, control_address, "control address")
        await self._peer_server.start()
        await self._control_server.start()
        if control_address.startswith("unix:"):
            os.chmod(control_address.removeprefix("unix:"), 0o600)
        self._background.append(asyncio.create_task(self.trackers.run(), name="announcer"))
        for entry in self.store.entries():
            if not entry.complete:
                logger.info("resuming download of %s (%d/%d chunks)", entry.file_id, entry.have.count, entry.have.size)
                self.downloads.start(entry.file_id, entry.output, export=True)
        if self.metrics is not None:
            self.metrics.serve()
        await self.health.serving()
        logger.info(
            "peer %s listening on %s (advertised %s), control on %s, trackers %s",
            peer_id,
            self.config.listen.rsplit(":", 1)[0] + f":{self.port}",
            self.node.info.address,
            control_address,
            ",".join(self.config.trackers),
        )

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
        await self._peer_server.stop(STOP_GRACE)
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
