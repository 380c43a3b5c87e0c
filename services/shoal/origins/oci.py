"""OCI registry blobs (distribution spec): HEAD then ranged GETs, with the registry's bearer-token dance."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from yarl import URL

from shoal.origins.base import Origin, OriginFile, OriginOptions, basic_auth, check_range
from shoal.origins.errors import OriginDenied, OriginProtocolError
from shoal.origins.retry import with_retries
from shoal.origins.transport import HttpTransport, read_exact, status_error

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Docker Hub's names, as `docker pull` resolves them.
DOCKER_HUB = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_API = "registry-1.docker.io"
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split 'Bearer realm="…",service="…",scope="…"' into ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_RE.findall(rest))


class OciOrigin(Origin):
    """One blob, oci://registry/repository@sha256:HEX; content-addressed, so the digest is the validator."""

    scheme = "oci"

    def __init__(self, registry: str, repository: str, digest: str, options: OriginOptions) -> None:
        self.registry = registry
        self.repository = repository
        self.digest = digest
        self.display_url = f"oci://{registry}/{repository}@{digest}"
        self.options = options
        host = registry.lower()
        if host in DOCKER_HUB:
            host, repository = DOCKER_HUB_API, repository if "/" in repository else f"library/{repository}"
        plain = registry in options.insecure_registries or host.rsplit(":", 1)[0] in LOOPBACK or host in LOOPBACK
        self.blob_url = URL(f"{'http' if plain else 'https'}://{host}/v2/{repository}/blobs/{digest}")
        self.scope = f"repository:{repository}:pull"
        self._transport = HttpTransport(options, self.display_url)
        self._auth: dict[str, str] = {}

    async def stat(self) -> OriginFile:
        async def head(response: aiohttp.ClientResponse) -> OriginFile:
            if response.status != 200:
                raise status_error(response.status, self.display_url, "stat")
            if response.content_length is None:
                raise OriginProtocolError(self.display_url, "stat: the registry did not tell the size", 200)
            served = response.headers.get("Docker-Content-Digest", "")
            if served and served != self.digest:
                raise OriginProtocolError(self.display_url, f"stat: the registry serves {served} for this digest")
            return OriginFile(self.display_url, response.content_length, self.digest, self.digest)

        return await with_retries(
            lambda: self._exchange("HEAD", {}, "stat", head), self.options.retry, what=self.display_url
        )

    async def read_range(self, offset: int, length: int, validator: str) -> bytes:
        """No If-Range: the digest names one content forever; the whole blob is checked against it downstream."""
        check_range(offset, length)
        if validator and validator != self.digest:
            raise OriginProtocolError(self.display_url, f"read: validator {validator} is not this blob's digest")
        public = {"Range": f"bytes={offset}-{offset + length - 1}"}

        async def body(response: aiohttp.ClientResponse) -> bytes:
            return await read_exact(response, offset, length, "", self.display_url, "read")

        return await with_retries(
            lambda: self._exchange("GET", public, "read", body), self.options.retry, what=self.display_url
        )

    async def close(self) -> None:
        await self._transport.close()

    async def _exchange(
        self, method: str, public: dict[str, str], what: str, handle: Callable[[aiohttp.ClientResponse], Awaitable[T]]
    ) -> T:
        """One request to the blob; a 401 is answered once (a missing or expired token), a second 401 is final."""
        for attempt in range(2):
            async with self._transport.send(
                method, self.blob_url, private=self._auth, public=public, what=what
            ) as reply:
                if reply.status != 401:
                    return await handle(reply)
                challenge = reply.headers.get("WWW-Authenticate", "")
            if attempt == 1:
                raise OriginDenied(self.display_url, f"{what}: access denied after authenticating", 401)
            await self._authenticate(challenge)
        raise AssertionError("unreachable")

    async def _authenticate(self, challenge: str) -> None:
        """Answer a 401: Bearer -> a token from the realm; Basic -> our credentials; else OriginDenied."""
        scheme, params = parse_challenge(challenge)
        credentials = self.options.registry_credentials
        basic = basic_auth(*credentials) if credentials else None
        if scheme == "basic" and basic:
            self._auth = {"Authorization": basic}
        elif scheme == "bearer" and "realm" in params:
            self._auth = {"Authorization": f"Bearer {await self._fetch_token(params, basic)}"}
        else:
            raise OriginDenied(self.display_url, "the registry wants credentials we do not have", 401)

    async def _fetch_token(self, params: dict[str, str], basic: str | None) -> str:
        """GET realm?service=…&scope=… (Docker token spec); anonymous unless we hold credentials."""
        query = {"scope": params.get("scope", self.scope)}
        if "service" in params:
            query["service"] = params["service"]
        realm = URL(params["realm"]).update_query(query)
        private = {"Authorization": basic} if basic else {}
        async with self._transport.send("GET", realm, private=private, public={}, what="token") as response:
            if response.status in (400, 401):
                raise OriginDenied(self.display_url, "token: refused", response.status)
            if response.status != 200:
                raise status_error(response.status, self.display_url, "token")
            body = await response.json(content_type=None)
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise OriginProtocolError(self.display_url, "token: the token server sent no token")
        logger.debug("%s: bearer token obtained for %s", self.display_url, query["scope"])
        return token
