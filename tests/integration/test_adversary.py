"""Lying peers: real gRPC servers in the test that announce themselves and serve bad chunks or forged manifests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from helpers.cli import shoal_async
from helpers.files import make_file, sha256_of
from helpers.polling import wait_until_async
from helpers.processes import start_peers
from helpers.tls import aio_channel, dial_aio, listen

from shoal import content, tls
from shoal.config import TlsFiles
from shoal.localswarm import LocalSwarm, Proc
from shoal.peer.sources import BAN_AFTER_BAD_CHUNKS
from shoal.v1 import common_pb2, peer_pb2, peer_pb2_grpc, tracker_pb2, tracker_pb2_grpc

CHUNK = 64 * 1024


OVERSIZED = 18 * 1024 * 1024  # over the 17 MiB message limit of every Shoal channel


class LyingPeer(peer_pb2_grpc.PeerServicer):
    """Claims to hold one file completely; serves `manifest` for it and bad bytes for every chunk.

    The bytes are random with the right length, or (oversized=True) more than any chunk can be.
    Under TLS it is an insider: it serves and announces with a certificate from the swarm's CA (`files`).
    """

    def __init__(self, files: TlsFiles | None) -> None:
        self.files = files
        self.oversized = False
        self.peer_id = "liar-" + os.urandom(6).hex()
        self.address = ""
        self.file_id = ""
        self.manifest = common_pb2.Manifest()
        self.manifests_served = 0
        self.bad_chunks_served = 0
        self.announcer: asyncio.Task[None] | None = None

    def _bits(self) -> bytes:
        return content.Bitfield.full(len(self.manifest.chunk_sha256)).to_bytes()

    async def _check(self, file_id: str, context: grpc.aio.ServicerContext) -> None:
        if file_id != self.file_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, "not here")

    async def GetManifest(
        self, request: peer_pb2.GetManifestRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.GetManifestResponse:
        await self._check(request.file_id, context)
        self.manifests_served += 1
        return peer_pb2.GetManifestResponse(manifest=self.manifest)

    async def GetChunk(
        self, request: peer_pb2.GetChunkRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.GetChunkResponse:
        await self._check(request.file_id, context)
        _, length = content.chunk_span(self.manifest, request.index)
        self.bad_chunks_served += 1
        data = bytes(OVERSIZED) if self.oversized else os.urandom(length)
        return peer_pb2.GetChunkResponse(data=data, source_complete=True, bitfield=self._bits())

    async def Exchange(
        self, request: peer_pb2.ExchangeRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.ExchangeResponse:
        await self._check(request.file_id, context)
        return peer_pb2.ExchangeResponse(bitfield=self._bits(), complete=True)

    def start_announcing(self, tracker: str) -> None:
        """Keep a lease at the tracker as a complete holder of the file, in the background."""
        self.announcer = asyncio.create_task(self._announce_forever(tracker))

    async def _announce_forever(self, tracker: str) -> None:
        info = common_pb2.FileInfo(file_id=self.file_id, name="bait.bin", size=self.manifest.size)
        request = tracker_pb2.AnnounceRequest(
            peer=common_pb2.PeerInfo(peer_id=self.peer_id, address=self.address),
            files=[tracker_pb2.HeldFile(file=info, complete=True)],
        )
        async with aio_channel(tracker, self.files, tls.TRACKER_NAME) as channel:
            stub = tracker_pb2_grpc.TrackerStub(channel)
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.Announce(request, timeout=3)
                await asyncio.sleep(0.3)


@pytest.fixture
async def liar(swarm: LocalSwarm) -> AsyncIterator[LyingPeer]:
    """A lying peer on 127.0.0.1:0 (TLS when the swarm uses it); the test sets its file, then starts it announcing."""
    servicer = LyingPeer(swarm.tls)
    server = grpc.aio.server()
    peer_pb2_grpc.add_PeerServicer_to_server(servicer, server)
    servicer.address = listen(server, swarm.tls)
    await server.start()
    try:
        yield servicer
    finally:
        if servicer.announcer is not None:
            servicer.announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await servicer.announcer
        await server.stop(0)


async def wait_holders(peer: Proc, file_id: str, expected: set[str]) -> None:
    """Poll `peers` from `peer` until the tracker lists exactly `expected`."""

    async def listed() -> bool:
        code, out, _ = await shoal_async(peer, "--json", "peers", file_id)
        return ({h["peer"]["peer_id"] for h in json.loads(out)["holders"]} if code == 0 else set()) == expected

    await wait_until_async(listed, what=f"exactly {sorted(expected)} listed as holders")


@pytest.mark.parametrize(
    "oversized",
    [
        False,
        True,
    ],
    ids=["wrong-bytes", "oversized"],
)
async def test_bad_chunks_are_rejected_and_the_liar_banned(
    swarm: LocalSwarm, liar: LyingPeer, tmp_path: Path, oversized: bool
) -> None:
    liar.oversized = oversized
    # The honest seeder is capped at 2 MiB/s so the liar, who answers at once, gets plenty of requests.
    (seeder,) = start_peers(swarm, 1, "--upload-limit", str(2 * 1024 * 1024))
    (downloader,) = start_peers(swarm, 1)
    source = tmp_path / "honest.bin"
    digest = make_file(source, 4 * 1024 * 1024)
    code, out, err = await shoal_async(seeder, "put", str(source), "--chunk-size", str(CHUNK))
    assert code == 0, err
    file_id = out.splitlines()[-1]
    async with dial_aio(swarm, seeder) as channel:
        reply = await peer_pb2_grpc.PeerStub(channel).GetManifest(
            peer_pb2.GetManifestRequest(file_id=file_id), timeout=10
        )
    liar.file_id, liar.manifest = file_id, reply.manifest
    liar.start_announcing(swarm.trackers[0].address)
    code, out, err = await shoal_async(seeder, "status", "--json")
    seeder_id = json.loads(out)["peer"]["peer_id"]
    await wait_holders(downloader, file_id, {seeder_id, liar.peer_id})

    output = tmp_path / "fetched.bin"
    code, out, err = await shoal_async(downloader, "--json", "get", file_id, "--output", str(output))
    assert code == 0, err
    assert sha256_of(output) == digest
    sources = json.loads(out.splitlines()[-1])["sources"]
    assert liar.bad_chunks_served >= 3, "the liar was hardly asked: the test proves nothing"
    assert sources["rejected_chunks"] >= 1, sources
    assert sources["banned_peers"] >= 1, (liar.bad_chunks_served, sources)
    # A source that never delivered a good chunk keeps each request slot until that chunk's verdict, so the liar
    # has at most its window (2) in flight: the ban threshold plus one request outstanding when it falls.
    assert liar.bad_chunks_served <= BAN_AFTER_BAD_CHUNKS + 1, liar.bad_chunks_served
    log = downloader.log_path.read_text()
    assert f"banning {liar.address}" in log


def forged(manifest: common_pb2.Manifest, how: str) -> common_pb2.Manifest:
    """A copy of `manifest` changed so that it no longer matches its id (or breaks a rule)."""
    fake = common_pb2.Manifest()
    fake.CopyFrom(manifest)
    if how == "chunk-hash":
        fake.chunk_sha256[0] = bytes(32)
    elif how == "file-hash":
        fake.file_sha256 = bytes(32)
    elif how == "size":
        fake.size += 1
    elif how == "path-name":
        fake.name = "../../escaped.bin"  # the id does not cover the name: the name rule must catch it
    else:
        raise AssertionError(how)
    return fake


@pytest.mark.parametrize("how", ["chunk-hash", "file-hash", "size", "path-name"])
async def test_forged_manifest_from_the_only_holder_fails_cleanly(
    swarm: LocalSwarm, liar: LyingPeer, tmp_path: Path, how: str
) -> None:
    (downloader,) = start_peers(swarm, 1)
    source = tmp_path / "real.bin"
    make_file(source, 10 * CHUNK + 5)
    builder = content.ManifestBuilder("real.bin", CHUNK)
    data = source.read_bytes()
    for offset in range(0, len(data), CHUNK):
        builder.add(data[offset : offset + CHUNK])
    file_id, manifest = builder.finish()
    liar.file_id, liar.manifest = file_id, forged(manifest, how)
    liar.start_announcing(swarm.trackers[0].address)
    await wait_holders(downloader, file_id, {liar.peer_id})

    output = tmp_path / "out" / "never.bin"
    output.parent.mkdir()
    code, out, err = await shoal_async(downloader, "get", file_id, "--output", str(output))
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "bad manifest" in lines[0], lines
    assert liar.manifests_served >= 1
    assert list(output.parent.iterdir()) == []
    assert downloader.data_dir is not None
    for sub in ("files", "partial"):
        assert list((downloader.data_dir / sub).iterdir()) == [], sub
    code, out, err = await shoal_async(downloader, "ls", "--json")
    assert json.loads(out)["files"] == []
    assert not (tmp_path / "escaped.bin").exists()
