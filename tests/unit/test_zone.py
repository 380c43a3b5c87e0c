"""Zone awareness: same-zone holders first, and the Node label read through the real kubernetes client."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shoal import zone
from shoal.v1 import common_pb2

RECORDED = Path(__file__).parent.parent / "data" / "eks-node.json"
NODE = "ip-192-168-12-34.eu-west-1.compute.internal"


def peer(name: str, where: str) -> common_pb2.PeerInfo:
    return common_pb2.PeerInfo(peer_id=name, address=f"{name}:7401", zone=where)


def test_same_zone_first_random_within() -> None:
    peers = [peer(f"p{i}", "eu-west-1a" if i % 3 == 0 else "eu-west-1b") for i in range(30)]
    firsts = set()
    for seed in range(20):
        ordered = zone.prefer_zone(peers, "eu-west-1a", random.Random(seed))
        zones = [p.zone for p in ordered]
        assert zones == sorted(zones, key=lambda z: z != "eu-west-1a")
        assert sorted(p.peer_id for p in ordered) == sorted(p.peer_id for p in peers)
        firsts.add(ordered[0].peer_id)
    assert len(firsts) > 1  # random among equals, not a fixed order


def test_no_zone_keeps_everyone_in_random_order() -> None:
    peers = [peer(f"p{i}", "z1" if i % 2 else "z2") for i in range(10)]
    ordered = zone.prefer_zone(peers, "", random.Random(1))
    assert {p.peer_id for p in ordered} == {p.peer_id for p in peers}


def test_zone_of_labels() -> None:
    assert zone.zone_of({zone.ZONE_LABEL: "us-east-1a"}) == "us-east-1a"
    assert zone.zone_of({zone.LEGACY_ZONE_LABEL: "us-east-1c"}) == "us-east-1c"
    assert zone.zone_of({}) == ""
    assert zone.zone_of(None) == ""


class _RecordedApi(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        if self.path.split("?")[0] == f"/api/v1/nodes/{NODE}":
            body = RECORDED.read_bytes()
            self.send_response(200)
        else:
            body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}).encode()
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordedApi)
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _core_api(server: ThreadingHTTPServer) -> object:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    return client.CoreV1Api(client.ApiClient(configuration))


def test_node_zone_from_recorded_response(api_server: ThreadingHTTPServer) -> None:
    assert zone.node_zone(NODE, _core_api(api_server)) == "eu-west-1b"
    assert api_server.paths == [f"/api/v1/nodes/{NODE}"]  # type: ignore[attr-defined]


def test_detect_zone_prefers_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_NODE_NAME", NODE)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert zone.detect_zone("zone-from-flag") == "zone-from-flag"


def test_detect_zone_outside_cluster_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("SHOAL_NODE_NAME", NODE)
    assert zone.detect_zone("") == ""


def test_detect_zone_failure_runs_zoneless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_NODE_NAME", NODE)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # no service account token here: load fails
    assert zone.detect_zone("") == ""
