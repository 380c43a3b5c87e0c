"""Channels, deadlines, retries and keepalive shared by every gRPC client and server in Shoal."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Chunks are at most 16 MiB (content.MAX_CHUNK_SIZE); leave room for framing.
MAX_MESSAGE_BYTES = 17 * 1024 * 1024
# A peer's reply is still read up to this size, so one over MAX_MESSAGE_BYTES (more than any honest peer
# sends) is caught as a lie by its size instead of being refused by gRPC with the status a busy peer uses.
MAX_REPLY_BYTES = 2 * MAX_MESSAGE_BYTES

# Deadlines (seconds) for each kind of call; every RPC in Shoal carries one.
TRACKER_DEADLINE = 3.0
MANIFEST_DEADLINE = 5.0
EXCHANGE_DEADLINE = 3.0
CHUNK_DEADLINE = 30.0

# Status codes worth retrying for idempotent calls.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)

# Keepalive: a half-open connection is noticed within about ping time + timeout.
CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.enable_retries", 0),
]

SERVER_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
]

# The peer-facing server: a caller's connection carries at most this many calls at once (HTTP/2
# SETTINGS_MAX_CONCURRENT_STREAMS); more wait in the caller's queue, so one greedy or old caller cannot pin
# every upload slot's bytes. A downloader keeps requests_per_peer (4) chunk calls and an exchange per source, and
# one channel per address is shared by every download of a peer: 16 leaves room for a few downloads at once.
PEER_STREAMS_PER_CONNECTION = 16
IDLE_CONNECTION_MS = 300_000  # a connection with no call for 5 minutes is closed (the caller redials)
PEER_SERVER_OPTIONS: list[tuple[str, int | str]] = [
    *SERVER_OPTIONS,
    ("grpc.max_concurrent_streams", PEER_STREAMS_PER_CONNECTION),
    ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
]


def open_channel(
    address: str,
    max_receive: int = MAX_MESSAGE_BYTES,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
    own_connection: bool = False,
) -> grpc.aio.Channel:
    """Open a channel with Shoal's limits and keepalive: TLS with credentials (shoal.tls makes them), else plaintext.

    server_name: the name the server's certificate must carry, instead of the host dialled.
    own_connection: its own TCP connection, never shared with another channel to the same address."""
    options = [(k, max_receive if k == "grpc.max_receive_message_length" else v) for k, v in CHANNEL_OPTIONS]
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, credentials, options=options)


def backoff_delays(base: float = 0.1, cap: float = 2.0) -> Callable[[int], float]:
    """Full-jitter exponential backoff (AWS architecture blog): attempt n sleeps U(0, min(cap, base*2^n))."""

    def delay(attempt: int) -> float:
        return random.uniform(0, min(cap, base * (2**attempt)))

    return delay


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = 4,
    base: float = 0.1,
    cap: float = 2.0,
    what: str = "call",
) -> T:
    """Run an idempotent call, retrying retryable gRPC errors with jittered exponential backoff."""
    delay = backoff_delays(base, cap)
    for attempt in range(attempts):
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if err.code() not in RETRYABLE or attempt == attempts - 1:
                raise
            pause = delay(attempt)
            logger.debug("%s failed with %s; retry %d in %.2fs", what, err.code().name, attempt + 1, pause)
            await asyncio.sleep(pause)
    raise AssertionError("unreachable")


def split_host_port(address: str) -> tuple[str, int]:
    """Split 'host:port' (IPv6 as '[::1]:port'); raise ValueError on anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"not a host:port address: {address!r}")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"empty IPv6 address in {address!r}")
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"IPv6 addresses need brackets, as in [::1]:7400: {address!r}")
    return host, number


def bind(
    server: grpc.aio.Server, address: str, what: str = "", credentials: grpc.ServerCredentials | None = None
) -> int:
    """Add a listening address to a server (TLS with credentials); OSError (one clear line) if it cannot be bound."""
    label = f"{what} " if what else ""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {label}{address}: address in use or not local")
    return port
