"""From rendered chart objects to container plans: what the kubelet would run for each pod, made explicit.

Pure: no Docker here. Resolves what Kubernetes resolves at run time (fieldRefs, `$(VAR)` expansion,
Service DNS names, security contexts, volumes) against a pretend cluster with fixed pod IPs.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

NODES = ("rehearsal-node-a", "rehearsal-node-b", "rehearsal-node-c")


class PlanError(Exception):
    """The chart asks for something the rehearsal cannot emulate faithfully."""


@dataclass(frozen=True)
class GrpcProbe:
    """A native gRPC probe: the kubelet dials the pod IP on `port` and asks grpc.health.v1 about `service`."""

    port: int
    service: str
    period: float
    timeout: float


@dataclass
class ContainerPlan:
    """One pod's single container as `docker run` needs it."""

    pod: str
    component: str
    ip: str
    node: str
    hostname: str
    image: str
    entrypoint: list[str] | None
    args: list[str]
    env: dict[str, str]
    labels: dict[str, str]
    aliases: list[str] = field(default_factory=list)
    user: str | None = None
    group_add: list[int] = field(default_factory=list)
    read_only: bool = False
    cap_drop: list[str] = field(default_factory=list)
    cap_add: list[str] = field(default_factory=list)
    no_new_privileges: bool = False
    tmpfs: list[str] = field(default_factory=list)
    volumes: dict[str, str] = field(default_factory=dict)  # docker volume -> mount path
    secret_files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # mount path -> file name -> bytes
    fs_group: int | None = None
    cpus: float | None = None
    memory: int | None = None
    readiness: GrpcProbe | None = None
    liveness: GrpcProbe | None = None
    pre_stop: list[str] | None = None
    post_start: list[str] | None = None
    grace_seconds: int = 30
    ports: dict[str, int] = field(default_factory=dict)
    run_once: bool = False

    @property
    def metrics_port(self) -> int | None:
        """The container port named "metrics", if declared."""
        return self.ports.get("metrics")


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: `$$` escapes, unknown or unclosed references stay as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$" or i + 1 >= len(text):
            out.append(text[i])
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
                continue
            name = text[i + 2 : close]
            out.append(variables[name] if name in variables else f"$({name})")
            i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def quantity_bytes(value: str | int) -> int:
    """A memory quantity (256Mi, 1G, 1e9) in bytes."""
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def quantity_cpus(value: str | int | float) -> float:
    """A CPU quantity (500m, 2) in cores."""
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _probe(spec: Obj | None) -> GrpcProbe | None:
    if spec is None:
        return None
    if "grpc" not in spec:
        raise PlanError(f"only native gRPC probes are emulated, got {sorted(spec)}")
    return GrpcProbe(
        port=int(spec["grpc"]["port"]),
        service=str(spec["grpc"].get("service", "")),
        period=float(spec.get("periodSeconds", 10)),
        timeout=float(spec.get("timeoutSeconds", 1)),
    )


@dataclass
class Cluster:
    """The pretend cluster: namespace, DNS domain, and the pod network the containers live on."""

    namespace: str
    cluster_domain: str
    subnet: ipaddress.IPv4Network
    run_id: str

    def __post_init__(self) -> None:
        self._hosts: Iterator[ipaddress.IPv4Address] = self.subnet.hosts()
        self.gateway = str(next(self._hosts))

    def next_ip(self) -> str:
        """The next free pod IP (fixed in advance, so status.podIP is known before the container starts)."""
        return str(next(self._hosts))

    def service_names(self, service: str) -> list[str]:
        """Every name a pod resolves for a Service: short, namespaced and fully qualified."""
        ns = self.namespace
        return [service, f"{service}.{ns}", f"{service}.{ns}.svc", f"{service}.{ns}.svc.{self.cluster_domain}"]


def _pods(objs: list[Obj]) -> Iterator[tuple[str, str, Obj, Obj]]:
    """(pod name, workload kind, pod template metadata, pod spec) for every pod the objects describe."""
    for obj in objs:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet"):
            for i in range(int(obj["spec"].get("replicas", 1))):
                yield f"{name}-{i}", kind, obj["spec"]["template"]["metadata"], obj
        elif kind == "Pod":
            yield name, kind, obj["metadata"], obj
        elif kind in ("DaemonSet", "Job", "CronJob", "ReplicaSet"):
            raise PlanError(f"{kind} {name}: not emulated")


def secrets_of(objs: list[Obj]) -> dict[str, dict[str, bytes]]:
    """The rendered Secrets' files by Secret name (what a secret volume shows), data decoded."""
    found: dict[str, dict[str, bytes]] = {}
    for obj in objs:
        if obj["kind"] == "Secret":
            files = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            files.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
            found[obj["metadata"]["name"]] = files
    return found


def secret_volume(volume: Obj, secrets: Mapping[str, dict[str, bytes]], pod: str) -> dict[str, bytes]:
    """The files of a secret volume, from a Secret the chart rendered (cert-manager's or yours are not here)."""
    name = volume["secret"]["secretName"]
    if name not in secrets:
        raise PlanError(
            f"{pod}: secret {name} is not rendered by the chart (cert-manager or existingSecret): not emulated"
        )
    return secrets[name]


def write_secret_files(files: Mapping[str, bytes], directory: Path) -> Path:
    """A secret volume's files in a host directory to bind-mount read-only (readable by all: the emulated pod's
    fsGroup cannot own them here, as it does in Kubernetes)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o444)
    return directory


def plan(objs: list[Obj], cluster: Cluster, image: str | None = None) -> list[ContainerPlan]:
    """A container plan for every pod of every workload (and test Pod) in the rendered objects."""
    services = [o for o in objs if o["kind"] == "Service"]
    secrets = secrets_of(objs)
    plans: list[ContainerPlan] = []
    for index, (pod_name, kind, meta, workload) in enumerate(_pods(objs)):
        spec = workload["spec"]["template"]["spec"] if kind != "Pod" else workload["spec"]
        labels: dict[str, str] = dict(meta.get("labels", {}))
        containers = spec["containers"]
        if len(containers) != 1 or spec.get("initContainers"):
            raise PlanError(f"{pod_name}: one container and no init containers are emulated")
        ctr = containers[0]
        ip = cluster.next_ip()
        node = NODES[index % len(NODES)]
        aliases: list[str] = [pod_name]
        for service in services:
            if _matches(service["spec"].get("selector", {}), labels):
                aliases += cluster.service_names(service["metadata"]["name"])
        if kind == "StatefulSet":
            aliases += [f"{pod_name}.{n}" for n in cluster.service_names(workload["spec"]["serviceName"])]
        fields = {
            "metadata.name": pod_name,
            "metadata.namespace": cluster.namespace,
            "status.podIP": ip,
            "status.hostIP": cluster.gateway,
            "spec.nodeName": node,
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        }
        env: dict[str, str] = {}
        for item in ctr.get("env", []):
            if "value" in item:
                env[item["name"]] = expand(str(item["value"]), env)
            elif "fieldRef" in item.get("valueFrom", {}):
                path = item["valueFrom"]["fieldRef"]["fieldPath"]
                if path not in fields:
                    raise PlanError(f"{pod_name}: fieldRef {path} not emulated")
                env[item["name"]] = fields[path]
            else:
                raise PlanError(f"{pod_name}: env {item['name']}: only value and fieldRef are emulated")
        command = [expand(c, env) for c in ctr.get("command", [])] or None
        args = [expand(a, env) for a in ctr.get("args", [])]

        pod_ctx: Obj = spec.get("securityContext", {})
        ctx: Obj = {**pod_ctx, **ctr.get("securityContext", {})}
        uid, gid = ctx.get("runAsUser"), ctx.get("runAsGroup")
        if ctx.get("runAsNonRoot") and uid in (None, 0):
            raise PlanError(f"{pod_name}: runAsNonRoot needs a numeric non-zero runAsUser to check here")
        seccomp = ctx.get("seccompProfile", {}).get("type", "RuntimeDefault")
        if seccomp != "RuntimeDefault":
            raise PlanError(f"{pod_name}: seccomp {seccomp} not emulated (Docker's default profile is RuntimeDefault)")
        volumes_by_name = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        tmpfs: list[str] = []
        volumes: dict[str, str] = {}
        secret_files: dict[str, dict[str, bytes]] = {}
        for mount in ctr.get("volumeMounts", []):
            source = mount["name"]
            if source in claims:  # PVC <template>-<pod>, a named volume
                volumes[f"{cluster.run_id}-{source}-{pod_name}"] = mount["mountPath"]
            elif "emptyDir" in volumes_by_name.get(source, {}):
                tmpfs.append(mount["mountPath"])
            elif "secret" in volumes_by_name.get(source, {}):
                secret_files[mount["mountPath"]] = secret_volume(volumes_by_name[source], secrets, pod_name)
            else:
                raise PlanError(f"{pod_name}: volume {source} not emulated")
        limits: Obj = ctr.get("resources", {}).get("limits", {})
        stop_hook = ctr.get("lifecycle", {}).get("preStop")
        start_hook = ctr.get("lifecycle", {}).get("postStart")
        for hook_name, hook in (("preStop", stop_hook), ("postStart", start_hook)):
            if hook is not None and "exec" not in hook:
                raise PlanError(f"{pod_name}: only exec {hook_name} hooks are emulated")
        plans.append(
            ContainerPlan(
                pod=pod_name,
                component=labels.get("app.kubernetes.io/component", ""),
                ip=ip,
                node=node,
                hostname=pod_name,
                image=image or ctr["image"],
                entrypoint=command,
                args=args,
                env=env,
                labels=labels,
                aliases=aliases,
                user=f"{uid}:{gid if gid is not None else uid}" if uid is not None else None,
                group_add=[int(pod_ctx["fsGroup"])] if "fsGroup" in pod_ctx else [],
                read_only=bool(ctx.get("readOnlyRootFilesystem")),
                cap_drop=list(ctx.get("capabilities", {}).get("drop", [])),
                cap_add=list(ctx.get("capabilities", {}).get("add", [])),
                no_new_privileges=ctx.get("allowPrivilegeEscalation") is False,
                tmpfs=tmpfs,
                volumes=volumes,
                secret_files=secret_files,
                fs_group=int(pod_ctx["fsGroup"]) if "fsGroup" in pod_ctx else None,
                cpus=quantity_cpus(limits["cpu"]) if "cpu" in limits else None,
                memory=quantity_bytes(limits["memory"]) if "memory" in limits else None,
                readiness=_probe(ctr.get("readinessProbe")),
                liveness=_probe(ctr.get("livenessProbe")),
                pre_stop=list(stop_hook["exec"]["command"]) if stop_hook else None,
                post_start=list(start_hook["exec"]["command"]) if start_hook else None,
                grace_seconds=int(spec.get("terminationGracePeriodSeconds", 30)),
                ports={p["name"]: int(p["containerPort"]) for p in ctr.get("ports", []) if "name" in p},
                run_once=kind == "Pod",
            )
        )
    return plans


def docker_run_args(
    p: ContainerPlan,
    network: str,
    dns_search: list[str],
    extra_labels: Mapping[str, str] | None = None,
    secrets_root: Path | None = None,
) -> list[str]:
    """The `docker run` arguments (after `docker run`) that start this plan detached.

    Secret volumes are written under secrets_root (required when the plan has any) and bind-mounted read-only."""
    args = ["-d", "--name", p.pod, "--hostname", p.hostname, "--network", network, "--ip", p.ip]
    for alias in dict.fromkeys(p.aliases):
        args += ["--network-alias", alias]
    for domain in dns_search:
        args += ["--dns-search", domain]
    for key, value in {**p.labels, **(extra_labels or {})}.items():
        args += ["--label", f"{key}={value}"]
    if p.user:
        args += ["--user", p.user]
    for gid in p.group_add:
        args += ["--group-add", str(gid)]
    if p.read_only:
        args.append("--read-only")
    for cap in p.cap_drop:
        args += ["--cap-drop", cap]
    for cap in p.cap_add:
        args += ["--cap-add", cap]
    if p.no_new_privileges:
        args += ["--security-opt", "no-new-privileges"]
    for path in p.tmpfs:  # emptyDir: writable by anyone, like the kubelet's 0777 directories
        args += ["--tmpfs", f"{path}:rw,exec,nosuid,nodev,mode=1777"]
    for volume, path in p.volumes.items():
        args += ["--mount", f"type=volume,src={volume},dst={path},volume-nocopy"]
    for index, (path, files) in enumerate(p.secret_files.items()):
        if secrets_root is None:
            raise PlanError(f"{p.pod}: secret volumes need a secrets_root to write them in")
        source = write_secret_files(files, secrets_root / p.pod / str(index))
        args += ["--mount", f"type=bind,src={source},dst={path},readonly"]
    if p.cpus is not None:
        args += ["--cpus", f"{p.cpus:g}"]
    if p.memory is not None:
        args += ["--memory", str(p.memory)]
    for key, value in p.env.items():
        args += ["--env", f"{key}={value}"]
    args += ["--stop-timeout", str(p.grace_seconds)]
    if p.entrypoint:
        args += ["--entrypoint", p.entrypoint[0], p.image, *p.entrypoint[1:], *p.args]
    else:
        args += [p.image, *p.args]
    return args


def pods_using(plans: list[ContainerPlan], name: str) -> list[str]:
    """IPs of the plans a DNS name resolves to (by network alias)."""
    return [p.ip for p in plans if name in p.aliases]


_ALIAS = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def check_aliases(plans: list[ContainerPlan]) -> None:
    """Every alias is a valid DNS name."""
    for p in plans:
        for alias in p.aliases:
            if not _ALIAS.match(alias):
                raise PlanError(f"{p.pod}: alias {alias!r} is not a DNS name")
