"""The rehearsal's translation of rendered pods into container plans (no Docker needed)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from chart.chartlib import render
from tools.rehearsal.pods import (
    Cluster,
    PlanError,
    docker_run_args,
    expand,
    plan,
    pods_using,
    quantity_bytes,
    quantity_cpus,
)

pytestmark = pytest.mark.chart


@pytest.mark.parametrize(
    "text, want",
    [
        ("$(A):7401", "1.2.3.4:7401"),
        ("$$(A)", "$(A)"),
        ("$(MISSING)", "$(MISSING)"),
        ("$(( $(date +%s) + T ))", "$(( $(date +%s) + T ))"),
        ("$(A", "$(A"),
        ("cost $5", "cost $5"),
        ("end$", "end$"),
    ],
)
def test_expand_like_kubernetes(text: str, want: str) -> None:
    assert expand(text, {"A": "1.2.3.4"}) == want


def test_quantities() -> None:
    assert quantity_bytes("256Mi") == 256 * 2**20
    assert quantity_bytes("1G") == 10**9
    assert quantity_bytes(1024) == 1024
    assert quantity_cpus("500m") == 0.5
    assert quantity_cpus(2) == 2.0


def _cluster() -> Cluster:
    return Cluster("shoal", "cluster.local", ipaddress.IPv4Network("10.244.77.0/24"), "run1")


def test_plan_of_the_default_chart() -> None:
    plans = plan(render(), _cluster(), image="shoal:test")
    by_pod = {p.pod: p for p in plans}
    assert list(by_pod) == [
        "shoal-tracker-0",
        "shoal-tracker-1",
        "shoal-peer-0",
        "shoal-peer-1",
        "shoal-peer-2",
        "shoal-test-transfer",
    ]
    peer = by_pod["shoal-peer-0"]
    assert peer.env["POD_IP"] == peer.ip
    assert peer.env["SHOAL_ADVERTISE"] == f"{peer.ip}:7401"
    assert peer.env["SHOAL_NODE_NAME"] == peer.node
    assert peer.user == "10001:10001" and peer.group_add == [10001] and peer.fs_group == 10001
    assert peer.read_only and peer.cap_drop == ["ALL"] and peer.no_new_privileges
    assert peer.tmpfs == ["/tmp"] and peer.volumes == {"run1-data-shoal-peer-0": "/data"}
    # TLS is on by default: the probe asks the plaintext health port, and the certificate comes from its Secret.
    assert peer.readiness is not None and (peer.readiness.port, peer.readiness.service) == (7411, "")
    assert set(peer.secret_files) == {"/etc/shoal/tls"}
    assert set(peer.secret_files["/etc/shoal/tls"]) == {"ca.crt", "tls.crt", "tls.key"}
    assert peer.env["SHOAL_HEALTH_LISTEN"] == f"{peer.ip}:7411"
    assert peer.pre_stop == ["sleep", "5"] and peer.grace_seconds == 30
    assert peer.post_start is not None and "shoal put --name shoal-canary-shoal" in peer.post_start[-1]
    assert peer.metrics_port == 9401 and peer.memory == 2**30
    assert "shoal-peer-0.shoal-peer-headless.shoal.svc.cluster.local" in peer.aliases
    trackers = sorted(by_pod[f"shoal-tracker-{i}"].ip for i in range(2))
    assert sorted(pods_using(plans, "shoal-tracker-headless.shoal.svc.cluster.local")) == trackers
    assert sorted(pods_using(plans, "shoal-tracker")) == trackers
    test_pod = by_pod["shoal-test-transfer"]
    assert test_pod.run_once and test_pod.entrypoint == ["/bin/sh", "-c"]
    assert test_pod.tmpfs == ["/work", "/tmp"]


def test_docker_run_args(tmp_path: Path) -> None:
    peer = next(p for p in plan(render(), _cluster(), image="shoal:test") if p.pod == "shoal-peer-1")
    args = docker_run_args(peer, "net", ["shoal.svc.cluster.local"], {"shoal.rehearsal": "run1"}, tmp_path)
    joined = " ".join(args)
    assert args[-2:] == ["shoal:test", "peer"]
    for part in (
        f"--ip {peer.ip}",
        "--user 10001:10001",
        "--read-only",
        "--cap-drop ALL",
        "--security-opt no-new-privileges",
        "--tmpfs /tmp:rw,exec,nosuid,nodev,mode=1777",
        "--mount type=volume,src=run1-data-shoal-peer-1,dst=/data,volume-nocopy",
        "--label shoal.rehearsal=run1",
        f"--env SHOAL_ADVERTISE={peer.ip}:7401",
        "--stop-timeout 30",
        f"--mount type=bind,src={tmp_path / 'shoal-peer-1' / '0'},dst=/etc/shoal/tls,readonly",
    ):
        assert part in joined, part
    assert (tmp_path / "shoal-peer-1" / "0" / "tls.key").read_bytes().startswith(b"-----BEGIN")
    with pytest.raises(PlanError, match="secrets_root"):
        docker_run_args(peer, "net", [])


def test_unemulated_features_fail_loudly() -> None:
    objs = render()
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    )
    with pytest.raises(PlanError, match="only value and fieldRef"):
        plan(objs, _cluster())
