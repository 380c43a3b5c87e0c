"""The control API servicer: the local CLI's gateway to this peer (reads and writes local files)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn

import grpc

from shoal import content
from shoal.origins import (
    InvalidHeader,
    OriginDenied,
    OriginError,
    OriginNotFound,
    OriginOptions,
    OriginUnavailable,
    UnsupportedOrigin,
    parse_headers,
)
from shoal.peer.downloads import Downloads
from shoal.peer.errors import DownloadError, NoHolders, TrackersUnavailable
from shoal.peer.imports import OriginImports, Progress
from shoal.peer.node import Node
from shoal.peer.progress import verified_bytes
from shoal.peer.swarm import Download
from shoal.peer.trackers import TrackerClient
from shoal.store import DiskFull, StoreError, check_output, check_source
from shoal.v1 import common_pb2, control_pb2, control_pb2_grpc

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 0.2


async def _fail(context: grpc.aio.ServicerContext, err: Exception) -> NoReturn:
    """Turn a domain error into a gRPC status with a clear message."""
    if isinstance(err, (content.ContentError, UnsupportedOrigin, InvalidHeader)):
        code = grpc.StatusCode.INVALID_ARGUMENT
    elif isinstance(err, (OriginNotFound, OriginDenied)):
        code = grpc.StatusCode.NOT_FOUND  # exit 4 with the origin's status in the one line
    elif isinstance(err, OriginUnavailable):
        code = grpc.StatusCode.UNAVAILABLE
    elif isinstance(err, NoHolders):
        code = grpc.StatusCode.NOT_FOUND
    elif isinstance(err, TrackersUnavailable):
        code = grpc.StatusCode.UNAVAILABLE
    elif isinstance(err, DiskFull):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    else:
        code = grpc.StatusCode.FAILED_PRECONDITION
    await context.abort(code, str(err))
    raise AssertionError("unreachable")


def _absolute(path: str, what: str) -> Path:
    if not path or "\x00" in path or not Path(path).is_absolute():
        raise content.ContentError(f"{what} must be an absolute path, got {path[:200]!r}")
    return Path(path)


class ControlServicer(control_pb2_grpc.ControlServicer):
    """Put, get, search, peers, ls and status for the local CLI."""

    def __init__(
        self, node: Node, downloads: Downloads, trackers: TrackerClient, *, imports: OriginImports | None = None
    ) -> None:
        self._node = node
        self._downloads = downloads
        self._trackers = trackers
        self._imports = imports

    async def Put(self, request: control_pb2.PutRequest, context: grpc.aio.ServicerContext) -> control_pb2.PutResponse:
        node = self._node
        try:
            source = _absolute(request.path, "path")
            await asyncio.to_thread(check_source, source)
            name = content.check_name(request.name or source.name)
            chunk_size = content.check_chunk_size(request.chunk_size or node.config.chunk_size)
            entry = await asyncio.to_thread(node.store.publish, source, name, chunk_size)
        except (content.ContentError, StoreError) as err:
            await _fail(context, err)
        logger.info("published %s as %s (%d bytes)", name, entry.file_id, entry.manifest.size)
        self._trackers.announce_soon()
        return control_pb2.PutResponse(file=entry.info, chunks=len(entry.manifest.chunk_sha256))

    async def Get(
        self, request: control_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.GetProgress]:
        if request.url:
            async for message in self._get_url(request, context):
                yield message
            return
        downloads = self._downloads
        try:
            file_id = content.parse_file_id(request.file_id)
            output = _absolute(request.output, "output") if request.output else None
            if output is not None:
                await asyncio.to_thread(check_output, output)
        except (content.ContentError, StoreError) as err:
            await _fail(context, err)
        started = time.monotonic()
        download, task = downloads.start(file_id, str(output) if output else "")
        downloads.attach(file_id)
        cancelled = True
        try:
            while not task.done():
                yield self._progress(download, done=False)
                await asyncio.wait([task], timeout=PROGRESS_EVERY)
            cancelled = False
        finally:
            downloads.detach(file_id, cancelled=cancelled)
        try:
            entry = task.result()
            if output is not None:
                await asyncio.to_thread(self._node.store.export, entry, output)
        except (DownloadError, StoreError, TrackersUnavailable) as err:
            await _fail(context, err)
        except asyncio.CancelledError:
            await context.abort(grpc.StatusCode.CANCELLED, "download stopped (peer shutting down)")
        final = self._progress(download, done=True)
        final.seconds = time.monotonic() - started
        yield final

    async def _get_url(
        self, request: control_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.GetProgress]:
        """Get an origin URL through the swarm (peer.imports); the output appears only once it is verified."""
        imports = self._imports
        if imports is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this daemon does not get origin URLs")
        try:
            output = _absolute(request.output, "output") if request.output else None
            if output is not None:
                await asyncio.to_thread(check_output, output)
            options = OriginOptions(
                headers=parse_headers(request.headers),
                expected_digest=request.digest or None,
                s3_endpoint=request.s3_endpoint or None,
            )
        except (content.ContentError, StoreError, InvalidHeader) as err:
            await _fail(context, err)
        started = time.monotonic()
        progress = Progress(request.url)
        task = imports.get(request.url, options, progress)
        while not task.done():
            yield self._url_progress(progress)
            await asyncio.wait([task], timeout=PROGRESS_EVERY)
        try:
            entry = task.result()
            if output is not None:
                await asyncio.to_thread(self._node.store.export, entry, output)
        except (OriginError, DownloadError, StoreError, TrackersUnavailable) as err:
            await _fail(context, err)
        final = control_pb2.GetProgress(
            file=entry.info, done=True, done_bytes=entry.manifest.size, total_bytes=entry.manifest.size
        )
        final.sources.CopyFrom(control_pb2.SourceShare())
        final.seconds = time.monotonic() - started
        yield final

    def _url_progress(self, progress: Progress) -> control_pb2.GetProgress:
        message = control_pb2.GetProgress(done_bytes=progress.done_bytes, total_bytes=progress.total_bytes)
        entry = self._node.store.get(progress.file_id) if progress.file_id else None
        if entry is not None:
            message.file.CopyFrom(entry.info)
            message.done_bytes = verified_bytes(entry)
        return message

    async def Preheat(
        self, request: control_pb2.PreheatRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.PreheatResponse:
        imports = self._imports
        if imports is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this daemon does not get origin URLs")
        try:
            options = OriginOptions(
                headers=parse_headers(request.headers),
                expected_digest=request.digest or None,
                s3_endpoint=request.s3_endpoint or None,
            )
            entry, peers = await imports.preheat(request.url, options, max(1, request.replicas))
        except (OriginError, DownloadError, StoreError, TrackersUnavailable, InvalidHeader) as err:
            await _fail(context, err)
        logger.info("preheated %s as %s on %d peers", entry.file_id, request.url[:200], len(peers))
        return control_pb2.PreheatResponse(file=entry.info, peers=peers)

    @staticmethod
    def _progress(download: Download, *, done: bool) -> control_pb2.GetProgress:
        progress = control_pb2.GetProgress(done=done, done_bytes=download.done_bytes)
        if download.entry is not None:
            progress.file.CopyFrom(download.entry.info)
            progress.total_bytes = download.entry.manifest.size
        if done:
            summary = download.summary
            progress.sources.CopyFrom(
                control_pb2.SourceShare(
                    from_complete_bytes=summary.from_complete_bytes,
                    from_partial_bytes=summary.from_partial_bytes,
                    peers=len(summary.peers),
                    resumed_chunks=summary.resumed_chunks,
                    rejected_chunks=summary.rejected_chunks,
                    banned_peers=summary.banned_peers,
                )
            )
            progress.seconds = summary.seconds
        return progress

    async def Search(
        self, request: control_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.SearchResponse:
        try:
            results = await self._trackers.search(request.term)
        except TrackersUnavailable as err:
            await _fail(context, err)
        return control_pb2.SearchResponse(results=results)

    async def Peers(
        self, request: control_pb2.PeersRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.PeersResponse:
        try:
            if request.url and self._imports is not None:
                options = OriginOptions(headers=parse_headers(request.headers), s3_endpoint=request.s3_endpoint or None)
                _, file_id = await self._imports.stat(request.url, options)  # the URL key of its current version
            else:
                file_id = content.parse_file_id(request.file_id)
            holders = await self._trackers.holders(file_id)
        except (content.ContentError, TrackersUnavailable, OriginError, InvalidHeader) as err:
            await _fail(context, err)
        return control_pb2.PeersResponse(holders=holders)

    async def List(
        self, request: control_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListResponse:
        files = [
            control_pb2.LocalFile(
                file=entry.info,
                complete=entry.complete,
                chunks_done=entry.have.count,
                chunks_total=entry.have.size,
                url=self._imports.url_of(entry.file_id) if self._imports is not None else "",
            )
            for entry in sorted(self._node.store.entries(), key=lambda e: (e.manifest.name, e.file_id))
        ]
        return control_pb2.ListResponse(files=files)

    async def Status(
        self, request: control_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.StatusResponse:
        node = self._node
        stats = node.stats
        return control_pb2.StatusResponse(
            peer=common_pb2.PeerInfo(peer_id=node.peer_id, address=node.info.address, zone=node.info.zone),
            trackers=self._trackers.addresses,
            trackers_up=self._trackers.up,
            uploaded_bytes=stats.uploaded_bytes,
            downloaded_bytes=stats.downloaded_bytes,
            active_downloads=len(self._downloads),
            uptime_seconds=time.monotonic() - stats.started_at,
            data_dir=str(node.config.data_dir),
        )
