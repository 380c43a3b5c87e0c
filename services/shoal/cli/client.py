"""The client commands: each one talks to the local daemon's control API and prints what it answered."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

from shoal import content, net
from shoal.cli import output
from shoal.cli.channel import StreamCredentials, UnaryCredentials, caller_credentials, connect, unreachable
from shoal.cli.errors import EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_USAGE, CliError
from shoal.cli.manage import cancel, pin, rm, unpin, verify
from shoal.cli.output import escape
from shoal.units import format_size
from shoal.v1 import control_pb2, control_pb2_grpc

logger = logging.getLogger(__name__)

_CODES = {
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
}


async def run(args: argparse.Namespace) -> int:
    """Connect to the daemon named by --peer and run one command."""
    check_locally(args)
    if not args.peer:
        raise CliError("no daemon given: pass --peer ADDR or set SHOAL_PEER", EXIT_USAGE)
    credentials = caller_credentials(args)
    try:
        channel = grpc.aio.insecure_channel(
            args.peer,
            options=net.CHANNEL_OPTIONS,
            interceptors=[UnaryCredentials(credentials), StreamCredentials(credentials)],  # type: ignore[list-item]
        )
    except (ValueError, RuntimeError):
        raise unreachable(args.peer) from None
    async with channel:
        await connect(channel, args.peer)
        stub = control_pb2_grpc.ControlStub(channel)
        try:
            return await COMMANDS[args.command](stub, args)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CliError(f"the shoal daemon at {args.peer} did not answer in time", EXIT_UNREACHABLE) from None
            if err.code() == grpc.StatusCode.UNAUTHENTICATED and not args.peer.startswith("unix:"):
                raise CliError(
                    f"{err.details()} (pass --control-token-file or set SHOAL_CONTROL_TOKEN_FILE)", EXIT_FAILURE
                ) from None
            raise CliError(err.details() or err.code().name, _CODES.get(err.code(), EXIT_FAILURE)) from None


def _check_path_length(path: Path) -> None:
    """An over-long path or name is a usage error, said in one line (not an OSError from deep inside)."""
    if len(os.fsencode(path)) > 4095 or any(len(os.fsencode(part)) > 255 for part in path.parts):
        raise CliError(f"path too long: {escape(str(path))[:120]}...", EXIT_USAGE)


def check_locally(args: argparse.Namespace) -> None:
    """What can be wrong without asking the daemon (ids, paths) is reported before connecting."""
    if args.command in ("get", "peers", "preheat"):
        _origin_args(args)
    if args.command in ("verify", "rm", "cancel", "pin", "unpin"):
        args.file_id = _file_id(args.file_id)
    if args.command == "put":
        args.path = Path(args.path).expanduser().absolute()
        _check_path_length(args.path)
        if not args.path.exists():
            raise CliError(f"no such file: {args.path}", EXIT_NOT_FOUND)
        if not args.path.is_file():
            raise CliError(f"not a regular file: {args.path}", EXIT_USAGE)
    if args.command == "get":
        target = Path(args.output).expanduser().absolute()
        _check_path_length(target)
        args.into_dir = args.output.endswith(os.sep) or target.is_dir()
        if args.into_dir and not target.is_dir():
            raise CliError(f"output directory does not exist: {target}", EXIT_NOT_FOUND)
        if not args.into_dir:
            if not target.parent.is_dir():
                raise CliError(f"output directory does not exist: {target.parent}", EXIT_NOT_FOUND)
            _refuse_existing(target, args.overwrite)
        args.output = target


def _origin_args(args: argparse.Namespace) -> None:
    """An origin URL goes to args.url (with its --header lines read and checked); an id is checked."""
    from shoal.origins import InvalidHeader, is_origin_url, parse_headers

    args.url = ""
    if getattr(args, "replicas", 1) < 1:
        raise CliError("--replicas must be at least 1", EXIT_USAGE)
    for url in getattr(args, "urls", []):
        if not is_origin_url(url):
            raise CliError(f"not an http(s)://, s3:// or oci:// URL: {url[:200]}", EXIT_USAGE)
    if args.command != "preheat":
        if is_origin_url(args.file_id):
            args.url, args.file_id = args.file_id, ""
        else:
            args.file_id = _file_id(args.file_id)
    lines: list[str] = []
    for header in args.header:
        if header.startswith("@"):
            try:
                lines += Path(header[1:]).expanduser().read_text().splitlines()
            except OSError as err:
                raise CliError(f"cannot read headers from {header[1:]}: {err.strerror}", EXIT_USAGE) from None
        else:
            lines.append(header)
    try:
        parse_headers(lines)
    except InvalidHeader as err:
        raise CliError(f"bad --header: {err}", EXIT_USAGE) from None
    args.header_lines = lines
    digest = getattr(args, "digest", "")
    if digest and not (args.url and digest.startswith("sha256:") and len(digest) == 71):
        raise CliError("--digest takes sha256: and 64 hex digits, with a URL", EXIT_USAGE)


def _file_id(text: str) -> str:
    try:
        return content.parse_file_id(text)
    except content.ContentError as err:
        raise CliError(str(err), EXIT_USAGE) from None


def _refuse_existing(path: Path, overwrite: bool) -> None:
    """Never replace a file the user did not ask to replace (dfget refuses the same way)."""
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise CliError(f"output exists: {path} (pass --overwrite to replace it)", EXIT_FAILURE)


async def put(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    """Publish a local file; print its id last."""
    request = control_pb2.PutRequest(
        path=str(args.path), name=args.name or "", chunk_size=args.chunk_size, move=args.move, copy=args.copy
    )
    reply = await stub.Put(request)
    if args.json:
        output.print_json(reply)
    else:
        print(output.put_line(reply, args.name or args.path.name))
        print(reply.file.file_id)
    return 0


class _Watcher:
    """Shows a download's progress: a bar on a terminal, JSON lines with --json, nothing otherwise."""

    BAR_EVERY_MS = 0  # the daemon's default (200 ms): a smooth bar
    JSON_EVERY_MS = 1000  # a line a second is plenty for a script
    QUIET_EVERY_MS = 5000  # nothing is shown: the stream only has to stay alive

    def __init__(self, as_json: bool) -> None:
        self._json = as_json
        self._draw = not as_json and sys.stderr.isatty()
        self.bar: output.ProgressBar | None = None

    @property
    def every_ms(self) -> int:
        """How often this watcher wants progress (each message wakes the daemon and this process)."""
        if self._json:
            return self.JSON_EVERY_MS
        return self.BAR_EVERY_MS if self._draw else self.QUIET_EVERY_MS

    def show(self, progress: control_pb2.GetProgress) -> None:
        if self._json:
            output.print_json_line(output.plain(progress))
        elif self._draw and progress.total_bytes:
            if self.bar is None:
                self.bar = output.ProgressBar(
                    escape(progress.file.name) or progress.file.file_id[:12], progress.total_bytes
                )
            self.bar.update(progress.done_bytes)

    def close(self, final: control_pb2.GetProgress | None) -> None:
        if self.bar is not None:
            if final is not None:
                self.bar.update(final.done_bytes, force=True)
            self.bar.close()


def _named_output(directory: Path, name: str, overwrite: bool) -> Path:
    """DIR/<name> for `get -o DIR/`, once the manifest has told us the name."""
    if not name or name in (".", "..") or "/" in name or "\x00" in name or escape(name) != name:
        raise CliError(f"the file's name {name!r} cannot be a file name here; pass -o PATH", EXIT_FAILURE)
    path = directory / name
    _refuse_existing(path, overwrite)
    return path


async def get(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    """Download a file; with -o DIR/ the file keeps its published name inside DIR."""
    file_id, target, into_dir = args.file_id, args.output, args.into_dir
    # Into a directory, the name is known only from the manifest: the daemon picks DIR/<name> and refuses
    # an existing file there unless --overwrite.
    request = control_pb2.GetRequest(
        file_id=file_id,
        output="" if into_dir else str(target),
        output_dir=str(target) if into_dir else "",
        overwrite=args.overwrite,
    )
    if args.url:
        request.url, request.digest, request.s3_endpoint = args.url, args.digest.lower(), args.s3_endpoint
        request.headers.extend(args.header_lines)
    dest: Path | None = None if into_dir else target
    watcher = _Watcher(args.json)
    request.progress_every_ms = watcher.every_ms
    final = None
    call = stub.Get(request)
    try:
        async for progress in call:
            if progress.done:
                final = progress
                break
            if dest is None and progress.file.name:  # refuse early, before the whole file has come
                dest = _named_output(target, progress.file.name, args.overwrite)
            watcher.show(progress)
    finally:
        call.cancel()
        watcher.close(final)
    if final is None:
        raise CliError("download ended without a result")
    if into_dir and final.written_to:
        dest = Path(final.written_to)  # the daemon chose DIR/<name> and wrote it
    elif into_dir:  # an older daemon ignores output_dir: export with a second Get
        dest = dest or _named_output(target, final.file.name, args.overwrite)
        async for _ in stub.Get(control_pb2.GetRequest(file_id=final.file.file_id, output=str(dest))):
            pass
    if dest is None:
        raise CliError("download ended without a result")
    if args.json:
        output.print_json_line(output.summary_data(final, dest))
    else:
        print(output.summary_line(final, dest))
    return 0


async def search(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    """Files whose name contains the term; exit 4 when none does."""
    reply = await stub.Search(control_pb2.SearchRequest(term=args.term))
    if args.json:
        output.print_json(reply)
    else:
        for result in reply.results:
            holders = f"{result.complete_holders} complete, {result.partial_holders} partial"
            print(
                f"{result.file.file_id}  {format_size(result.file.size):>10}  {escape(result.file.name)}  ({holders})"
            )
    if not reply.results:
        raise CliError(f"no file matches {args.term!r}", EXIT_NOT_FOUND)
    return 0


async def peers(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    """Live peers holding a file; exit 4 when none does."""
    request = control_pb2.PeersRequest(file_id=args.file_id, url=args.url, s3_endpoint=args.s3_endpoint)
    request.headers.extend(args.header_lines)
    reply = await stub.Peers(request)
    if args.json:
        output.print_json(reply)
    else:
        for holder in reply.holders:
            zone = f" zone={holder.peer.zone}" if holder.peer.zone else ""
            state = "complete" if holder.complete else "partial"
            print(f"{escape(holder.peer.peer_id)}  {escape(holder.peer.address)}  {state}{escape(zone)}")
    if not reply.holders:
        raise CliError(f"no live peer holds {args.url or args.file_id}", EXIT_NOT_FOUND)
    return 0


async def preheat(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    """Import every URL into the swarm (once each, all at once) onto --replicas peers; one line per URL when held."""

    async def one(url: str) -> control_pb2.PreheatResponse:
        request = control_pb2.PreheatRequest(url=url, s3_endpoint=args.s3_endpoint, replicas=args.replicas)
        request.headers.extend(args.header_lines)
        reply: control_pb2.PreheatResponse = await stub.Preheat(request)
        return reply

    replies = await asyncio.gather(*(one(url) for url in args.urls))
    for url, reply in zip(args.urls, replies, strict=True):
        if args.json:
            output.print_json_line({"url": url, **output.plain(reply)})
        else:
            zones = sorted({p.zone for p in reply.peers if p.zone})
            where = f" in zones {','.join(zones)}" if zones else ""
            print(f"{reply.file.file_id}  {format_size(reply.file.size):>10}  {url}  ({len(reply.peers)} peers{where})")
    short = [url for url, reply in zip(args.urls, replies, strict=True) if len(reply.peers) < args.replicas]
    if short:
        raise CliError(f"fewer than {args.replicas} peers hold {', '.join(short)}")
    return 0


async def ls(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    """What this peer holds or is downloading."""
    reply = await stub.List(control_pb2.ListRequest())
    if args.json:
        output.print_json(reply)
        return 0
    for line in output.ls_lines(reply):
        print(line)
    return 0


async def status(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    """This peer's id, address, trackers and traffic."""
    reply = await stub.Status(control_pb2.StatusRequest(), timeout=5)
    if args.json:
        output.print_json(reply)
        return 0
    print(f"peer      {reply.peer.peer_id}")
    print(f"address   {reply.peer.address}" + (f" (zone {reply.peer.zone})" if reply.peer.zone else ""))
    print(f"trackers  {', '.join(reply.trackers) or '-'} (up: {', '.join(reply.trackers_up) or 'none'})")
    print(f"uploaded  {format_size(reply.uploaded_bytes)}")
    print(f"download  {format_size(reply.downloaded_bytes)}")
    print(f"active    {reply.active_downloads} downloads")
    print(f"data dir  {reply.data_dir}")
    quota = format_size(reply.cache_quota_bytes) if reply.cache_quota_bytes else "no limit"
    print(f"store     {format_size(reply.store_bytes)} held (quota {quota})")
    return 0


COMMANDS: dict[str, Callable[[control_pb2_grpc.ControlStub, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "put": put,
    "get": get,
    "search": search,
    "peers": peers,
    "ls": ls,
    "preheat": preheat,
    "status": status,
    "verify": verify,
    "rm": rm,
    "cancel": cancel,
    "pin": pin,
    "unpin": unpin,
}
