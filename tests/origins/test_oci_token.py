"""The bearer-token dance against Debian's docker-registry in token-auth mode, with the test as its token realm."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from origins.servers import (
    REGISTRY,
    TOKEN_REGISTRY_CONF,
    Process,
    Registry,
    free_port,
    push_blob,
    start,
)
from origins.tokens import ISSUER, SERVICE, TokenIssuer

from shoal.origins import OriginDenied, OriginOptions, parse_origin
from shoal.origins.base import basic_auth

pytestmark = pytest.mark.origins


@dataclass
class Guarded:
    """A registry that accepts only tokens from our realm; the realm may want Basic credentials first."""

    registry: Registry
    issuer: TokenIssuer
    requests: list[dict[str, str]] = field(default_factory=list)
    credentials: tuple[str, str] | None = None


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Guarded]:
    """docker-registry with `auth: token` and an aiohttp token realm on loopback; both stopped afterwards."""
    issuer = TokenIssuer()
    issuer.write_bundle(tmp_path / "bundle.pem")
    realm_port, port = free_port(), free_port()
    state = Guarded(Registry(f"127.0.0.1:{port}", tmp_path / "registry.log"), issuer)

    async def token(request: web.Request) -> web.Response:
        state.requests.append({**request.query, "auth": request.headers.get("Authorization", "")})
        if state.credentials and request.headers.get("Authorization") != basic_auth(*state.credentials):
            return web.json_response({"details": "bad credentials"}, status=401)
        scope = request.query.get("scope", "")
        return web.json_response({"token": issuer.mint([scope] if scope else [])})

    app = web.Application()
    app.router.add_get("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", realm_port).start()
    conf = TOKEN_REGISTRY_CONF.format(
        root=tmp_path / "data",
        port=port,
        realm_port=realm_port,
        service=SERVICE,
        issuer=ISSUER,
        bundle=tmp_path / "bundle.pem",
    )
    (tmp_path / "config.yml").write_text(conf)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    argv = [REGISTRY, "serve", str(tmp_path / "config.yml")]
    process: Process | None = None
    try:
        process = await asyncio.to_thread(start, argv, state.registry.log, port, "docker-registry", env)
        yield state
    finally:
        if process is not None:
            await asyncio.to_thread(process.stop)
        await runner.cleanup()


async def test_an_anonymous_pull_token_opens_a_guarded_blob(guarded: Guarded) -> None:
    data = os.urandom(300_000)
    token = guarded.issuer.mint(["repository:team/model:push,pull"])
    digest = await push_blob(guarded.registry, "team/model", data, token)
    async with parse_origin(f"oci://{guarded.registry.host}/team/model@{digest}") as origin:
        file = await origin.stat()
        assert file.size == len(data)
        assert await origin.read_range(1000, 200_000, digest) == data[1000:201_000]
        assert await origin.read_range(0, 10, digest) == data[:10]
    assert guarded.requests == [{"scope": "repository:team/model:pull", "service": SERVICE, "auth": ""}]
    log = guarded.registry.log.read_text()
    assert f'"HEAD /v2/team/model/blobs/{digest} HTTP/1.1" 401 ' in log
    assert f'"GET /v2/team/model/blobs/{digest} HTTP/1.1" 206 200000 ' in log


async def test_a_realm_that_wants_credentials(guarded: Guarded) -> None:
    token = guarded.issuer.mint(["repository:team/model:push,pull"])
    digest = await push_blob(guarded.registry, "team/model", b"secret weights", token)
    guarded.credentials = ("alice", "pw")
    url = f"oci://{guarded.registry.host}/team/model@{digest}"
    async with parse_origin(url) as origin:
        with pytest.raises(OriginDenied) as caught:
            await origin.stat()
    assert caught.value.status == 401
    async with parse_origin(url, OriginOptions(registry_credentials=("alice", "pw"))) as origin:
        assert await origin.read_range(0, 6, digest) == b"secret"
    assert [r["auth"] for r in guarded.requests] == ["", basic_auth("alice", "pw")]
