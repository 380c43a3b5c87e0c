"""Servers for tests/origins: nginx (HTTP, HTTPS, a second origin for redirects), moto and a registry, on loopback."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiobotocore.session import get_session
from yarl import URL

REGISTRY = "/usr/bin/docker-registry"
OPENSSL = "/usr/bin/openssl"
START_TIMEOUT = 20.0

# Every request nginx answers, with what it sent and the secrets it received: the witness of the tests.
NGINX_HTTP = """\
    log_format witness escape=none '$server_port $status $request_method $uri range=[$http_range] '
        'if_range=[$http_if_range] bytes=$body_bytes_sent auth=[$http_authorization] token=[$http_x_token] '
        'args=[$args]';
    access_log {prefix}/access.log witness;
    server {{
        listen 127.0.0.1:{http};
        root {root};
        location /same/ {{ rewrite ^/same/(.*)$ /$1 redirect; }}
        location /denied/ {{ deny all; }}
        location /cross/ {{ rewrite ^/cross/(.*)$ http://127.0.0.1:{other}/$1 redirect; }}
        location /slow/ {{ alias {root}/; limit_rate 4m; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        ssl_certificate {prefix}/cert.pem;
        ssl_certificate_key {prefix}/key.pem;
        root {root};
    }}
    server {{
        listen 127.0.0.1:{other};
        root {root};
    }}
"""


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    """Block until something accepts on the port; fail with the server's log if it died first."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{name} did not listen on {port} within {START_TIMEOUT}s")


@dataclass
class Process:
    """One server started by a fixture; stopped in `finally` whatever the test did."""

    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start(argv: list[str], log: Path, port: int, name: str, env: dict[str, str] | None = None) -> Process:
    """Start a server with its output in `log` and wait until it listens."""
    for exe in argv[:1]:
        if not os.access(exe, os.X_OK):
            pytest.fail(f"{exe} missing: run `make system-deps` (tools/system-deps.sh)")
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    process = Process(proc)
    try:
        wait_listening(port, proc, name, log)
    except BaseException:
        process.stop()
        raise
    return process


@dataclass
class Nginx:
    """nginx serving `root` on three ports; `lines()` reads the access log (the bytes it really sent)."""

    root: Path
    http: int
    https: int
    other: int
    prefix: Path

    def url(self, path: str, port: int | None = None, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{port or self.http}/{path}"

    def lines(self) -> list[str]:
        log = self.prefix / "access.log"
        return log.read_text().splitlines() if log.exists() else []

    def tls(self) -> ssl.SSLContext:
        """A client context trusting only this nginx's self-signed certificate."""
        return ssl.create_default_context(cafile=str(self.prefix / "cert.pem"))


@dataclass
class Moto:
    """An S3-compatible endpoint (moto in server mode) on loopback."""

    endpoint: str


REGISTRY_CONF = """\
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@dataclass
class Registry:
    """Debian's docker-registry (distribution) on loopback, plain HTTP; `log` holds its access log."""

    host: str
    log: Path


TOKEN_REGISTRY_CONF = """\
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
auth:
  token:
    realm: http://127.0.0.1:{realm_port}/token
    service: {service}
    issuer: {issuer}
    rootcertbundle: {bundle}
"""


async def push_blob(registry: Registry, repository: str, data: bytes, token: str = "") -> str:
    """Monolithic upload (distribution spec): POST an upload session, then PUT ?digest= with the bytes."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    base = f"http://{registry.host}/v2/{repository}/blobs/uploads/"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(base) as started:
            assert started.status == 202, await started.text()
            location = started.headers["Location"]
        upload = URL(location)
        if not upload.is_absolute():
            upload = URL(f"http://{registry.host}").join(upload)
        async with session.put(upload.update_query(digest=digest), data=data) as done:
            assert done.status == 201, await done.text()
    return digest


async def put_object(moto: Moto, bucket: str, key: str, data: bytes, public: bool = False) -> str:
    """Create the bucket if needed and upload; returns the object's ETag."""
    session = get_session()
    async with session.create_client(
        "s3", endpoint_url=moto.endpoint, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    ) as client:
        buckets = await client.list_buckets()
        if bucket not in {b.get("Name") for b in buckets.get("Buckets", [])}:
            await client.create_bucket(Bucket=bucket)
        if public:
            reply = await client.put_object(Bucket=bucket, Key=key, Body=data, ACL="public-read")
        else:
            reply = await client.put_object(Bucket=bucket, Key=key, Body=data)
        return reply["ETag"]
