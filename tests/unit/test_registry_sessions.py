"""Registry leases held by sessions: opened, updated by deltas, closed, superseded; driven by a fake clock."""

from __future__ import annotations

import pytest
from helpers.clocks import FakeClock
from helpers.registry_audit import audit

from shoal.tracker.metrics import WatchedRegistry
from shoal.tracker.registry import (
    MIN_SECRET,
    AddressTaken,
    Holding,
    Limits,
    NotOwner,
    Peer,
    Registry,
    RegistryFull,
    SecretRequired,
    SessionLost,
)

TTL = 9.0
A = "a" * 64
B = "b" * 64
C = "c" * 64
SECRET = "s" * MIN_SECRET


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reg(clock: FakeClock) -> Registry:
    return Registry(TTL, clock=clock)


def peer(n: int) -> Peer:
    return Peer(f"peer-{n}", f"10.0.0.{n}:7401")


def held(file_id: str, name: str = "file.bin", complete: bool = True) -> Holding:
    return Holding(file_id, name, 10, complete)


def holders(reg: Registry, file_id: str) -> list[str]:
    return sorted(h.peer.peer_id for h in reg.holders(file_id))


def test_a_session_lease_outlives_any_ttl_and_expire_still_reaches_timed_leases(
    reg: Registry, clock: FakeClock
) -> None:
    opened = reg.open_session(peer(1), [held(A)])
    assert opened.joined and opened.session > 0 and opened.left_out == 0
    reg.announce(peer(2), [held(A)])  # a timed lease behind the session's
    clock.advance(100 * TTL)
    assert reg.expire() == ["peer-2"]
    assert holders(reg, A) == ["peer-1"]
    stats = reg.stats()
    assert (stats.peers, stats.sessions, stats.files, stats.announces_total) == (1, 1, 1, 2)
    audit(reg)


def test_deltas_drop_then_add_and_change(reg: Registry) -> None:
    opened = reg.open_session(peer(1), [held(A), held(B, complete=False)])
    left_out = reg.update_session("peer-1", opened.session, [held(B, complete=True), held(C, "c.iso")], [A])
    assert left_out == 0
    assert holders(reg, A) == []
    assert [h.complete for h in reg.holders(B)] == [True]
    assert reg.file_meta(C) is not None and reg.file_meta(C).name == "c.iso"  # type: ignore[union-attr]
    reg.update_session("peer-1", opened.session, [held(A)], [A])  # an id in both: dropped first, then held
    assert holders(reg, A) == ["peer-1"]
    reg.update_session("peer-1", opened.session, [], [A, A, "0" * 64])  # unknown or repeated drops: no-ops
    stats = reg.stats()
    assert (stats.holdings, stats.files, stats.session_updates_total) == (2, 2, 3)
    audit(reg)


def test_closing_the_session_drops_the_peer_at_once(reg: Registry) -> None:
    opened = reg.open_session(peer(1), [held(A)])
    assert reg.close_session("peer-1", opened.session) is True
    assert reg.live_peers() == [] and reg.file_meta(A) is None
    assert reg.close_session("peer-1", opened.session) is False
    with pytest.raises(SessionLost):
        reg.update_session("peer-1", opened.session, [held(B)])
    assert reg.stats().expiries_total == 0  # an ended stream is not a lapsed lease
    audit(reg)


def test_a_new_session_supersedes_the_old_one(reg: Registry) -> None:
    old = reg.open_session(peer(1), [held(A)], SECRET, accepts_secret=True)
    new = reg.open_session(peer(1), [held(B)], SECRET, accepts_secret=True)  # reconnected; old stream half-open
    assert not new.joined and new.session != old.session and new.secret == SECRET
    with pytest.raises(SessionLost):
        reg.update_session("peer-1", old.session, [held(C)])
    assert reg.close_session("peer-1", old.session) is False  # the old stream ending keeps the new lease
    assert holders(reg, B) == ["peer-1"] and holders(reg, C) == []
    assert reg.sessions == 1
    audit(reg)


def test_an_announce_takes_the_lease_back_to_a_ttl(reg: Registry, clock: FakeClock) -> None:
    opened = reg.open_session(peer(1), [held(A)])
    assert reg.announce(peer(1), [held(B)]) is False
    assert reg.sessions == 0
    with pytest.raises(SessionLost):
        reg.update_session("peer-1", opened.session, [held(C)])
    assert reg.close_session("peer-1", opened.session) is False
    clock.advance(TTL)
    assert reg.expire() == ["peer-1"]
    audit(reg)


def test_a_session_takes_over_a_timed_lease(reg: Registry, clock: FakeClock) -> None:
    reg.announce_as(peer(1), [held(A)], SECRET, accepts_secret=True)
    opened = reg.open_session(peer(1), [held(B)], SECRET, accepts_secret=True)
    assert not opened.joined
    clock.advance(2 * TTL)
    assert reg.expire() == []
    assert holders(reg, B) == ["peer-1"] and holders(reg, A) == []
    audit(reg)


def test_opening_checks_identity_address_and_caps_like_an_announce(clock: FakeClock) -> None:
    reg = Registry(TTL, clock=clock, limits=Limits(max_peers=2))
    bound = reg.open_session(peer(1), [held(A)], SECRET, accepts_secret=True)
    with pytest.raises(NotOwner):
        reg.open_session(peer(1), [held(B)], "wrong", accepts_secret=True)
    with pytest.raises(NotOwner):
        reg.leave_as("peer-1", "")
    with pytest.raises(AddressTaken):
        reg.open_session(Peer("thief", peer(1).address), [])
    reg.open_session(peer(2), [])
    with pytest.raises(RegistryFull):
        reg.open_session(peer(3), [])
    assert holders(reg, A) == ["peer-1"] and reg.stats().denied_total == 3
    assert reg.leave_as("peer-1", SECRET) is True  # a Leave ends a session's lease too
    with pytest.raises(SessionLost):
        reg.update_session("peer-1", bound.session, [held(B)])
    audit(reg)


def test_an_unbound_session_stays_unbound(reg: Registry) -> None:
    opened = reg.open_session(peer(1), [held(A)])
    assert opened.secret == ""
    assert reg.open_session(peer(1), [held(A)], "anything").secret == ""


@pytest.mark.parametrize("required", [False, True])
def test_a_secretless_session_is_refused_only_when_secrets_are_required(clock: FakeClock, required: bool) -> None:
    reg = Registry(TTL, clock=clock, require_secrets=required)
    if not required:
        assert reg.open_session(peer(1), [held(A)], SECRET).secret == ""  # an older peer: unbound, as before
        assert reg.sessions == 1 and holders(reg, A) == ["peer-1"]
        audit(reg)
        return
    with pytest.raises(SecretRequired):
        reg.open_session(peer(1), [held(A)], SECRET)
    assert reg.sessions == 0 and holders(reg, A) == [] and reg.stats().denied_total == 1
    opened = reg.open_session(peer(1), [held(A)], SECRET, accepts_secret=True)
    assert opened.joined and opened.secret == SECRET
    assert reg.update_session("peer-1", opened.session, [held(B)]) == 0  # later updates need no secret
    with pytest.raises(SecretRequired):  # an older build cannot take the lease over, even with the secret
        reg.open_session(peer(1), [], SECRET)
    assert holders(reg, B) == ["peer-1"] and reg.stats().denied_total == 2
    audit(reg)


def test_caps_leave_files_out_of_opens_and_updates(clock: FakeClock) -> None:
    reg = Registry(TTL, clock=clock, limits=Limits(max_files=2, max_holdings=3))
    one = reg.open_session(peer(1), [held(A), held(B), held(C)])
    assert one.left_out == 1
    two = reg.open_session(peer(2), [held(A)])
    assert reg.update_session("peer-2", two.session, [held(B)]) == 1  # the holding cap is reached
    assert reg.update_session("peer-1", one.session, [], [A]) == 0  # frees a holding
    assert reg.update_session("peer-2", two.session, [held(B)]) == 0
    assert reg.stats().refused_holdings_total == 2
    audit(reg)


def test_view_age_is_zero_while_a_session_is_open(clock: FakeClock) -> None:
    reg = WatchedRegistry(TTL, clock=clock)
    opened = reg.open_session(peer(1), [held(A)])
    clock.advance(60)
    assert reg.view_age() == 0.0
    reg.close_session("peer-1", opened.session)
    assert reg.view_age() == 60.0
    reg.announce(peer(2), [])
    clock.advance(1)
    assert reg.view_age() == 1.0
