"""What a peer knows of others: holders learned, renewed, forgotten, bounded, and sampled for peer exchange."""

from __future__ import annotations

import random
from pathlib import Path

from helpers.clocks import FakeClock

from shoal.config import PeerConfig
from shoal.peer import node as node_module
from shoal.peer.node import Node
from shoal.store import Store
from shoal.v1 import common_pb2

FILE = "ab" * 32


def make(tmp_path: Path, clock: FakeClock) -> Node:
    store = Store(tmp_path)
    config = PeerConfig(listen="127.0.0.1:0", trackers=("t:1",), data_dir=tmp_path, zone="z1")
    return Node(config, store, "me", "10.0.0.250:7401", clock)


def peer(n: int) -> common_pb2.PeerInfo:
    return common_pb2.PeerInfo(peer_id=f"p{n}", address=f"10.0.0.{n}:7401")


def test_identity(tmp_path: Path) -> None:
    node = make(tmp_path, FakeClock())
    assert node.peer_id == "me" and node.info.address == "10.0.0.250:7401" and node.info.zone == "z1"


def test_learn_returns_only_new_holders_and_skips_myself_and_incomplete_ones(tmp_path: Path) -> None:
    node = make(tmp_path, FakeClock())
    me = common_pb2.PeerInfo(peer_id="me", address="x:1")
    assert node.learn(FILE, [peer(1), peer(2), me, common_pb2.PeerInfo(peer_id="p9")]) == [peer(1), peer(2)]
    assert node.learn(FILE, [peer(1), peer(3)]) == [peer(3)]
    assert set(node.known[FILE]) == {"p1", "p2", "p3"}


def test_only_direct_news_renews_a_holder_for_peer_exchange(tmp_path: Path) -> None:
    clock = FakeClock()
    node = make(tmp_path, clock)
    node.learn(FILE, [peer(1), peer(2)])
    clock.advance(node_module.PEX_FRESH_SECONDS - 1)
    node.learn(FILE, [peer(1)], direct=False)  # only mentioned by another peer: not renewed
    node.touch(FILE, "p2")  # we heard from it ourselves
    clock.advance(2)
    assert [p.peer_id for p in node.sample_known(FILE)] == ["p2"]


def test_forget_and_touch_of_unknown_holders(tmp_path: Path) -> None:
    node = make(tmp_path, FakeClock())
    node.learn(FILE, [peer(1)])
    node.forget(FILE, "p1")
    node.touch(FILE, "p1")  # forgotten stays forgotten
    node.forget("cd" * 32, "p1")
    assert node.known[FILE] == {} and node.sample_known(FILE) == []


def test_known_holders_are_bounded_oldest_out(tmp_path: Path) -> None:
    clock = FakeClock()
    node = make(tmp_path, clock)
    for n in range(node_module.MAX_KNOWN_PER_FILE + 5):
        node.learn(FILE, [peer(n)])
        clock.advance(1)
    known = node.known[FILE]
    assert len(known) == node_module.MAX_KNOWN_PER_FILE
    assert "p0" not in known and f"p{node_module.MAX_KNOWN_PER_FILE + 4}" in known


def test_sample_is_bounded_and_random(tmp_path: Path) -> None:
    random.seed(1)
    node = make(tmp_path, FakeClock())
    node.learn(FILE, [peer(n) for n in range(30)])
    sample = node.sample_known(FILE, 10)
    assert len(sample) == 10 and len({p.peer_id for p in sample}) == 10
