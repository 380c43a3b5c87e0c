"""Sizes, rates and durations as people write them (4MiB, 50MB/s, 50M, 3s), and back to text."""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# A bare letter is binary, as aria2, curl and dd read it (50M = 50 MiB); "MB" is SI, "MiB" binary.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kib": KiB,
    "kb": 1000,
    "m": MiB,
    "mib": MiB,
    "mb": 1000**2,
    "g": GiB,
    "gib": GiB,
    "gb": 1000**3,
    "t": 1024 * GiB,
    "tib": 1024 * GiB,
    "tb": 1000**4,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def _split(text: str, what: str) -> tuple[float, str]:
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise ValueError(f"not a {what}")
    return float(match.group(1)), match.group(2).lower()


def parse_size(text: str) -> int:
    """Bytes from '1048576', '4MiB', '4M' (binary), '4MB' (SI) or '1.5GiB'; raise ValueError otherwise."""
    number, unit = _split(text, "size (e.g. 4MiB, 500M, 1048576)")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit {unit!r} (use B, K/KiB, M/MiB, G/GiB, KB, MB, GB)")
    value = number * _SIZE_UNITS[unit]
    if value != int(value):
        raise ValueError("not a whole number of bytes")
    return int(value)


def parse_rate(text: str) -> int:
    """Bytes per second from a size with an optional '/s' ('50MB/s', '50M', '1000000')."""
    body = text.strip()
    if body.lower().endswith("/s"):
        body = body[:-2]
    try:
        return parse_size(body)
    except ValueError:
        raise ValueError("not a rate (e.g. 50MB/s, 50M, 1000000)") from None


def parse_duration(text: str) -> float:
    """Seconds from '3', '2.5', '3s', '500ms', '2m' or '1h'; raise ValueError otherwise."""
    number, unit = _split(text, "duration (e.g. 3s, 500ms, 2.5)")
    if unit not in _DURATION_UNITS:
        raise ValueError(f"unknown duration unit {unit!r} (use ms, s, m, h)")
    return number * _DURATION_UNITS[unit]


def format_size(nbytes: float) -> str:
    """A byte count in binary units: '512 B', '3.0 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024:
            return f"{int(nbytes)} B" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


def format_rate(bytes_per_second: float) -> str:
    """A rate in the same binary units as format_size: '12.5 MiB/s'."""
    return f"{format_size(bytes_per_second)}/s"
