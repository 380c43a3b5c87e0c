"""Cluster rehearsal: the chart's trackers, peers and helm test pod as containers of the real image.

Needs a Docker engine; tools/docker-engine.sh installs and starts one. If it cannot, these tests
fail (they never skip). The tests share one rehearsal and run in file order: each step builds on
the last, as a person's session would. Timings land in .cache/rehearsal/report.json.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from tools.rehearsal import engine
from tools.rehearsal.pods import pods_using
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
