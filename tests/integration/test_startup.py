"""A peer started before its tracker: it serves at once and takes its lease when the tracker appears."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from shoal.localswarm import LocalSwarm, Proc
from shoal.v1 import tracker_pb2, tracker_pb2_grpc

MakeFile = Callable[[Path, int], str]
CLI_TIMEOUT = 60.0


def run(swarm: LocalSwarm, peer: Proc, *args: str) -> subprocess.CompletedProcess[str]:
    return swarm.cli(peer, *args, timeout=CLI_TIMEOUT, check=False)


def live_peer_ids(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        reply = tracker_pb2_grpc.TrackerStub(channel).ListPeers(tracker_pb2.ListPeersRequest(), timeout=10)
    return {p.peer_id for p in reply.peers}


def test_peer_starts_without_its_tracker_and_joins_when_it_appears(
    swarm: LocalSwarm, tmp_path: Path, make_file: MakeFile
) -> None:
    tracker = swarm.trackers[0]
    assert swarm.stop_proc(tracker) == 0
    peer = swarm.start_peer()  # returns once the peer's health service reports SERVING

    status = json.loads(run(swarm, peer, "status", "--json").stdout)
    assert status["trackers"] == [tracker.address]
    assert status["trackers_up"] == []
    assert "(up: none)" in run(swarm, peer, "status").stdout
    deadline = time.monotonic() + 10
    while f"WARNING shoal.peer.trackers: tracker {tracker.address} unreachable" not in peer.log_path.read_text():
        assert time.monotonic() < deadline, "no warning about the unreachable tracker"
        time.sleep(0.1)

    source = tmp_path / "early.bin"
    make_file(source, 100_000)
    put = run(swarm, peer, "put", str(source))
    assert put.returncode == 0, put.stderr
    file_id = put.stdout.splitlines()[-1]
    search = run(swarm, peer, "search", "early")
    assert search.returncode == 1
    assert search.stderr.startswith("shoal: no tracker answered") and len(search.stderr.splitlines()) == 1

    swarm.restart(tracker)  # same port
    started = time.monotonic()
    while status["peer"]["peer_id"] not in live_peer_ids(tracker.address):
        assert time.monotonic() - started < 10, "the peer never took a lease at the restarted tracker"
        time.sleep(0.1)
    assert peer.alive()
    status = json.loads(run(swarm, peer, "status", "--json").stdout)
    assert status["trackers_up"] == [tracker.address]
    found = run(swarm, peer, "search", "early").stdout.splitlines()
    assert len(found) == 1 and found[0].startswith(file_id) and "(1 complete, 0 partial)" in found[0], found
