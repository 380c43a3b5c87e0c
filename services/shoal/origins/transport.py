"""HTTP plumbing shared by HTTP(S) and OCI origins: redirects that keep secrets home, status mapping, exact ranges."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from shoal.origins.base import OriginOptions
from shoal.origins.errors import (
    OriginChanged,
    OriginDenied,
    OriginError,
    OriginNotFound,
    OriginProtocolError,
    OriginUnavailable,
)

logger = logging.getLogger(__name__)

REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE_RE = re.compile(r"^bytes \*/(\d+)$")
# Transport failures worth another attempt: resets, refused connections, truncated bodies, timeouts.
TRANSIENT = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, ConnectionError)


def wire_url(text: str) -> URL:
    """The URL as given when it is already encoded (presigned signatures are byte-sensitive), else quoted."""
    return URL(text, encoded=all(32 < ord(c) < 127 for c in text))


def same_origin(a: URL, b: URL) -> bool:
    """RFC 6454 origin: scheme, host and port; credentials go only where they were meant to."""
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def status_error(status: int, url: str, what: str) -> OriginError:
    """Map a non-success status to its typed error once, for every HTTP-speaking origin."""
    if status in (404, 410):
        return OriginNotFound(url, f"{what}: not found", status)
    if status in (401, 403):
        return OriginDenied(url, f"{what}: access denied", status)
    if status in (408, 425, 429) or status >= 500:
        return OriginUnavailable(url, f"{what}: origin unavailable", status)
    if status == 412:
        return OriginChanged(url, f"{what}: the file changed at the origin", status)
    return OriginProtocolError(url, f"{what}: unexpected answer", status)


def strong_validator(headers: CIMultiDictProxy[str]) -> str:
    """A strong ETag, else Last-Modified, else "" (weak ETags cannot guard a Range request, RFC 9110 13.1.5)."""
    etag = headers.get("ETag", "")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified", "")


def total_size(response: aiohttp.ClientResponse, url: str) -> int:
    """The full size of the file from a 206/416 Content-Range or a 200 Content-Length."""
    header = response.headers.get("Content-Range", "")
    if response.status == 206:
        match = _CONTENT_RANGE_RE.match(header)
        if match and match.group(3) != "*":
            return int(match.group(3))
    elif response.status == 416:
        match = _UNSATISFIED_RANGE_RE.match(header)
        if match:
            return int(match.group(1))
    elif response.status == 200 and response.content_length is not None:
        return response.content_length
    raise OriginProtocolError(url, "the origin did not tell the file's size", response.status)


class HttpTransport:
    """One aiohttp session per origin; follows redirects by hand so headers meant for the origin stay there."""

    def __init__(self, options: OriginOptions, display: str) -> None:
        self.options = options
        self.display = display
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session, created on first use (it must be made inside the running loop)."""
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self.options.connect_timeout, sock_read=self.options.read_timeout
            )
            connector = aiohttp.TCPConnector(ssl=self.options.ssl_context or True)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def send(
        self,
        method: str,
        url: URL,
        *,
        private: Mapping[str, str],
        public: Mapping[str, str],
        what: str,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The final non-redirect response; `private` headers (user headers, auth) only reach `url`'s own origin."""
        target = url
        try:
            for _ in range(self.options.max_redirects + 1):
                headers = {"Accept-Encoding": "identity", **public}
                if same_origin(target, url):
                    headers.update(private)
                response = await self.session().request(method, target, headers=headers, allow_redirects=False)
                if response.status in REDIRECTS and "Location" in response.headers:
                    response.release()
                    target = target.join(wire_url(response.headers["Location"]))
                    logger.debug("%s: redirected (%d) to %s", self.display, response.status, target.host)
                    continue
                try:
                    yield response
                finally:
                    response.close()
                return
        except aiohttp.ClientSSLError as err:
            # A certificate we do not trust will not become trusted by retrying.
            raise OriginProtocolError(self.display, f"{what}: TLS failed ({type(err).__name__})") from err
        except TRANSIENT as err:
            raise OriginUnavailable(self.display, f"{what}: connection failed ({type(err).__name__})") from err
        raise OriginProtocolError(self.display, f"{what}: more than {self.options.max_redirects} redirects")


async def read_exact(
    response: aiohttp.ClientResponse, offset: int, length: int, validator: str, url: str, what: str
) -> bytes:
    """The body of a ranged answer, only if it is exactly our range of our version; otherwise a typed error."""
    status = response.status
    got = strong_validator(response.headers)
    if status in (206, 200) and validator and got and got != validator:
        raise OriginChanged(url, f"{what}: validator {got} is not {validator}", status)
    if status == 206:
        match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
        if not match or (int(match.group(1)), int(match.group(2))) != (offset, offset + length - 1):
            raise OriginProtocolError(url, f"{what}: the origin sent another range", status)
    elif status == 200:
        # A 200 to a conditional range request means If-Range failed (RFC 9110 13.1.5), unless the range is the file.
        if validator and not got:
            raise OriginChanged(url, f"{what}: the origin sent the whole file, not our version's range", status)
        if offset != 0 or response.content_length != length:
            raise OriginProtocolError(url, f"{what}: the origin ignores Range requests", status)
    elif status == 416:
        raise OriginChanged(url, f"{what}: range not satisfiable, the file shrank", status)
    else:
        raise status_error(status, url, what)
    try:
        body = await response.content.readexactly(length)
    except asyncio.IncompleteReadError as err:
        raise OriginUnavailable(url, f"{what}: short body ({len(err.partial)} of {length} bytes)", status) from err
    return body
