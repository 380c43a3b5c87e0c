"""Registry leases, indexes and queries, driven by a fake clock."""

from __future__ import annotations

import pytest
from helpers.clocks import FakeClock

from shoal.tracker.registry import (
    DEFAULT_SEARCH_LIMIT,
    MAX_HOLDERS_LIMIT,
    MAX_SEARCH_LIMIT,
    FileMeta,
    Holding,
    Peer,
    Registry,
    Stats,
)

TTL = 9.0
A = "a" * 64
B = "b" * 64
C = "c" * 64


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reg(clock: FakeClock) -> Registry:
    return Registry(TTL, clock=clock)


def peer(n: int, zone: str = "") -> Peer:
    return Peer(f"peer-{n}", f"10.0.0.{n}:7401", zone)


def held(file_id: str, name: str = "file.bin", size: int = 10, complete: bool = True) -> Holding:
    return Holding(file_id, name, size, complete)


def test_rejects_non_positive_ttl() -> None:
    with pytest.raises(ValueError):
        Registry(0)


def test_announce_reports_new_then_known(reg: Registry) -> None:
    assert reg.announce(peer(1), [held(A)]) is True
    assert reg.announce(peer(1), [held(A)]) is False
    assert reg.live_peers() == [peer(1)]


def test_lease_lapses_for_reads_before_expire_runs(reg: Registry, clock: FakeClock) -> None:
    reg.announce(peer(1), [held(A)])
    clock.advance(TTL - 0.01)
    assert reg.live_peers() == [peer(1)]
    clock.advance(0.01)  # exactly at expires_at: gone
    assert reg.live_peers() == []
    assert reg.holders(A) == []
    assert reg.search("") == []
    assert reg.file_meta(A) is None
    assert reg.stats().peers == 0
    assert reg.stats().files == 0


def test_announce_renews_lease(reg: Registry, clock: FakeClock) -> None:
    reg.announce(peer(1), [held(A)])
    clock.advance(TTL - 1)
    reg.announce(peer(1), [held(A)])
    clock.advance(TTL - 1)
    assert reg.expire() == []
    assert reg.live_peers() == [peer(1)]


def test_expire_drops_only_lapsed_in_order(reg: Registry, clock: FakeClock) -> None:
    reg.announce(peer(1), [held(A)])
    clock.advance(1)
    reg.announce(peer(2), [held(A)])
    clock.advance(1)
    reg.announce(peer(3), [held(B)])
    reg.announce(peer(1), [held(A)])  # renewed: now the newest lease
    clock.advance(TTL - 1)
    assert reg.expire() == ["peer-2"]
    assert reg.expire() == []
    clock.advance(1)
    assert sorted(reg.expire()) == ["peer-1", "peer-3"]
    assert reg.stats() == Stats(peers=0, files=0, announces_total=4, expiries_total=3)


def test_lapsed_peer_announcing_again_counts_as_new(reg: Registry, clock: FakeClock) -> None:
    reg.announce(peer(1), [held(A)])
    clock.advance(TTL)
    assert reg.announce(peer(1), [held(A)]) is True
    assert reg.expire() == []
    assert reg.live_peers() == [peer(1)]


def test_leave(reg: Registry) -> None:
    reg.announce(peer(1), [held(A)])
    reg.announce(peer(2), [held(A)])
    assert reg.leave("peer-1") is True
    assert reg.leave("peer-1") is False
    assert reg.leave("nobody") is False
    assert [h.peer for h in reg.holders(A)] == [peer(2)]
    reg.leave("peer-2")
    assert reg.file_meta(A) is None
    assert reg.stats().files == 0


def test_leave_after_lapse_returns_false(reg: Registry, clock: FakeClock) -> None:
    reg.announce(peer(1), [held(A)])
    clock.advance(TTL)
    assert reg.leave("peer-1") is False
    assert reg.expire() == []


def test_announce_replaces_holdings(reg: Registry) -> None:
    reg.announce(peer(1), [held(A, "a.iso"), held(B, "b.iso", complete=False)])
    reg.announce(peer(1), [held(B, "b.iso", complete=True), held(C, "c.iso")])
    assert reg.holders(A) == []
    assert reg.file_meta(A) is None
    assert [(h.peer, h.complete) for h in reg.holders(B)] == [(peer(1), True)]
    assert [hit.file.file_id for hit in reg.search("")] == [B, C]
    reg.announce(peer(1), [])
    assert reg.search("") == []
    assert reg.stats().files == 0


def test_file_meta_keeps_first_name_while_held(reg: Registry) -> None:
    reg.announce(peer(1), [held(A, "first.bin", 5)])
    reg.announce(peer(2), [held(A, "renamed.bin", 5)])
    assert reg.file_meta(A) == FileMeta(A, "first.bin", 5)
    reg.leave("peer-1")
    assert reg.file_meta(A) == FileMeta(A, "first.bin", 5)
    reg.leave("peer-2")
    reg.announce(peer(3), [held(A, "third.bin", 5)])
    assert reg.file_meta(A) == FileMeta(A, "third.bin", 5)


def test_same_address_new_id_replaces_old_record(reg: Registry) -> None:
    reg.announce(Peer("old", "10.0.0.9:7401"), [held(A)])
    assert reg.announce(Peer("new", "10.0.0.9:7401"), [held(B)]) is True
    assert reg.live_peers() == [Peer("new", "10.0.0.9:7401")]
    assert reg.holders(A) == []
    assert reg.stats().peers == 1
    assert reg.expire() == []


def test_peer_moving_address_frees_the_old_one(reg: Registry) -> None:
    reg.announce(Peer("p", "10.0.0.1:1"), [held(A)])
    reg.announce(Peer("p", "10.0.0.2:1"), [held(A)])
    reg.announce(Peer("q", "10.0.0.1:1"), [held(A)])  # old address now free: p must stay
    assert reg.live_peers() == [Peer("p", "10.0.0.2:1"), Peer("q", "10.0.0.1:1")]


def test_search_is_case_insensitive_and_sorted(reg: Registry) -> None:
    reg.announce(peer(1), [held(C, "Ubuntu.ISO"), held(A, "ubuntu.iso"), held(B, "debian.iso")])
    reg.announce(peer(2), [held(A, "ubuntu.iso", complete=False)])
    hits = reg.search("UBUNTU")
    assert [(h.file.name, h.complete_holders, h.partial_holders) for h in hits] == [
        ("Ubuntu.ISO", 1, 0),
        ("ubuntu.iso", 1, 1),
    ]
    assert [h.file.name for h in reg.search("")] == ["Ubuntu.ISO", "debian.iso", "ubuntu.iso"]
    assert reg.search("fedora") == []


def test_search_ties_on_name_sort_by_id(reg: Registry) -> None:
    reg.announce(peer(1), [held(C, "same"), held(A, "same"), held(B, "same")])
    assert [h.file.file_id for h in reg.search("same")] == [A, B, C]


def test_search_limits(reg: Registry) -> None:
    files = [held(f"{i:064x}", f"f{i:05d}") for i in range(MAX_SEARCH_LIMIT + 5)]
    reg.announce(peer(1), files)
    assert len(reg.search("f", 3)) == 3
    assert len(reg.search("f", 0)) == DEFAULT_SEARCH_LIMIT
    assert len(reg.search("f", 10**6)) == MAX_SEARCH_LIMIT


def test_holders_complete_first_exclude_and_limit(reg: Registry) -> None:
    for n in range(1, 6):
        reg.announce(peer(n), [held(A, complete=n <= 2)])
    got = reg.holders(A, 10)
    assert [h.complete for h in got] == [True, True, False, False, False]
    assert {h.peer.peer_id for h in got[:2]} == {"peer-1", "peer-2"}
    assert len(reg.holders(A, 3)) == 3
    assert all(h.complete for h in reg.holders(A, 2))
    excluded = reg.holders(A, 10, exclude_peer_id="peer-1")
    assert "peer-1" not in {h.peer.peer_id for h in excluded}
    assert len(excluded) == 4
    assert reg.holders(B) == []


def test_holders_shuffle_spreads_load(reg: Registry) -> None:
    for n in range(1, 21):
        reg.announce(peer(n), [held(A)])
    firsts = {reg.holders(A, 1)[0].peer.peer_id for _ in range(200)}
    assert len(firsts) > 5


def test_holders_limit_is_capped(reg: Registry) -> None:
    for n in range(MAX_HOLDERS_LIMIT + 10):
        reg.announce(Peer(f"p{n}", f"h{n}:1"), [held(A)])
    assert len(reg.holders(A, 0)) == 50
    assert len(reg.holders(A, 10**6)) == MAX_HOLDERS_LIMIT


def test_holders_carry_zone(reg: Registry) -> None:
    reg.announce(peer(1, zone="eu-west-1a"), [held(A)])
    assert reg.holders(A)[0].peer.zone == "eu-west-1a"


def test_stats_counts(reg: Registry, clock: FakeClock) -> None:
    reg.announce(peer(1), [held(A), held(B)])
    reg.announce(peer(2), [held(B)])
    reg.announce(peer(2), [held(B)])
    assert reg.stats() == Stats(peers=2, files=2, announces_total=3, expiries_total=0)
    clock.advance(TTL)
    reg.announce(peer(2), [held(B)])
    assert reg.stats() == Stats(peers=1, files=1, announces_total=4, expiries_total=0)
    assert reg.expire() == ["peer-1"]
    assert reg.stats() == Stats(peers=1, files=1, announces_total=4, expiries_total=1)
