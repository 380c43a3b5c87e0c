"""The cluster rehearsal: the chart's pods as containers of the real image, used the way a person would."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.rehearsal import engine
from tools.rehearsal.chart import ROOT, render
from tools.rehearsal.podrun import PodRunner
from tools.rehearsal.pods import Cluster, ContainerPlan, check_aliases, docker_run_args, plan, secrets_of

logger = logging.getLogger(__name__)

REPORT_DIR = ROOT / ".cache" / "rehearsal"


@dataclass
class RoundTrip:
    """One `shoal put` on a peer and `shoal get` of it on another, with what each printed."""

    source: str
    target: str
    file_id: str
    size: int
    seconds: float
    put_hash: str
    got_hash: str
    get_output: str
    attempts: int


@dataclass
class Rehearsal:
    """Builds the image, runs every pod the chart renders, and records what happened and how long it took."""

    image: str = "shoal:rehearsal"
    base_image: str = ""
    subnet: str = field(default_factory=lambda: os.environ.get("SHOAL_REHEARSAL_SUBNET", "10.244.77.0/24"))
    namespace: str = "shoal"
    release: str = "shoal"
    values: tuple[str, ...] = ()
    cluster_domain: str = "cluster.local"  # the chart's clusterDomain
    run_id: str = field(default_factory=lambda: f"rehearsal-{secrets.token_hex(3)}")
    report: dict[str, Any] = field(default_factory=lambda: {"timings_s": {}, "stops_s": {}})
    plans: list[ContainerPlan] = field(default_factory=list)
    # The first render's Secrets: later renders generate new certificates, so every pod uses these.
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    started_engine: bool = False
    _started_at: dict[str, float] = field(default_factory=dict)

    @property
    def network(self) -> str:
        return self.run_id

    @property
    def timings(self) -> dict[str, float]:
        timings: dict[str, float] = self.report["timings_s"]
        return timings

    def of(self, component: str) -> list[ContainerPlan]:
        """Plans of one component (tracker, peer, test), in pod order."""
        return [p for p in self.plans if p.component == component]

    def build(self) -> None:
        """Start the engine (fails loudly if it can't) and build the image with tools/build-image.sh."""
        self.started_engine = engine.start_engine()
        engine.remove_labelled()  # whatever an interrupted earlier run left
        self.timings["image_build"] = engine.build_image(self.image, self.base_image)
        self.report["image"] = self.image
        self.report["image_size_mib"] = round(engine.image_size(self.image) / 2**20, 1)

    def render(self) -> None:
        """Render the chart for this image and plan a container per pod."""
        repository, _, tag = self.image.rpartition(":")
        sets = [f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=Never"]
        objs = render(self.values, sets, self.release, self.namespace)
        self.cluster = Cluster(self.namespace, self.cluster_domain, ipaddress.IPv4Network(self.subnet), self.run_id)
        self.plans = plan(objs, self.cluster)
        self.secrets = secrets_of(objs)
        check_aliases(self.plans)
        self.report["pods"] = {p.pod: {"ip": p.ip, "node": p.node, "aliases": p.aliases} for p in self.plans}

    def render_more(self, sets: list[str]) -> list[Any]:
        """The chart rendered again for this image with extra --set flags (e.g. to turn on node-local peers)."""
        repository, _, tag = self.image.rpartition(":")
        base = [f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=Never"]
        return render(self.values, base + sets, self.release, self.namespace)

    @property
    def host_root(self) -> Path:
        """Where each pretend node's hostPath directories live on this machine."""
        return REPORT_DIR / self.run_id / "nodes"

    def pod_runner(self) -> PodRunner:
        """Runs whole pods (init containers, native sidecars, shared volumes, hostPath) on this rehearsal's network."""
        return PodRunner(
            self.cluster, self.network, self._dns_search(), self.run_id, self.host_root, self.image, self.secrets
        )

    def _dns_search(self) -> list[str]:
        domain = self.cluster.cluster_domain
        return [f"{self.namespace}.svc.{domain}", f"svc.{domain}", domain]

    def up(self) -> None:
        """Network, volumes (group-owned by fsGroup, as the kubelet does), then every tracker and peer."""
        label = f"{engine.LABEL}={self.run_id}"
        engine.docker(
            "network", "create", "--driver", "bridge", "--subnet", self.subnet,
            "--gateway", self.cluster.gateway, "--label", label, self.network,
        )  # fmt: skip
        for p in self.plans:
            for volume in p.volumes:
                engine.docker("volume", "create", "--label", label, volume)
                if p.fs_group is not None:
                    engine.docker(
                        "run", "--rm", "--network", "none", "--user", "0:0", "--label", label,
                        "--mount", f"type=volume,src={volume},dst=/v", "--entrypoint", "/bin/sh", p.image,
                        "-c", f"chgrp {p.fs_group} /v && chmod 2775 /v",
                    )  # fmt: skip
        started = time.monotonic()
        for p in self.plans:
            if not p.run_once:
                self._run(p)
        self.timings["containers_started"] = time.monotonic() - started

    def _run(self, p: ContainerPlan) -> None:
        secrets_root = self.host_root.parent / "secrets"
        args = docker_run_args(p, self.network, self._dns_search(), {engine.LABEL: self.run_id}, secrets_root)
        self._started_at[p.pod] = time.monotonic()
        engine.docker("run", *args)
        if p.post_start:  # the kubelet runs it beside the entrypoint, right after the container starts
            engine.docker("exec", "-d", p.pod, *p.post_start)

    def wait_serving(self, timeout: float = 120) -> dict[str, float]:
        """Poll every pod's readiness probe, as declared, until SERVING; seconds from `docker run` for each."""
        waiting = [p for p in self.plans if not p.run_once and p.readiness is not None]
        ready: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while waiting and time.monotonic() < deadline:
            for p in list(waiting):
                assert p.readiness is not None
                status = engine.probe(p.pod, f"{p.ip}:{p.readiness.port}", p.readiness.service, p.readiness.timeout)
                last[p.pod] = status
                if status == "SERVING":
                    ready[p.pod] = time.monotonic() - self._started_at[p.pod]
                    waiting.remove(p)
            if waiting:
                time.sleep(0.5)
        if waiting:
            detail = "\n".join(f"{p.pod}: {last.get(p.pod)}\n{engine.logs(p.pod)}" for p in waiting)
            raise AssertionError(f"not SERVING within {timeout:.0f}s:\n{detail}")
        self.timings["all_serving"] = max(ready.values(), default=0.0)
        self.report["serving_s"] = {k: round(v, 2) for k, v in ready.items()}
        return ready

    def liveness(self) -> dict[str, str]:
        """Each pod's liveness probe answer right now."""
        return {
            p.pod: engine.probe(p.pod, f"{p.ip}:{p.liveness.port}", p.liveness.service, p.liveness.timeout)
            for p in self.plans
            if not p.run_once and p.liveness is not None and self.running(p.pod)
        }

    def running(self, pod: str) -> bool:
        """Whether the pod's container is up."""
        state = engine.docker("inspect", "--format", "{{.State.Running}}", pod, check=False).strip()
        return state == "true"

    def round_trip(self, source: str, target: str, name: str, size: int, timeout: float = 90) -> RoundTrip:
        """What a user does: `kubectl exec source -- shoal put`, then `kubectl exec target -- shoal get`."""
        path = f"/data/{name}"
        engine.exec_in(source, "sh", "-c", f"head -c {size} /dev/urandom > {path}")
        started = time.monotonic()
        file_id = engine.exec_in(source, "shoal", "put", path).strip().splitlines()[-1]
        attempts = 0
        deadline = started + timeout
        while True:
            attempts += 1
            done = subprocess.run(
                ["docker", "exec", target, "shoal", "get", file_id, "--output", path],
                capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"shoal get {file_id} on {target} failed {attempts}x: {done.stderr.strip()}")
            time.sleep(1)
        seconds = time.monotonic() - started
        put_hash = engine.exec_in(source, "sha256sum", path).split()[0]
        got_hash = engine.exec_in(target, "sha256sum", path).split()[0]
        trip = RoundTrip(source, target, file_id, size, seconds, put_hash, got_hash, done.stdout.strip(), attempts)
        self.report.setdefault("round_trips", []).append(trip.__dict__)
        return trip

    def scrape_all(self, scraper: str) -> dict[str, tuple[int, str]]:
        """GET /metrics on every running pod's declared metrics port, from inside `scraper` (as Prometheus would)."""
        results: dict[str, tuple[int, str]] = {}
        for p in self.plans:
            if p.metrics_port is not None and not p.run_once and self.running(p.pod):
                results[p.pod] = engine.scrape(scraper, f"http://{p.ip}:{p.metrics_port}/metrics")
        return results

    def run_test_pod(self, timeout: float = 180) -> tuple[int, str, float]:
        """Run the chart's `helm test` pod to completion: (exit code, its log, seconds)."""
        (p,) = self.of("test")
        self._run(p)
        try:
            code = int(engine.docker("wait", p.pod, timeout=timeout).strip())
        except engine.EngineError:
            engine.docker("kill", p.pod, check=False)
            code = -1
        seconds = time.monotonic() - self._started_at[p.pod]
        self.timings["helm_test_pod"] = seconds
        return code, engine.logs(p.pod, tail=200), seconds

    def terminate(self, pod: str, run_pre_stop: bool = True) -> tuple[float, float, int]:
        """Delete a pod the kubelet's way: preStop hook, then SIGTERM with the grace period; (hook s, stop s, exit)."""
        p = next(p for p in self.plans if p.pod == pod)
        hook = 0.0
        if run_pre_stop and p.pre_stop:
            started = time.monotonic()
            engine.exec_in(pod, *p.pre_stop, timeout=p.grace_seconds + 10)
            hook = time.monotonic() - started
        stop = engine.timed_stop(pod, max(1, p.grace_seconds - int(hook)))
        code = int(engine.docker("inspect", "--format", "{{.State.ExitCode}}", pod).strip())
        self.report["stops_s"][pod] = {"pre_stop": round(hook, 2), "stop": round(stop, 2), "exit_code": code}
        return hook, stop, code

    def save_logs(self) -> None:
        """Every container's log into .cache/rehearsal/<run>/."""
        folder = REPORT_DIR / self.run_id
        folder.mkdir(parents=True, exist_ok=True)
        for p in self.plans:
            (folder / f"{p.pod}.log").write_text(engine.logs(p.pod, tail=2000))

    def write_report(self) -> Path:
        """The report as JSON under .cache/rehearsal/; returns its path."""
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        self.report["run_id"] = self.run_id
        self.report["timings_s"] = {k: round(v, 2) for k, v in self.timings.items()}
        path = REPORT_DIR / "report.json"
        path.write_text(json.dumps(self.report, indent=2, sort_keys=True) + "\n")
        return path

    def down(self, stop_engine: bool = True) -> None:
        """Remove this run's containers, volumes, network and image; stop dockerd if we started it."""
        engine.remove_labelled(self.run_id)
        shutil.rmtree(self.host_root, ignore_errors=True)
        engine.remove_images([self.image])
        if stop_engine and self.started_engine:
            engine.stop_engine()
