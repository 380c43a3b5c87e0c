"""The peer process: peer-facing server, local control server, announcer and downloads."""

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
from shoal.peer.exchange import LinkPool
from shoal.peer.metrics import watch_peer
from shoal.peer.node import Node
from shoal.peer.server import PeerServicer, add_to_server
from shoal.peer.swarm import Download, DownloadError
from shoal.peer.trackers import TrackerClient
from shoal.store import Entry, Store, StoreError
from shoal.v1 import control_pb2_grpc
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
        self.port = 0
        self.health = Health([SERVICE_NAME])
        self.metrics = ProcessMetrics(config.metrics_port) if config.metrics_port is not None else None
        interceptors = [self.metrics.interceptor] if self.metrics is not None else []
        self._peer_server = grpc.aio.server(options=net.SERVER_OPTIONS, interceptors=interceptors)
        self._control_server = grpc.aio.server(options=net.SERVER_OPTIONS, interceptors=interceptors)
        self._tasks: dict[str, asyncio.Task[Entry]] = {}
        self._waiters: dict[str, int] = {}
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Open the store, bind both servers, start announcing and resume unfinished downloads."""
        control = check_control_address(self.config.control_address)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.store.open)
        peer_id = await asyncio.to_thread(self.store.peer_id)
        self.port = net.bind(self._peer_server, self.config.listen)
        zone = await asyncio.to_thread(detect_zone, self.config.zone)
        self.config = dataclasses.replace(self.config, zone=zone)
        self.node = Node(
            self.config, self.store, peer_id, advertised(self.config.listen, self.port, self.config.advertise)
        )
        if self.metrics is not None:
            watch_peer(self.metrics, self.node, lambda: len(self.node.downloads))
        self.trackers = TrackerClient(self.node, self.config.trackers, self.config.tracker_refresh)
        add_to_server(PeerServicer(self.node), self._peer_server)
        self.health.attach(self._peer_server)
        control_pb2_grpc.add_ControlServicer_to_server(ControlServicer(self), self._control_server)
        if control.startswith("unix:"):
            path = Path(control.removeprefix("unix:"))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        net.bind(self._control_server, control, "control address")
        await self._peer_server.start()
        await self._control_server.start()
        if control.startswith("unix:"):
            os.chmod(control.removeprefix("unix:"), 0o600)
        self._background.append(asyncio.create_task(self.trackers.run(), name="announcer"))
        for entry in self.store.entries():
            if not entry.complete:
                logger.info("resuming download of %s (%d/%d chunks)", entry.file_id, entry.have.count, entry.have.size)
                self.start_download(entry.file_id, entry.output, export=True)
        if self.metrics is not None:
            self.metrics.serve()
        await self.health.serving()
        logger.info(
            "peer %s listening on %s (advertised %s), control on %s, trackers %s",
            peer_id,
            self.config.listen.rsplit(":", 1)[0] + f":{self.port}",
            self.node.info.address,
            control,
            ",".join(self.config.trackers),
        )

    def start_download(
        self, file_id: str, output: str, *, export: bool = False
    ) -> tuple[Download, asyncio.Task[Entry]]:
        """Start a download, or join the one already running for this file."""
        running = self.node.downloads.get(file_id)
        task = self._tasks.get(file_id)
        if running is not None and task is not None and not task.done():
            return running, task
        download = Download(self.node, self.trackers, self.links, file_id, output)
        self.node.downloads[file_id] = download
        task = asyncio.create_task(self._run_download(download, output if export else ""), name=f"get-{file_id[:12]}")
        self._tasks[file_id] = task
        return download, task

    async def _run_download(self, download: Download, export_to: str) -> Entry:
        stats = self.node.stats
        stats.downloads_started += 1
        try:
            entry = await download.run()
            if export_to:
                await asyncio.to_thread(self.store.export, entry, Path(export_to))
        except (DownloadError, StoreError) as err:
            stats.downloads_failed += 1
            self.node.observer.download_finished(download.elapsed, "failed")
            logger.warning("download of %s failed: %s", download.file_id, err)
            raise
        except asyncio.CancelledError:
            self.node.observer.download_finished(download.elapsed, "cancelled")
            logger.info("download of %s stopped; verified chunks stay on disk for resume", download.file_id)
            raise
        finally:
            self.node.downloads.pop(download.file_id, None)
            self.node.announce_now.set()
        stats.downloads_completed += 1
        self.node.observer.download_finished(download.elapsed, "completed")
        logger.info("download of %s complete in %.2fs", download.file_id, download.summary.seconds)
        return entry

    def attach(self, file_id: str) -> None:
        """A client started waiting on a download."""
        self._waiters[file_id] = self._waiters.get(file_id, 0) + 1

    def detach(self, file_id: str, *, cancelled: bool) -> None:
        """A client stopped waiting; a download nobody waits for any more is stopped if it was cancelled."""
        left = self._waiters.get(file_id, 1) - 1
        self._waiters[file_id] = left
        if left <= 0:
            self._waiters.pop(file_id, None)
            task = self._tasks.get(file_id)
            if cancelled and task is not None and not task.done():
                task.cancel()

    async def stop(self) -> None:
        """Drain: NOT_SERVING, leave the trackers, stop downloads (kept for resume), stop servers."""
        if not hasattr(self, "trackers"):  # start() failed early: only the servers and the store exist
            await self._control_server.stop(None)
            await self._peer_server.stop(None)
            await asyncio.to_thread(self.store.close)
            return
        self.node.draining = True
        await self.health.draining()
        await self.trackers.leave()
        for task in [*self._background, *self._tasks.values()]:
            task.cancel()
        await asyncio.gather(*self._background, *self._tasks.values(), return_exceptions=True)
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
