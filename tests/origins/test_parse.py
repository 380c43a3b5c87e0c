"""URL parsing, header lines, display URLs and version keys: pure, no sockets."""

from __future__ import annotations

import pytest

from shoal.origins import (
    InvalidHeader,
    OriginFile,
    OriginOptions,
    UnsupportedOrigin,
    display_url,
    is_origin_url,
    parse_headers,
    parse_origin,
    version_key,
)
from shoal.origins.http import HttpOrigin
from shoal.origins.oci import OciOrigin, parse_challenge
from shoal.origins.s3 import S3Origin

DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_each_scheme_maps_to_its_origin() -> None:
    assert isinstance(parse_origin("http://example.com/a.bin"), HttpOrigin)
    assert isinstance(parse_origin("HTTPS://example.com:8443/a.bin?x=1"), HttpOrigin)
    s3 = parse_origin("s3://my-bucket/dir/model.safetensors")
    assert isinstance(s3, S3Origin) and (s3.bucket, s3.key) == ("my-bucket", "dir/model.safetensors")
    oci = parse_origin(f"oci://ghcr.io/org/team/model@{DIGEST}")
    assert isinstance(oci, OciOrigin) and (oci.registry, oci.repository, oci.digest) == (
        "ghcr.io",
        "org/team/model",
        DIGEST,
    )
    assert str(oci.blob_url) == f"https://ghcr.io/v2/org/team/model/blobs/{DIGEST}"


def test_docker_hub_and_loopback_registries_resolve_as_docker_does() -> None:
    hub = parse_origin(f"oci://docker.io/ubuntu@{DIGEST}")
    assert isinstance(hub, OciOrigin)
    assert str(hub.blob_url) == f"https://registry-1.docker.io/v2/library/ubuntu/blobs/{DIGEST}"
    assert hub.scope == "repository:library/ubuntu:pull"
    local = parse_origin(f"oci://localhost:5000/app@{DIGEST}")
    assert isinstance(local, OciOrigin) and local.blob_url.scheme == "http"
    listed = parse_origin(
        f"oci://reg.lan:5000/app@{DIGEST}", OriginOptions(insecure_registries=frozenset({"reg.lan:5000"}))
    )
    assert isinstance(listed, OciOrigin) and listed.blob_url.scheme == "http"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a",
        "file:///etc/passwd",
        "example.com/a",
        "http:///nohost",
        "http://example.com:99999/a",
        "s3://Bad_Bucket/key",
        "s3://bucket",
        "s3://bucket/dir/",
        "oci://ghcr.io/org/model:latest",
        f"oci://ghcr.io/Org/model@{DIGEST}",
        "oci://ghcr.io/org/model@sha256:ABC",
        f"oci://ghcr.io@{DIGEST}",
    ],
)
def test_anything_else_is_unsupported(url: str) -> None:
    with pytest.raises(UnsupportedOrigin) as caught:
        parse_origin(url)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


def test_the_expected_digest_is_checked() -> None:
    with pytest.raises(UnsupportedOrigin):
        parse_origin("http://example.com/a", OriginOptions(expected_digest="md5:abc"))
    with pytest.raises(UnsupportedOrigin):
        parse_origin(f"oci://ghcr.io/a/b@{DIGEST}", OriginOptions(expected_digest="sha256:" + "f" * 64))


def test_credentials_never_reach_the_display_url() -> None:
    assert display_url("https://u:p@host:8443/a?X-Amz-Signature=s&X-Amz-Credential=c&v=2") == "https://host:8443/a?v=2"
    with pytest.raises(UnsupportedOrigin) as caught:
        parse_origin("ftp://user:hunter2@example.com/x")
    assert "hunter2" not in str(caught.value)


def test_header_lines() -> None:
    lines = ["Authorization: Bearer a:b", "", "# a comment", "X-Empty:", "X-Spaced :  v  "]
    assert parse_headers(lines) == (("Authorization", "Bearer a:b"), ("X-Empty", ""), ("X-Spaced", "v"))
    for bad in ("no colon here", "Bad Name: v", "Range: bytes=0-1", ": v"):
        with pytest.raises(InvalidHeader) as caught:
            parse_headers(["X-Ok: 1", bad])
        assert "header 2" in str(caught.value) and "bytes=0-1" not in str(caught.value)


def test_version_keys_are_stable_and_tell_versions_apart() -> None:
    file = OriginFile("https://host/a", 1000, '"etag-1"')
    key = version_key(file, 4 << 20)
    assert key == version_key(OriginFile("https://host/a", 1000, '"etag-1"'), 4 << 20) and len(key) == 64
    others = [
        OriginFile("https://host/b", 1000, '"etag-1"'),
        OriginFile("https://host/a", 1001, '"etag-1"'),
        OriginFile("https://host/a", 1000, '"etag-2"'),
        OriginFile("https://host/a", 1000, '"etag-1"', DIGEST),
    ]
    assert len({key, *(version_key(other, 4 << 20) for other in others), version_key(file, 1 << 20)}) == 6
    with pytest.raises(ValueError):
        version_key(file, 0)


def test_bearer_challenges_parse() -> None:
    header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull"'
    scheme, params = parse_challenge(header)
    assert scheme == "bearer" and params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:a/b:pull",
    }


def test_origin_urls_are_told_from_file_ids_and_paths() -> None:
    assert is_origin_url("https://host/a") and is_origin_url(f"oci://r/a@{DIGEST}") and is_origin_url("s3://b/k")
    assert not is_origin_url("0" * 64) and not is_origin_url("/tmp/file") and not is_origin_url("ftp://host/a")
