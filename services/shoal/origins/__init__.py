"""Origins: where a file lives before Shoal has it (HTTP(S), S3, OCI registries), read in ranges of one version."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

from shoal.origins.base import (
    DIGEST_RE,
    Origin,
    OriginFile,
    OriginOptions,
    display_url,
    parse_headers,
    version_key,
)
from shoal.origins.errors import (
    InvalidHeader,
    OriginChanged,
    OriginDenied,
    OriginError,
    OriginNotFound,
    OriginProtocolError,
    OriginUnavailable,
    UnsupportedOrigin,
)
from shoal.origins.retry import RetryPolicy

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMES",
    "InvalidHeader",
    "Origin",
    "OriginChanged",
    "OriginDenied",
    "OriginError",
    "OriginFile",
    "OriginNotFound",
    "OriginOptions",
    "OriginProtocolError",
    "OriginUnavailable",
    "RetryPolicy",
    "UnsupportedOrigin",
    "display_url",
    "is_origin_url",
    "parse_headers",
    "parse_origin",
    "version_key",
]

SCHEMES = ("http", "https", "s3", "oci")
# S3 bucket names (AWS rules, relaxed to what S3-compatible stores accept: dots, dashes, 3-63 characters).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")
# OCI distribution spec: path components of lowercase alphanumerics joined by separators.
_REPOSITORY_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_REGISTRY_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


def is_origin_url(text: str) -> bool:
    """Whether `text` names an origin (as opposed to a Shoal file id or a local path)."""
    return urlsplit(text).scheme.lower() in SCHEMES and "://" in text


def parse_origin(url: str, options: OriginOptions | None = None) -> Origin:
    """The Origin for a URL; UnsupportedOrigin (a ValueError) for anything Shoal cannot read."""
    options = options or OriginOptions()
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    shown = url if scheme in ("s3", "oci") else display_url(url)
    if options.expected_digest is not None and not DIGEST_RE.match(options.expected_digest):
        raise UnsupportedOrigin(shown, "a digest must be sha256: and 64 lowercase hex digits")
    if scheme in ("http", "https"):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as err:
            raise UnsupportedOrigin(shown, "not a valid URL") from err
        if not parts.hostname:
            raise UnsupportedOrigin(shown, "no host in the URL")
        # Each client library loads only for its scheme (aiobotocore is heavy and only s3:// needs it).
        from shoal.origins.http import HttpOrigin

        return HttpOrigin(url, options)
    if scheme == "s3":
        return _s3(url, shown, options)
    if scheme == "oci":
        return _oci(url, shown, options)
    raise UnsupportedOrigin(shown, f"unsupported scheme {scheme or '(none)'!r}; expected one of {', '.join(SCHEMES)}")


def _s3(url: str, shown: str, options: OriginOptions) -> Origin:
    """s3://bucket/key; the key is taken verbatim (it may hold any character but a leading slash)."""
    rest = url.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not _BUCKET_RE.match(bucket):
        raise UnsupportedOrigin(shown, "not a valid S3 bucket name")
    if not key or key.endswith("/"):
        raise UnsupportedOrigin(shown, "an s3:// URL needs a key naming one object")
    from shoal.origins.s3 import S3Origin

    return S3Origin(bucket, key, options)


def _oci(url: str, shown: str, options: OriginOptions) -> Origin:
    """oci://registry[:port]/repository@sha256:HEX: a blob, always by digest (a tag is not a file version)."""
    rest = url.split("://", 1)[1]
    name, at, digest = rest.partition("@")
    registry, _, repository = name.partition("/")
    if not at or not DIGEST_RE.match(digest):
        raise UnsupportedOrigin(shown, "an oci:// URL needs @sha256: and 64 lowercase hex digits")
    if not _REGISTRY_RE.match(registry) or not _REPOSITORY_RE.match(repository):
        raise UnsupportedOrigin(shown, "expected oci://registry/repository@sha256:HEX")
    if options.expected_digest is not None and options.expected_digest != digest:
        raise UnsupportedOrigin(shown, "the expected digest differs from the digest in the URL")
    from shoal.origins.oci import OciOrigin

    return OciOrigin(registry, repository, digest, options)
