"""A tracker process started with --require-peer-secrets: a secret-less announce or session is refused, peers of
this build are listed (plaintext, or mutual TLS with SHOAL_TEST_TLS=1)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from helpers.polling import wait_until
from helpers.processes import running_swarm
from helpers.tls import channel, swarm_files, tls_args

from shoal import tls
from shoal.localswarm import LocalSwarm, Proc, free_port, wait_serving
from shoal.tracker.checks import SECRET_REQUIRED
from shoal.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

logger = logging.getLogger(__name__)

ANNOUNCE_INTERVAL = 0.5
A = "a" * 64
OLD_PEER = "old-peer"


def start_strict_tracker(swarm: LocalSwarm) -> Proc:
    """A tracker with --require-peer-secrets (LocalSwarm.start_tracker takes no extra flags); swarm.stop stops it."""
    swarm.workdir.mkdir(parents=True, exist_ok=True)
    name = f"tracker{len(swarm.trackers)}"
    address = f"127.0.0.1:{free_port()}"
    args = ["tracker", "--listen", address, "--announce-interval", str(swarm.announce_interval)]
    args.append("--require-peer-secrets")
    health = None
    if swarm.tls is not None:
        health = f"127.0.0.1:{free_port()}"
        args += [*tls_args(swarm.tls), "--health-listen", health]
    proc = Proc(name, args, address, swarm.workdir / f"{name}.log", swarm._spawn(name, args), health=health)
    swarm.trackers.append(proc)  # before waiting: a tracker that never serves is still stopped
    wait_serving(proc.probe_address)
    return proc


@pytest.fixture
def strict_swarm(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    """A swarm whose one tracker requires peer secrets; its peers are of this build (they set accepts_secret)."""
    with running_swarm(tmp_path / "swarm", ANNOUNCE_INTERVAL, trackers=0, tls=swarm_files(tmp_path_factory)) as swarm:
        start_strict_tracker(swarm)
        yield swarm


def old_peer_info(address: str = "10.0.0.9:7401") -> common_pb2.PeerInfo:
    return common_pb2.PeerInfo(peer_id=OLD_PEER, address=address)


def held() -> list[tracker_pb2.HeldFile]:
    return [tracker_pb2.HeldFile(file=common_pb2.FileInfo(file_id=A, name="old.bin", size=42), complete=True)]


def listed(stub: tracker_pb2_grpc.TrackerStub) -> dict[str, str]:
    """Address to peer id of every live peer."""
    return {p.address: p.peer_id for p in stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=3).peers}


def test_secretless_peers_are_refused_and_current_peers_listed(strict_swarm: LocalSwarm) -> None:
    tracker = strict_swarm.trackers[0]
    with channel(tracker.address, strict_swarm.tls, tls.TRACKER_NAME) as chan:
        stub = tracker_pb2_grpc.TrackerStub(chan)

        # An older build: no accepts_secret, on Announce and on a Session's first update.
        with pytest.raises(grpc.RpcError) as announced:
            stub.Announce(tracker_pb2.AnnounceRequest(peer=old_peer_info(), files=held()), timeout=5)
        assert announced.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert SECRET_REQUIRED in (announced.value.details() or "")
        first = tracker_pb2.SessionUpdate(peer=old_peer_info(), files=held(), peer_secret="s" * 40)
        with pytest.raises(grpc.RpcError) as session:
            list(stub.Session(iter([first]), timeout=5))
        assert session.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert SECRET_REQUIRED in (session.value.details() or "")
        assert OLD_PEER not in listed(stub).values()
        assert not stub.GetPeers(tracker_pb2.GetPeersRequest(file_id=A), timeout=3).holders

        # A peer of this build announces (with a secret) and is listed.
        peer = strict_swarm.start_peer()
        peer_id = wait_until(lambda: listed(stub).get(peer.address), what=f"{peer.name} listed by the tracker")

        # An older build cannot take its id over either, even from the same address; the peer stays listed.
        with pytest.raises(grpc.RpcError) as takeover:
            impostor = common_pb2.PeerInfo(peer_id=peer_id, address=peer.address)
            stub.Announce(tracker_pb2.AnnounceRequest(peer=impostor), timeout=5)
        assert takeover.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert listed(stub) == {peer.address: peer_id}
        # Reads are unchanged: a caller with no peer id at all may still ask.
        assert stub.GetPeers(tracker_pb2.GetPeersRequest(file_id=A), timeout=3).holders == []

    def refusals_logged() -> int:
        text = tracker.log_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if "PERMISSION_DENIED" in line and SECRET_REQUIRED in line)

    assert wait_until(lambda: refusals_logged() == 3, timeout=5, what="one log line per refusal") is True
    assert "tracker requires peer secrets" in tracker.log_path.read_text(errors="replace")
