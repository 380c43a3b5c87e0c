"""The downloads this peer is running: one per file, joined by every client that asks for it, stopped when
the last one that asked cancels. Owned by the daemon; the peer server reaches them only as `Swarms`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from shoal.peer.errors import DownloadError
from shoal.peer.node import Node
from shoal.peer.swarm import Download
from shoal.store import Entry, StoreError
from shoal.v1 import common_pb2

logger = logging.getLogger(__name__)

MakeDownload = Callable[[str, str], Download]  # (file id, output) -> a new download


class Downloads:
    """The table of running downloads and their tasks."""

    def __init__(self, node: Node, make: MakeDownload, announce_soon: Callable[[], None]) -> None:
        self._node = node
        self._make = make
        self._announce_soon = announce_soon
        self._running: dict[str, Download] = {}
        self._tasks: dict[str, asyncio.Task[Entry]] = {}
        self._waiters: dict[str, int] = {}
        self._user_stopped: set[str] = set()  # cancelled by their last client: not resumed at the next start

    def __len__(self) -> int:
        """Downloads in progress."""
        return len(self._running)

    def active(self) -> set[str]:
        """Ids of the files with a download running now (the cache never evicts them)."""
        return set(self._running)

    async def stop(self, file_id: str) -> None:
        """Stop the download of a file, if one runs, and wait for it to end (rm and cancel)."""
        task = self._tasks.get(file_id)
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def start(self, file_id: str, output: str, *, export: bool = False) -> tuple[Download, asyncio.Task[Entry]]:
        """Start a download, or join the one already running for this file."""
        running = self._running.get(file_id)
        task = self._tasks.get(file_id)
        if running is not None and task is not None and not task.done():
            return running, task
        download = self._make(file_id, output)
        self._running[file_id] = download
        task = asyncio.create_task(self._run(download, output if export else ""), name=f"get-{file_id[:12]}")
        self._tasks[file_id] = task
        return download, task

    async def _run(self, download: Download, export_to: str) -> Entry:
        node = self._node
        stats = node.stats
        stats.downloads_started += 1
        try:
            entry = await download.run()
            if export_to:
                await asyncio.to_thread(node.store.export, entry, Path(export_to))
        except (DownloadError, StoreError) as err:
            stats.downloads_failed += 1
            node.observer.download_finished(download.elapsed, "failed")
            logger.warning("download of %s failed: %s", download.file_id, err)
            raise
        except asyncio.CancelledError:
            node.observer.download_finished(download.elapsed, "cancelled")
            logger.info("download of %s stopped; verified chunks stay on disk for resume", download.file_id)
            if download.file_id in self._user_stopped:  # Ctrl-C: resumed only when `get` asks again
                self._user_stopped.discard(download.file_id)
                with contextlib.suppress(StoreError):
                    await asyncio.to_thread(node.store.stop, download.file_id)
            raise
        finally:
            self._running.pop(download.file_id, None)
            self._announce_soon()
        stats.downloads_completed += 1
        node.observer.download_finished(download.elapsed, "completed")
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
                self._user_stopped.add(file_id)
                task.cancel()

    def cancel_all(self) -> list[asyncio.Task[Entry]]:
        """Stop every download (verified chunks stay for resume); returns the tasks to await."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        return tasks

    # ---- what callers' exchanges tell the running downloads (peer.server.Swarms) ----------------
    def holders_heard(self, file_id: str, peers: list[common_pb2.PeerInfo]) -> None:
        """New holders of a file go to its download, if one runs."""
        download = self._running.get(file_id)
        if download is not None and peers:
            download.add_sources(peers)

    def bitfield_heard(self, file_id: str, address: str, bitfield: bytes) -> None:
        """A caller's chunk map goes to the download of that file, if one runs."""
        download = self._running.get(file_id)
        if download is not None and bitfield:
            download.update_bitfield(address, bitfield, complete=False)
