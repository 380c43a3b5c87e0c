"""The client verbs that look after files already here: verify, rm, cancel, pin and unpin."""

from __future__ import annotations

import argparse
import logging

from shoal.cli import output
from shoal.cli.errors import EXIT_FAILURE, CliError
from shoal.cli.output import escape
from shoal.units import format_size
from shoal.v1 import control_pb2, control_pb2_grpc

logger = logging.getLogger(__name__)


async def verify(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    """Re-hash a held file; exit 1 when it no longer matches (the daemon has dropped it)."""
    reply = await stub.Verify(control_pb2.VerifyRequest(file_id=args.file_id))
    if args.json:
        output.print_json(reply)
    elif reply.ok:
        print(f"{reply.file.file_id}  {escape(reply.file.name)}  ok")
    if not reply.ok:
        raise CliError(
            f"{reply.file.file_id} is corrupt ({len(reply.bad_chunks)} bad chunks); dropped from this peer",
            EXIT_FAILURE,
        )
    return 0


async def rm(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    """Remove a file from this peer; exit 4 when it is not held."""
    reply = await stub.Remove(control_pb2.RemoveRequest(file_id=args.file_id))
    if args.json:
        output.print_json(reply)
    else:
        print(f"removed {escape(reply.file.name)} ({format_size(reply.freed_bytes)}) {reply.file.file_id}")
    return 0


async def cancel(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    """Stop a download and drop its partial data; exit 4 when no download of it is here."""
    reply = await stub.Cancel(control_pb2.CancelRequest(file_id=args.file_id))
    if args.json:
        output.print_json(reply)
    else:
        print(f"cancelled {escape(reply.file.name)}: {format_size(reply.freed_bytes)} of partial data dropped")
    return 0


async def _pin(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace, pinned: bool) -> int:
    reply = await stub.Pin(control_pb2.PinRequest(file_id=args.file_id, pinned=pinned))
    if args.json:
        output.print_json(reply)
    else:
        verb = "pinned (never evicted)" if pinned else "unpinned (evictable)"
        print(f"{verb}: {escape(reply.file.file.name)} {reply.file.file.file_id}")
    return 0


async def pin(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    """Keep a file from eviction; exit 4 when it is not held."""
    return await _pin(stub, args, True)


async def unpin(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    """Let the quota evict a file again; exit 4 when it is not held."""
    return await _pin(stub, args, False)
