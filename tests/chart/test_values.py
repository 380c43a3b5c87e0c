"""What the newer values do to the rendered objects: image, pull secrets, sizes, logs, extras, node-local peers."""

from __future__ import annotations

import subprocess

import pytest
from chart.chartlib import SCENARIOS, Obj, container, env, find, one, pod_spec, render, template_text

pytestmark = pytest.mark.chart

DIGEST = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def all_on() -> list[Obj]:
    return render(SCENARIOS["all-optional"])


def _workloads(objs: list[Obj]) -> list[Obj]:
    return [*find(objs, "Deployment"), *find(objs, "StatefulSet"), *find(objs, "DaemonSet"), *find(objs, "Pod")]


@pytest.mark.parametrize(
    "sets, image",
    [
        ([], "shoal:0.1.0"),
        (["image.tag=dev"], "shoal:dev"),
        (["image.registry=ghcr.io/acme"], "ghcr.io/acme/shoal:0.1.0"),
        (["image.registry=ghcr.io/acme/", "global.imageRegistry=mirror.local"], "mirror.local/shoal:0.1.0"),
        ([f"image.digest={DIGEST}", "image.tag=ignored"], f"shoal@{DIGEST}"),
    ],
)
def test_image_reference(sets: list[str], image: str) -> None:
    for workload in _workloads(render(sets=sets)):
        assert container(workload)["image"] == image, workload["metadata"]["name"]


def test_pull_secrets_global_first_without_repeats(all_on: list[Obj]) -> None:
    for workload in _workloads(all_on):
        assert pod_spec(workload)["imagePullSecrets"] == [{"name": "global-regcred"}, {"name": "regcred"}]
    objs = render(sets=["global.imagePullSecrets[0].name=a", "imagePullSecrets[0].name=a"])
    assert all(pod_spec(w)["imagePullSecrets"] == [{"name": "a"}] for w in _workloads(objs))
    assert all("imagePullSecrets" not in pod_spec(w) for w in _workloads(render()))


@pytest.mark.parametrize(
    "size, bytes_",
    [("16384", "16384"), ("4MiB", "4194304"), ("4Mi", "4194304"), ("2M", "2000000"), ("1.5MiB", "1572864")],
)
def test_chunk_size_with_units(size: str, bytes_: str) -> None:
    sts = one(render(sets=[f"peer.config.chunkSize={size}"]), "StatefulSet")
    assert env(container(sts))["SHOAL_CHUNK_SIZE"]["value"] == bytes_


def test_rate_limits_with_units(all_on: list[Obj]) -> None:
    variables = env(container(one(all_on, "StatefulSet")))
    assert variables["SHOAL_CHUNK_SIZE"]["value"] == "4194304"
    assert variables["SHOAL_UPLOAD_LIMIT"]["value"] == "50000000"
    assert variables["SHOAL_DOWNLOAD_LIMIT"]["value"] == str(100 * 2**20)


def test_a_size_cannot_sneak_past_the_schema() -> None:
    """Strings are range-checked at render time, where the schema cannot see the unit."""
    with pytest.raises(subprocess.CalledProcessError) as caught:
        template_text(sets=["peer.config.chunkSize=0.01KiB"])
    assert "below the minimum of 16384" in caught.value.stderr


def test_log_format(all_on: list[Obj]) -> None:
    for workload in (one(render(), "Deployment"), one(render(), "StatefulSet")):
        assert env(container(workload))["SHOAL_LOG_FORMAT"]["value"] == "json"
    for workload in (one(all_on, "Deployment"), one(all_on, "StatefulSet"), one(all_on, "DaemonSet")):
        assert env(container(workload))["SHOAL_LOG_FORMAT"]["value"] == "text"


def test_extra_volumes_and_annotations(all_on: list[Obj]) -> None:
    for workload in (one(all_on, "Deployment"), one(all_on, "StatefulSet")):
        assert {"name": "certs", "secret": {"secretName": "shoal-certs"}} in pod_spec(workload)["volumes"]
        mount = {"name": "certs", "mountPath": "/etc/shoal/certs", "readOnly": True}
        assert mount in container(workload)["volumeMounts"]
        assert workload["spec"]["template"]["metadata"]["annotations"] == {"example.com/owner": "storage"}


def test_update_strategies(all_on: list[Obj]) -> None:
    tracker = one(render(), "Deployment")
    assert tracker["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    sts = one(all_on, "StatefulSet")
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
    assert one(all_on, "PodDisruptionBudget", "shoal-peer")["spec"]["maxUnavailable"] == "25%"
    assert one(all_on, "DaemonSet")["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1}
    ondelete = one(render(sets=["peer.updateStrategy.type=OnDelete"]), "StatefulSet")
    assert ondelete["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_node_local_peers(all_on: list[Obj]) -> None:
    ds = one(all_on, "DaemonSet", "shoal-node-peer")
    pod = pod_spec(ds)
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "node-peer"
    # Never selected by the StatefulSet, whose selector says component: peer.
    sts_selector = one(all_on, "StatefulSet")["spec"]["selector"]["matchLabels"]
    assert not sts_selector.items() <= labels.items()
    (volume,) = [v for v in pod["volumes"] if v["name"] == "node"]
    assert volume["hostPath"] == {"path": "/var/lib/shoal/shoal-shoal", "type": "DirectoryOrCreate"}
    ctr = container(ds)
    variables = env(ctr)
    assert variables["SHOAL_DATA_DIR"]["value"] == "/shoal/data"
    assert variables["SHOAL_CONTROL"]["value"] == variables["SHOAL_PEER"]["value"] == "unix:/shoal/run/control.sock"
    assert variables["SHOAL_ADVERTISE"]["value"] == "$(POD_IP):7401"
    assert variables["SHOAL_CHUNK_SIZE"]["value"] == "4194304"  # the same settings as the StatefulSet's peers
    assert {"name": "node", "mountPath": "/shoal"} in ctr["volumeMounts"]
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True and ctr["securityContext"]["capabilities"] == {
        "drop": ["ALL"]
    }
    (prepare,) = pod["initContainers"]
    assert prepare["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert "chown 10001:10001 /shoal/data /shoal/run /shoal/files" in prepare["args"][0]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    service = one(all_on, "Service", "shoal-node-peer-headless")
    assert service["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]


def test_node_local_dir_is_per_release() -> None:
    objs = render(
        sets=["peer.nodeLocal.enabled=true", "peer.nodeLocal.hostPath=/mnt/shoal/"], release="r2", namespace="n2"
    )
    (volume,) = [v for v in pod_spec(one(objs, "DaemonSet"))["volumes"] if v["name"] == "node"]
    assert volume["hostPath"]["path"] == "/mnt/shoal/n2-r2"
