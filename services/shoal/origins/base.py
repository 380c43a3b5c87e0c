"""What every origin offers (stat, ranged reads), the options it takes, and the stable key of one origin version."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import ssl
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shoal.origins.errors import InvalidHeader
from shoal.origins.retry import RetryPolicy

logger = logging.getLogger(__name__)

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers the origin layer sets itself on every ranged read; a user's value would mix versions or ranges.
RESERVED_HEADERS = frozenset({"range", "if-range", "if-match", "host", "accept-encoding"})
# Query parameters of presigned URLs: secrets, and values that change on every signing (as dfget filters them),
# so they are neither shown nor part of a version's key.
FILTERED_QUERY_PARAMS = frozenset(
    name.lower()
    for name in (
        "X-Amz-Algorithm X-Amz-Credential X-Amz-Date X-Amz-Expires X-Amz-SignedHeaders X-Amz-Signature "
        "X-Amz-Security-Token AWSAccessKeyId Signature Expires OSSAccessKeyId X-Goog-Algorithm X-Goog-Credential "
        "X-Goog-Date X-Goog-Expires X-Goog-SignedHeaders X-Goog-Signature sig se st sp sv sr spr"
    ).split()
)


@dataclass(frozen=True)
class OriginFile:
    """One version of a file at an origin; `validator` is a strong ETag, a Last-Modified date or an OCI digest."""

    url: str
    size: int
    validator: str
    digest: str | None = None


@dataclass(frozen=True)
class OriginOptions:
    """Everything an origin may need besides its URL; headers and credentials never appear in a repr or a log."""

    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    expected_digest: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    registry_credentials: tuple[str, str] | None = field(default=None, repr=False)
    insecure_registries: frozenset[str] = frozenset()
    ssl_context: ssl.SSLContext | None = None
    retry: RetryPolicy = RetryPolicy()
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_redirects: int = 10


class Origin(ABC):
    """A file at an origin, read in ranges; one instance per URL, closed when done (or used as `async with`)."""

    scheme: str
    display_url: str

    @abstractmethod
    async def stat(self) -> OriginFile:
        """Size, validator and digest of the file as it is now."""

    @abstractmethod
    async def read_range(self, offset: int, length: int, validator: str) -> bytes:
        """Exactly `length` bytes at `offset` of the version named by `validator`, or OriginChanged."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and clients."""

    async def __aenter__(self) -> Origin:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def check_range(offset: int, length: int) -> None:
    """Reject a range no origin could serve, before any request."""
    if offset < 0 or length <= 0:
        raise ValueError(f"bad range: offset {offset}, length {length}")


def version_key(file: OriginFile, chunk_size: int) -> str:
    """The stable key of one origin version cut in one chunk size: same URL, validator, size -> same key."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    fields = ("shoal-origin/1", file.url, file.validator, str(file.size), str(chunk_size), file.digest or "")
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()


def basic_auth(user: str, password: str) -> str:
    """An Authorization value for RFC 7617 Basic auth (UTF-8)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def display_url(url: str) -> str:
    """The URL without userinfo and without presigned-URL secrets: what we show, log and key on."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in FILTERED_QUERY_PARAMS
    ]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


def parse_headers(lines: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Parse 'Name: value' lines (blank lines and '#' comments skipped); InvalidHeader names the line number only."""
    headers: list[tuple[str, str]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _TOKEN_RE.match(name):
            raise InvalidHeader(f"header {number}: expected 'Name: value'")
        if "\r" in value or "\n" in value or "\0" in value:
            raise InvalidHeader(f"header {number} ({name}): control characters in the value")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidHeader(f"header {number} ({name}): set by Shoal itself, cannot be given")
        headers.append((name, value.strip()))
    return tuple(headers)
