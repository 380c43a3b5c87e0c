"""Pod-level peers: the chart's shoal.sidecar templates, used from a parent chart, and examples/sidecar/."""

from __future__ import annotations

import subprocess

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from chart.chartlib import Obj, env
from tools.rehearsal.chart import render_parent
from tools.rehearsal.examples import SIDECAR, sidecar_deployment

pytestmark = pytest.mark.chart

KUBE_VERSIONS = ("1.29.0", "1.33.0")


def _example() -> Obj:
    doc: Obj = yaml.safe_load((SIDECAR / "deployment.yaml").read_text())
    return doc


def test_example_is_what_the_templates_render() -> None:
    assert (SIDECAR / "deployment.yaml").read_text() == sidecar_deployment(), (
        "examples/sidecar/deployment.yaml is stale: run `python -m tools.rehearsal.examples`"
    )


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_example_is_valid(version: str) -> None:
    kubernetes_validate.validate(_example(), version, strict=True)


def test_example_pod_is_a_native_sidecar_then_a_fetch() -> None:
    pod = _example()["spec"]["template"]["spec"]
    sidecar, fetch = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always" and "restartPolicy" not in fetch
    # The fetch starts once the daemon serves; with the release's TLS the probe asks the plaintext health port.
    assert sidecar["startupProbe"]["grpc"]["port"] == 7411
    assert env(sidecar)["SHOAL_TLS_CERT"]["value"] == "/etc/shoal/tls/tls.crt"
    assert sidecar["args"] == ["peer"]
    # Both find the daemon through the same data dir, in the volume the app mounts: the output is a hard link.
    assert env(sidecar)["SHOAL_DATA_DIR"]["value"] == env(fetch)["SHOAL_DATA_DIR"]["value"] == "/shared/.shoal"
    assert env(sidecar)["SHOAL_ADVERTISE"]["value"] == "$(POD_IP):7401"
    assert 'shoal get "$SHOAL_FILE" --output "$SHOAL_OUTPUT"' in fetch["args"][0]
    assert env(fetch)["SHOAL_OUTPUT"]["value"] == "/shared/files/model.bin"
    (app,) = pod["containers"]
    assert {"name": "shared", "mountPath": "/shared", "readOnly": True} in app["volumeMounts"]
    assert pod["volumes"] == [
        {"name": "shared", "emptyDir": {"sizeLimit": "2Gi"}},
        {"name": "shoal-tls", "secret": {"secretName": "shoal-peer-tls", "defaultMode": 0o440}},
    ]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for ctr in (sidecar, fetch, app):
        ctx = ctr["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"] == {"drop": ["ALL"]}
    # Sidecar-sized: requests well under a StatefulSet peer's.
    assert sidecar["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}


SIDECAR_ONLY = """\
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  initContainers:
    {{- include "shoal.sidecar" (dict "image" "i:1" "tracker" "t:7400" "port" 7500 "volume" "cache"
        "mountPath" "/cache" "zone" "z1" "resources" (dict "requests" (dict "cpu" "20m"))) | nindent 4 }}
    {{- include "shoal.sidecar.fetch" (dict "image" "i:1" "file" "abc" "output" "/cache/x" "volume" "cache"
        "mountPath" "/cache" "timeoutSeconds" 30) | nindent 4 }}
  containers:
    - name: app
      image: i:1
  volumes:
    - name: cache
      emptyDir: {}
"""


def test_parameters_are_honoured() -> None:
    docs = [d for d in yaml.safe_load_all(render_parent({"pod.yaml": SIDECAR_ONLY})) if d]
    (pod,) = [d for d in docs if d["kind"] == "Pod" and d["metadata"]["name"] == "p"]
    sidecar, fetch = pod["spec"]["initContainers"]
    assert sidecar["ports"][0]["containerPort"] == 7500 and sidecar["startupProbe"]["grpc"]["port"] == 7500
    assert env(sidecar)["SHOAL_ZONE"]["value"] == "z1" and env(sidecar)["SHOAL_TRACKER"]["value"] == "t:7400"
    assert sidecar["volumeMounts"] == [{"name": "cache", "mountPath": "/cache"}]
    assert sidecar["resources"] == {"requests": {"cpu": "20m"}}
    assert "+ 30 ))" in fetch["args"][0] and env(fetch)["SHOAL_DATA_DIR"]["value"] == "/cache/.shoal"
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


@pytest.mark.parametrize(
    "call, message",
    [
        ('include "shoal.sidecar" (dict "tracker" "t:1")', "image is required"),
        ('include "shoal.sidecar" (dict "image" "i")', "tracker is required"),
        ('include "shoal.sidecar.fetch" (dict "image" "i" "output" "/shared/x")', "file is required"),
        ('include "shoal.sidecar.fetch" (dict "image" "i" "file" "f" "output" "/etc/x")', "a path under /shared"),
    ],
)
def test_missing_parameters_fail_the_render(call: str, message: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as caught:
        render_parent({"bad.yaml": "x: {{ " + call + " | quote }}\n"})
    assert message in caught.value.stderr


def test_subchart_reads_global_values() -> None:
    """As a dependency: global.imageRegistry and global.imagePullSecrets reach the subchart's pods."""
    values = "global:\n  imageRegistry: registry.example.com\n  imagePullSecrets:\n    - name: from-global\n"
    docs = [d for d in yaml.safe_load_all(render_parent({}, values)) if d]
    pods = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(pods) == 2
    for workload in pods:
        spec = workload["spec"]["template"]["spec"]
        assert spec["containers"][0]["image"] == "registry.example.com/shoal:0.1.0"
        assert spec["imagePullSecrets"] == [{"name": "from-global"}]
