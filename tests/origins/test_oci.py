"""OCI origins: a blob pushed to Debian's docker-registry, and the bearer-token dance against a token-guarded server."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from origins.servers import Registry, free_port, push_blob

from shoal.origins import OriginDenied, OriginNotFound, OriginOptions, RetryPolicy, parse_origin

pytestmark = pytest.mark.origins


async def test_a_pushed_blob_reads_byte_exact_by_range(registry: Registry) -> None:
    data = os.urandom(2 * 1024 * 1024 + 11)
    digest = await push_blob(registry, "models/llama", data)
    url = f"oci://{registry.host}/models/llama@{digest}"
    async with parse_origin(url) as origin:
        file = await origin.stat()
        assert (file.url, file.size, file.validator, file.digest) == (url, len(data), digest, digest)
        for offset, length in ((0, 4096), (1 << 20, 1 << 20), (len(data) - 11, 11)):
            assert await origin.read_range(offset, length, file.validator) == data[offset : offset + length]
    ranged = [line for line in registry.log.read_text().splitlines() if f'/blobs/{digest} HTTP/1.1" 206 ' in line]
    assert [int(line.split('" 206 ')[1].split()[0]) for line in ranged] == [4096, 1 << 20, 11]


async def test_an_unknown_blob_is_not_found_at_once(registry: Registry) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    url = f"oci://{registry.host}/models/llama@sha256:{'ab' * 32}"
    async with parse_origin(url, OriginOptions(retry=RetryPolicy(sleep=sleep))) as origin:
        with pytest.raises(OriginNotFound) as caught:
            await origin.stat()
    assert caught.value.status == 404 and slept == []


@dataclass
class TokenRegistry:
    """A registry that wants `Bearer <token>` issued by its realm, as Docker Hub and Harbor do."""

    host: str
    blob: bytes
    digest: str
    token: str = "tok-42"
    token_requests: list[dict[str, str]] = field(default_factory=list)
    denied_requests: int = 0
    issue: bool = True
    accepted: str = ""
    redirect: bool = False
    storage_auth: list[str] = field(default_factory=list)


@pytest.fixture
async def token_registry() -> AsyncIterator[TokenRegistry]:
    """A small aiohttp server on 127.0.0.1 with /token (the realm) and one token-guarded blob."""
    blob = os.urandom(10_000)
    state = TokenRegistry("", blob, "sha256:" + hashlib.sha256(blob).hexdigest())

    async def token(request: web.Request) -> web.Response:
        state.token_requests.append({**request.query, "auth": request.headers.get("Authorization", "")})
        if not state.issue:
            return web.json_response({"errors": [{"code": "DENIED"}]}, status=401)
        return web.json_response({"token": state.token})

    async def get_blob(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {state.accepted or state.token}":
            state.denied_requests += 1
            realm = f'Bearer realm="http://{state.host}/token",service="test-registry",scope="repository:team/app:pull"'
            return web.json_response({"errors": []}, status=401, headers={"WWW-Authenticate": realm})
        if state.redirect and request.method == "GET":
            # Like a registry on S3 or GCS: blobs come from storage on another host (localhost is not 127.0.0.1).
            location = f"http://localhost:{state.host.rpartition(':')[2]}/storage/{state.digest}"
            raise web.HTTPTemporaryRedirect(location)
        return serve(request)

    async def storage(request: web.Request) -> web.StreamResponse:
        state.storage_auth.append(request.headers.get("Authorization", ""))
        return serve(request)

    def serve(request: web.Request) -> web.StreamResponse:
        start, _, end = request.headers.get("Range", "bytes=0-").removeprefix("bytes=").partition("-")
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(blob)), "Docker-Content-Digest": state.digest})
        first, last = int(start), int(end or len(blob) - 1)
        headers = {"Content-Range": f"bytes {first}-{last}/{len(blob)}"}
        return web.Response(status=206, body=blob[first : last + 1], headers=headers)

    app = web.Application()
    app.router.add_get("/token", token)
    app.router.add_get(f"/v2/team/app/blobs/{state.digest}", get_blob)
    app.router.add_get(f"/storage/{state.digest}", storage)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        state.host = f"127.0.0.1:{port}"
        yield state
    finally:
        await runner.cleanup()


async def test_the_bearer_token_dance_is_done_once_and_anonymously(token_registry: TokenRegistry) -> None:
    reg = token_registry
    async with parse_origin(f"oci://{reg.host}/team/app@{reg.digest}") as origin:
        file = await origin.stat()
        assert file.size == len(reg.blob)
        assert await origin.read_range(100, 900, file.validator) == reg.blob[100:1000]
        assert await origin.read_range(0, 10, file.validator) == reg.blob[:10]
    assert reg.token_requests == [{"scope": "repository:team/app:pull", "service": "test-registry", "auth": ""}]
    assert reg.denied_requests == 1


async def test_credentials_go_to_the_realm_and_a_refused_token_is_denied(token_registry: TokenRegistry) -> None:
    reg = token_registry
    reg.issue = False
    options = OriginOptions(registry_credentials=("bob", "pw"))
    async with parse_origin(f"oci://{reg.host}/team/app@{reg.digest}", options) as origin:
        with pytest.raises(OriginDenied) as caught:
            await origin.stat()
    assert caught.value.status == 401
    assert [r["auth"] for r in reg.token_requests] == ["Basic Ym9iOnB3"]


async def test_a_token_that_still_does_not_open_the_blob_is_denied(token_registry: TokenRegistry) -> None:
    reg = token_registry
    reg.accepted = "a-token-the-realm-never-issues"
    async with parse_origin(f"oci://{reg.host}/team/app@{reg.digest}") as origin:
        with pytest.raises(OriginDenied) as caught:
            await origin.read_range(0, 10, reg.digest)
    assert caught.value.status == 401 and reg.denied_requests == 2 and len(reg.token_requests) == 1


async def test_a_blob_redirected_to_storage_keeps_the_token_home(token_registry: TokenRegistry) -> None:
    reg = token_registry
    reg.redirect = True
    async with parse_origin(f"oci://{reg.host}/team/app@{reg.digest}") as origin:
        assert await origin.read_range(5, 50, reg.digest) == reg.blob[5:55]
    assert reg.storage_auth == [""] and len(reg.token_requests) == 1
