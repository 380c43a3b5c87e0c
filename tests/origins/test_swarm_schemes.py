"""`shoal get s3://…` and `oci://…` through real peers: moto and docker-registry as origins, read once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.cli import ok, shoal, shoal_json
from helpers.processes import running_swarm
from origins.servers import Moto, Registry, push_blob, put_object

from shoal.localswarm import LocalSwarm

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.origins


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[LocalSwarm]:
    with running_swarm(tmp_path / "swarm", 0.5) as running:
        yield running


def origin_bytes(port: int | None, scheme: str) -> float:
    """shoal_peer_origin_bytes_total{scheme, outcome="imported"} as the peer exports it."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    pattern = rf'^shoal_peer_origin_bytes_total\{{outcome="imported",scheme="{scheme}"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_s3_url_through_the_swarm(
    moto: Moto, aws_env: Callable[[bool], None], swarm: LocalSwarm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws_env(True)  # the daemons inherit these credentials: the AWS chain runs in the peer, not the CLI
    data = os.urandom(5 * 1024 * 1024 + 3)
    asyncio.run(put_object(moto, "swarm", "dir/weights.bin", data))
    first = swarm.start_peer(metrics=True)
    second = swarm.start_peer(metrics=True)
    url = "s3://swarm/dir/weights.bin"
    one = shoal_json(swarm, first, "get", url, "-o", str(tmp_path / "one.bin"), "--s3-endpoint", moto.endpoint)
    assert (tmp_path / "one.bin").read_bytes() == data
    monkeypatch.setenv("SHOAL_S3_ENDPOINT", moto.endpoint)  # the variable works as the flag does
    two = shoal_json(swarm, second, "get", url, "-o", str(tmp_path / "two.bin"))
    assert (tmp_path / "two.bin").read_bytes() == data
    assert one["file"]["file_id"] == two["file"]["file_id"]
    assert origin_bytes(first.metrics_port, "s3") == len(data)
    assert origin_bytes(second.metrics_port, "s3") == 0  # it came from the first peer
    missing = shoal(swarm, second, "get", "s3://swarm/nope.bin", "-o", str(tmp_path / "x"))
    assert missing.returncode == 4 and "status 404" in missing.stderr, missing.stderr


def test_oci_blob_through_the_swarm(registry: Registry, swarm: LocalSwarm, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 11)
    digest = asyncio.run(push_blob(registry, "team/model", data))
    first, second = swarm.start_peer(), swarm.start_peer()
    url = f"oci://{registry.host}/team/model@{digest}"
    ok(shoal(swarm, first, "get", url, "-o", str(tmp_path / "one.bin")))
    ok(shoal(swarm, second, "get", url, "-o", str(tmp_path / "two.bin")))
    assert hashlib.sha256((tmp_path / "two.bin").read_bytes()).hexdigest() == digest.removeprefix("sha256:")
    # A blob whose bytes are not its digest never appears: the registry has no such blob here, so 404.
    other = "sha256:" + hashlib.sha256(b"nothing").hexdigest()
    missing = shoal(swarm, second, "get", f"oci://{registry.host}/team/model@{other}", "-o", str(tmp_path / "x"))
    assert missing.returncode == 4 and not (tmp_path / "x").exists(), missing.stderr
