"""How fast can Python gRPC move 1 MiB messages on loopback at all? The ceiling under bench/pair.py.

A server process answers GetChunk with one fixed 1 MiB payload (no disk, no hashing); a client
process fetches --size bytes with --inflight requests in flight, over Shoal's channel options.
Prints MB/s (1 MB = 1e6 bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import time

import grpc

from shoal import net
from shoal.v1 import peer_pb2, peer_pb2_grpc

MiB = 1024 * 1024


class _Fixed(peer_pb2_grpc.PeerServicer):
    def __init__(self, payload: bytes) -> None:
        self._reply = peer_pb2.GetChunkResponse(data=payload, source_complete=True)

    async def GetChunk(
        self, request: peer_pb2.GetChunkRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.GetChunkResponse:
        return self._reply


async def _serve(port: int, chunk: int) -> None:
    server = grpc.aio.server(options=net.SERVER_OPTIONS)
    peer_pb2_grpc.add_PeerServicer_to_server(_Fixed(os.urandom(chunk)), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _server_main(port: int, chunk: int) -> None:
    asyncio.run(_serve(port, chunk))


async def _fetch(port: int, total: int, chunk: int, inflight: int) -> float:
    async with net.open_channel(f"127.0.0.1:{port}") as channel:
        await channel.channel_ready()
        stub = peer_pb2_grpc.PeerStub(channel)
        limit = asyncio.Semaphore(inflight)

        async def one(index: int) -> int:
            async with limit:
                reply = await stub.GetChunk(peer_pb2.GetChunkRequest(file_id="x", index=index), timeout=30)
                return len(reply.data)

        started = time.perf_counter()
        got = sum(await asyncio.gather(*(one(i) for i in range(total // chunk))))
        return got / (time.perf_counter() - started) / 1e6


def main() -> None:
    """Run the server in a child process and print the client's throughput per run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024 * MiB, help="bytes per run (default 1 GiB)")
    parser.add_argument("--chunk", type=int, default=MiB, help="message payload bytes (default 1 MiB)")
    parser.add_argument("--inflight", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = multiprocessing.Process(target=_server_main, args=(port, args.chunk), daemon=True)
    server.start()
    try:
        for run in range(1, args.runs + 1):
            rate = asyncio.run(_fetch(port, args.size, args.chunk, args.inflight))
            print(
                f"grpc ceiling run {run}: {rate:.0f} MB/s "
                f"({args.chunk // 1024} KiB messages, {args.inflight} in flight)"
            )
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()
