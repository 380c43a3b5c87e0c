"""A peer started before its tracker: it serves at once and takes its lease when the tracker appears."""

from __future__ import annotations

import time
from pathlib import Path

from helpers.cli import shoal, shoal_json
from helpers.files import make_file
from helpers.polling import wait_until
from helpers.tls import dial

from shoal.localswarm import LocalSwarm, Proc
from shoal.v1 import tracker_pb2, tracker_pb2_grpc


def live_peer_ids(swarm: LocalSwarm, tracker: Proc) -> set[str]:
    with dial(swarm, tracker) as channel:
        reply = tracker_pb2_grpc.TrackerStub(channel).ListPeers(tracker_pb2.ListPeersRequest(), timeout=10)
    return {p.peer_id for p in reply.peers}


def test_peer_starts_without_its_tracker_and_joins_when_it_appears(swarm: LocalSwarm, tmp_path: Path) -> None:
    tracker = swarm.trackers[0]
    assert swarm.stop_proc(tracker) == 0
    peer = swarm.start_peer()  # returns once the peer's health service reports SERVING

    status = shoal_json(swarm, peer, "status")
    assert status["trackers"] == [tracker.address]
    assert status["trackers_up"] == []
    assert "(up: none)" in shoal(swarm, peer, "status").stdout
    warning = f"tracker {tracker.address} unreachable"  # from the announcer or its session stream
    wait_until(lambda: warning in peer.log_path.read_text(), timeout=10, what="a warning about the unreachable tracker")

    source = tmp_path / "early.bin"
    make_file(source, 100_000)
    put = shoal(swarm, peer, "put", str(source))
    assert put.returncode == 0, put.stderr
    file_id = put.stdout.splitlines()[-1]
    search = shoal(swarm, peer, "search", "early")
    assert search.returncode == 1
    assert search.stderr.startswith("shoal: no tracker answered") and len(search.stderr.splitlines()) == 1

    swarm.restart(tracker)  # same port
    peer_id = status["peer"]["peer_id"]
    wait_until(lambda: peer_id in live_peer_ids(swarm, tracker), timeout=10, what="a lease at the restarted tracker")
    assert peer.alive()
    # The tracker lists the peer a moment before the peer has stored its reply and counts the replica up.
    wait_until(lambda: shoal_json(swarm, peer, "status")["trackers_up"] == [tracker.address], what="the replica up")
    found = shoal(swarm, peer, "search", "early").stdout.splitlines()
    assert len(found) == 1 and found[0].startswith(file_id) and "(1 complete, 0 partial)" in found[0], found


def test_peer_stops_at_once_while_a_tracker_replica_is_down(swarm: LocalSwarm) -> None:
    """Leaving must not wait on a replica that is gone (its session is still waiting for it to come back)."""
    gone = swarm.start_tracker()  # a second replica
    peer = swarm.start_peer()
    wait_until(lambda: peer.name and len(shoal_json(swarm, peer, "status")["trackers_up"]) == 2, what="two leases")
    assert swarm.stop_proc(gone) == 0
    wait_until(lambda: len(shoal_json(swarm, peer, "status")["trackers_up"]) == 1, what="the lost replica noticed")
    started = time.monotonic()
    assert swarm.stop_proc(peer, timeout=20) == 0
    assert time.monotonic() - started < 10  # a wait on the lost replica would take its 20 s timeout and a kill
