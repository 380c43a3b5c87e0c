"""The control API servicer: the local CLI's gateway to this peer (reads and writes local files)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from shoal import content
from shoal.origins import (
    InvalidHeader,
    OriginError,
    OriginOptions,
    parse_headers,
)
from shoal.peer import access
from shoal.peer.control_status import absolute, fail, outside, require_access, require_caller
from shoal.peer.downloads import Downloads
from shoal.peer.errors import DownloadError, TrackersUnavailable
from shoal.peer.imports import OriginImports, Progress
from shoal.peer.keeper import Keeper
from shoal.peer.listing import local_file, named_output
from shoal.peer.node import Node
from shoal.peer.progress import verified_bytes
from shoal.peer.swarm import Download
from shoal.peer.trackers import TrackerClient
from shoal.store import Entry, StoreError, check_output, check_source
from shoal.v1 import common_pb2, control_pb2, control_pb2_grpc

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 0.2  # seconds between progress messages unless the client asks otherwise
PROGRESS_EVERY_RANGE = (0.05, 60.0)
_METHODS = {
    "move": control_pb2.PUT_METHOD_MOVE,
    "reflink": control_pb2.PUT_METHOD_REFLINK,
    "link": control_pb2.PUT_METHOD_LINK,
    "copy": control_pb2.PUT_METHOD_COPY,
}


def progress_every(request: control_pb2.GetRequest) -> float:
    """Seconds between a Get stream's progress messages: the client's wish within bounds, else the default."""
    if not request.progress_every_ms:
        return PROGRESS_EVERY
    low, high = PROGRESS_EVERY_RANGE
    return min(max(request.progress_every_ms / 1000, low), high)


class ControlServicer(control_pb2_grpc.ControlServicer):
    """Put, get, search, peers, ls, status, rm, cancel and pin for the local CLI."""

    def __init__(
        self,
        node: Node,
        downloads: Downloads,
        trackers: TrackerClient,
        keeper: Keeper,
        tickets: access.Tickets | None = None,
        *,
        imports: OriginImports | None = None,
    ) -> None:
        self._node = node
        self._downloads = downloads
        self._trackers = trackers
        self._keeper = keeper
        self._imports = imports
        self._tickets = tickets  # None: every caller is trusted (TCP with a token, or a 0600 socket)

    async def Put(self, request: control_pb2.PutRequest, context: grpc.aio.ServicerContext) -> control_pb2.PutResponse:
        node = self._node
        caller = await require_caller(context, self._tickets)
        try:
            source = absolute(request.path, "path")
            name = content.check_name(request.name or source.name)
            chunk_size = content.check_chunk_size(request.chunk_size or node.config.chunk_size)
        except content.ContentError as err:
            await fail(context, err)
        await require_access(context, caller, source, "read")
        if request.move:  # taking the file in removes it from its directory: the caller must be able to do that
            await require_access(context, caller, source.parent, "write")
        try:
            await asyncio.to_thread(check_source, source)
            await self._keeper.admit("", (await asyncio.to_thread(source.stat)).st_size)
            placed = await asyncio.to_thread(
                node.store.put, source, name, chunk_size, move=request.move, link=not request.copy
            )
        except (content.ContentError, StoreError) as err:
            await fail(context, err)
        except OSError as err:
            await fail(context, StoreError(f"cannot read {request.path}: {err.strerror or err}"))
        entry = placed.entry
        logger.info("published %s as %s (%d bytes, %s)", name, entry.file_id, entry.manifest.size, placed.method)
        self._trackers.announce_soon()
        self._keeper.sweep_soon()
        return control_pb2.PutResponse(
            file=entry.info,
            chunks=len(entry.manifest.chunk_sha256),
            held_as=placed.held_as,
            added_name=placed.added_name,
            method=_METHODS[placed.method],
        )

    async def Get(
        self, request: control_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.GetProgress]:
        if request.url:
            async for message in self._get_url(request, context):
                yield message
            return
        downloads = self._downloads
        caller = await require_caller(context, self._tickets)
        try:
            file_id = content.parse_file_id(request.file_id)
            output = absolute(request.output, "output") if request.output else None
            into = absolute(request.output_dir, "output_dir") if request.output_dir and output is None else None
            for target in (output, into):
                if target is not None:
                    outside(target, self._node.config.data_dir)
        except content.ContentError as err:
            await fail(context, err)
        if output is not None:
            await require_access(context, caller, output, "write")
        if into is not None:
            await require_access(context, caller, into, "write")
        try:
            if output is not None:
                await asyncio.to_thread(check_output, output)
            if into is not None and not into.is_dir():
                raise StoreError(f"output directory does not exist: {into}")
            known = self._node.store.get(file_id)
            if into is not None and known is not None:
                named_output(into, known.manifest.name, overwrite=request.overwrite)  # refuse before downloading
            await asyncio.to_thread(self._node.store.unstop, file_id)  # asked again: resume it at start too
        except (content.ContentError, StoreError) as err:
            await fail(context, err)
        started = time.monotonic()
        download, task = downloads.start(file_id, str(output) if output else "")
        downloads.attach(file_id)
        cancelled = True
        try:
            while not task.done():
                yield self._progress(download, done=False)
                await asyncio.wait([task], timeout=progress_every(request))
            cancelled = False
        finally:
            downloads.detach(file_id, cancelled=cancelled)
        try:
            entry = task.result()
            if into is not None:
                output = named_output(into, entry.manifest.name, overwrite=request.overwrite)
                await require_access(context, caller, output, "write")
            if output is not None:
                if await self._corrupt(entry):
                    await context.abort(grpc.StatusCode.DATA_LOSS, f"the copy of {file_id} here is corrupt; dropped it")
                await asyncio.to_thread(self._node.store.export, entry, output)
        except (DownloadError, StoreError, TrackersUnavailable) as err:
            await fail(context, err)
        except asyncio.CancelledError:
            await context.abort(grpc.StatusCode.CANCELLED, "download stopped (cancelled, removed, or peer stopping)")
        final = self._progress(download, done=True)
        final.seconds = time.monotonic() - started
        final.written_to = str(output) if output is not None else ""
        yield final

    async def _corrupt(self, entry: Entry, *, always: bool = False) -> list[int]:
        """Re-hash a copy that is not known-good (any copy, with `always`); a bad one is dropped and withdrawn."""
        store = self._node.store
        if not always and await asyncio.to_thread(store.known_good, entry):
            return []
        bad = await asyncio.to_thread(store.verify, entry)
        if bad:
            logger.error("file %s changed on disk (%d bad chunks); dropping it from this peer", entry.file_id, len(bad))
            await asyncio.to_thread(store.remove, entry.file_id)
            self._trackers.announce_soon()
        return bad

    async def Verify(
        self, request: control_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.VerifyResponse:
        try:
            file_id = content.parse_file_id(request.file_id)
        except content.ContentError as err:
            await fail(context, err)
        entry = self._node.store.get(file_id)
        if entry is None or not entry.complete:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no complete copy of {file_id} here")
        assert entry is not None
        try:
            bad = await self._corrupt(entry, always=True)
        except StoreError as err:
            await fail(context, err)
        return control_pb2.VerifyResponse(file=entry.info, ok=not bad, bad_chunks=bad[:100])

    async def _get_url(
        self, request: control_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.GetProgress]:
        """Get an origin URL through the swarm (peer.imports); the output appears only once it is verified."""
        imports = self._imports
        if imports is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this daemon does not get origin URLs")
        caller = await require_caller(context, self._tickets)
        try:
            output = absolute(request.output, "output") if request.output else None
            into = absolute(request.output_dir, "output_dir") if request.output_dir and output is None else None
            for target in (output, into):
                if target is not None:
                    outside(target, self._node.config.data_dir)
        except content.ContentError as err:
            await fail(context, err)
        for target in (output, into):
            if target is not None:
                await require_access(context, caller, target, "write")
        try:
            if output is not None:
                await asyncio.to_thread(check_output, output)
            if into is not None and not into.is_dir():
                raise StoreError(f"output directory does not exist: {into}")
            options = OriginOptions(
                headers=parse_headers(request.headers),
                expected_digest=request.digest or None,
                s3_endpoint=request.s3_endpoint or None,
            )
        except (content.ContentError, StoreError, InvalidHeader) as err:
            await fail(context, err)
        started = time.monotonic()
        progress = Progress(request.url)
        task = imports.get(request.url, options, progress)
        while not task.done():
            yield self._url_progress(progress)
            await asyncio.wait([task], timeout=progress_every(request))
        try:
            entry = task.result()
            if into is not None:
                output = named_output(into, entry.manifest.name, overwrite=request.overwrite)
                await require_access(context, caller, output, "write")
            if output is not None:
                await asyncio.to_thread(self._node.store.export, entry, output)
        except (OriginError, DownloadError, StoreError, TrackersUnavailable) as err:
            await fail(context, err)
        final = control_pb2.GetProgress(
            file=entry.info, done=True, done_bytes=entry.manifest.size, total_bytes=entry.manifest.size
        )
        final.sources.CopyFrom(control_pb2.SourceShare())
        final.seconds = time.monotonic() - started
        final.written_to = str(output) if output is not None else ""
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
        await require_caller(context, self._tickets)
        try:
            options = OriginOptions(
                headers=parse_headers(request.headers),
                expected_digest=request.digest or None,
                s3_endpoint=request.s3_endpoint or None,
            )
            entry, peers = await imports.preheat(request.url, options, max(1, request.replicas))
        except (OriginError, DownloadError, StoreError, TrackersUnavailable, InvalidHeader) as err:
            await fail(context, err)
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
            progress.transfer_seconds = summary.transfer_seconds
        return progress

    async def Search(
        self, request: control_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.SearchResponse:
        try:
            results = await self._trackers.search(request.term)
        except TrackersUnavailable as err:
            await fail(context, err)
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
            await fail(context, err)
        return control_pb2.PeersResponse(holders=holders)

    async def List(
        self, request: control_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListResponse:
        active = self._downloads.active()
        entries = sorted(self._node.store.entries(), key=lambda e: (e.manifest.name, e.file_id))
        files = [local_file(entry, active) for entry in entries]
        if self._imports is not None:
            for local in files:
                local.url = self._imports.url_of(local.file.file_id)
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
            store_bytes=node.store.bytes_used,
            cache_quota_bytes=self._keeper.cache.quota_bytes,
        )

    async def Remove(
        self, request: control_pb2.RemoveRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.RemoveResponse:
        entry = await _on_held(context, request.file_id, self._keeper.remove)
        return control_pb2.RemoveResponse(file=entry.info, freed_bytes=entry.held_bytes)

    async def Cancel(
        self, request: control_pb2.CancelRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.CancelResponse:
        entry = await _on_held(context, request.file_id, self._keeper.cancel)
        return control_pb2.CancelResponse(file=entry.info, freed_bytes=entry.held_bytes)

    async def Pin(self, request: control_pb2.PinRequest, context: grpc.aio.ServicerContext) -> control_pb2.PinResponse:
        entry = await _on_held(context, request.file_id, functools.partial(self._keeper.pin, pinned=request.pinned))
        return control_pb2.PinResponse(file=local_file(entry, self._downloads.active()))


async def _on_held(context: grpc.aio.ServicerContext, file_id: str, action: Callable[[str], Awaitable[Entry]]) -> Entry:
    """Run a keeper verb (rm, cancel, pin) on a parsed file id; a bad id or a file not held becomes its status."""
    try:
        return await action(content.parse_file_id(file_id))
    except (content.ContentError, StoreError) as err:
        await fail(context, err)
