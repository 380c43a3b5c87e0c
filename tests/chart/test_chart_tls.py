"""The chart's TLS: generated, cert-manager or existing certificates, mounted, and probed on the health port."""

from __future__ import annotations

import base64

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from chart.chartlib import SCENARIOS, Obj, container, env, find, one, pod_spec, render
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from tools.rehearsal.chart import render_parent

pytestmark = pytest.mark.chart

ROLES = {"tracker": ("Deployment", "shoal-tracker-tls", 7410), "peer": ("StatefulSet", "shoal-peer-tls", 7411)}


def secret_cert(secret: Obj, key: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"][key]))


def test_generated_certificates_chain_to_one_ca_and_name_their_role() -> None:
    objs = render()
    secrets = {s["metadata"]["name"]: s for s in find(objs, "Secret")}
    assert set(secrets) == {"shoal-tracker-tls", "shoal-peer-tls"}
    cas = {secrets[name]["data"]["ca.crt"] for name in secrets}
    assert len(cas) == 1  # one CA for the release
    for role, (_, name, _) in ROLES.items():
        secret = secrets[name]
        assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
        cert, ca = secret_cert(secret, "tls.crt"), secret_cert(secret, "ca.crt")
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [f"shoal-{role}"]
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)


@pytest.mark.parametrize("scenario", ["default", "all-optional", "eks-like"])
def test_daemons_mount_their_certificate_and_probe_the_health_port(scenario: str) -> None:
    objs = render(SCENARIOS[scenario])
    existing = "shoal-mtls" if scenario == "eks-like" else None
    for role, (kind, secret, health) in ROLES.items():
        workload = one(objs, kind)
        pod, ctr = pod_spec(workload), container(workload)
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == (existing or secret), role
        assert volumes["tls"]["secret"]["defaultMode"] == 0o440
        assert {"name": "tls", "mountPath": "/etc/shoal/tls", "readOnly": True} in ctr["volumeMounts"]
        names = [e["name"] for e in ctr["env"]]
        variables = env(ctr)
        assert variables["SHOAL_TLS_CA"]["value"] == "/etc/shoal/tls/ca.crt"
        assert variables["SHOAL_HEALTH_LISTEN"]["value"] == f"$(POD_IP):{health}"
        assert names.index("POD_IP") < names.index("SHOAL_HEALTH_LISTEN")  # $(POD_IP) expands only if defined first
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert ctr[probe]["grpc"] == {"port": health}, (role, probe)
        assert {"name": "health", "containerPort": health, "protocol": "TCP"} in ctr["ports"]


def test_helm_test_pod_presents_the_peer_certificate() -> None:
    pod = one(render(), "Pod")
    assert {v["name"]: v for v in pod_spec(pod)["volumes"]}["tls"]["secret"]["secretName"] == "shoal-peer-tls"
    assert env(container(pod))["SHOAL_TLS_KEY"]["value"] == "/etc/shoal/tls/tls.key"


def test_cert_manager_issues_both_roles_from_the_release_ca() -> None:
    objs = render(SCENARIOS["all-optional"])
    assert find(objs, "Secret") == []  # cert-manager writes them
    certs = {c["metadata"]["name"]: c["spec"] for c in find(objs, "Certificate")}
    assert set(certs) == {"shoal-ca", "shoal-tracker", "shoal-peer"}
    assert certs["shoal-ca"]["isCA"] is True
    for role in ("tracker", "peer"):
        spec = certs[f"shoal-{role}"]
        assert spec["secretName"] == f"shoal-{role}-tls" and spec["dnsNames"] == [f"shoal-{role}"]
        assert {"server auth", "client auth"} <= set(spec["usages"])
        assert spec["issuerRef"] == {"name": "shoal-ca", "kind": "Issuer", "group": "cert-manager.io"}
        assert spec["duration"] == "720h" and spec["privateKey"]["rotationPolicy"] == "Always"
    issuers = {i["metadata"]["name"]: i["spec"] for i in find(objs, "Issuer")}
    assert issuers == {"shoal-selfsigned": {"selfSigned": {}}, "shoal-ca": {"ca": {"secretName": "shoal-ca"}}}
    node_peer = pod_spec(one(objs, "DaemonSet"))
    assert {v["name"]: v for v in node_peer["volumes"]}["tls"]["secret"]["secretName"] == "shoal-peer-tls"


def test_cert_manager_with_your_issuer_creates_no_ca() -> None:
    sets = ["tls.certManager.enabled=true", "tls.certManager.issuerRef.name=corp-ca"]
    objs = render(sets=[*sets, "tls.certManager.issuerRef.kind=ClusterIssuer"])
    assert find(objs, "Issuer") == [] and find(objs, "Secret") == []
    refs = [c["spec"]["issuerRef"] for c in find(objs, "Certificate")]
    assert refs == [{"name": "corp-ca", "kind": "ClusterIssuer"}] * 2


def test_an_existing_secret_is_used_by_every_daemon_and_nothing_is_generated() -> None:
    objs = render(SCENARIOS["eks-like"])
    assert find(objs, "Secret") == [] and find(objs, "Certificate") == []


def test_eks_values_turn_network_policies_on() -> None:
    objs = render(SCENARIOS["eks"])
    policies = {p["metadata"]["name"] for p in find(objs, "NetworkPolicy")}
    assert policies == {"shoal-tracker", "shoal-peer"}
    peer = one(objs, "NetworkPolicy", "shoal-peer")
    assert any(rule.get("ports") == [{"port": 443, "protocol": "TCP"}] for rule in peer["spec"]["egress"])


def test_plaintext_when_tls_is_off() -> None:
    objs = render(sets=["tls.enabled=false"])
    assert find(objs, "Secret") == []
    ctr = container(one(objs, "StatefulSet"))
    assert "SHOAL_TLS_CERT" not in env(ctr) and ctr["readinessProbe"]["grpc"] == {"port": 7401}


SIDECAR_TLS = """\
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  initContainers:
    {{- include "shoal.sidecar" (dict "image" "i:1" "tracker" "t:7400" "tlsSecret" "rel-shoal-peer-tls"
        "healthPort" 7600) | nindent 4 }}
  containers:
    - name: app
      image: i:1
  volumes:
    - name: shared
      emptyDir: {}
    {{- include "shoal.sidecar.tlsVolume" (dict "tlsSecret" "rel-shoal-peer-tls") | nindent 4 }}
"""


def test_sidecar_with_tls_secret() -> None:
    template = SIDECAR_TLS
    docs = [d for d in yaml.safe_load_all(render_parent({"pod.yaml": template})) if d]
    (pod,) = [d for d in docs if d["kind"] == "Pod" and d["metadata"]["name"] == "p"]
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["startupProbe"]["grpc"]["port"] == 7600 and env(sidecar)["SHOAL_HEALTH_LISTEN"]["value"] == (
        "$(POD_IP):7600"
    )
    assert {"name": "shoal-tls", "mountPath": "/etc/shoal/tls", "readOnly": True} in sidecar["volumeMounts"]
    assert pod["spec"]["volumes"][-1] == {
        "name": "shoal-tls",
        "secret": {"secretName": "rel-shoal-peer-tls", "defaultMode": 0o440},
    }
    kubernetes_validate.validate(pod, "1.29.0", strict=True)
