"""Fuzz every request the tracker servicer accepts: only the documented status codes, caps and invariants hold."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, cast

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from helpers.clocks import FakeClock
from helpers.registry_audit import audit
from helpers.servicer_context import Aborted, FakeContext
from hypothesis import given
from hypothesis import strategies as st

from shoal.config import TrackerConfig
from shoal.tracker import server
from shoal.tracker.registry import MAX_LIST_PEERS, Limits, Registry
from shoal.v1 import common_pb2, tracker_pb2

LIMITS = Limits(max_peers=6, max_files=10, max_holdings=16)
ALLOWED = {
    "Announce": {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    },
    "Leave": {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED},
    "SearchFiles": {grpc.StatusCode.INVALID_ARGUMENT},
    "GetPeers": {grpc.StatusCode.INVALID_ARGUMENT},
    "ListPeers": set(),
}
REQUEST_TYPES: dict[str, type[Message]] = {
    "Announce": tracker_pb2.AnnounceRequest,
    "Leave": tracker_pb2.LeaveRequest,
    "SearchFiles": tracker_pb2.SearchFilesRequest,
    "GetPeers": tracker_pb2.GetPeersRequest,
    "ListPeers": tracker_pb2.ListPeersRequest,
}
# The biggest reply any one call may build: 1,000 holders or results of ~600 bytes, or ListPeers' cap.
MAX_REPLY_BYTES = max(1000 * 700, MAX_LIST_PEERS * 600)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a handler that never suspends (the tracker's never do) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("handler suspended")


def call(servicer: server.TrackerServicer, rpc: str, request: Message) -> None:
    """Call one handler; fail on anything but a reply or an allowed status code."""
    try:
        reply = run(getattr(servicer, rpc)(request, FakeContext()))
    except Aborted as err:
        assert err.code in ALLOWED[rpc], f"{rpc} aborted with {err.code}: {err.details}"
        assert len(err.details) < 400, "a refusal echoes too much of the request"
        return
    assert reply.ByteSize() <= MAX_REPLY_BYTES


# Strings an attacker would try: empty, plausible, huge, control characters, non-ASCII, surrogate-free unicode.
texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.sampled_from(["", "p1", "p2", "10.0.0.1:7401", "10.0.0.2:7401", "[::1]:1", "a" * 64, "\x00\n\x1b[31m"]),
    st.integers(min_value=100, max_value=5000).map(lambda n: "x" * n),
)
peer_ids = st.one_of(st.sampled_from(["p1", "p2", "p3", "p4", "p5", "p6", "p7"]), texts)
addresses = st.one_of(st.sampled_from([f"10.0.0.{n}:7401" for n in range(1, 8)]), texts)
file_ids = st.one_of(st.sampled_from([f"{n:064x}" for n in range(12)]), texts)
secrets_ = st.one_of(st.sampled_from(["", "s" * 22, "t" * 22]), texts)
held_files = st.builds(
    lambda fid, name, size, complete: tracker_pb2.HeldFile(
        file=common_pb2.FileInfo(file_id=fid, name=name, size=size), complete=complete
    ),
    file_ids,
    st.one_of(st.sampled_from(["a.iso", "b.iso", "A.ISO"]), texts),
    st.one_of(st.sampled_from([1, 42]), st.integers(min_value=0, max_value=2**64 - 1)),
    st.booleans(),
)
announces = st.builds(
    lambda pid, addr, zone, files, secret, accepts: tracker_pb2.AnnounceRequest(
        peer=common_pb2.PeerInfo(peer_id=pid, address=addr, zone=zone),
        files=files,
        peer_secret=secret,
        accepts_secret=accepts,
    ),
    peer_ids,
    addresses,
    st.one_of(st.just(""), texts),
    st.lists(held_files, max_size=12),
    secrets_,
    st.booleans(),
)
requests = st.one_of(
    announces.map(lambda r: ("Announce", r)),
    st.builds(tracker_pb2.LeaveRequest, peer_id=peer_ids, peer_secret=secrets_).map(lambda r: ("Leave", r)),
    st.builds(tracker_pb2.SearchFilesRequest, term=texts, limit=st.integers(min_value=0, max_value=2**32 - 1)).map(
        lambda r: ("SearchFiles", r)
    ),
    st.builds(
        tracker_pb2.GetPeersRequest,
        file_id=file_ids,
        limit=st.integers(min_value=0, max_value=2**32 - 1),
        exclude_peer_id=peer_ids,
    ).map(lambda r: ("GetPeers", r)),
    st.just(("ListPeers", tracker_pb2.ListPeersRequest())),
)


@given(steps=st.lists(st.tuples(requests, st.floats(min_value=0, max_value=4)), min_size=1, max_size=12))
def test_request_sequences_get_replies_or_documented_codes(steps: list[tuple[tuple[str, Message], float]]) -> None:
    clock = FakeClock()
    registry = Registry(3.0, clock=clock, limits=LIMITS)
    servicer = server.TrackerServicer(registry, TrackerConfig(announce_interval=1.0))
    for (rpc, request), pause in steps:
        call(servicer, rpc, request)
        audit(registry)
        clock.advance(pause)
        if pause > 2:
            registry.expire()
            audit(registry)


@given(rpc=st.sampled_from(sorted(REQUEST_TYPES)), raw=st.binary(max_size=2048))
def test_raw_bytes_parse_or_are_refused(rpc: str, raw: bytes) -> None:
    try:
        request = REQUEST_TYPES[rpc].FromString(raw)
    except DecodeError:
        return  # grpc answers INTERNAL before the handler runs
    registry = Registry(3.0, clock=FakeClock(), limits=LIMITS)
    call(server.TrackerServicer(registry, TrackerConfig()), rpc, request)
    audit(registry)


@given(count=st.integers(min_value=server.MAX_FILES_PER_ANNOUNCE + 1, max_value=server.MAX_FILES_PER_ANNOUNCE + 3))
def test_too_many_files_is_invalid_argument(count: int) -> None:
    held = tracker_pb2.HeldFile(file=common_pb2.FileInfo(file_id="a" * 64, name="x", size=1))
    request = tracker_pb2.AnnounceRequest(peer=common_pb2.PeerInfo(peer_id="p", address="h:1"), files=[held] * count)
    registry = Registry(3.0, clock=FakeClock())
    with pytest.raises(Aborted) as info:
        context = cast(grpc.aio.ServicerContext, FakeContext())
        run(server.TrackerServicer(registry, TrackerConfig()).Announce(request, context))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert registry.stats().peers == 0
