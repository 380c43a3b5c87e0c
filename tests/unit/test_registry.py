"""Registry leases, indexes and queries, driven by a fake clock."""

from __future__ import annotations

import pytest
from helpers.clocks import FakeClock

from shoal.tracker.registry import (
    DEFAULT_SEARCH_LIMIT,
    MAX_HOLDERS_LIMIT,
    MAX_SEARCH_LIMIT,
    MIN_SECRET,
    AddressTaken,
    FileMeta,
    Holding,
    Limits,
    NotOwner,
    Peer,
    Registry,
    RegistryFull,
    SecretRequired,
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


def counts(reg: Registry) -> tuple[int, int, int, int]:
    stats = reg.stats()
    return stats.peers, stats.files, stats.announces_total, stats.expiries_total


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
    assert counts(reg) == (0, 0, 4, 3)


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


def test_file_meta_on_a_tie_is_the_oldest_holders(reg: Registry) -> None:
    reg.announce(peer(1), [held(A, "first.bin", 5)])
    reg.announce(peer(2), [held(A, "renamed.bin", 5)])
    assert reg.file_meta(A) == FileMeta(A, "first.bin", 5)
    reg.leave("peer-1")
    assert reg.file_meta(A) == FileMeta(A, "renamed.bin", 5)  # from current holders, never the first announcer
    reg.leave("peer-2")
    reg.announce(peer(3), [held(A, "third.bin", 5)])
    assert reg.file_meta(A) == FileMeta(A, "third.bin", 5)


def test_file_meta_is_what_most_holders_report(reg: Registry) -> None:
    reg.announce(peer(9), [held(A, "evil.exe", 1)])  # the first announcer lies
    for n in (1, 2):
        reg.announce(peer(n), [held(A, "ubuntu.iso", 42)])
    assert reg.file_meta(A) == FileMeta(A, "ubuntu.iso", 42)
    assert [h.file.name for h in reg.search("")] == ["ubuntu.iso"]
    assert reg.search("evil") == []
    reg.announce(peer(1), [held(A, "ubuntu-renamed.iso", 42)])  # a tie again: the oldest holder (peer 9) wins
    assert reg.file_meta(A) == FileMeta(A, "evil.exe", 1)
    reg.leave("peer-9")
    assert reg.file_meta(A) == FileMeta(A, "ubuntu-renamed.iso", 42)


def test_file_meta_recomputed_when_holders_lapse(reg: Registry, clock: FakeClock) -> None:
    reg.announce(peer(1), [held(A, "lie", 1)])
    reg.announce(peer(2), [held(A, "lie", 1)])
    clock.advance(1)
    reg.announce(peer(3), [held(A, "truth", 2)])
    clock.advance(TTL - 0.5)
    reg.announce(peer(3), [held(A, "truth", 2)])
    reg.expire()
    assert reg.file_meta(A) == FileMeta(A, "truth", 2)


def test_live_address_cannot_be_taken_by_another_id(reg: Registry, clock: FakeClock) -> None:
    reg.announce(Peer("old", "10.0.0.9:7401"), [held(A)])
    with pytest.raises(AddressTaken):
        reg.announce(Peer("new", "10.0.0.9:7401"), [held(B)])
    assert reg.live_peers() == [Peer("old", "10.0.0.9:7401")]
    assert [h.peer.peer_id for h in reg.holders(A)] == ["old"]
    assert reg.holders(B) == []
    assert reg.stats().denied_total == 1


def test_lapsed_address_goes_to_the_new_id(reg: Registry, clock: FakeClock) -> None:
    reg.announce(Peer("old", "10.0.0.9:7401"), [held(A)])
    clock.advance(TTL)
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
    assert counts(reg) == (2, 2, 3, 0)
    clock.advance(TTL)
    reg.announce(peer(2), [held(B)])
    assert counts(reg) == (1, 1, 4, 0)
    assert reg.expire() == ["peer-1"]
    assert counts(reg) == (1, 1, 4, 1)


def test_bound_id_needs_its_secret_to_announce_or_leave(reg: Registry) -> None:
    joined, secret = reg.announce_as(peer(1), [held(A)], accepts_secret=True)
    assert joined and len(secret) >= 32
    for wrong in ("", "guess", secret[:-1], "é" * 10):
        with pytest.raises(NotOwner):
            reg.announce_as(Peer("peer-1", "10.6.6.6:1"), [held(B)], wrong, accepts_secret=True)
        with pytest.raises(NotOwner):
            reg.leave_as("peer-1", wrong)
    assert reg.live_peers() == [peer(1)]
    assert [h.peer for h in reg.holders(A)] == [peer(1)]
    assert reg.stats().denied_total == 8
    assert reg.announce_as(peer(1), [held(A)], secret, accepts_secret=True) == (False, secret)
    assert reg.leave_as("peer-1", secret) is True
    assert reg.live_peers() == []


def test_unbound_id_stays_open_until_its_lease_lapses(reg: Registry, clock: FakeClock) -> None:
    assert reg.announce_as(peer(1), [held(A)]) == (True, "")  # an older peer: no secret
    assert reg.announce_as(peer(1), [held(A)], accepts_secret=True) == (False, "")  # cannot bind a live id
    assert reg.announce_as(peer(1), [held(B)], "whatever") == (False, "")
    assert reg.leave_as("peer-1") is True
    reg.announce_as(peer(1), [held(A)])
    clock.advance(TTL)
    joined, secret = reg.announce_as(peer(1), [held(A)], accepts_secret=True)  # lapsed: a new lease, now bound
    assert joined and secret
    with pytest.raises(NotOwner):
        reg.leave_as("peer-1")


@pytest.mark.parametrize("required", [False, True])
def test_a_secretless_announce_is_refused_only_when_secrets_are_required(clock: FakeClock, required: bool) -> None:
    reg = Registry(TTL, clock=clock, require_secrets=required)
    if not required:  # the default: an older peer joins unbound, as before the setting existed
        assert Registry(TTL, clock=clock).require_secrets is False
        assert reg.announce_as(peer(1), [held(A)]) == (True, "")
        assert reg.announce_as(peer(1), [held(B)], "s" * MIN_SECRET) == (False, "")  # anyone may rewrite it
        assert [h.peer for h in reg.holders(B)] == [peer(1)] and reg.stats().denied_total == 0
        return
    for secret in ("", "s" * MIN_SECRET):  # a secret without accepts_secret is still an older peer's request
        with pytest.raises(SecretRequired):
            reg.announce_as(peer(1), [held(A)], secret)
    assert reg.live_peers() == [] and reg.holders(A) == []
    assert counts(reg) == (0, 0, 0, 0) and reg.stats().denied_total == 2
    joined, secret = reg.announce_as(peer(1), [held(A)], accepts_secret=True)  # a current peer
    assert joined and len(secret) >= MIN_SECRET
    with pytest.raises(SecretRequired):  # even carrying the right secret, an older build cannot renew it
        reg.announce_as(peer(1), [held(B)], secret)
    with pytest.raises(NotOwner):  # Leave is unchanged: the identity rule alone decides
        reg.leave_as("peer-1", "")
    assert [h.peer for h in reg.holders(A)] == [peer(1)] and reg.holders(B) == []
    assert reg.stats().denied_total == 4
    assert reg.announce_as(peer(1), [held(B)], secret, accepts_secret=True) == (False, secret)
    assert reg.leave_as("peer-1", secret) is True


def test_a_new_lease_keeps_the_secret_the_peer_brings(clock: FakeClock) -> None:
    first = Registry(TTL, clock=clock)
    _, issued = first.announce_as(peer(1), [held(A)], accepts_secret=True)
    restarted = Registry(TTL, clock=clock)  # a replica that lost its state: the peer's secret must not fail it
    assert restarted.announce_as(peer(1), [held(A)], issued, accepts_secret=True) == (True, issued)
    mine = "m" * MIN_SECRET
    assert Registry(TTL, clock=clock).announce_as(peer(1), [], mine, accepts_secret=True) == (True, mine)
    joined, fresh = Registry(TTL, clock=clock).announce_as(peer(1), [], "short", accepts_secret=True)
    assert joined and fresh != "short" and len(fresh) >= MIN_SECRET
    clock.advance(TTL)
    assert first.announce_as(peer(1), [held(A)], mine, accepts_secret=True) == (True, mine)  # lapsed: new lease


def test_peer_cap_refuses_new_peers_only(clock: FakeClock) -> None:
    reg = Registry(TTL, clock=clock, limits=Limits(max_peers=2))
    reg.announce(peer(1), [held(A)])
    reg.announce(peer(2), [held(A)])
    with pytest.raises(RegistryFull):
        reg.announce(peer(3), [held(A)])
    assert reg.announce(peer(1), [held(B)]) is False  # known peers keep renewing
    assert {p.peer_id for p in reg.live_peers()} == {"peer-1", "peer-2"}
    assert reg.stats().refused_peers_total == 1
    clock.advance(TTL)  # lapsed leases make room
    assert reg.announce(peer(3), [held(A)]) is True


def test_file_and_holding_caps_leave_out_new_files_only(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry(TTL, clock=clock, limits=Limits(max_files=2, max_holdings=3))
    reg.announce(peer(1), [held(A), held(B), held(C)])
    assert [h.file.file_id for h in reg.search("")] == [A, B]
    stats = reg.stats()
    assert (stats.files, stats.holdings, stats.refused_holdings_total) == (2, 2, 1)
    assert (stats.max_files, stats.max_holdings) == (2, 3)
    reg.announce(peer(2), [held(A), held(B)])  # only one holding left
    assert len(reg.holders(A)) == 2 and len(reg.holders(B)) == 1
    assert reg.stats().holdings == 3
    reg.announce(peer(1), [held(C)])  # dropping A and B frees room for C
    assert [h.file.file_id for h in reg.search("")] == [A, C]
    assert "left out" in caplog.text


def test_live_peers_is_capped(reg: Registry) -> None:
    for n in range(5):
        reg.announce(peer(n), [])
    assert [p.peer_id for p in reg.live_peers(limit=2)] == ["peer-0", "peer-1"]
