"""Source rules on a fake clock: pace, window, stall timeout, strikes, bans, cool-offs and admission."""

from __future__ import annotations

import random

import pytest
from helpers.clocks import FakeClock

from shoal import net
from shoal.peer import sources
from shoal.peer.sources import Source, Sources
from shoal.v1 import common_pb2

MIB = 1024 * 1024


def peer(n: int, zone: str = "", peer_id: str = "") -> common_pb2.PeerInfo:
    return common_pb2.PeerInfo(peer_id=peer_id or f"p{n}", address=f"10.0.0.{n}:7401", zone=zone)


ME = common_pb2.PeerInfo(peer_id="me", address="10.0.0.250:7401", zone="a")


def source(clock: FakeClock, max_window: int = 4) -> Source:
    return Source(info=peer(1), clock=clock, max_window=max_window)


# ---- one source ---------------------------------------------------------------------------------
def test_pace_is_an_ewma_of_delivered_rates() -> None:
    clock = FakeClock()
    s = source(clock)
    s.delivered(MIB, 1.0)
    assert s.rate == MIB and s.received == MIB
    s.delivered(MIB, 0.5)
    assert s.rate == pytest.approx(0.7 * MIB + 0.3 * 2 * MIB)


def test_window_opens_on_fast_chunks_and_closes_on_slow_ones_within_bounds() -> None:
    clock = FakeClock()
    s = source(clock, max_window=3)
    assert s.window == sources.FIRST_WINDOW
    for _ in range(5):
        s.delivered(MIB, sources.FAST_CHUNK / 2)
    assert s.window == 3
    for _ in range(5):
        s.delivered(MIB, sources.SLOW_CHUNK * 2)
    assert s.window == 1  # many sources: a slow one keeps a single request
    s.delivered(MIB, (sources.FAST_CHUNK + sources.SLOW_CHUNK) / 2)  # in between: unchanged
    assert s.window == 1


def test_few_sources_spread_and_keep_a_request_per_connection() -> None:
    clock = FakeClock()
    pool = sources.Sources(
        common_pb2.PeerInfo(peer_id="me", address="10.0.0.9:1"), max_peers=8, max_window=4, clock=clock
    )
    pool.offer([common_pb2.PeerInfo(peer_id="a", address="10.0.0.1:1")])
    pool.admit()
    assert pool.spread()  # a sole source: requests spread over its link's connections
    (only,) = pool.usable()
    for _ in range(5):
        only.delivered(MIB, sources.SLOW_CHUNK * 2)
    # Never below two: a sole source over a lossy link keeps a request on each of the link's TCP connections.
    assert only.window == sources.SPREAD_WINDOW == 2
    pool.offer([common_pb2.PeerInfo(peer_id=p, address=f"10.0.0.{n}:1") for n, p in enumerate("bcd", start=2)])
    pool.admit()
    assert not pool.spread()  # four sources: one connection each, and a slow one closes down to one request
    for _ in range(5):
        only.delivered(MIB, sources.SLOW_CHUNK * 2)
    assert only.window == 1


def test_room_never_exceeds_requests_per_peer() -> None:
    s = source(FakeClock(), max_window=1)
    assert s.room == 1  # the first window (2) is capped by requests_per_peer
    s.asked(0)
    assert s.room == 0


def test_stall_timeout_follows_the_pace_with_a_floor() -> None:
    clock = FakeClock()
    s = source(clock)
    assert s.stall_timeout(MIB) == 2 * sources.SOURCE_STALL  # nothing arrived yet
    assert s.deadline(MIB) == net.CHUNK_DEADLINE
    s.delivered(MIB, 1.0)  # 1 MiB/s
    assert s.stall_timeout(MIB) == sources.SOURCE_STALL  # 3 s of pace is under the floor
    assert s.stall_timeout(4 * MIB) == pytest.approx(12.0)
    assert s.deadline(4 * MIB) == pytest.approx(net.CHUNK_DEADLINE)  # 48 s capped
    assert s.deadline(MIB) == pytest.approx(4 * sources.SOURCE_STALL)


def test_stalled_only_with_requests_in_flight_and_silence_past_the_timeout() -> None:
    clock = FakeClock()
    s = source(clock)
    clock.advance(100)
    assert not s.stalled(MIB)  # idle is not stalled
    s.asked(0)
    clock.advance(2 * sources.SOURCE_STALL - 0.1)
    assert not s.stalled(MIB)
    s.asked(1)  # a second request does not restart the stall clock
    clock.advance(0.2)
    assert s.stalled(MIB)
    s.delivered(MIB, 1.0)
    assert not s.stalled(MIB)


def test_three_bad_chunks_ban_once() -> None:
    s = source(FakeClock())
    assert [s.lied() for _ in range(5)] == [False, False, True, False, False]
    assert s.banned and not s.usable and s.bad == 5
    assert not s.stalled(MIB)


def test_failures_make_a_source_dead_and_a_success_resets_them() -> None:
    s = source(FakeClock())
    assert not s.failed() and not s.failed()
    s.answered()
    assert not s.failed() and not s.failed()
    assert s.failed()


def test_cool_off_and_busy_pass_with_time() -> None:
    clock = FakeClock()
    s = source(clock)
    s.cool_off(3.0)
    assert not s.usable
    clock.advance(3.0)
    assert s.usable
    s.said_busy(random.Random(1))
    assert s.busy
    clock.advance(sources.BUSY_PAUSE[1])
    assert not s.busy


# ---- the table ------------------------------------------------------------------------------------
def table(clock: FakeClock, max_peers: int = 2, rng: random.Random | None = None) -> Sources:
    return Sources(ME, max_peers, 4, clock=clock, rng=rng or random.Random(7))


def test_offer_skips_myself_and_known_sources() -> None:
    t = table(FakeClock())
    t.offer([peer(1), common_pb2.PeerInfo(peer_id="me", address="10.0.0.9:1"), ME, common_pb2.PeerInfo(peer_id="x")])
    assert list(t.candidates) == ["10.0.0.1:7401"]
    new, _ = t.admit()
    t.offer([peer(1)])
    assert [s.key for s in new] == ["10.0.0.1:7401"] and not t.candidates


def test_admission_fills_up_to_max_peers_same_zone_first() -> None:
    t = table(FakeClock(), max_peers=2)
    t.offer([peer(1, "b"), peer(2, "a"), peer(3, "b"), peer(4, "a")])
    new, retire = t.admit()
    assert sorted(s.key for s in new) == ["10.0.0.2:7401", "10.0.0.4:7401"] and retire is None
    assert len(t.candidates) == 2
    assert t.admit() == ([], None)  # full, and too early to rotate


def test_sources_are_keyed_by_address_so_a_ban_outlives_a_new_peer_id() -> None:
    t = table(FakeClock())
    t.offer([peer(1)])
    (s,), _ = t.admit()
    for _ in range(sources.BAN_AFTER_BAD_CHUNKS):
        s.lied()
    t.offer([peer(1, peer_id="fresh-identity")])
    assert not t.candidates and t.admit() == ([], None)
    assert t.usable() == []


def test_a_cooled_off_source_comes_back_as_a_candidate() -> None:
    clock = FakeClock()
    t = table(clock, max_peers=1)
    t.offer([peer(1), peer(2)])
    (first,), _ = t.admit()
    first.cool_off(sources.COOL_OFF_FAILING)
    (second,), _ = t.admit()  # the cooling one does not count against max_peers
    assert second.key != first.key
    clock.advance(sources.COOL_OFF_FAILING)
    new, _ = t.admit()
    assert new == [] and first.key in t.candidates


def test_rotation_retires_the_slowest_idle_source_once_full() -> None:
    clock = FakeClock()

    class Always(random.Random):
        def random(self) -> float:
            return 0.0

    t = table(clock, max_peers=2, rng=Always())
    t.offer([peer(1), peer(2), peer(3)])
    (a, b), _ = t.admit()
    a.delivered(MIB, 0.1)
    b.delivered(MIB, 1.0)
    assert t.admit() == ([], None)  # not before ROTATE_AFTER
    clock.advance(sources.ROTATE_AFTER)
    b.asked(5)
    assert t.admit() == ([], None)  # the slowest is busy with a request
    b.requesting.clear()
    assert t.admit() == ([], b)
    untried = list(t.candidates)
    t.remove(b)
    new, _ = t.admit()
    assert [s.key for s in new] == untried


def test_preference_order_same_zone_then_fastest() -> None:
    t = table(FakeClock(), max_peers=3)
    t.offer([peer(1, "b"), peer(2, "a"), peer(3, "a")])
    new, _ = t.admit()
    by_key = {s.key: s for s in new}
    by_key["10.0.0.1:7401"].delivered(10 * MIB, 0.1)
    by_key["10.0.0.2:7401"].delivered(MIB, 1.0)
    by_key["10.0.0.3:7401"].delivered(2 * MIB, 1.0)
    assert [s.key for s in t.by_preference()] == ["10.0.0.3:7401", "10.0.0.2:7401", "10.0.0.1:7401"]


def test_a_stalled_source_is_dropped_only_when_another_can_take_over() -> None:
    clock = FakeClock()
    t = table(clock, max_peers=3)
    t.offer([peer(1), peer(2), peer(3)])
    new, _ = t.admit()
    a, b, c = sorted(new, key=lambda s: s.key)
    a.asked(0)
    b.asked(1)
    clock.advance(2 * sources.SOURCE_STALL + 1)
    assert t.stalled(MIB, lambda key: False) == []  # nobody holds what we miss: keep waiting
    assert sorted(s.key for s in t.stalled(MIB, lambda key: key == c.key)) == [a.key, b.key]  # c takes over both
    c.cool_off(1.0)
    (dropped,) = t.stalled(MIB, lambda key: True)  # then the other is the only holder left: kept through the pause
    assert dropped in (a, b)
