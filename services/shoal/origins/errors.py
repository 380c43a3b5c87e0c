"""Typed failures of an origin, each with the origin's status, so the CLI can say one line and pick an exit code."""

from __future__ import annotations


class OriginError(Exception):
    """Base of every origin failure; `url` is the display URL (never credentials), `status` the origin's if any."""

    def __init__(self, url: str, detail: str, status: int | None = None) -> None:
        self.url = url
        self.detail = detail
        self.status = status
        super().__init__(self.line())

    def line(self) -> str:
        """One line for a user: what failed, where, and the origin's status."""
        status = f" (status {self.status})" if self.status is not None else ""
        return f"{self.url}: {self.detail}{status}"


class UnsupportedOrigin(OriginError, ValueError):
    """The URL names no origin Shoal can read (unknown scheme, malformed bucket, repository or digest)."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(url, detail)


class InvalidHeader(ValueError):
    """A header line is not 'Name: value'; the message never repeats the value."""


class OriginNotFound(OriginError):
    """The origin says the file does not exist (404/410, S3 NoSuchKey/NoSuchBucket); never retried."""


class OriginDenied(OriginError):
    """The origin refuses us (403, or 401 even after authenticating); never retried."""


class OriginChanged(OriginError):
    """The origin's file is no longer the version we started with (validator or size differ); never mixed."""


class OriginUnavailable(OriginError):
    """A transient failure (5xx, 429, reset, timeout) that outlived every retry; the import can resume later."""


class OriginProtocolError(OriginError):
    """The origin answered something we cannot use (no range support, wrong length, odd status)."""
