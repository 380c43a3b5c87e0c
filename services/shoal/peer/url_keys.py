"""How a URL version is named: its claim key, the name its file is published under, and how trackers see it."""

from __future__ import annotations

import hashlib
import logging
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from shoal import content
from shoal.v1 import common_pb2, tracker_pb2

logger = logging.getLogger(__name__)


def claim_key(key: str) -> str:
    """The id whose holders are the claimants of key's import (at most one once claims settle)."""
    return hashlib.sha256(f"shoal-origin-claim/1\n{key}".encode()).hexdigest()


def file_name(url: str, key: str) -> str:
    """The name the imported file is published under: the URL path's last part, else origin-<key>."""
    path = urlsplit(url).path if "://" in url else url
    name = PurePosixPath(path.split("@", 1)[0]).name
    try:
        return content.check_name(name)
    except content.ContentError:
        return f"origin-{key[:16]}"


def held_file(key: str, url: str, size: int, *, complete: bool) -> tracker_pb2.HeldFile:
    """A URL key as the trackers see it: named by its URL (cut to the trackers' 255 bytes)."""
    info = common_pb2.FileInfo(file_id=key, name=tracker_name(url), size=size)
    return tracker_pb2.HeldFile(file=info, complete=complete)


def tracker_name(url: str) -> str:
    """The display URL cut to the trackers' 255-byte names."""
    return url.encode()[: content.MAX_NAME_BYTES].decode(errors="ignore")
