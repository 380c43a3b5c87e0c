"""The suite's swarms follow SHOAL_TEST_TLS: with it, a plaintext client is refused, so the switch cannot do nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from faults.harness import peer_ids, tracker_view
from helpers.polling import wait_until
from helpers.processes import start_peers, start_trackers
from helpers.tls import channel, requested

from shoal import tls
from shoal.config import TlsFiles
from shoal.localswarm import LocalSwarm
from shoal.v1 import peer_pb2, peer_pb2_grpc

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.faults


def _peer_answers(address: str, files: TlsFiles | None) -> bool:
    """True when the peer at `address` answers a GetManifest call over this transport (any reply, even NOT_FOUND)."""
    with channel(address, files, tls.PEER_NAME) as opened:
        try:
            peer_pb2_grpc.PeerStub(opened).GetManifest(peer_pb2.GetManifestRequest(file_id="0" * 64), timeout=3)
        except grpc.RpcError as err:
            return err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return True


def test_swarms_use_tls_exactly_when_asked(tmp_path: Path, tls_files: TlsFiles | None) -> None:
    assert (tls_files is not None) == requested(), "SHOAL_TEST_TLS and the suite's certificates disagree"
    swarm = LocalSwarm(tmp_path, tls=tls_files)
    try:
        tracker = start_trackers(swarm, 1)[0]
        peer = start_peers(swarm, 1)[0]
        peer_id = peer_ids([peer]).pop()
        # The peer announced over the swarm's transport, and the suite's own client reads it the same way.
        wait_until(
            lambda: (v := tracker_view(tracker.address, tls_files)) is not None and peer_id in v.peer_ids,
            timeout=30,
            what="the peer listed",
        )
        assert _peer_answers(peer.address, tls_files)
        plain_tracker = tracker_view(tracker.address, None, timeout=2.0) is not None
        plain_peer = _peer_answers(peer.address, None)
        assert plain_tracker == plain_peer == (tls_files is None), (
            f"plaintext client answered by tracker: {plain_tracker}, by peer: {plain_peer} (TLS: {requested()})"
        )
    finally:
        swarm.stop()
