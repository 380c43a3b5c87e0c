"""Plain HTTP(S) origins: size and validator from a one-byte ranged GET, then If-Range reads of the same version."""

from __future__ import annotations

import logging

from shoal.origins.base import Origin, OriginFile, OriginOptions, basic_auth, check_range, display_url
from shoal.origins.errors import OriginProtocolError
from shoal.origins.retry import with_retries
from shoal.origins.transport import HttpTransport, read_exact, status_error, strong_validator, total_size, wire_url

logger = logging.getLogger(__name__)


class HttpOrigin(Origin):
    """A file behind http:// or https://; userinfo in the URL becomes Basic auth, sent only to that host."""

    def __init__(self, url: str, options: OriginOptions) -> None:
        self.url = wire_url(url)
        self.scheme = self.url.scheme
        self.display_url = display_url(url)
        self.options = options
        self._transport = HttpTransport(options, self.display_url)
        self._private = dict(options.headers)
        if self.url.user is not None:
            self._private.setdefault("Authorization", basic_auth(self.url.user, self.url.password or ""))
            self.url = self.url.with_user(None)

    async def stat(self) -> OriginFile:
        """GET bytes=0-0 rather than HEAD: presigned URLs are often signed for GET only (as dfget does)."""
        return await with_retries(self._stat_once, self.options.retry, what=self.display_url)

    async def read_range(self, offset: int, length: int, validator: str) -> bytes:
        check_range(offset, length)

        async def once() -> bytes:
            public = {"Range": f"bytes={offset}-{offset + length - 1}"}
            if validator:
                public["If-Range"] = validator
            async with self._transport.send(
                "GET", self.url, private=self._private, public=public, what="read"
            ) as response:
                return await read_exact(response, offset, length, validator, self.display_url, "read")

        return await with_retries(once, self.options.retry, what=self.display_url)

    async def close(self) -> None:
        await self._transport.close()

    async def _stat_once(self) -> OriginFile:
        public = {"Range": "bytes=0-0"}
        async with self._transport.send("GET", self.url, private=self._private, public=public, what="stat") as response:
            if response.status not in (200, 206, 416):
                raise status_error(response.status, self.display_url, "stat")
            size = total_size(response, self.display_url)
            if response.status == 416 and size != 0:
                raise OriginProtocolError(self.display_url, "stat: range 0-0 refused on a non-empty file", 416)
            validator = strong_validator(response.headers)
        if not validator:
            logger.warning(
                "%s: no strong ETag or Last-Modified; a changed file is noticed only by its size", self.url.host
            )
        return OriginFile(self.display_url, size, validator, self.options.expected_digest)
