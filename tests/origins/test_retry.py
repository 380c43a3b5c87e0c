"""Retries against real loopback servers that fail: 5xx twice then success, resets and refusals until attempts end."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from origins.servers import free_port

from shoal.origins import OriginOptions, OriginProtocolError, OriginUnavailable, RetryPolicy, parse_origin
from shoal.origins.retry import with_retries

pytestmark = pytest.mark.origins


class Recorder:
    """An injected sleep that records each pause and returns at once."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)


def policy(recorder: Recorder, attempts: int = 5) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, base=0.25, cap=1.0, sleep=recorder, rand=lambda: 1.0)


@pytest.fixture
async def flaky(tmp_path: Path) -> AsyncIterator[tuple[str, list[int], bytes]]:
    """An aiohttp file server whose first two answers to each path are 503; yields (base URL, statuses, data)."""
    data = os.urandom(64 * 1024)
    (tmp_path / "file.bin").write_bytes(data)
    statuses: list[int] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        if len(statuses) % 3 < 2:
            statuses.append(503)
            return web.Response(status=503, text="busy")
        statuses.append(200)
        return web.FileResponse(tmp_path / "file.bin")

    app = web.Application()
    app.router.add_get("/file.bin", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", statuses, data
    finally:
        await runner.cleanup()


async def test_5xx_twice_then_success_backs_off_exponentially(flaky: tuple[str, list[int], bytes]) -> None:
    base, statuses, data = flaky
    slept = Recorder()
    async with parse_origin(f"{base}/file.bin", OriginOptions(retry=policy(slept))) as origin:
        file = await origin.stat()
        assert await origin.read_range(1000, 5000, file.validator) == data[1000:6000]
    assert statuses == [503, 503, 200, 503, 503, 200]
    assert slept.pauses == [0.25, 0.5, 0.25, 0.5]


async def test_resets_are_retried_until_the_attempts_run_out() -> None:
    connections = 0

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()  # RST mid-request, as a dying load balancer does

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    slept = Recorder()
    try:
        async with parse_origin(f"http://127.0.0.1:{port}/f", OriginOptions(retry=policy(slept, 4))) as origin:
            with pytest.raises(OriginUnavailable) as caught:
                await origin.stat()
    finally:
        server.close()
        await server.wait_closed()
    # aiohttp itself may retry an idempotent request once on a fresh connection; our attempts are the pauses.
    assert connections in (4, 8) and slept.pauses == [0.25, 0.5, 1.0]
    assert "connection failed" in str(caught.value)


async def test_timeouts_are_retried_too() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(5)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    slept = Recorder()
    options = OriginOptions(retry=policy(slept, 2), read_timeout=0.2)
    try:
        async with parse_origin(f"http://127.0.0.1:{port}/f", options) as origin:
            with pytest.raises(OriginUnavailable):
                await origin.stat()
    finally:
        server.close()
    assert slept.pauses == [0.25]


async def test_refused_connections_end_after_the_attempts() -> None:
    slept = Recorder()
    async with parse_origin(f"http://127.0.0.1:{free_port()}/f", OriginOptions(retry=policy(slept, 3))) as origin:
        with pytest.raises(OriginUnavailable):
            await origin.read_range(0, 10, "")
    assert len(slept.pauses) == 2


async def test_only_transient_errors_are_retried() -> None:
    calls = 0
    slept = Recorder()

    async def broken() -> int:
        nonlocal calls
        calls += 1
        raise OriginProtocolError("http://x/", "odd", 400)

    with pytest.raises(OriginProtocolError):
        await with_retries(broken, policy(slept), what="x")
    assert calls == 1 and slept.pauses == []


def test_full_jitter_stays_within_the_capped_exponential() -> None:
    draws = iter([0.0, 0.5, 1.0, 1.0, 1.0])
    retry = RetryPolicy(base=0.5, cap=3.0, rand=lambda: next(draws))
    assert [retry.delay(n) for n in range(5)] == [0.0, 0.5, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
