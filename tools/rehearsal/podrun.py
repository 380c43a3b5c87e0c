"""Whole pods on Docker, the kubelet's way: a pause container holds the pod's IP, init containers run in order
(native sidecars, restartPolicy Always, keep running once their startup probe passes), then the app containers;
emptyDirs are volumes shared by the pod's containers and hostPath is a directory of the pretend node.

Used for what tools/rehearsal/pods.py does not emulate (one container per pod there): the sidecar example's
workload pods and the node-local DaemonSet with the pods that use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.rehearsal import engine
from tools.rehearsal.pods import (
    Cluster,
    PlanError,
    expand,
    quantity_bytes,
    quantity_cpus,
    secret_volume,
    write_secret_files,
)

logger = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass
class PodRun:
    """One pod: its containers by name, in start order, and what became of them."""

    name: str
    ip: str
    node: str
    containers: list[str] = field(default_factory=list)
    exits: dict[str, int] = field(default_factory=dict)  # init containers that ran to completion
    seconds: dict[str, float] = field(default_factory=dict)

    def container(self, name: str) -> str:
        """The Docker name of one of this pod's containers."""
        return f"{self.name}-{name}"


def _env(ctr: Obj, fields: Mapping[str, str], pod: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in ctr.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
        elif "fieldRef" in item.get("valueFrom", {}):
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in fields:
                raise PlanError(f"{pod}: fieldRef {path} not emulated")
            env[item["name"]] = fields[path]
        else:
            raise PlanError(f"{pod}: env {item['name']}: only value and fieldRef are emulated")
    return env


@dataclass
class PodRunner:
    """Runs pods on the rehearsal's network; `host_root` holds each pretend node's hostPath directories."""

    cluster: Cluster
    network: str
    dns_search: list[str]
    run_id: str
    host_root: Path
    image: str
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)  # the release's Secrets (pods.secrets_of)

    def _volume_args(self, pod: str, node: str, spec: Obj, ctr: Obj) -> list[str]:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        args: list[str] = []
        for mount in ctr.get("volumeMounts", []):
            source = volumes.get(mount["name"])
            read_only = ",readonly" if mount.get("readOnly") else ""
            if source is not None and "emptyDir" in source:
                name = f"{self.run_id}-{pod}-{mount['name']}"
                args += ["--mount", f"type=volume,src={name},dst={mount['mountPath']}{read_only}"]
            elif source is not None and "secret" in source:
                files = secret_volume(source, self.secrets, pod)
                directory = write_secret_files(files, self.host_root.parent / "secrets" / pod / mount["name"])
                args += ["--mount", f"type=bind,src={directory},dst={mount['mountPath']},readonly"]
            elif source is not None and "hostPath" in source:
                path = self.host_root / node / source["hostPath"]["path"].lstrip("/")
                if source["hostPath"].get("type") == "DirectoryOrCreate":
                    path.mkdir(parents=True, exist_ok=True)
                elif not path.is_dir():
                    raise PlanError(f"{pod}: hostPath {source['hostPath']['path']} does not exist on {node}")
                args += ["--mount", f"type=bind,src={path},dst={mount['mountPath']}{read_only}"]
            else:
                raise PlanError(f"{pod}: volume {mount['name']} not emulated")
        return args

    def _run_args(self, run: PodRun, spec: Obj, ctr: Obj, fields: Mapping[str, str]) -> list[str]:
        ctx: Obj = {**spec.get("securityContext", {}), **ctr.get("securityContext", {})}
        uid, gid = ctx.get("runAsUser"), ctx.get("runAsGroup")
        if ctx.get("runAsNonRoot") and uid in (None, 0):
            raise PlanError(f"{run.name}/{ctr['name']}: runAsNonRoot needs a numeric non-zero runAsUser")
        args = ["--name", run.container(ctr["name"]), "--network", f"container:{run.name}"]
        args += ["--label", f"{engine.LABEL}={self.run_id}"]
        if uid is not None:
            args += ["--user", f"{uid}:{gid if gid is not None else uid}"]
        if "fsGroup" in spec.get("securityContext", {}):
            args += ["--group-add", str(spec["securityContext"]["fsGroup"])]
        if ctx.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        for cap in ctx.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        for cap in ctx.get("capabilities", {}).get("add", []):
            args += ["--cap-add", cap]
        if ctx.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        limits: Obj = ctr.get("resources", {}).get("limits", {})
        if "cpu" in limits:
            args += ["--cpus", f"{quantity_cpus(limits['cpu']):g}"]
        if "memory" in limits:
            args += ["--memory", str(quantity_bytes(limits["memory"]))]
        args += self._volume_args(run.name, run.node, spec, ctr)
        env = _env(ctr, fields, run.name)
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        args += ["--stop-timeout", str(int(spec.get("terminationGracePeriodSeconds", 30)))]
        command = [expand(c, env) for c in ctr.get("command", [])]
        rest = [expand(a, env) for a in ctr.get("args", [])]
        if command:
            return [*args, "--entrypoint", command[0], self.image, *command[1:], *rest]
        return [*args, self.image, *rest]

    def wait_serving(self, run: PodRun, container: str, port: int, timeout: float = 120) -> None:
        """Poll a gRPC health check on the pod IP from inside one of its containers until SERVING."""
        self._wait_started(run, {"name": container, "startupProbe": {"grpc": {"port": port}}}, timeout)

    def _wait_started(self, run: PodRun, ctr: Obj, timeout: float) -> None:
        """A native sidecar's startup probe (gRPC), polled from inside it, until SERVING."""
        probe = ctr.get("startupProbe") or ctr.get("readinessProbe")
        if probe is None:
            return
        if "grpc" not in probe:
            raise PlanError(f"{run.name}/{ctr['name']}: only gRPC startup probes are emulated")
        name = run.container(ctr["name"])
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = engine.probe(name, f"{run.ip}:{probe['grpc']['port']}", "", 2.0)
            if status == "SERVING":
                return
            time.sleep(0.5)
        raise AssertionError(f"{name}: startup probe {status} after {timeout:.0f}s\n{engine.logs(name)}")

    def start(self, name: str, pod: Obj, node: str, timeout: float = 180) -> PodRun:
        """Start one pod (a pod template's metadata and spec) on `node`; returns once its app containers run."""
        spec: Obj = pod["spec"]
        run = PodRun(name, self.cluster.next_ip(), node)
        fields = {
            "metadata.name": name,
            "metadata.namespace": self.cluster.namespace,
            "status.podIP": run.ip,
            "status.hostIP": self.cluster.gateway,
            "spec.nodeName": node,
        }
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                source = f"{self.run_id}-{name}-{volume['name']}"
                engine.docker("volume", "create", "--label", f"{engine.LABEL}={self.run_id}", source)
                if "fsGroup" in spec.get("securityContext", {}):  # group-owned and setgid, as the kubelet does
                    engine.docker(
                        "run", "--rm", "--network", "none", "--user", "0:0", "--label", f"{engine.LABEL}={self.run_id}",
                        "--mount", f"type=volume,src={source},dst=/v", "--entrypoint", "/bin/sh", self.image,
                        "-c", f"chgrp {spec['securityContext']['fsGroup']} /v && chmod 2777 /v",
                    )  # fmt: skip
        pause = ["run", "-d", "--name", name, "--hostname", name, "--network", self.network, "--ip", run.ip]
        for domain in self.dns_search:
            pause += ["--dns-search", domain]
        pause += ["--label", f"{engine.LABEL}={self.run_id}", "--entrypoint", "sleep", self.image, "infinity"]
        engine.docker(*pause)
        started = time.monotonic()
        for ctr in spec.get("initContainers", []):
            args = self._run_args(run, spec, ctr, fields)
            run.containers.append(run.container(ctr["name"]))
            if ctr.get("restartPolicy") == "Always":
                engine.docker("run", "-d", *args)
                self._wait_started(run, ctr, timeout)
            else:
                engine.docker("run", "-d", *args)
                code = int(engine.docker("wait", run.container(ctr["name"]), timeout=timeout).strip())
                run.exits[ctr["name"]] = code
                if code != 0:
                    raise AssertionError(
                        f"{name}: init container {ctr['name']} exited {code}\n{engine.logs(run.container(ctr['name']))}"
                    )
            run.seconds[ctr["name"]] = time.monotonic() - started
        for ctr in spec["containers"]:
            engine.docker("run", "-d", *self._run_args(run, spec, ctr, fields))
            run.containers.append(run.container(ctr["name"]))
        run.seconds["app_started"] = time.monotonic() - started
        return run

    def stop(self, run: PodRun, grace: int = 30) -> dict[str, tuple[float, int]]:
        """Stop a pod as the kubelet does: app containers first, then sidecars in reverse; (seconds, exit code)."""
        result: dict[str, tuple[float, int]] = {}
        for container in reversed(run.containers):
            state = engine.docker("inspect", "--format", "{{.State.Running}}", container, check=False).strip()
            if state != "true":
                continue
            seconds = engine.timed_stop(container, grace)
            code = int(engine.docker("inspect", "--format", "{{.State.ExitCode}}", container).strip())
            result[container] = (seconds, code)
        engine.docker("rm", "-f", run.name, check=False)
        return result
