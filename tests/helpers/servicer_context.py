"""A stand-in for grpc.aio.ServicerContext: what Shoal's servicers use of it, for calling handlers directly."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc


class Aborted(Exception):
    """What `FakeContext.abort` raises: the status a real context would send."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class FakeContext:
    """A plaintext caller on loopback (no certificate, no metadata). Done callbacks are kept, as gRPC keeps them
    after the call; whoever plays gRPC runs them when the call ends."""

    def __init__(self) -> None:
        self.done: list[Any] = []

    def add_done_callback(self, callback: Any) -> None:
        self.done.append(callback)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)
