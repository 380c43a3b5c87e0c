"""Super-seeding offers: few least-sent chunks per downloader, spread across downloaders."""

from __future__ import annotations

import random

from helpers.clocks import FakeClock

from shoal.content import Bitfield
from shoal.peer.superseed import ACTIVE_SECONDS, OFFER_CHUNKS, RESERVE_SECONDS, SuperSeeder


def offered(bits: Bitfield | None) -> set[int]:
    assert bits is not None
    return {i for i in range(bits.size) if i in bits}


def test_single_downloader_sees_everything() -> None:
    seeder = SuperSeeder(16, clock=FakeClock())
    seeder.saw("a")
    assert seeder.offer("a") is None


def test_downloaders_get_disjoint_offers_of_least_sent_chunks() -> None:
    clock = FakeClock()
    seeder = SuperSeeder(64, clock=clock, rng=random.Random(1))
    for peer in "abcd":
        seeder.saw(peer)
    for i in range(32):
        seeder.served(i)  # first half already sent once
    offers = [offered(seeder.offer(peer)) for peer in "abcd"]
    assert all(len(o) == OFFER_CHUNKS for o in offers)
    union = set().union(*offers)
    assert len(union) == 4 * OFFER_CHUNKS  # reserved for one downloader, not offered to another
    assert all(i >= 32 for i in union)  # never-sent chunks first


def test_offer_skips_what_the_downloader_has_and_repeats_its_reservation() -> None:
    clock = FakeClock()
    seeder = SuperSeeder(8, clock=clock, rng=random.Random(2))
    has = Bitfield(8)
    for i in range(6):
        has.set(i)
    seeder.saw("a", has)
    seeder.saw("b")
    first = offered(seeder.offer("a"))
    assert first == {6, 7}
    clock.now += RESERVE_SECONDS / 2
    assert offered(seeder.offer("a")) == first


def test_reservations_expire_and_idle_downloaders_stop_counting() -> None:
    clock = FakeClock()
    seeder = SuperSeeder(4, clock=clock, rng=random.Random(3))
    seeder.saw("a")
    seeder.saw("b")
    taken = offered(seeder.offer("a"))
    assert taken == {0, 1, 2, 3}
    assert offered(seeder.offer("b")) == {0, 1, 2, 3}  # all reserved: fall back to sharing least-sent
    clock.now += ACTIVE_SECONDS + 1
    seeder.saw("a")
    assert seeder.offer("a") is None  # "b" went quiet: one downloader left, show everything
