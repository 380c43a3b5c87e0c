"""Real origins on loopback for tests/origins: nginx (HTTP, HTTPS, a second origin for redirects), moto, a registry."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NGINX = "/usr/sbin/nginx"
REGISTRY = "/usr/bin/docker-registry"
OPENSSL = "/usr/bin/openssl"
START_TIMEOUT = 20.0

# Every request nginx answers, with what it sent and the secrets it received: the witness of the tests.
NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    log_format witness escape=none '$server_port $status $request_method $uri range=[$http_range] if_range=[$http_if_range] '
                       'bytes=$body_bytes_sent auth=[$http_authorization] token=[$http_x_token]';
    access_log {prefix}/access.log witness;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{http};
        root {root};
        location /same/ {{ rewrite ^/same/(.*)$ /$1 redirect; }}
        location /denied/ {{ deny all; }}
        location /cross/ {{ rewrite ^/cross/(.*)$ http://127.0.0.1:{other}/$1 redirect; }}
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


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx with its own config in a tmp dir: HTTP, HTTPS (openssl self-signed, SAN 127.0.0.1) and a second origin."""
    base = tmp_path_factory.mktemp("nginx")
    root, prefix = base / "www", base / "nginx"
    root.mkdir()
    prefix.mkdir()
    if not os.access(OPENSSL, os.X_OK):
        pytest.fail("openssl missing: run `make system-deps`")
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + [
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(prefix / "key.pem"),
            "-out",
            str(prefix / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    server = Nginx(root, free_port(), free_port(), free_port(), prefix)
    conf = NGINX_CONF.format(prefix=prefix, root=root, http=server.http, https=server.https, other=server.other)
    (prefix / "nginx.conf").write_text(conf)
    argv = [NGINX, "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    process = start(argv, prefix / "stdout.log", server.http, "nginx")
    try:
        wait_listening(server.https, process.proc, "nginx", prefix / "error.log")
        yield server
    finally:
        process.stop()


@dataclass
class Moto:
    """An S3-compatible endpoint (moto in server mode) on loopback."""

    endpoint: str


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """moto_server on 127.0.0.1, one per module."""
    base = tmp_path_factory.mktemp("moto")
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = start(argv, base / "moto.log", port, "moto_server")
    try:
        yield Moto(f"http://127.0.0.1:{port}")
    finally:
        process.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[bool], None]:
    """aws_env(signed): the AWS chain sees only env credentials (or none), never the runner's own config."""

    def setup(signed: bool) -> None:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        if signed:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")

    return setup


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


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry with its own config and storage in a tmp dir."""
    base = tmp_path_factory.mktemp("registry")
    port = free_port()
    (base / "config.yml").write_text(REGISTRY_CONF.format(root=base / "data", port=port))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base)}
    process = start([REGISTRY, "serve", str(base / "config.yml")], base / "registry.log", port, "docker-registry", env)
    try:
        yield Registry(f"127.0.0.1:{port}", base / "registry.log")
    finally:
        process.stop()
        shutil.rmtree(base / "data", ignore_errors=True)
