"""How a client verb reaches the daemon: waiting for the channel, and the caller's credentials on every call."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from shoal import callers as access
from shoal.cli.errors import EXIT_UNREACHABLE, EXIT_USAGE, CliError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0


def unreachable(target: str) -> CliError:
    """The one-line error for a daemon that cannot be reached."""
    return CliError(f"cannot reach the shoal daemon at {target} (is `shoal peer` running?)", EXIT_UNREACHABLE)


async def connect(channel: grpc.aio.Channel, target: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Wait for the channel to be ready; a target that fails to resolve or connect is 'cannot reach'."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            raise unreachable(target)
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), deadline - loop.time())
        except TimeoutError:
            raise CliError(f"the shoal daemon at {target} did not answer in time", EXIT_UNREACHABLE) from None
        state = channel.get_state()


def caller_credentials(args: argparse.Namespace) -> Callable[[], list[tuple[str, str]]]:
    """What proves who we are: the token on a TCP address, a fresh caller ticket on the unix socket."""
    target = args.peer
    if target.startswith("unix:"):
        socket_path = Path(target.removeprefix("unix:").removeprefix("//"))
        return lambda: [(access.TICKET_HEADER, t)] if (t := access.fetch_ticket(socket_path)) else []
    token_file = getattr(args, "control_token_file", None)
    if token_file is None:
        return list
    try:
        token = access.read_token(token_file).decode("utf-8", "replace")
    except access.AccessError as err:
        raise CliError(str(err), EXIT_USAGE) from None
    return lambda: [(access.TOKEN_HEADER, token)]


class Credentials:
    """Adds the caller's credentials to every call (grpc.aio takes one interceptor object per call shape)."""

    def __init__(self, credentials: Callable[[], list[tuple[str, str]]]) -> None:
        self._credentials = credentials

    def with_credentials(self, details: Any) -> Any:
        extra = self._credentials()
        if not extra:
            return details
        metadata = [*(details.metadata or ()), *extra]
        return details._replace(metadata=grpc.aio.Metadata(*metadata))


class UnaryCredentials(Credentials, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.with_credentials(details), request)


class StreamCredentials(Credentials, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.with_credentials(details), request)
