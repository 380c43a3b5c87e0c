"""HTTP(S) origins against a real nginx on loopback; its access log witnesses every byte and header it received."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from origins.servers import Nginx

from shoal.origins import (
    OriginChanged,
    OriginDenied,
    OriginNotFound,
    OriginOptions,
    OriginProtocolError,
    RetryPolicy,
    parse_origin,
    version_key,
)

pytestmark = pytest.mark.origins

SECRET_TOKEN = "tok-5f1d8e-never-log-me"
SECRET_BEARER = "Bearer abc-never-log-me-either"


def write(path: Path, data: bytes, mtime: float | None = None) -> None:
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def no_retry_sleep() -> tuple[RetryPolicy, list[float]]:
    """A policy whose sleeps are recorded, not slept: a test sees every retry it caused."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return RetryPolicy(attempts=3, sleep=sleep, rand=lambda: 1.0), slept


async def test_ranged_reads_are_byte_exact_and_the_log_shows_only_those_bytes(nginx: Nginx) -> None:
    data = os.urandom(1024 * 1024 + 123)
    write(nginx.root / "exact.bin", data)
    async with parse_origin(nginx.url("exact.bin")) as origin:
        file = await origin.stat()
        assert (file.size, file.url, file.digest) == (len(data), nginx.url("exact.bin"), None)
        assert file.validator.startswith('"')  # nginx's strong ETag
        ranges = [(0, 1000), (65536, 65536), (len(data) - 123, 123), (0, len(data))]
        for offset, length in ranges:
            assert await origin.read_range(offset, length, file.validator) == data[offset : offset + length]
    reads = [line for line in nginx.lines() if "/exact.bin" in line and "bytes=0-0" not in line]
    assert len(reads) == len(ranges)
    for line, (offset, length) in zip(reads, ranges, strict=True):
        assert f" 206 GET /exact.bin range=[bytes={offset}-{offset + length - 1}]" in line
        assert f"if_range=[{file.validator}]" in line and line.split("bytes=")[-1].startswith(f"{length} ")


async def test_https_with_a_trusted_self_signed_certificate(nginx: Nginx) -> None:
    data = os.urandom(50_000)
    write(nginx.root / "tls.bin", data)
    url = nginx.url("tls.bin", port=nginx.https, scheme="https")
    async with parse_origin(url, OriginOptions(ssl_context=nginx.tls())) as origin:
        file = await origin.stat()
        assert await origin.read_range(100, 40_000, file.validator) == data[100:40_100]
    assert any(line.startswith(f"{nginx.https} 206 GET /tls.bin") for line in nginx.lines())


async def test_an_untrusted_certificate_fails_at_once(nginx: Nginx) -> None:
    write(nginx.root / "tls2.bin", b"x" * 10)
    policy, slept = no_retry_sleep()
    url = nginx.url("tls2.bin", port=nginx.https, scheme="https")
    async with parse_origin(url, OriginOptions(retry=policy)) as origin:
        with pytest.raises(OriginProtocolError, match="TLS"):
            await origin.stat()
    assert slept == []


async def test_a_rewritten_file_raises_origin_changed_and_gets_a_new_key(nginx: Nginx) -> None:
    path = nginx.root / "changing.bin"
    write(path, b"a" * 100_000, mtime=time.time() - 100)
    async with parse_origin(nginx.url("changing.bin")) as origin:
        old = await origin.stat()
        assert await origin.read_range(0, 10, old.validator) == b"a" * 10
        write(path, b"b" * 100_000, mtime=time.time())
        with pytest.raises(OriginChanged) as caught:
            await origin.read_range(10, 10, old.validator)
        assert caught.value.status == 200  # If-Range failed: nginx offered the whole new file, which we refused
        new = await origin.stat()
    assert new.validator != old.validator and new.size == old.size
    assert version_key(new, 4 << 20) != version_key(old, 4 << 20)
    assert version_key(old, 4 << 20) == version_key(old, 4 << 20)
    refused = [line for line in nginx.lines() if "/changing.bin range=[bytes=10-19]" in line]
    assert len(refused) == 1 and f"if_range=[{old.validator}]" in refused[0] and " 200 GET " in refused[0]


async def test_missing_and_forbidden_files_end_at_once_with_the_status(nginx: Nginx) -> None:
    policy, slept = no_retry_sleep()
    async with parse_origin(nginx.url("no-such-file.bin"), OriginOptions(retry=policy)) as origin:
        with pytest.raises(OriginNotFound) as missing:
            await origin.stat()
    assert missing.value.status == 404 and "(status 404)" in str(missing.value) and "\n" not in str(missing.value)
    (nginx.root / "denied").mkdir()
    write(nginx.root / "denied" / "file.bin", b"x" * 10)
    async with parse_origin(nginx.url("denied/file.bin"), OriginOptions(retry=policy)) as origin:
        with pytest.raises(OriginDenied) as denied:
            await origin.stat()
    assert denied.value.status == 403
    assert slept == []
    assert [line.split()[1] for line in nginx.lines() if "no-such-file" in line or "denied/" in line] == ["404", "403"]


async def test_headers_reach_the_origin_and_never_the_logs(nginx: Nginx, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    write(nginx.root / "private.bin", b"p" * 5000)
    options = OriginOptions(headers=(("X-Token", SECRET_TOKEN), ("Authorization", SECRET_BEARER)))
    async with parse_origin(nginx.url("private.bin"), options) as origin:
        file = await origin.stat()
        assert await origin.read_range(0, 5000, file.validator) == b"p" * 5000
    seen = [line for line in nginx.lines() if "/private.bin" in line]
    assert len(seen) == 2 and all(f"token=[{SECRET_TOKEN}]" in line and SECRET_BEARER in line for line in seen)
    assert SECRET_TOKEN not in caplog.text and "never-log-me" not in caplog.text
    assert "never-log-me" not in repr(options) and "never-log-me" not in repr(file)


async def test_redirects_are_followed_and_headers_stay_with_their_origin(nginx: Nginx) -> None:
    data = os.urandom(20_000)
    write(nginx.root / "moved.bin", data)
    options = OriginOptions(headers=(("X-Token", SECRET_TOKEN),))
    for prefix, port in (("same", nginx.http), ("cross", nginx.other)):
        async with parse_origin(nginx.url(f"{prefix}/moved.bin"), options) as origin:
            file = await origin.stat()
            assert file.url == nginx.url(f"{prefix}/moved.bin")
            assert await origin.read_range(5, 1000, file.validator) == data[5:1005]
        served = [line for line in nginx.lines() if line.startswith(f"{port} 206 GET /moved.bin range=[bytes=5-1004]")]
        assert len(served) == 1
        sent_token = f"token=[{SECRET_TOKEN}]" in served[0]
        assert sent_token == (prefix == "same"), served[0]
    redirects = [line for line in nginx.lines() if " 302 GET /cross/moved.bin" in line]
    assert redirects and all(f"token=[{SECRET_TOKEN}]" in line for line in redirects)


async def test_userinfo_becomes_basic_auth_for_that_host_only(nginx: Nginx) -> None:
    write(nginx.root / "basic.bin", b"b" * 300)
    url = f"http://alice:s3cret-pass@127.0.0.1:{nginx.http}/cross/basic.bin"
    async with parse_origin(url) as origin:
        file = await origin.stat()
        assert "alice" not in file.url and "s3cret" not in file.url
        assert await origin.read_range(0, 300, file.validator) == b"b" * 300
    lines = [line for line in nginx.lines() if "basic.bin" in line]
    assert any(
        " 302 GET /cross/basic.bin" in line and "auth=[Basic YWxpY2U6czNjcmV0LXBhc3M=]" in line for line in lines
    )
    assert all("auth=[]" in line for line in lines if line.startswith(f"{nginx.other} "))


async def test_an_empty_file_has_size_zero(nginx: Nginx) -> None:
    write(nginx.root / "empty.bin", b"")
    async with parse_origin(nginx.url("empty.bin")) as origin:
        file = await origin.stat()
    assert file.size == 0 and file.validator


async def test_a_presigned_query_goes_out_byte_for_byte_and_is_never_shown(nginx: Nginx) -> None:
    write(nginx.root / "signed.bin", b"s" * 100)
    url = nginx.url("signed.bin") + "?X-Amz-Signature=ab%2Bcd%3D&v=1&sig=a%2Fb"
    async with parse_origin(url) as origin:
        file = await origin.stat()
        assert file.url == nginx.url("signed.bin") + "?v=1"
        assert await origin.read_range(0, 100, file.validator) == b"s" * 100
    sent = [line for line in nginx.lines() if "/signed.bin" in line]
    assert len(sent) == 2 and all(line.endswith("args=[X-Amz-Signature=ab%2Bcd%3D&v=1&sig=a%2Fb]") for line in sent)
