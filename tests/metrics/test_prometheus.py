"""Every dashboard query against a real Prometheus scraping a real local swarm, and promtool on every exporter."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers.polling import wait_until

from shoal.localswarm import LocalSwarm, free_port, wait_serving

pytestmark = pytest.mark.metrics

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "shoal.json"
FILE_SIZE = 6 * 1024 * 1024 + 12345
UNKNOWN_ID = "0" * 64
# Grafana variables in queries and what they stand for with 1 s scrapes; the dashboard's own variables
# (namespace, release, pod) take their defaults, which name the release the stack below scrapes.
GRAFANA_VARIABLES = {"__rate_interval": "10s", "__interval": "1s", "__range": "1m"}
NAMESPACE = RELEASE = "shoal"
OTHER_RELEASE = "other"  # the same processes scraped again under another release: never summed with ours
SCOPE = ('namespace="$namespace"', 'release="$release"', 'pod=~"$pod"')
# The disk quota and eviction metrics: every peer exports them (0 without a quota), so their panels have samples.
STORE_METRICS = (
    "shoal_peer_store_bytes",
    "shoal_peer_cache_quota_bytes",
    "shoal_peer_evictions_total",
    "shoal_peer_evicted_bytes_total",
    "shoal_peer_origin_bytes_total",  # every scheme and outcome starts at 0 (tests/origins checks real imports)
)
SETTLE = 3.0  # seconds after the downloads at which every query is evaluated


def need(binary: Path) -> str:
    """The path of a binary the suite needs; fail (never skip) when it is missing."""
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `make system-deps` (installs the prometheus package)")
    return str(binary)


def http_get(url: str, timeout: float = 5.0) -> bytes:
    """GET a URL on 127.0.0.1."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return bytes(reply.read())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target in the dashboard, rows and collapsed rows included."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend((panel["title"], target["expr"]) for target in panel.get("targets", []) if target.get("expr"))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return found


def dashboard_variables() -> dict[str, str]:
    """The dashboard's own variables at their defaults (All stands for the variable's allValue)."""
    found: dict[str, str] = {}
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if variable["type"] != "query":
            continue
        current = variable["current"]["value"]
        found[variable["name"]] = variable["allValue"] if current == "$__all" else current
    return found


def substitute(expr: str) -> str:
    """Replace $__rate_interval, $namespace and friends; fail on any variable left over."""
    known = {**GRAFANA_VARIABLES, **dashboard_variables()}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in known:
            pytest.fail(f"no test value for Grafana variable {match.group(0)} in {expr}")
        return known[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


@dataclass
class Stack:
    """The swarm, Prometheus's base URL and the moment the downloads were over."""

    swarm: LocalSwarm
    prometheus: str
    done_at: float

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query over HTTP; the result vector."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        body = json.loads(http_get(f"{self.prometheus}/api/v1/query?{urllib.parse.urlencode(params)}"))
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def run_downloads(swarm: LocalSwarm, workdir: Path) -> None:
    """Put a file on peer0, get it on every other peer at once, then a get of an id nobody holds."""
    source = workdir / "payload.bin"
    source.write_bytes(bytes(range(256)) * (FILE_SIZE // 256) + b"x" * (FILE_SIZE % 256))
    seeder, *leechers = swarm.peers
    file_id = swarm.cli(seeder, "put", str(source)).stdout.strip().splitlines()[-1]
    time.sleep(swarm.announce_interval * 1.5)  # let both trackers hear of it
    gets = [
        subprocess.Popen(
            [sys.executable, "-m", "shoal.cli", "--peer", peer.control, "get", file_id, "-o", str(workdir / peer.name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for peer in leechers
    ]
    for get in gets:
        _, err = get.communicate(timeout=120)
        assert get.returncode == 0, err
    for peer in leechers:
        assert (workdir / peer.name).read_bytes() == source.read_bytes()
    missing = swarm.cli(leechers[0], "get", UNKNOWN_ID, "-o", str(workdir / "missing"), check=False)
    assert missing.returncode != 0


def keep_calling(swarm: LocalSwarm, seconds: float) -> None:
    """Unary calls across several scrapes. Peers hold their tracker leases with quiet streams, and a short download's
    call counters are born with their final value (no increase between two scrapes): rate panels need calls that
    land on series Prometheus has already seen, as a live cluster's steady traffic does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for peer in swarm.peers[:2]:
            swarm.cli(peer, "status")


def scrape_config(swarm: LocalSwarm, releases: tuple[str, ...]) -> str:
    """A prometheus.yml scraping every process once per release, with the labels the chart's ServiceMonitors
    put on each series in a cluster (namespace, release, component, pod)."""
    lines = ["global:", "  scrape_interval: 1s", "  evaluation_interval: 1s", "scrape_configs:"]
    for release in releases:
        for component, procs in (("tracker", swarm.trackers), ("peer", swarm.peers)):
            lines += [f"  - job_name: {release}-{component}", "    static_configs:"]
            for proc in procs:
                lines += [
                    f"      - targets: ['127.0.0.1:{proc.metrics_port}']",
                    "        labels:",
                    f"          namespace: {NAMESPACE}",
                    f"          release: {release}",
                    f"          component: {component}",
                    f"          pod: {release}-{proc.name}",
                ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = need(PROMETHEUS)
    need(PROMTOOL)
    workdir = tmp_path_factory.mktemp("metrics")
    swarm = LocalSwarm(workdir / "swarm")
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(2):
            swarm.start_tracker(metrics=True)
        for _ in range(4):
            swarm.start_peer(metrics=True, wait=False)
        for peer in swarm.peers:
            wait_serving(peer.address)
        config = workdir / "prometheus.yml"
        config.write_text(scrape_config(swarm, (RELEASE, OTHER_RELEASE)))
        url = f"http://127.0.0.1:{free_port()}"
        log_path = workdir / "prometheus.log"
        with open(log_path, "wb") as log:
            prometheus = started = subprocess.Popen(
                [
                    prometheus_bin,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address={url.removeprefix('http://')}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            if started.poll() is not None:
                pytest.fail(f"prometheus exited with {started.returncode}:\n{log_path.read_text()}")
            return bool(http_get(f"{url}/-/ready"))

        wait_until(ready, timeout=60, interval=0.25, what="Prometheus to be ready", ignoring=(OSError,))
        stack = Stack(swarm, url, 0.0)
        up = [str(2 * (len(swarm.trackers) + len(swarm.peers)))]
        wait_until(
            lambda: [s["value"][1] for s in stack.query("count(up == 1)")] == up,
            timeout=60,
            interval=0.25,
            what="every target to be up",
            ignoring=(OSError,),
        )
        run_downloads(swarm, workdir)
        keep_calling(swarm, seconds=4.0)
        stack.done_at = time.time()
        # A few scrapes of every target after the downloads, so each window below holds before and after.
        scraped = f"min(timestamp(up)) > {stack.done_at + SETTLE + 1:.3f}"
        wait_until(
            lambda: stack.query(scraped),
            timeout=60,
            interval=0.25,
            what="Prometheus to scrape after the downloads",
            ignoring=(OSError,),
        )
        yield stack
    finally:
        if prometheus is not None and prometheus.poll() is None:
            prometheus.terminate()
            try:
                prometheus.wait(15)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait(5)
        swarm.stop()


def test_dashboard_has_queries() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert all(p["type"] == "row" for p in dashboard["panels"] if "targets" not in p)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert panel["datasource"] == target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert dashboard_variables() == {"namespace": NAMESPACE, "release": RELEASE, "pod": ".*"}
    assert variables["pod"]["multi"] and variables["pod"]["includeAll"]


def test_every_selector_is_scoped_to_one_release() -> None:
    """Each metric selector names the namespace, the release and the pods: two releases are never summed."""
    for title, expr in dashboard_queries():
        selectors = re.findall(r"(shoal_[a-z0-9_]+)(\{[^}]*\})?", expr)
        assert selectors, f"{title}: no shoal metric in {expr}"
        for name, matchers in selectors:
            assert all(m in matchers for m in SCOPE), f"{title}: {name} is not scoped: {expr}"
        assert "instance" not in expr, f"{title}: per-peer series go by pod, not by IP:port: {expr}"


def test_resource_panels() -> None:
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for metric in ("shoal_process_cpu_seconds_total", "shoal_process_resident_memory_bytes", *STORE_METRICS):
        assert metric in exprs, metric
    (offload,) = [expr for title, expr in dashboard_queries() if title == "Offload ratio (time range)"]
    assert "[$__range]" in offload and "increase(" in offload  # over a window, not since each peer started


def test_every_dashboard_query_returns_samples(stack: Stack) -> None:
    missing = [m for m in STORE_METRICS if not stack.query(f"count({m})")]
    assert not missing, f"metrics the dashboard uses that no peer exports: {missing}"
    empty, nan_only = [], []
    for title, expr in dashboard_queries():
        result = stack.query(substitute(expr), at=stack.done_at + SETTLE)
        if not result:
            empty.append(f"{title}: {expr}")
        elif all(math.isnan(float(sample["value"][1])) for sample in result):
            nan_only.append(f"{title}: {expr}")
    assert not empty, "queries with no samples:\n" + "\n".join(empty)
    assert not nan_only, "queries with only NaN samples:\n" + "\n".join(nan_only)


def test_two_releases_are_never_summed(stack: Stack) -> None:
    """Every process is scraped under two releases; the dashboard sees one release's worth."""
    (peers,) = [expr for title, expr in dashboard_queries() if title == "Peers reporting"]
    assert stack.query(substitute(peers))[0]["value"][1] == str(len(stack.swarm.peers))
    (live,) = [expr for title, expr in dashboard_queries() if title == "Live peers (tracker view)"]
    assert stack.query(substitute(live))[0]["value"][1] == str(len(stack.swarm.peers))
    per_peer = [expr for title, expr in dashboard_queries() if title == "Download per peer"]
    pods = {s["metric"]["pod"] for s in stack.query(substitute(per_peer[0]), at=stack.done_at + SETTLE)}
    assert pods <= {f"{RELEASE}-{proc.name}" for proc in stack.swarm.peers} and pods


def test_counts_match_what_happened(stack: Stack) -> None:
    def total(expr: str) -> float:
        return float(stack.query(expr.replace("{", '{release="shoal",').replace(",}", "}"))[0]["value"][1])

    received = total("sum(shoal_peer_downloaded_bytes_total{})")
    assert received == 3 * FILE_SIZE  # every verified chunk counted once, endgame losers not at all
    assert total("sum(shoal_peer_downloads_completed_total{})") == 3
    assert total("sum(shoal_peer_downloads_failed_total{})") >= 1
    assert total("sum(shoal_peer_uploaded_bytes_total{})") >= received  # endgame duplicates are sent, then dropped
    assert total("max(shoal_tracker_live_peers{})") == 4
    assert total("min(shoal_tracker_files{})") == 1
    assert total("sum(shoal_tracker_announces_total{})") > 0
    assert total('sum(shoal_grpc_server_handled_total{grpc_method="Get",grpc_code!="OK"})') >= 1
    # Peers hold their leases with Session streams (unary Announce only against older trackers).
    tracker_calls = (
        'sum(shoal_grpc_server_started_total{grpc_service="shoal.v1.Tracker",grpc_method=~"Announce|Session"})'
    )
    assert total(tracker_calls) > 0
    assert total("count(shoal_tracker_view_age_seconds{} < 5)") == 2


def test_promtool_accepts_every_exporter(stack: Stack) -> None:
    peer_ids = {(proc.data_dir / "peer_id").read_text().strip() for proc in stack.swarm.peers if proc.data_dir}
    for proc in [*stack.swarm.trackers, *stack.swarm.peers]:
        text = http_get(f"http://127.0.0.1:{proc.metrics_port}/metrics")
        check = subprocess.run([need(PROMTOOL), "check", "metrics"], input=text, capture_output=True, timeout=30)
        output = (check.stdout + check.stderr).decode().strip()
        assert check.returncode == 0 and not output, f"{proc.name}: promtool check metrics:\n{output}"
        names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", text.decode(), re.MULTILINE))
        assert names and all(name.startswith("shoal_") for name in names), names
        labels = set(re.findall(r'="([^"]*)"', text.decode()))
        assert not labels & peer_ids, f"{proc.name} exposes peer ids as label values"
        assert not any(re.fullmatch(r"[0-9a-f]{64}", value) for value in labels), f"{proc.name} exposes file ids"
