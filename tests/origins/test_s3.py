"""S3 origins against moto in server mode on loopback: signed and anonymous reads, If-Match, missing objects."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from origins.servers import Moto, put_object

from shoal.origins import (
    OriginChanged,
    OriginDenied,
    OriginNotFound,
    OriginOptions,
    RetryPolicy,
    parse_origin,
    version_key,
)

pytestmark = pytest.mark.origins


async def test_signed_ranged_reads_are_byte_exact(moto: Moto, aws_env: Callable[[bool], None]) -> None:
    aws_env(True)
    data = os.urandom(3 * 1024 * 1024 + 7)
    etag = await put_object(moto, "weights", "models/a b/model.bin", data)
    options = OriginOptions(s3_endpoint=moto.endpoint, expected_digest="sha256:" + "0" * 64)
    async with parse_origin("s3://weights/models/a b/model.bin", options) as origin:
        file = await origin.stat()
        assert (file.url, file.size, file.validator) == ("s3://weights/models/a b/model.bin", len(data), etag)
        assert file.digest == "sha256:" + "0" * 64
        for offset, length in ((0, 1), (1 << 20, 1 << 20), (len(data) - 7, 7), (0, len(data))):
            assert await origin.read_range(offset, length, file.validator) == data[offset : offset + length]


async def test_anonymous_reads_when_the_chain_has_no_credentials(moto: Moto, aws_env: Callable[[bool], None]) -> None:
    data = b"public" * 1000
    await put_object(moto, "public", "file.txt", data, public=True)
    await put_object(moto, "public", "private.txt", data)
    aws_env(False)
    async with parse_origin("s3://public/file.txt", OriginOptions(s3_endpoint=moto.endpoint)) as origin:
        file = await origin.stat()
        assert await origin.read_range(6, 12, file.validator) == data[6:18]
    async with parse_origin("s3://public/private.txt", OriginOptions(s3_endpoint=moto.endpoint)) as origin:
        with pytest.raises(OriginDenied) as caught:
            await origin.stat()
    assert caught.value.status == 403


async def test_an_overwritten_object_raises_origin_changed(moto: Moto, aws_env: Callable[[bool], None]) -> None:
    aws_env(True)
    await put_object(moto, "weights", "changing.bin", b"a" * 4096)
    async with parse_origin("s3://weights/changing.bin", OriginOptions(s3_endpoint=moto.endpoint)) as origin:
        old = await origin.stat()
        await put_object(moto, "weights", "changing.bin", b"b" * 4096)
        with pytest.raises(OriginChanged) as caught:
            await origin.read_range(0, 100, old.validator)
        assert caught.value.status == 412
        new = await origin.stat()
    assert new.validator != old.validator and version_key(new, 1 << 20) != version_key(old, 1 << 20)


async def test_missing_keys_and_buckets_end_at_once(moto: Moto, aws_env: Callable[[bool], None]) -> None:
    aws_env(True)
    await put_object(moto, "weights", "present.bin", b"x")
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    options = OriginOptions(s3_endpoint=moto.endpoint, retry=RetryPolicy(attempts=4, sleep=sleep))
    for url in ("s3://weights/absent.bin", "s3://no-such-bucket/file.bin"):
        async with parse_origin(url, options) as origin:
            with pytest.raises(OriginNotFound) as caught:
                await origin.stat()
        assert caught.value.status == 404 and caught.value.url == url
    assert slept == []
