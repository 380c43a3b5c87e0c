"""The `shoal` command: servers (tracker, peer), client commands over the control API, and demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from shoal import config, content, net
from shoal.memory import keep_large_buffers
from shoal.v1 import control_pb2, control_pb2_grpc

logger = logging.getLogger(__name__)

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4

_CODES = {
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
}


class CliError(Exception):
    """A failure to report as one line on stderr with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _env_int(name: str, default: int) -> int:
    value = config.env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise CliError(f"SHOAL_{name} must be an integer, got {value!r}", EXIT_USAGE) from None


def _env_opt_int(name: str) -> int | None:
    value = config.env(name)
    return None if value is None else _env_int(name, 0)


def _env_float(name: str, default: float | None) -> float | None:
    value = config.env(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise CliError(f"SHOAL_{name} must be a number, got {value!r}", EXIT_USAGE) from None


def _default_peer() -> str | None:
    peer = config.env("PEER")
    if peer:
        return peer
    data_dir = config.env("DATA_DIR")
    return f"unix:{Path(data_dir).resolve() / 'control.sock'}" if data_dir else None


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag; each flag's default comes from its SHOAL_* env var."""
    parser = argparse.ArgumentParser(prog="shoal", description="Peer-to-peer file distribution over gRPC.")
    parser.add_argument("--peer", default=_default_peer(), help="local daemon's control address (SHOAL_PEER)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--log-level", default=config.env("LOG_LEVEL", "INFO"), help="(SHOAL_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--peer", default=argparse.SUPPRESS, help="local daemon's control address (SHOAL_PEER)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")

    tracker = sub.add_parser("tracker", help="run a tracker")
    tracker.add_argument("--listen", default=config.env("LISTEN", "0.0.0.0:7400"), help="(SHOAL_LISTEN)")
    tracker.add_argument(
        "--announce-interval",
        type=float,
        default=_env_float("ANNOUNCE_INTERVAL", config.DEFAULT_ANNOUNCE_INTERVAL),
        help="seconds between a peer's announces (SHOAL_ANNOUNCE_INTERVAL, default 3)",
    )
    tracker.add_argument(
        "--peer-ttl",
        type=float,
        default=_env_float("PEER_TTL", None),
        help="forget a peer after this many seconds without an announce (SHOAL_PEER_TTL, default 3 intervals)",
    )
    tracker.add_argument("--metrics-port", type=int, default=_env_opt_int("METRICS_PORT"), help="(SHOAL_METRICS_PORT)")

    peer = sub.add_parser("peer", help="run a peer daemon")
    peer.add_argument(
        "--listen", default=config.env("LISTEN", "0.0.0.0:7401"), help="peer-facing address (SHOAL_LISTEN)"
    )
    peer.add_argument("--tracker", default=config.env("TRACKER"), help="ADDR[,ADDR...] of the trackers (SHOAL_TRACKER)")
    peer.add_argument("--data-dir", default=config.env("DATA_DIR"), help="where files live (SHOAL_DATA_DIR)")
    peer.add_argument("--advertise", default=config.env("ADVERTISE"), help="HOST:PORT others dial (SHOAL_ADVERTISE)")
    peer.add_argument("--control", default=config.env("CONTROL"), help="unix:PATH or 127.0.0.1:PORT (SHOAL_CONTROL)")
    peer.add_argument("--zone", default=config.env("ZONE", ""), help="topology zone (SHOAL_ZONE)")
    peer.add_argument(
        "--chunk-size",
        type=int,
        default=_env_int("CHUNK_SIZE", config.DEFAULT_CHUNK_SIZE),
        help="(SHOAL_CHUNK_SIZE)",
    )
    peer.add_argument(
        "--upload-limit", type=int, default=_env_int("UPLOAD_LIMIT", 0), help="bytes/s (SHOAL_UPLOAD_LIMIT)"
    )
    peer.add_argument(
        "--download-limit",
        type=int,
        default=_env_int("DOWNLOAD_LIMIT", 0),
        help="bytes/s (SHOAL_DOWNLOAD_LIMIT)",
    )
    peer.add_argument(
        "--upload-slots",
        type=int,
        default=_env_int("UPLOAD_SLOTS", config.DEFAULT_UPLOAD_SLOTS),
        help="(SHOAL_UPLOAD_SLOTS)",
    )
    peer.add_argument(
        "--max-peers",
        type=int,
        default=_env_int("MAX_PEERS", config.DEFAULT_MAX_PEERS_PER_DOWNLOAD),
        help="(SHOAL_MAX_PEERS)",
    )
    peer.add_argument(
        "--requests-per-peer",
        type=int,
        default=_env_int("REQUESTS_PER_PEER", config.DEFAULT_REQUESTS_PER_PEER),
        help="(SHOAL_REQUESTS_PER_PEER)",
    )
    peer.add_argument("--metrics-port", type=int, default=_env_opt_int("METRICS_PORT"), help="(SHOAL_METRICS_PORT)")

    put = sub.add_parser("put", parents=[common], help="publish a file; prints its id last")
    put.add_argument("path")
    put.add_argument("--name", default=None)
    put.add_argument("--chunk-size", type=int, default=0)
    get = sub.add_parser("get", parents=[common], help="download a file by id")
    get.add_argument("file_id", metavar="ID")
    get.add_argument("--output", "-o", required=True)
    search = sub.add_parser("search", parents=[common], help="find files by name")
    search.add_argument("term")
    peers = sub.add_parser("peers", parents=[common], help="live peers holding a file")
    peers.add_argument("file_id", metavar="ID")
    sub.add_parser("ls", parents=[common], help="what this peer holds")
    sub.add_parser("status", parents=[common], help="this peer's id, address, trackers and bytes up/down")

    demo = sub.add_parser("demo", help="run a local swarm of real processes and check every copy")
    demo.add_argument("--peers", type=int, default=_env_int("DEMO_PEERS", 6), help="leechers (SHOAL_DEMO_PEERS)")
    demo.add_argument(
        "--size", type=int, default=_env_int("DEMO_SIZE", 64 * 1024 * 1024), help="bytes (SHOAL_DEMO_SIZE)"
    )
    demo.add_argument("--metrics", action="store_true", help="leave the swarm running with metrics ports printed")
    demo.add_argument("--workdir", default=None, help="keep files here instead of a temp dir")
    return parser


def plain(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data with integers kept as numbers and bytes as hex."""
    data: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        repeated = field.is_repeated

        def one(item: Any, field: Any = field) -> Any:
            if field.message_type is not None:
                return plain(item)
            if field.type == field.TYPE_BYTES:
                return bytes(item).hex()
            return item

        data[field.name] = [one(v) for v in value] if repeated else one(value)
    return data


def _print_json(message: Message | dict[str, Any]) -> None:
    data = plain(message) if isinstance(message, Message) else message
    print(json.dumps(data, indent=2, sort_keys=True))


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


async def _client(args: argparse.Namespace) -> int:
    if not args.peer:
        raise CliError("no daemon given: pass --peer ADDR or set SHOAL_PEER", EXIT_USAGE)
    async with grpc.aio.insecure_channel(args.peer, options=net.CHANNEL_OPTIONS) as channel:
        stub = control_pb2_grpc.ControlStub(channel)
        try:
            return await _COMMANDS[args.command](stub, args)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE and "connect" in (err.debug_error_string() or "").lower():
                raise CliError(
                    f"cannot reach the shoal daemon at {args.peer} (is `shoal peer` running?)",
                    EXIT_UNREACHABLE,
                ) from None
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CliError(f"the shoal daemon at {args.peer} did not answer in time", EXIT_UNREACHABLE) from None
            raise CliError(err.details() or err.code().name, _CODES.get(err.code(), EXIT_FAILURE)) from None


async def _put(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    path = Path(args.path).expanduser().absolute()
    if not path.exists():
        raise CliError(f"no such file: {args.path}", EXIT_NOT_FOUND)
    if not path.is_file():
        raise CliError(f"not a regular file: {args.path}", EXIT_USAGE)
    reply = await stub.Put(control_pb2.PutRequest(path=str(path), name=args.name or "", chunk_size=args.chunk_size))
    if args.json:
        _print_json(reply)
    else:
        print(f"published {reply.file.name} ({_human(reply.file.size)}, {reply.chunks} chunks)")
        print(reply.file.file_id)
    return 0


async def _get(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    file_id = _file_id(args.file_id)
    output = Path(args.output).expanduser().absolute()
    if not output.parent.is_dir():
        raise CliError(f"output directory does not exist: {output.parent}", EXIT_NOT_FOUND)
    bar = None
    final = None
    show_bar = sys.stdout.isatty() and not args.json
    async for progress in stub.Get(control_pb2.GetRequest(file_id=file_id, output=str(output))):
        if show_bar and bar is None and progress.total_bytes:
            from tqdm import tqdm

            bar = tqdm(
                total=progress.total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=progress.file.name,
            )
        if bar is not None:
            bar.update(progress.done_bytes - bar.n)
        if progress.done:
            final = progress
    if bar is not None:
        bar.close()
    if final is None:
        raise CliError("download ended without a result")
    sources = final.sources
    if args.json:
        data = plain(final)
        data["output"] = str(output)
        _print_json(data)
        return 0
    received = sources.from_complete_bytes + sources.from_partial_bytes
    share = 100.0 * sources.from_partial_bytes / received if received else 0.0
    rate = final.total_bytes / final.seconds / 1e6 if final.seconds > 0 else 0.0
    resumed = f", {sources.resumed_chunks} chunks resumed from disk" if sources.resumed_chunks else ""
    print(
        f"{output}: received {_human(received)} from {sources.peers} peers in {final.seconds:.2f}s "
        f"({rate:.1f} MB/s); {share:.0f}% from peers still downloading{resumed}"
    )
    return 0


async def _search(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    reply = await stub.Search(control_pb2.SearchRequest(term=args.term))
    if args.json:
        _print_json(reply)
        return 0
    for result in reply.results:
        holders = f"{result.complete_holders} complete, {result.partial_holders} partial"
        print(f"{result.file.file_id}  {_human(result.file.size):>10}  {result.file.name}  ({holders})")
    if not reply.results:
        print(f"no file matches {args.term!r}", file=sys.stderr)
    return 0


async def _peers(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    reply = await stub.Peers(control_pb2.PeersRequest(file_id=_file_id(args.file_id)))
    if args.json:
        _print_json(reply)
        return 0
    for holder in reply.holders:
        zone = f" zone={holder.peer.zone}" if holder.peer.zone else ""
        state = "complete" if holder.complete else "partial"
        print(f"{holder.peer.peer_id}  {holder.peer.address}  {state}{zone}")
    if not reply.holders:
        raise CliError(f"no live peer holds {args.file_id}", EXIT_NOT_FOUND)
    return 0


async def _ls(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    reply = await stub.List(control_pb2.ListRequest())
    if args.json:
        _print_json(reply)
        return 0
    for local in reply.files:
        state = "complete" if local.complete else f"{local.chunks_done}/{local.chunks_total} chunks"
        print(f"{local.file.file_id}  {_human(local.file.size):>10}  {local.file.name}  {state}")
    return 0


async def _status(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    reply = await stub.Status(control_pb2.StatusRequest(), timeout=5)
    if args.json:
        _print_json(reply)
        return 0
    print(f"peer      {reply.peer.peer_id}")
    print(f"address   {reply.peer.address}" + (f" (zone {reply.peer.zone})" if reply.peer.zone else ""))
    print(f"trackers  {', '.join(reply.trackers) or '-'} (up: {', '.join(reply.trackers_up) or 'none'})")
    print(f"uploaded  {_human(reply.uploaded_bytes)}")
    print(f"download  {_human(reply.downloaded_bytes)}")
    print(f"active    {reply.active_downloads} downloads")
    print(f"data dir  {reply.data_dir}")
    return 0


def _file_id(text: str) -> str:
    try:
        return content.parse_file_id(text)
    except content.ContentError as err:
        raise CliError(str(err), EXIT_USAGE) from None


_COMMANDS: dict[str, Callable[[control_pb2_grpc.ControlStub, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "put": _put,
    "get": _get,
    "search": _search,
    "peers": _peers,
    "ls": _ls,
    "status": _status,
}


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _run_server(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    if args.command == "tracker":
        from shoal.tracker.server import run_tracker

        try:
            net.split_host_port(args.listen)
        except ValueError as err:
            raise CliError(str(err), EXIT_USAGE) from None
        cfg = config.TrackerConfig(
            listen=args.listen,
            announce_interval=args.announce_interval,
            peer_ttl=args.peer_ttl,
            metrics_port=int(args.metrics_port) if args.metrics_port is not None else None,
        )
        if cfg.announce_interval <= 0 or cfg.ttl <= 0:
            raise CliError("--announce-interval and --peer-ttl must be positive", EXIT_USAGE)
        asyncio.run(run_tracker(cfg))
        return 0
    from shoal.peer.daemon import run_peer

    if not args.tracker:
        raise CliError("--tracker ADDR[,ADDR...] (or SHOAL_TRACKER) is required", EXIT_USAGE)
    if not args.data_dir:
        raise CliError("--data-dir (or SHOAL_DATA_DIR) is required", EXIT_USAGE)
    trackers = tuple(t.strip() for t in args.tracker.split(",") if t.strip())
    try:
        for address in (args.listen, *trackers):
            net.split_host_port(address)
        content.check_chunk_size(args.chunk_size)
    except ValueError as err:
        raise CliError(str(err), EXIT_USAGE) from None
    for flag in ("upload_limit", "download_limit"):
        if getattr(args, flag) < 0:
            raise CliError(f"--{flag.replace('_', '-')} must not be negative", EXIT_USAGE)
    for flag in ("upload_slots", "max_peers", "requests_per_peer"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be at least 1", EXIT_USAGE)
    peer_cfg = config.PeerConfig(
        listen=args.listen,
        trackers=trackers,
        data_dir=Path(args.data_dir).expanduser().absolute(),
        advertise=args.advertise,
        control=args.control,
        zone=args.zone,
        chunk_size=args.chunk_size,
        upload_limit=args.upload_limit,
        download_limit=args.download_limit,
        upload_slots=args.upload_slots,
        max_peers=args.max_peers,
        requests_per_peer=args.requests_per_peer,
        metrics_port=int(args.metrics_port) if args.metrics_port is not None else None,
    )
    if not keep_large_buffers():
        logging.getLogger(__name__).info("malloc not tuned (not glibc): chunk buffers are mapped afresh")
    asyncio.run(run_peer(peer_cfg))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `shoal` console script."""
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("tracker", "peer"):
            return _run_server(args)
        if args.command == "demo":
            from shoal.demo import run_demo

            _setup_logging("WARNING")
            return run_demo(args)
        return asyncio.run(_client(args))
    except CliError as err:
        print(f"shoal: {err}", file=sys.stderr)
        return err.code
    except OSError as err:
        print(f"shoal: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("shoal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
