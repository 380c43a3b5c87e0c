"""Fixtures of tests/origins: real origins on loopback, each started per module and always stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bench.nginx import argv as nginx_argv
from bench.nginx import configure
from origins.servers import (
    NGINX_HTTP,
    OPENSSL,
    REGISTRY,
    REGISTRY_CONF,
    Moto,
    Nginx,
    Registry,
    free_port,
    start,
    wait_listening,
)


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
    http = NGINX_HTTP.format(prefix=prefix, root=root, http=server.http, https=server.https, other=server.other)
    configure(prefix, http)
    process = start(nginx_argv(prefix), prefix / "stdout.log", server.http, "nginx")
    try:
        wait_listening(server.https, process.proc, "nginx", prefix / "error.log")
        yield server
    finally:
        process.stop()


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
