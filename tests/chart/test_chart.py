"""The Helm chart: lint, schema, every rendered object valid for Kubernetes 1.33, and what each object says."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from chart.chartlib import (
    CHART,
    KUBE_VERSION,
    ROOT,
    SCENARIOS,
    Obj,
    container,
    env,
    find,
    helm,
    helm_args,
    one,
    pod_spec,
    render,
    template_text,
)

pytestmark = pytest.mark.chart

# Kinds kubernetes-validate has no schema for (CRDs), each checked against a schema of ours instead.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): Path(__file__).parent / "schemas" / "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): Path(__file__).parent / "schemas" / "prometheusrule.json",
    ("cert-manager.io/v1", "Certificate"): Path(__file__).parent / "schemas" / "certmanager.json",
    ("cert-manager.io/v1", "Issuer"): Path(__file__).parent / "schemas" / "certmanager.json",
}
OPTIONAL_KINDS = (
    "ServiceMonitor",
    "PrometheusRule",
    "NetworkPolicy",
    "ConfigMap",
    "DaemonSet",
    "Certificate",
    "Issuer",
)
# The oldest Kubernetes with native sidecars (what the examples need) and the newest we validate against.
KUBE_VERSIONS = ("1.29.0", KUBE_VERSION)
TRACKER_FQDN = "shoal-tracker-headless.shoal.svc.cluster.local:7400"


@pytest.fixture(scope="module")
def default() -> list[Obj]:
    return render()


@pytest.fixture(scope="module")
def all_on() -> list[Obj]:
    return render(SCENARIOS["all-optional"])


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_strict(scenario: str) -> None:
    cmd = [str(helm()), "lint", "--strict", str(CHART), *helm_args(SCENARIOS[scenario])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_is_valid_for_kubernetes(scenario: str, version: str) -> None:
    objs = render(SCENARIOS[scenario])
    assert objs
    for obj in objs:
        where = f"{scenario}: {obj['kind']}/{obj['metadata']['name']} (Kubernetes {version})"
        crd = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        try:
            if crd is not None:
                jsonschema.validate(obj, json.loads(crd.read_text()))
            else:
                kubernetes_validate.validate(obj, version, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as err:
            pytest.fail(f"{where}: {err.message}")


def test_validation_rejects_what_kubernetes_would() -> None:
    """The validators really are strict: an unknown field and a misspelt kind both fail."""
    deployment = one(render(), "Deployment")
    container(deployment)["readinessProbe"]["grpcc"] = {"port": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)
    monitor = one(render(SCENARIOS["all-optional"]), "ServiceMonitor", "shoal-tracker")
    monitor["spec"]["endpoints"][0]["intervall"] = "5s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            monitor, json.loads(CRD_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")].read_text())
        )


@pytest.mark.parametrize(
    "sets, message",
    [
        (["peer.bogus=1"], "additional properties 'bogus' not allowed"),
        (["tracker.replicas=0"], "minimum"),
        (["image.pullPolicy=Sometimes"], "pullPolicy"),
        (["tracker.topologySpread.zones=Maybe"], "zones"),
        (["peer.persistence.retentionPolicy.whenDeleted=Keep"], "whenDeleted"),
        (["peer.config.chunkSize=1024"], "chunkSize"),
        (["peer.config.chunkSize=16777217"], "chunkSize"),
        (["peer.config.chunkSize=4 MiB"], "chunkSize"),
        (["peer.config.chunkSize=8KiB"], "8KiB is 8192 bytes, below the minimum of 16384"),
        (["peer.config.chunkSize=17MiB"], "17MiB is 17825792 bytes, above the maximum of 16777216"),
        (["peer.config.uploadLimit=fast"], "uploadLimit"),
        (["logFormat=xml"], "logFormat"),
        (["image.digest=latest"], "digest"),
        (["peer.pdb.maxUnavailable=many"], "maxUnavailable"),
        (["peer.nodeLocal.hostPath=relative/dir"], "hostPath"),
    ],
)
def test_schema_rejects_bad_values(sets: list[str], message: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as caught:
        template_text(sets=sets)
    assert message in caught.value.stderr


def test_values_files_point_at_the_schema() -> None:
    for name in ("values.yaml", "values-kind.yaml", "values-eks.yaml"):
        first = (CHART / name).read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=values.schema.json", name


def _undocumented(lines: list[str]) -> list[str]:
    """Keys of values.yaml with no `# --` comment on them, on an ancestor, or on all of their children."""
    keys: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = re.match(r"^( *)([A-Za-z0-9_]+):", line)
        if match:
            keys.append((len(match.group(1)), match.group(2), any(c.startswith("# --") for c in comment)))
        if stripped:
            comment = []

    missing: list[str] = []

    def walk(start: int, parent_doc: bool, path: str) -> tuple[bool, int]:
        indent, key, documented = keys[start]
        documented = documented or parent_doc
        end = start + 1
        children_ok = True
        has_children = False
        while end < len(keys) and keys[end][0] > indent:
            has_children = True
            ok, end = walk(end, documented, f"{path}{key}.")
            children_ok = children_ok and ok
        ok = documented or (has_children and children_ok)
        if not ok and not has_children:
            missing.append(f"{path}{key}")
        return ok, end

    index = 0
    while index < len(keys):
        _, index = walk(index, False, "")
    return missing


def test_every_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    assert lines[0] == "# yaml-language-server: $schema=values.schema.json"
    assert _undocumented(lines) == []
    assert _undocumented(["#", "a:", "  # -- doc", "  b: 1", "  c: 2"]) == ["a.c"]


def _props(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_schema_is_strict_and_covers_values_yaml() -> None:
    """additionalProperties false on every object the chart owns, and every key of values.yaml declared."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defs = schema["definitions"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def check(node: Any, sub: dict[str, Any], path: str) -> None:
        sub = _props(sub, defs)
        if not isinstance(node, dict) or "properties" not in sub:
            return
        if path == ".global":  # a parent chart's globals: anything may be there
            assert sub.get("additionalProperties") is True
            return
        assert sub.get("additionalProperties") is False, f"{path or '/'} is not strict"
        for key, value in node.items():
            assert key in sub["properties"], f"{path}.{key} missing from values.schema.json"
            check(value, sub["properties"][key], f"{path}.{key}")

    check(values, schema, "")


def test_trackers(default: list[Obj]) -> None:
    deployment = one(default, "Deployment", "shoal-tracker")
    assert deployment["spec"]["replicas"] == 2
    pod = pod_spec(deployment)
    keys = {(c["topologyKey"], c["whenUnsatisfiable"]) for c in pod["topologySpreadConstraints"]}
    assert keys == {("kubernetes.io/hostname", "ScheduleAnyway"), ("topology.kubernetes.io/zone", "ScheduleAnyway")}
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "tracker"
    ctr = container(deployment)
    assert ctr["args"] == ["tracker"]
    assert env(ctr)["SHOAL_LISTEN"]["value"] == "0.0.0.0:7400"
    assert env(ctr)["SHOAL_METRICS_PORT"]["value"] == "9400"
    assert {p["name"]: p["containerPort"] for p in ctr["ports"]} == {"grpc": 7400, "health": 7410, "metrics": 9400}
    assert "SHOAL_REQUIRE_PEER_SECRETS" not in env(ctr)  # off by default: older peers still join during a rollout
    pdb = one(default, "PodDisruptionBudget", "shoal-tracker")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pod["automountServiceAccountToken"] is False


def test_tracker_services(default: list[Obj]) -> None:
    headless = one(default, "Service", "shoal-tracker-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    assert one(default, "Service", "shoal-tracker")["spec"]["type"] == "ClusterIP"
    selector = one(default, "Deployment", "shoal-tracker")["spec"]["selector"]["matchLabels"]
    for service in find(default, "Service"):
        assert "helm.sh/chart" not in service["spec"]["selector"]
    assert headless["spec"]["selector"] == selector


def test_peers(default: list[Obj]) -> None:
    sts = one(default, "StatefulSet", "shoal-peer")
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == "shoal-peer-headless"
    assert one(default, "Service", "shoal-peer-headless")["spec"]["clusterIP"] == "None"
    assert sts["spec"]["replicas"] == 3
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    ctr = container(sts)
    assert ctr["args"] == ["peer"]
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    assert mounts == {"/data": "data", "/tmp": "tmp", "/etc/shoal/tls": "tls"}
    names = [e["name"] for e in ctr["env"]]
    variables = env(ctr)
    # $(POD_IP) only expands if POD_IP is defined earlier in the list.
    assert names.index("POD_IP") < names.index("SHOAL_ADVERTISE")
    assert variables["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert variables["SHOAL_ADVERTISE"]["value"] == "$(POD_IP):7401"
    assert variables["SHOAL_TRACKER"]["value"] == TRACKER_FQDN
    assert (
        variables["SHOAL_DATA_DIR"]["value"] == "/data/store"
    )  # `kubectl exec ... shoal get` finds the socket; outputs go beside it
    assert variables["SHOAL_CHUNK_SIZE"]["value"] == "1048576"
    assert variables["SHOAL_METRICS_PORT"]["value"] == "9401"
    assert variables["SHOAL_LOG_FORMAT"]["value"] == "json"
    assert {p["name"]: p["containerPort"] for p in ctr["ports"]} == {"grpc": 7401, "health": 7411, "metrics": 9401}
    pdb = one(default, "PodDisruptionBudget", "shoal-peer")
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["selector"] == sts["spec"]["selector"]
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    pod = pod_spec(sts)
    assert pod["terminationGracePeriodSeconds"] == 30
    assert ctr["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]


def test_probes_are_native_grpc(default: list[Obj]) -> None:
    # TLS is on by default: the probes ask the plaintext health-only ports (tests/chart/test_chart_tls.py).
    for workload, port in ((one(default, "Deployment"), 7410), (one(default, "StatefulSet"), 7411)):
        ctr = container(workload)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert ctr[probe]["grpc"] == {"port": port}, (workload["kind"], probe)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_restricted_security(scenario: str) -> None:
    objs = render(SCENARIOS[scenario])
    pods = [*find(objs, "Deployment"), *find(objs, "StatefulSet"), *find(objs, "DaemonSet"), *find(objs, "Pod")]
    assert pods
    for workload in pods:
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for ctr in pod["containers"]:
            ctx = ctr["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            tmp = {v["name"]: v for v in pod["volumes"]}["tmp"]
            assert "emptyDir" in tmp
            assert {"mountPath": "/tmp", "name": "tmp"} in ctr["volumeMounts"]
            assert "requests" in ctr["resources"]


def test_resources_are_settable() -> None:
    objs = render(sets=["peer.resources.limits.cpu=2", "tracker.resources.requests.memory=1Gi"])
    assert container(one(objs, "StatefulSet"))["resources"]["limits"]["cpu"] == 2
    assert container(one(objs, "Deployment"))["resources"]["requests"]["memory"] == "1Gi"


def test_optional_objects_off_by_default(default: list[Obj]) -> None:
    for kind in OPTIONAL_KINDS:
        assert find(default, kind) == [], kind


def test_optional_objects_when_enabled(all_on: list[Obj]) -> None:
    monitors = {m["metadata"]["name"]: m for m in find(all_on, "ServiceMonitor")}
    assert set(monitors) == {"shoal-tracker", "shoal-peer"}
    wanted = {"tracker": ["shoal-tracker-headless"], "peer": ["shoal-node-peer-headless", "shoal-peer-headless"]}
    for component, monitor in (("tracker", monitors["shoal-tracker"]), ("peer", monitors["shoal-peer"])):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        endpoint = monitor["spec"]["endpoints"][0]
        assert endpoint["port"] == "metrics"
        # The labels the alerts and the dashboard select on.
        targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
        assert targets == {
            "release": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
            "component": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
        }
        chosen = [s for s in find(all_on, "Service") if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
        assert [s["metadata"]["name"] for s in chosen] == wanted[component]
        assert all("metrics" in {p["name"] for p in s["spec"]["ports"]} for s in chosen)
    dashboard = one(all_on, "ConfigMap", "shoal-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert json.loads(dashboard["data"]["shoal.json"]) == json.loads((ROOT / "dashboards" / "shoal.json").read_text())
    assert len(find(all_on, "NetworkPolicy")) == 2
    assert one(all_on, "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert one(all_on, "DaemonSet")["metadata"]["name"] == "shoal-node-peer"


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and In/NotIn/Exists expressions) selects these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def test_network_policies(all_on: list[Obj]) -> None:
    tracker = one(all_on, "NetworkPolicy", "shoal-tracker")
    assert tracker["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert tracker["spec"]["egress"] == []
    ingress_ports = [[p["port"] for p in rule["ports"]] for rule in tracker["spec"]["ingress"]]
    assert ingress_ports == [[7400], [9400]]
    clients = tracker["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]

    assert tracker["spec"]["ingress"][0]["from"][1]["podSelector"] == {"matchLabels": {"shoal/peer": "true"}}
    assert clients["values"] == ["peer", "node-peer", "test"]

    peer = one(all_on, "NetworkPolicy", "shoal-peer")
    peer_pod = {"app.kubernetes.io/name": "shoal", "app.kubernetes.io/instance": "shoal"}
    for component in ("peer", "node-peer"):
        assert selects(peer["spec"]["podSelector"], {**peer_pod, "app.kubernetes.io/component": component})
    assert not selects(peer["spec"]["podSelector"], {**peer_pod, "app.kubernetes.io/component": "tracker"})
    ingress = peer["spec"]["ingress"]
    assert [[p["port"] for p in rule["ports"]] for rule in ingress] == [[7401], [9401]]
    release_peers, sidecars = ingress[0]["from"]
    assert selects(release_peers["podSelector"], {**peer_pod, "app.kubernetes.io/component": "node-peer"})
    assert sidecars["podSelector"] == {"matchLabels": {"shoal/peer": "true"}}
    assert ingress[1]["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    egress = peer["spec"]["egress"]
    assert [sorted((p["port"], p["protocol"]) for p in rule["ports"]) for rule in egress] == [
        [(7401, "TCP")],
        [(7400, "TCP")],
        [(53, "TCP"), (53, "UDP")],
        [(443, "TCP")],
    ]
    assert selects(egress[0]["to"][0]["podSelector"], {**peer_pod, "app.kubernetes.io/component": "peer"})
    assert egress[0]["to"][1]["podSelector"] == {"matchLabels": {"shoal/peer": "true"}}
    assert egress[1]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "tracker"
    assert egress[3]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/16"}}]


def test_zone_from_node_rbac(default: list[Obj]) -> None:
    sts = one(default, "StatefulSet")
    variables = env(container(sts))
    assert variables["SHOAL_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "SHOAL_ZONE" not in variables
    pod = pod_spec(sts)
    assert pod["serviceAccountName"] == "shoal-peer"
    assert pod["automountServiceAccountToken"] is True
    role = one(default, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    binding = one(default, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "shoal-peer", "namespace": "shoal"}]
    assert one(default, "ServiceAccount", "shoal-peer")["automountServiceAccountToken"] is False


def test_static_zone_needs_no_rbac() -> None:
    objs = render(SCENARIOS["static-zone"])
    sts = one(objs, "StatefulSet")
    variables = env(container(sts))
    assert variables["SHOAL_ZONE"]["value"] == "eu-west-1a"
    assert "SHOAL_NODE_NAME" not in variables
    assert pod_spec(sts)["automountServiceAccountToken"] is False
    assert find(objs, "ClusterRole") == [] and find(objs, "ClusterRoleBinding") == []
    tracker = env(container(one(objs, "Deployment")))
    assert tracker["SHOAL_PEER_TTL"]["value"] == "12"
    assert tracker["SHOAL_ANNOUNCE_INTERVAL"]["value"] == "4"


def test_minimal() -> None:
    objs = render(SCENARIOS["minimal"])
    assert one(objs, "Deployment")["spec"]["replicas"] == 1
    sts = one(objs, "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in pod_spec(sts)["volumes"]
    assert "topologySpreadConstraints" not in pod_spec(sts)
    assert "lifecycle" not in container(sts)
    assert "SHOAL_METRICS_PORT" not in env(container(sts))
    assert [p["name"] for p in container(sts)["ports"]] == ["grpc"]  # minimal: TLS off, probes on the gRPC port
    assert container(sts)["readinessProbe"]["grpc"] == {"port": 7401}
    assert "SHOAL_TLS_CERT" not in env(container(sts)) and find(objs, "Secret") == []
    assert find(objs, "PodDisruptionBudget") == [] and find(objs, "Pod") == [] and find(objs, "ClusterRole") == []


def test_eks_values_spread_over_zones() -> None:
    objs = render(SCENARIOS["eks"])
    tracker = pod_spec(one(objs, "Deployment"))
    assert {c["topologyKey"]: c["whenUnsatisfiable"] for c in tracker["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname": "DoNotSchedule",
        "topology.kubernetes.io/zone": "DoNotSchedule",
    }
    sts = one(objs, "StatefulSet")
    zones = {c["topologyKey"]: c["whenUnsatisfiable"] for c in pod_spec(sts)["topologySpreadConstraints"]}
    assert zones["topology.kubernetes.io/zone"] == "DoNotSchedule"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "gp3"
    assert len(find(objs, "ServiceMonitor")) == 2


def test_kind_values_use_the_loaded_image() -> None:
    objs = render(SCENARIOS["kind"])
    for workload in (one(objs, "Deployment"), one(objs, "StatefulSet"), one(objs, "Pod")):
        ctr = container(workload)
        assert (ctr["image"], ctr["imagePullPolicy"]) == ("shoal:dev", "Never")


def test_helm_test_pod_transfers_between_two_daemons(default: list[Obj]) -> None:
    pod = one(default, "Pod", "shoal-test-transfer")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "test"
    ctr = container(pod)
    script = ctr["args"][0]
    assert script.count("shoal peer ") == 2
    assert "put" in script and " get " in script and "sha256sum" in script
    assert env(ctr)["SHOAL_TRACKER"]["value"] == TRACKER_FQDN


def test_helm_test_fetches_the_release_peers_canary(default: list[Obj]) -> None:
    """The test pod finds, through the trackers, the file every release peer published at start, and fetches it."""
    pod = one(default, "Pod", "shoal-test-transfer")
    variables = env(container(pod))
    assert variables["CANARY"]["value"] == "shoal-canary-shoal"
    assert variables["MIN_HOLDERS"]["value"] == "3"  # every StatefulSet peer
    script = container(pod)["args"][0]
    for step in ('search --json "$CANARY"', 'peers --json "$canary"', 'get "$canary"', 'yes "$CANARY"'):
        assert step in script, step
    hook = container(one(default, "StatefulSet"))["lifecycle"]["postStart"]["exec"]["command"]
    assert 'yes "shoal-canary-shoal" | head -c 1048576' in hook[-1]
    assert "shoal put --name shoal-canary-shoal /data/.shoal-canary" in hook[-1]
    assert hook[-1].rstrip().endswith("|| true")  # a failed publish never kills the peer
    no_tests = render(sets=["tests.enabled=false"])
    assert "postStart" not in container(one(no_tests, "StatefulSet"))["lifecycle"]


def test_fullname_override_renames_everything() -> None:
    objs = render(SCENARIOS["eks-like"])
    assert one(objs, "StatefulSet")["metadata"]["name"] == "dist-peer"
    assert env(container(one(objs, "StatefulSet")))["SHOAL_TRACKER"]["value"] == (
        "dist-tracker-headless.shoal.svc.cluster.local:7400"
    )


def test_notes_show_kubectl_exec() -> None:
    cmd = [str(helm()), "install", "shoal", str(CHART), "--namespace", "shoal", "--dry-run=client"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n shoal exec shoal-peer-0 -- shoal put /data/big.iso" in notes
    assert "kubectl -n shoal exec shoal-peer-1 -- shoal get ID --output /data/big.iso" in notes
    assert "helm test shoal -n shoal" in notes


def test_chart_dashboard_is_the_repo_dashboard() -> None:
    source = ROOT / "dashboards" / "shoal.json"
    copy = CHART / "dashboards" / "shoal.json"
    assert source.exists(), "dashboards/shoal.json is missing"
    assert copy.exists(), "charts/shoal/dashboards/shoal.json is missing: run `make chart-dashboard`"
    assert copy.read_bytes() == source.read_bytes(), "chart dashboard is stale: run `make chart-dashboard`"


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    assert "python3 -m venv /opt/venv" in text
    assert "--no-index --find-links /wheels" in text
    assert re.search(r"^USER \$\{UID\}:\$\{UID\}$", text, re.M) and re.search(r"^ARG UID=10001$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["shoal"\]$', text, re.M)
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore and "!.cache/wheelhouse/*.whl" in ignore


def test_skaffold() -> None:
    text = (ROOT / "skaffold.yaml").read_text()
    config = yaml.safe_load(text)
    (artifact,) = config["build"]["artifacts"]
    assert artifact["image"] == "shoal"
    assert config["build"]["tagPolicy"] == {"gitCommit": {"variant": "AbbrevCommitSha"}}
    (release,) = config["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"] / "Chart.yaml").exists()
    assert release["setValueTemplates"] == {
        "image.repository": "{{.IMAGE_REPO_shoal}}",
        "image.tag": "{{.IMAGE_TAG_shoal}}",
    }
    profiles = {p["name"]: p for p in config["profiles"]}
    assert set(profiles) == {"kind", "eks"}
    for name, profile in profiles.items():
        comment = re.search(rf"((?:^  #.*\n)+)  - name: {name}$", text, re.M)
        assert comment and name in comment.group(1), f"profile {name} has no comment saying when to use it"
        files = [op["value"] for op in profile["patches"] if op["path"].endswith("/valuesFiles")]
        assert files and all((ROOT / f).exists() for f in files[0]), name


def test_trackers_can_require_peer_secrets_after_a_rollout() -> None:
    deployment = one(render(sets=["tracker.requirePeerSecrets=true"]), "Deployment", "shoal-tracker")
    assert env(container(deployment))["SHOAL_REQUIRE_PEER_SECRETS"]["value"] == "true"
