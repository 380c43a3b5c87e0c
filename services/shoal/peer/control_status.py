"""How the control API refuses a request: unknown callers, denied paths, and domain errors mapped to codes once."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NoReturn

import grpc

from shoal import content
from shoal.cache import NoRoom
from shoal.origins import InvalidHeader, OriginDenied, OriginNotFound, OriginUnavailable, UnsupportedOrigin
from shoal.peer import access
from shoal.peer.errors import NoHolders, TrackersUnavailable
from shoal.peer.listing import OutputExists
from shoal.store import DiskFull, NotHeld

logger = logging.getLogger(__name__)


async def fail(context: grpc.aio.ServicerContext, err: Exception) -> NoReturn:
    """Turn a domain error into a gRPC status with a clear message."""
    if isinstance(err, (content.ContentError, UnsupportedOrigin, InvalidHeader)):
        code = grpc.StatusCode.INVALID_ARGUMENT
    elif isinstance(err, (OriginNotFound, OriginDenied)):
        code = grpc.StatusCode.NOT_FOUND  # exit 4 with the origin's status in the one line
    elif isinstance(err, OriginUnavailable):
        code = grpc.StatusCode.UNAVAILABLE
    elif isinstance(err, (NoHolders, NotHeld)):
        code = grpc.StatusCode.NOT_FOUND
    elif isinstance(err, TrackersUnavailable):
        code = grpc.StatusCode.UNAVAILABLE
    elif isinstance(err, (DiskFull, NoRoom)):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    elif isinstance(err, OutputExists):
        code = grpc.StatusCode.ALREADY_EXISTS
    else:
        code = grpc.StatusCode.FAILED_PRECONDITION
    await context.abort(code, str(err))
    raise AssertionError("unreachable")


def absolute(path: str, what: str) -> Path:
    """A path the caller sent, which must be absolute (the daemon's working directory is not the caller's)."""
    if not path or "\x00" in path or not Path(path).is_absolute():
        raise content.ContentError(f"{what} must be an absolute path, got {path[:200]!r}")
    return Path(path)


def outside(output: Path, data_dir: Path) -> None:
    """A download is never placed inside the data dir (it would overwrite the store's own files)."""
    real, root = Path(os.path.realpath(output)), Path(os.path.realpath(data_dir))
    if real == root or root in real.parents:
        raise content.ContentError(f"output {str(output)[:200]!r} is inside the data dir {str(data_dir)!r}")


async def require_caller(context: grpc.aio.ServicerContext, tickets: access.Tickets | None) -> access.Caller:
    """Who is calling; UNAUTHENTICATED without a valid caller ticket (tickets None: every caller is trusted)."""
    caller = access.caller_of(context, tickets)
    if caller is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid caller ticket (use the shoal CLI)")
    assert caller is not None
    return caller


async def require_access(context: grpc.aio.ServicerContext, caller: access.Caller, path: Path, mode: str) -> None:
    """PERMISSION_DENIED unless the caller may `mode` (read or write) the path."""
    try:
        await access.check_path(caller, path, mode)
    except access.Denied as err:
        logger.warning("control %s refused: %s", mode, err)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))
