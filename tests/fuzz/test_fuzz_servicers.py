"""Fuzz every request the peer servicer and the control servicer accept: a reply or a documented status, no crash."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.message import Message
from helpers.servicer_context import Aborted, FakeContext
from hypothesis import given
from hypothesis import strategies as st

from shoal.cache import Cache
from shoal.config import PeerConfig
from shoal.peer.control import ControlServicer
from shoal.peer.downloads import Downloads
from shoal.peer.errors import NoHolders, TrackersUnavailable
from shoal.peer.keeper import Keeper
from shoal.peer.node import MAX_KNOWN_PER_FILE, Node
from shoal.peer.progress import Summary
from shoal.peer.server import MAX_KNOWN, PeerServicer
from shoal.peer.trackers import TrackerClient
from shoal.peer.uploads import Uploads
from shoal.quota import QuotaSpec
from shoal.store import Store
from shoal.v1 import common_pb2, control_pb2, peer_pb2

CHUNK = 16 * 1024
PEER_ALLOWED = {
    "GetManifest": {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND},
    "GetChunk": {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    },
    "Exchange": {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED},
}
CONTROL_ALLOWED = {
    "Put": {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION},
    "Get": {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE,
    },
    "Verify": {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND},
    "Search": {grpc.StatusCode.UNAVAILABLE},
    "Peers": {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE},
    "List": set(),
    "Status": set(),
}


class Heard:
    """The running downloads, as the peer servicer tells them what callers said."""

    def __init__(self) -> None:
        self.holders: list[common_pb2.PeerInfo] = []

    def holders_heard(self, file_id: str, peers: list[common_pb2.PeerInfo]) -> None:
        self.holders.extend(peers)

    def bitfield_heard(self, file_id: str, address: str, bitfield: bytes) -> None:
        pass


class FakeTrackers:
    addresses = ["127.0.0.1:1"]
    up: list[str] = []

    def announce_soon(self) -> None:
        pass

    async def search(self, term: str) -> list[Any]:
        raise TrackersUnavailable("no tracker")

    async def holders(self, file_id: str) -> list[Any]:
        return []


class FakeDownloads:
    """Held files finish at once; anything else has no holders."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __len__(self) -> int:
        return 0

    def active(self) -> set[str]:
        return set()

    async def stop(self, file_id: str) -> None:
        pass

    def start(self, file_id: str, output: str) -> tuple[Any, asyncio.Task[Any]]:
        async def run() -> Any:
            entry = self._store.get(file_id)
            if entry is None:
                raise NoHolders(f"no holders of {file_id}")
            return entry

        download = type("D", (), {"done_bytes": 0, "entry": self._store.get(file_id), "summary": Summary()})()
        return download, asyncio.get_running_loop().create_task(run())

    def attach(self, file_id: str) -> None:
        pass

    def detach(self, file_id: str, *, cancelled: bool) -> None:
        pass


WORK = Path(tempfile.mkdtemp(prefix="shoal-fuzz-"))
SOURCE = WORK / "source.bin"
SOURCE.write_bytes(bytes(range(256)) * 300)  # 76,800 bytes: 5 chunks
OUT_DIR = WORK / "out"
OUT_DIR.mkdir()


def world() -> tuple[Node, Store, Heard, str]:
    """A fresh store holding one file, and a node around it."""
    data_dir = Path(tempfile.mkdtemp(dir=WORK))
    store = Store(data_dir)
    store.open()
    entry = store.publish(SOURCE, "source.bin", CHUNK)
    config = PeerConfig(listen="127.0.0.1:0", trackers=("127.0.0.1:1",), data_dir=data_dir)
    node = Node(config, store, "me" * 16, "127.0.0.1:7401")
    return node, store, Heard(), entry.file_id


texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "p1", "10.0.0.1:7401", "[::1]:1", "a" * 64, "\x00\n\x1b[31m"]),
    st.integers(min_value=100, max_value=5000).map(lambda n: "x" * n),
)
peer_infos = st.builds(common_pb2.PeerInfo, peer_id=texts, address=texts, zone=texts)


def file_ids(held: str) -> st.SearchStrategy[str]:
    return st.one_of(st.just(held), st.just("b" * 64), texts)


async def invoke(handler: Any, request: Message) -> Any:
    context = FakeContext()
    try:
        result = handler(request, cast(grpc.aio.ServicerContext, context))
        if hasattr(result, "__aiter__"):
            last = None
            async for item in cast(AsyncIterator[Any], result):
                last = item
            return last
        return await result
    finally:
        for callback in context.done:
            callback(context)


def check(allowed: dict[str, set[grpc.StatusCode]], rpc: str, handler: Any, request: Message) -> Any:
    try:
        return asyncio.run(invoke(handler, request))
    except Aborted as err:
        assert err.code in allowed[rpc], f"{rpc} aborted with {err.code}: {err.details}"
        assert len(err.details) < 600, "a refusal echoes too much of the request"
        return None


NODE, STORE, HEARD, HELD = world()


def peer_requests(held: str) -> st.SearchStrategy[tuple[str, Message]]:
    ids = file_ids(held)
    return st.one_of(
        st.builds(peer_pb2.GetManifestRequest, file_id=ids).map(lambda r: ("GetManifest", r)),
        st.builds(
            peer_pb2.GetChunkRequest, file_id=ids, index=st.integers(min_value=0, max_value=2**32 - 1), peer_id=texts
        ).map(lambda r: ("GetChunk", r)),
        st.builds(
            peer_pb2.ExchangeRequest,
            file_id=ids,
            peer=peer_infos,
            bitfield=st.one_of(st.just(b"\x1f"), st.binary(max_size=64)),
            known=st.lists(peer_infos, max_size=MAX_KNOWN + 3),
        ).map(lambda r: ("Exchange", r)),
    )


@given(steps=st.lists(peer_requests(HELD), min_size=1, max_size=8))
def test_peer_servicer_requests(steps: list[tuple[str, Message]]) -> None:
    uploads = Uploads(STORE, NODE.stats, NODE.upload_bucket, 4, lambda: None)
    servicer = PeerServicer(NODE, uploads, HEARD)
    for rpc, request in steps:
        check(PEER_ALLOWED, rpc, getattr(servicer, rpc), request)
        assert all(len(known) <= MAX_KNOWN_PER_FILE for known in NODE.known.values())
        assert all(len(p.address) <= 256 and len(p.peer_id) <= 64 for p in HEARD.holders)
        assert STORE.get(HELD) is not None  # nothing a caller sends drops an intact file


paths = st.one_of(
    st.sampled_from([str(SOURCE), str(WORK), "/nonexistent/x", "", "relative/x", "/\x00x", str(OUT_DIR / "o.bin")]),
    texts,
)


def control_requests(held: str) -> st.SearchStrategy[tuple[str, Message]]:
    ids = file_ids(held)
    return st.one_of(
        st.builds(
            control_pb2.PutRequest,
            path=paths,
            name=texts,
            chunk_size=st.one_of(st.just(0), st.just(CHUNK), st.integers(min_value=0, max_value=2**32 - 1)),
        ).map(lambda r: ("Put", r)),
        st.builds(control_pb2.GetRequest, file_id=ids, output=paths).map(lambda r: ("Get", r)),
        st.builds(control_pb2.VerifyRequest, file_id=ids).map(lambda r: ("Verify", r)),
        st.builds(control_pb2.SearchRequest, term=texts).map(lambda r: ("Search", r)),
        st.builds(control_pb2.PeersRequest, file_id=ids).map(lambda r: ("Peers", r)),
        st.just(("List", control_pb2.ListRequest())),
        st.just(("Status", control_pb2.StatusRequest())),
    )


@given(steps=st.lists(control_requests(HELD), min_size=1, max_size=6))
def test_control_servicer_requests(steps: list[tuple[str, Message]]) -> None:
    trackers = cast(TrackerClient, FakeTrackers())
    downloads = cast(Downloads, FakeDownloads(STORE))
    keeper = Keeper(Cache.open(STORE, QuotaSpec.of(0), STORE.root), downloads, trackers.announce_soon)
    servicer = ControlServicer(NODE, downloads, trackers, keeper)
    for rpc, request in steps:
        check(CONTROL_ALLOWED, rpc, getattr(servicer, rpc), request)
        assert STORE.get(HELD) is not None
        assert not any(Path(STORE.root, "files").glob("*/data.*"))
