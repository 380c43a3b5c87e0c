"""Who is calling the control API, and may they touch that path: token, caller tickets, checks as the caller.

A TCP control address is reachable by every local user and container in the pod, so it needs a token
read from a 0600 file (whoever can read that file is trusted like the daemon's own user). On the unix
socket the kernel knows the caller: gRPC does not expose SO_PEERCRED, so the CLI first connects to a
small sibling socket (`<socket>.cred`), where the daemon reads the caller's uid and gid with SO_PEERCRED
and hands back a one-time ticket, then sends that ticket with Put or Get. A caller who is the daemon's
user or root may touch what the daemon may; anyone else (a --control-group member) has each path checked
for reading (Put) or writing (Get) by test(1) run as them through setpriv(1)
(their uid, gid and groups).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hmac
import logging
import os
import pwd
import secrets
import shutil
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from shoal.callers import TICKET_HEADER, TOKEN_HEADER, AccessError, read_token

__all__ = ["TICKET_HEADER", "TOKEN_HEADER", "AccessError", "read_token"]

logger = logging.getLogger(__name__)

TICKET_TTL = 30.0
MAX_TICKETS = 1024
CHECK_TIMEOUT = 10.0

TEST = shutil.which("test") or "/usr/bin/test"  # run as the caller: access(2) with their uid and groups
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"  # util-linux


class Denied(Exception):
    """The caller may not touch that path."""


def group_id(name: str) -> int:
    """The gid of --control-group (a name or a number)."""
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise AccessError(f"no such group: {name!r}") from None


def open_socket(path: Path, gid: int | None) -> None:
    """0600 for the daemon's user alone, or 0660 for one group; checked after it is set."""
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, 0o660 if gid is not None else 0o600)
    mode = path.stat().st_mode & 0o777
    if mode & 0o007 or (gid is None and mode & 0o070):
        raise AccessError(f"control socket {path} has mode {mode:o}")


@dataclass(frozen=True)
class Caller:
    """The user on the other end of a control call."""

    uid: int
    gid: int

    @property
    def trusted(self) -> bool:
        """Root, or the daemon's own user: may touch whatever the daemon may."""
        return self.uid in (0, os.geteuid())


TRUSTED = Caller(os.geteuid(), os.getegid())


class Tickets:
    """One-time tickets naming the uid and gid the kernel reported for a connection to the .cred socket."""

    def __init__(self, *, required: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.required = required  # a group may use the socket: a call without a ticket is refused
        self._clock = clock
        self._tickets: dict[str, tuple[Caller, float]] = {}

    def issue(self, caller: Caller) -> str:
        """A fresh ticket for this caller, valid once within TICKET_TTL."""
        now = self._clock()
        for ticket, (_, expires) in list(self._tickets.items()):
            if expires <= now:
                del self._tickets[ticket]
        while len(self._tickets) >= MAX_TICKETS:
            self._tickets.pop(next(iter(self._tickets)))
        ticket = secrets.token_hex(32)
        self._tickets[ticket] = (caller, now + TICKET_TTL)
        return ticket

    def redeem(self, ticket: str) -> Caller | None:
        """The caller a ticket was issued to, once; None when unknown or expired."""
        found = self._tickets.pop(ticket, None)
        if found is None or found[1] <= self._clock():
            return None
        return found[0]

    async def serve(self, path: Path, gid: int | None) -> asyncio.Server:
        """Listen on `path`: each connection gets a ticket for the uid and gid the kernel reports."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                sock = writer.get_extra_info("socket")
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                _, uid, gid_ = struct.unpack("3i", creds)
                writer.write(self.issue(Caller(uid, gid_)).encode() + b"\n")
                await writer.drain()
            except OSError as err:
                logger.warning("control credential socket: %s", err)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = await asyncio.start_unix_server(handle, path=str(path))
        open_socket(path, gid)
        return server


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def caller_of(context: grpc.aio.ServicerContext, tickets: Tickets | None) -> Caller | None:
    """Who is calling: TRUSTED without tickets (TCP with token, or a 0600 socket); else the ticket's user."""
    ticket = _metadata(context).get(TICKET_HEADER, "")
    if ticket and tickets is not None:
        return tickets.redeem(ticket)
    return TRUSTED if tickets is None or not tickets.required else None


async def check_path(caller: Caller, path: Path, mode: str) -> None:
    """Raise Denied unless `caller` may read (mode 'read') or write (mode 'write') `path`."""
    if caller.trusted:
        return
    try:
        name = pwd.getpwuid(caller.uid).pw_name
        groups = os.getgrouplist(name, caller.gid)
    except KeyError:
        groups = [caller.gid]
    if mode == "read":
        args = ["-r", str(path), "-a", "-f", str(path)]
    elif os.path.lexists(path):
        args = ["-w", str(path)]
    else:
        args = ["-w", str(path.parent), "-a", "-x", str(path.parent)]
    # setpriv drops to the caller after exec: the daemon never forks with uid changes of its own
    # (a plain fork of a process with gRPC threads can crash in gRPC's fork handlers).
    ids = [f"--reuid={caller.uid}", f"--regid={caller.gid}", f"--groups={','.join(map(str, groups))}"]
    proc = await asyncio.create_subprocess_exec(
        SETPRIV, *ids, "--", TEST, *args,
        env={}, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        code = await asyncio.wait_for(proc.wait(), CHECK_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        code = 1
    if code != 0:
        verb = "read" if mode == "read" else "write"
        raise Denied(f"permission denied: uid {caller.uid} may not {verb} {path}")


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Every call on a TCP control address carries the token (compared in constant time, never logged)."""

    def __init__(self, token: bytes) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        sent = ""
        for key, value in details.invocation_metadata or ():  # type: ignore[attr-defined]
            if key == TOKEN_HEADER and isinstance(value, str):
                sent = value
        if hmac.compare_digest(sent.encode("utf-8", "replace"), self._token):
            return await continuation(details)
        logger.warning("control call %s refused: missing or wrong token", details.method)  # type: ignore[attr-defined]
        handler = await continuation(details)
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler | None) -> Any:
    async def abort_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "control token missing or wrong")

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "control token missing or wrong")
        yield  # pragma: no cover

    if handler is None:
        return None
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            abort_stream, handler.request_deserializer, handler.response_serializer
        )
    return grpc.unary_unary_rpc_method_handler(abort_unary, handler.request_deserializer, handler.response_serializer)
