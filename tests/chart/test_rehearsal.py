"""Cluster rehearsal: the chart's trackers, peers and helm test pod as containers of the real image.

Needs a Docker engine; tools/docker-engine.sh installs and starts one. If it cannot, these tests
fail (they never skip). The tests share one rehearsal and run in file order: each step builds on
the last, as a person's session would. Timings land in .cache/rehearsal/report.json.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from tools.rehearsal import engine
from tools.rehearsal.examples import SIDECAR
from tools.rehearsal.podrun import PodRun, PodRunner
from tools.rehearsal.pods import NODES, pods_using
from tools.rehearsal.scenario import Rehearsal

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.rehearsal, pytest.mark.timeout(900)]

STOP_LIMIT = 5.0  # seconds a daemon may take to exit on SIGTERM
TRACKER_FQDN = "shoal-tracker-headless.shoal.svc.cluster.local"
MIB = 2**20


@pytest.fixture(scope="module")
def rehearsal() -> Iterator[Rehearsal]:
    run = Rehearsal()
    try:
        run.build()
        run.render()
        run.up()
        yield run
    finally:
        try:
            if run.plans:
                run.save_logs()
        finally:
            path = run.write_report()
            logger.warning("rehearsal report: %s\n%s", path, path.read_text())
            run.down()


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", text, re.M)
    assert match, f"{name} not in the scrape"
    return float(match.group(1))


def test_image(rehearsal: Rehearsal) -> None:
    config = engine.docker(
        "image", "inspect", "--format", "{{.Config.User}} {{json .Config.Entrypoint}}", rehearsal.image
    )
    assert config.split() == ["10001:10001", '["shoal"]']
    tools = engine.docker(
        "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", rehearsal.image,
        "-c", "for t in gcc cc make pip pip3 /opt/venv/bin/pip; do command -v $t || true; done",
    )  # fmt: skip
    assert tools.strip() == "", f"build tools in the final image: {tools.split()}"
    assert rehearsal.report["image_size_mib"] < 400


def test_every_pod_becomes_serving(rehearsal: Rehearsal) -> None:
    ready = rehearsal.wait_serving(timeout=120)
    assert set(ready) == {p.pod for p in rehearsal.plans if not p.run_once}
    assert len(rehearsal.of("tracker")) == 2 and len(rehearsal.of("peer")) == 3
    assert set(rehearsal.liveness().values()) == {"SERVING"}


def test_tracker_name_resolves_to_every_replica(rehearsal: Rehearsal) -> None:
    peer = rehearsal.of("peer")[0].pod
    trackers = sorted(p.ip for p in rehearsal.of("tracker"))
    assert sorted(pods_using(rehearsal.plans, TRACKER_FQDN)) == trackers
    assert engine.resolve(peer, TRACKER_FQDN) == trackers
    status = engine.exec_in(peer, "shoal", "status")
    assert f"address   {rehearsal.of('peer')[0].ip}:7401" in status  # SHOAL_ADVERTISE from status.podIP


def test_round_trip(rehearsal: Rehearsal) -> None:
    peers = rehearsal.of("peer")
    trip = rehearsal.round_trip(peers[0].pod, peers[2].pod, "first.bin", 16 * MIB)
    rehearsal.timings["round_trip_1"] = trip.seconds
    assert trip.put_hash == trip.got_hash
    assert "received 16.0 MiB" in trip.get_output


def test_metrics_ports_answer(rehearsal: Rehearsal) -> None:
    peers = rehearsal.of("peer")
    scrapes = rehearsal.scrape_all(peers[1].pod)
    assert set(scrapes) == {p.pod for p in rehearsal.plans if not p.run_once}, "a declared metrics port is missing"
    for pod, (status, _) in scrapes.items():
        assert status == 200, pod
    for tracker in rehearsal.of("tracker"):
        assert _metric(scrapes[tracker.pod][1], "shoal_tracker_live_peers") == 3
    assert _metric(scrapes[peers[2].pod][1], "shoal_peer_downloads_completed_total") >= 1
    assert _metric(scrapes[peers[0].pod][1], "shoal_peer_uploaded_bytes_total") > 0


def test_helm_test_pod_passes(rehearsal: Rehearsal) -> None:
    code, log, _ = rehearsal.run_test_pod(timeout=180)
    assert code == 0, log
    assert "PASS" in log


def _publish(rehearsal: Rehearsal, source: str, name: str, size: int) -> tuple[str, str]:
    """`kubectl exec source -- shoal put` of a random file: (file id, sha256)."""
    engine.exec_in(source, "sh", "-c", f"head -c {size} /dev/urandom > /data/{name}")
    file_id = engine.exec_in(source, "shoal", "put", f"/data/{name}").strip().splitlines()[-1]
    return file_id, engine.exec_in(source, "sha256sum", f"/data/{name}").split()[0]


def _wait_log(container: str, pattern: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = engine.logs(container, tail=50)
        if re.search(pattern, text, re.M):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{container}: no {pattern!r} in its log:\n{text}")
        time.sleep(0.5)


def _holders(rehearsal: Rehearsal, file_id: str) -> str:
    return engine.exec_in(rehearsal.of("peer")[0].pod, "shoal", "peers", file_id, check=False)


def test_sidecar_example_pods_start_with_the_file(rehearsal: Rehearsal) -> None:
    """examples/sidecar: two workload pods each get the file into their emptyDir from the swarm before the app
    starts; the app reads the right bytes; the sidecars serve it on, then leave on SIGTERM."""
    file_id, want = _publish(rehearsal, rehearsal.of("peer")[0].pod, "model.bin", 8 * MIB)
    text = (SIDECAR / "deployment.yaml").read_text().replace("FILE_ID", file_id).replace("shoal:0.1.0", rehearsal.image)
    template: dict[str, Any] = yaml.safe_load(text)["spec"]["template"]
    runner = rehearsal.pod_runner()
    pods: list[PodRun] = []
    for i in range(2):
        pods.append(runner.start(f"model-server-{i}", template, NODES[i]))
    rehearsal.report["sidecar_pods_s"] = {p.name: {k: round(v, 2) for k, v in p.seconds.items()} for p in pods}
    for pod in pods:
        assert pod.exits == {"fetch": 0}
        log = _wait_log(pod.container("app"), r"^[0-9a-f]{64}  /shared/files/model.bin$")
        assert f"{want}  /shared/files/model.bin" in log, log
        assert engine.exec_in(pod.container("app"), "sha256sum", "/shared/files/model.bin").split()[0] == want
        # One copy in the pod: the output is a hard link to the sidecar's store in the same emptyDir.
        assert engine.exec_in(pod.container("app"), "stat", "-c", "%h", "/shared/files/model.bin").strip() == "2"
    holders = _holders(rehearsal, file_id)
    for pod in pods:
        assert f"{pod.ip}:7401" in holders, holders  # each sidecar serves the others
    for pod in pods:
        stops = runner.stop(pod)
        seconds, code = stops[pod.container("shoal")]
        assert code == 0 and seconds < STOP_LIMIT, f"sidecar took {seconds:.1f}s to stop, exit {code}"
    holders = _holders(rehearsal, file_id)
    assert not any(f"{pod.ip}:7401" in holders for pod in pods), f"sidecars did not leave: {holders}"


def _client_pod(host_dir: str, file_id: str, output: str) -> dict[str, Any]:
    """A workload pod that uses its node's node-local peer, as the chart README shows."""
    security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = [
        {"name": "shoal-run", "mountPath": "/shoal/run"},
        {"name": "shoal-files", "mountPath": "/shoal/files", "readOnly": True},
    ]
    return {
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
            "initContainers": [
                {
                    "name": "fetch",
                    # --overwrite: every pod on the node writes the same shared path (the same store copy)
                    "command": [
                        "shoal",
                        "--peer",
                        "unix:/shoal/run/control.sock",
                        "get",
                        file_id,
                        "--overwrite",
                        "--output",
                        output,
                    ],  # fmt: skip
                    "securityContext": security,
                    "volumeMounts": mounts,
                }
            ],
            "containers": [
                {
                    "name": "app",
                    "command": [
                        "/bin/sh",
                        "-c",
                        f"sha256sum {output} && stat -c 'inode %i links %h' {output} && exec sleep infinity",
                    ],
                    "securityContext": security,
                    "volumeMounts": mounts,
                }
            ],
            "volumes": [
                {"name": "shoal-run", "hostPath": {"path": f"{host_dir}/run", "type": "Directory"}},
                {"name": "shoal-files", "hostPath": {"path": f"{host_dir}/files", "type": "Directory"}},
            ],
        }
    }


def test_node_local_peers_serve_the_pods_of_their_node(rehearsal: Rehearsal) -> None:
    """peer.nodeLocal: a DaemonSet pod per node (hostPath store, control socket on the node); pods on a node fetch
    through its socket and share one copy; the node peers join the swarm and leave on SIGTERM."""
    (daemonset,) = [o for o in rehearsal.render_more(["peer.nodeLocal.enabled=true"]) if o["kind"] == "DaemonSet"]
    host_dir = next(v for v in daemonset["spec"]["template"]["spec"]["volumes"] if v["name"] == "node")["hostPath"][
        "path"
    ]
    runner: PodRunner = rehearsal.pod_runner()
    nodes = NODES[:2]
    node_peers = {
        node: runner.start(f"shoal-node-peer-{node[-1]}", daemonset["spec"]["template"], node) for node in nodes
    }
    for run in node_peers.values():
        assert run.exits == {"prepare-host-dir": 0}
        runner.wait_serving(run, "peer", 7411)  # the plaintext health port (the chart runs TLS)
    file_id, want = _publish(rehearsal, rehearsal.of("peer")[1].pod, "node.bin", 8 * MIB)
    clients = [
        (nodes[0], runner.start("node-a-client-0", _client_pod(host_dir, file_id, "/shoal/files/node.bin"), nodes[0])),
        (nodes[0], runner.start("node-a-client-1", _client_pod(host_dir, file_id, "/shoal/files/node.bin"), nodes[0])),
        (nodes[1], runner.start("node-b-client-0", _client_pod(host_dir, file_id, "/shoal/files/node.bin"), nodes[1])),
    ]
    inodes: dict[str, set[str]] = {}
    for node, client in clients:
        assert client.exits == {"fetch": 0}
        log = _wait_log(client.container("app"), r"^inode \d+ links \d+$")
        assert f"{want}  /shoal/files/node.bin" in log, log
        inode, links = re.findall(r"^inode (\d+) links (\d+)$", log, re.M)[0]
        assert int(links) >= 2, log  # a hard link to the node peer's store: one copy on the node
        inodes.setdefault(node, set()).add(inode)
    assert len(inodes[nodes[0]]) == 1, f"two pods on one node got two copies: {inodes}"
    holders = _holders(rehearsal, file_id)
    for run in node_peers.values():
        assert f"{run.ip}:7401" in holders, holders
    for _, client in clients:
        runner.stop(client, grace=1)
    for run in node_peers.values():
        stops = runner.stop(run)
        seconds, code = stops[run.container("peer")]
        assert code == 0 and seconds < STOP_LIMIT, f"node peer took {seconds:.1f}s to stop, exit {code}"


def test_round_trip_after_losing_a_tracker(rehearsal: Rehearsal) -> None:
    gone, kept = rehearsal.of("tracker")
    hook, stop, code = rehearsal.terminate(gone.pod)
    rehearsal.timings["tracker_stop"] = stop
    assert stop < STOP_LIMIT and code == 0, f"tracker took {stop:.1f}s to stop, exit {code}"
    peers = rehearsal.of("peer")
    assert engine.resolve(peers[1].pod, TRACKER_FQDN) == [kept.ip]
    trip = rehearsal.round_trip(peers[1].pod, peers[2].pod, "second.bin", 16 * MIB)
    rehearsal.timings["round_trip_2"] = trip.seconds
    assert trip.put_hash == trip.got_hash


def test_daemons_stop_promptly_on_sigterm(rehearsal: Rehearsal) -> None:
    slow = {}
    # Peers first, so their Leave calls find a tracker, as when a release is uninstalled.
    order = [*rehearsal.of("peer"), *rehearsal.of("tracker")]
    for p in order:
        if rehearsal.running(p.pod):
            _, stop, code = rehearsal.terminate(p.pod, run_pre_stop=False)
            if stop >= STOP_LIMIT or code != 0:
                slow[p.pod] = (round(stop, 2), code)
    assert slow == {}, f"(seconds, exit code) of daemons slow to stop on SIGTERM: {slow}"
