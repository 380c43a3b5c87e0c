"""Sizes, rates and durations as people write them, and back to text."""

from __future__ import annotations

import pytest

from shoal import units


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("4MiB", 4 * 1024 * 1024),
        ("4mib", 4 * 1024 * 1024),
        ("4M", 4 * 1024 * 1024),
        ("4MB", 4_000_000),
        ("16KiB", 16384),
        ("16k", 16384),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("1GB", 10**9),
        ("2TiB", 2 * 1024**4),
        ("512B", 512),
        (" 64 KiB ", 65536),
        (".5K", 512),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert units.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "big", "-1", "1.5", "4 MiBs", "4XB", "1e6", "0x10", "4 M B"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        units.parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50MB/s", 50_000_000), ("50M", 50 * 1024 * 1024), ("50m/S", 50 * 1024 * 1024), ("1000", 1000), ("0", 0)],
)
def test_parse_rate(text: str, expected: int) -> None:
    assert units.parse_rate(text) == expected


@pytest.mark.parametrize("text", ["fast", "50MB/h", "/s", "-5M/s"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        units.parse_rate(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3", 3.0), ("2.5", 2.5), ("3s", 3.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("1min", 60.0)],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert units.parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["soon", "3d", "-1s", ""])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        units.parse_duration(text)


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (3 * 1024 * 1024, "3.0 MiB"), (5 * 1024**4, "5.0 TiB")],
)
def test_format_size_is_binary(nbytes: int, text: str) -> None:
    assert units.format_size(nbytes) == text


def test_format_rate_uses_the_same_units() -> None:
    assert units.format_rate(1.5 * 1024 * 1024) == "1.5 MiB/s"
    assert units.format_size(units.parse_size("1.5GiB")) == "1.5 GiB"
