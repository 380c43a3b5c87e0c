"""The Session stream: a peer's lease held for as long as its stream lives, its state sent as deltas.

Liveness is the stream's: gRPC's core ends it when the peer's connection closes (a crash), when the peer misses
the server's HTTP/2 keepalive pings (a hung or cut-off peer; see KEEPALIVE_OPTIONS), or when the peer half-closes
it (leaving). The handler then drops the peer at once; nothing runs per peer while the stream is quiet.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

import grpc

from shoal import tls
from shoal.tracker.checks import (
    check_secret,
    dropped_from_proto,
    holdings_from_proto,
    peer_from_proto,
    refusal,
    shown,
)
from shoal.tracker.registry import Registry, RegistryError
from shoal.v1 import tracker_pb2

logger = logging.getLogger(__name__)

RPC = "Session"
# The server pings each connection every KEEPALIVE_TIME_MS and closes it when an ack takes over KEEPALIVE_TIMEOUT_MS:
# a peer that stops answering is dropped within 7 s of its last ack (the guarantee is 10 s).
KEEPALIVE_TIME_MS = 4_000
KEEPALIVE_TIMEOUT_MS = 3_000
KEEPALIVE_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # gRPC core (1.85) waits for a ping's ack this long, whatever keepalive_timeout_ms says (default: a minute).
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),  # a quiet stream sends no data between pings
]

Refuse = Callable[[grpc.aio.ServicerContext, str, grpc.StatusCode, str], Awaitable[NoReturn]]


async def hold_session(registry: Registry, context: grpc.aio.ServicerContext, refuse: Refuse) -> None:
    """Register the peer from the first update, apply later ones as deltas, drop the peer when the stream ends."""
    first = await context.read()
    if not isinstance(first, tracker_pb2.SessionUpdate):  # grpc.aio.EOF: closed before its first update
        return
    try:
        peer = peer_from_proto(first.peer)
        holdings = holdings_from_proto(first.files)
        check_secret(first.peer_secret)
        if first.dropped_file_ids:
            raise ValueError("dropped_file_ids in a session's first update (it carries the full state)")
    except ValueError as err:
        await refuse(context, RPC, grpc.StatusCode.INVALID_ARGUMENT, str(err))
    if not tls.address_allowed(peer.address, tls.proven_ips(context)):  # as for Announce
        await refuse(
            context,
            RPC,
            grpc.StatusCode.PERMISSION_DENIED,
            f"address {shown(peer.address)} is not one the caller's certificate names",
        )
    try:
        opened = registry.open_session(peer, holdings, first.peer_secret, first.accepts_secret)
    except RegistryError as err:
        await refuse(context, RPC, *refusal(err, peer, registry.limits.max_peers))
    try:
        if opened.joined:
            logger.info(
                "peer %r joined from %r with %d files (session%s)",
                peer.peer_id,
                peer.address,
                len(holdings),
                "" if opened.secret else "; no secret",
            )
        await context.write(tracker_pb2.SessionReply(peer_secret=opened.secret, left_out=opened.left_out))
        while True:
            update = await context.read()
            if not isinstance(update, tracker_pb2.SessionUpdate):  # grpc.aio.EOF: the peer half-closed (leaving)
                break
            try:
                if update.HasField("peer") or update.peer_secret or update.accepts_secret:
                    raise ValueError("peer, peer_secret and accepts_secret belong in a session's first update only")
                held = holdings_from_proto(update.files)
                dropped = dropped_from_proto(update.dropped_file_ids)
            except ValueError as err:
                await refuse(context, RPC, grpc.StatusCode.INVALID_ARGUMENT, str(err))
            try:
                left_out = registry.update_session(peer.peer_id, opened.session, held, dropped)
            except RegistryError as err:
                await refuse(context, RPC, *refusal(err, peer, registry.limits.max_peers))
            if left_out:
                await context.write(tracker_pb2.SessionReply(left_out=left_out))
    finally:
        if registry.close_session(peer.peer_id, opened.session):
            logger.info("peer %s gone: its session ended", shown(peer.peer_id))
