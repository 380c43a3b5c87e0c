"""Rarest-first chunk selection (BEP 3) and endgame bookkeeping, with seeded randomness."""

from __future__ import annotations

import random
from collections import Counter

from shoal.content import Bitfield
from shoal.peer.picker import ENDGAME_MAX_REQUESTERS, Picker


def bits(size: int, held: set[int] | list[int] | range) -> Bitfield:
    field = Bitfield(size)
    for i in held:
        field.set(i)
    return field


def test_picks_rarest_chunk() -> None:
    picker = Picker(Bitfield(6), random.Random(1))
    picker.set_bitfield("a", bits(6, range(6)))
    picker.set_bitfield("b", bits(6, [0, 1, 2, 4, 5]))
    picker.set_bitfield("c", bits(6, [0, 1, 4, 5]))
    # availability: 0:3 1:3 2:2 3:1 4:3 5:3 -> chunk 3 is rarest, then 2.
    assert picker.availability == [3, 3, 2, 1, 3, 3]
    assert picker.pick("a") == 3
    picker.started(3, "a")
    assert picker.pick("a") == 2
    assert picker.pick("b") == 2  # b lacks 3; its rarest is 2
    picker.started(2, "b")
    assert picker.pick("c") in {0, 1, 4, 5}


def test_rarest_among_what_the_source_has() -> None:
    picker = Picker(Bitfield(4), random.Random(2))
    picker.set_bitfield("a", bits(4, [0]))
    picker.set_bitfield("b", bits(4, [0, 1, 2, 3]))
    picker.set_bitfield("c", bits(4, [0, 1, 2]))
    for _ in range(20):
        assert picker.pick("a") == 0
        assert picker.pick("c") in {1, 2}
        assert picker.pick("b") == 3


def test_random_tie_break_covers_all_equals() -> None:
    picker = Picker(Bitfield(8), random.Random(3))
    picker.set_bitfield("a", bits(8, range(8)))
    picker.set_bitfield("b", bits(8, [0, 1, 2, 3]))
    # 4..7 are held by one source only: the tie among them must be broken at random.
    counts = Counter(picker.pick("a") for _ in range(800))
    assert set(counts) == {4, 5, 6, 7}
    assert min(counts.values()) > 120  # ~200 each; a fixed order would give 800 to one


def test_never_picks_held_or_unavailable() -> None:
    have = bits(10, [0, 2, 4, 6, 8])
    picker = Picker(have, random.Random(4))
    picker.set_bitfield("a", bits(10, [0, 1, 2, 3, 4]))
    picks = {picker.pick("a") for _ in range(200)}
    assert picks == {1, 3}
    picker.set_bitfield("b", bits(10, [0, 2, 4, 6, 8]))  # only chunks we already hold
    assert picker.pick("b") is None
    assert not picker.useful("b")
    assert picker.useful("a")


def test_unknown_source_and_nothing_missing() -> None:
    picker = Picker(Bitfield(3), random.Random(5))
    assert picker.pick("stranger") is None
    assert not picker.useful("stranger")
    done = Picker(Bitfield.full(3), random.Random(5))
    done.set_bitfield("a", Bitfield.full(3))
    assert done.missing == set()
    assert done.pick("a") is None


def test_inflight_not_repicked_before_endgame() -> None:
    picker = Picker(Bitfield(5), random.Random(6))
    picker.set_bitfield("a", Bitfield.full(5))
    picker.set_bitfield("b", Bitfield.full(5))
    picked = []
    for _ in range(4):
        index = picker.pick("a")
        assert index is not None and index not in picked
        picker.started(index, "a")
        picked.append(index)
    # One chunk is still free: b must get it, not a duplicate.
    (free,) = set(range(5)) - set(picked)
    for _ in range(20):
        assert picker.pick("b") == free


def test_no_endgame_while_free_chunks_remain_elsewhere() -> None:
    picker = Picker(Bitfield(3), random.Random(7))
    picker.set_bitfield("a", bits(3, [0]))
    picker.set_bitfield("b", bits(3, [0, 1, 2]))
    picker.started(0, "b")
    # a only holds 0, which is in flight; 1 and 2 are free (at b), so a gets nothing.
    assert picker.pick("a") is None


def test_endgame_duplicates_when_everything_is_in_flight() -> None:
    picker = Picker(Bitfield(3), random.Random(8))
    for source in ("a", "b", "c", "d", "e"):
        picker.set_bitfield(source, Bitfield.full(3))
    for index in range(3):
        picker.started(index, "a")
    assert picker.pick("a") is None  # never twice to the same source
    for source in ("b", "c", "d", "e"):
        while (pick := picker.pick(source)) is not None:
            assert source not in picker.inflight[pick]
            picker.started(pick, source)
    for index, requesters in picker.inflight.items():
        assert len(requesters) == ENDGAME_MAX_REQUESTERS, (index, requesters)


def test_endgame_prefers_least_requested() -> None:
    picker = Picker(Bitfield(3), random.Random(9))
    for source in ("a", "b", "c"):
        picker.set_bitfield(source, Bitfield.full(3))
    picker.started(0, "a")
    picker.started(0, "b")
    picker.started(1, "a")
    picker.started(2, "b")
    # c: 0 has 2 requesters, 1 and 2 have one each.
    assert {picker.pick("c") for _ in range(50)} == {1, 2}


def test_endgame_respects_what_the_source_holds() -> None:
    picker = Picker(Bitfield(2), random.Random(10))
    picker.set_bitfield("a", Bitfield.full(2))
    picker.set_bitfield("b", bits(2, [1]))
    picker.started(0, "a")
    picker.started(1, "a")
    assert picker.pick("b") == 1


def test_finished_and_completed() -> None:
    picker = Picker(Bitfield(3), random.Random(11))
    for source in ("a", "b", "c"):
        picker.set_bitfield(source, Bitfield.full(3))
    picker.started(1, "a")
    picker.started(1, "b")
    picker.started(1, "c")
    picker.finished(1, "c")  # c's request failed
    assert picker.inflight[1] == {"a", "b"}
    losers = picker.completed(1)
    assert losers == {"a", "b"}
    assert 1 not in picker.missing
    assert 1 not in picker.inflight
    picker.finished(1, "a")  # late finish of a cancelled duplicate: harmless
    picker.finished(1, "b")
    assert 1 not in picker.inflight
    assert all(picker.pick("a") != 1 for _ in range(20))


def test_finished_last_requester_frees_chunk() -> None:
    picker = Picker(Bitfield(2), random.Random(12))
    picker.set_bitfield("a", Bitfield.full(2))
    picker.started(0, "a")
    picker.finished(0, "a")
    assert picker.inflight == {}
    assert {picker.pick("a") for _ in range(50)} == {0, 1}


def test_completed_without_inflight() -> None:
    picker = Picker(Bitfield(2), random.Random(13))
    assert picker.completed(0) == set()
    assert picker.missing == {1}


def test_remove_source_updates_availability() -> None:
    picker = Picker(Bitfield(4), random.Random(14))
    picker.set_bitfield("a", bits(4, [0, 1]))
    picker.set_bitfield("b", bits(4, [1, 2]))
    picker.started(1, "a")
    picker.started(1, "b")
    picker.remove_source("a")
    assert picker.availability == [0, 1, 1, 0]
    assert not picker.useful("a")
    assert picker.pick("a") is None
    assert picker.inflight[1] == {"b"}
    picker.remove_source("a")  # unknown now: no-op
    assert picker.availability == [0, 1, 1, 0]


def test_remove_source_frees_its_inflight_chunks() -> None:
    picker = Picker(Bitfield(4), random.Random(15))
    picker.set_bitfield("a", Bitfield.full(4))
    picker.set_bitfield("b", Bitfield.full(4))
    picker.started(0, "a")
    picker.remove_source("a")
    assert 0 not in picker.inflight
    assert 0 in {picker.pick("b") for _ in range(100)}


def test_drop_chunk() -> None:
    picker = Picker(Bitfield(3), random.Random(16))
    picker.set_bitfield("a", bits(3, [0, 2]))
    picker.drop_chunk("a", 2)
    assert picker.availability == [1, 0, 0]
    assert all(picker.pick("a") == 0 for _ in range(20))
    picker.drop_chunk("a", 2)  # already gone: no double decrement
    picker.drop_chunk("nobody", 0)
    assert picker.availability == [1, 0, 0]


def test_set_bitfield_diff_matches_recount() -> None:
    """Random set/drop/remove sequences against an independent model of who holds what."""
    rng = random.Random(2024)
    for size in (1, 7, 8, 9, 33, 100):
        picker = Picker(Bitfield(size), random.Random(size))
        model: dict[str, set[int]] = {}
        names = [f"s{i}" for i in range(6)]
        for _ in range(150):
            name = rng.choice(names)
            action = rng.random()
            if action < 0.6:
                density = rng.random()
                held = {i for i in range(size) if rng.random() < density}
                picker.set_bitfield(name, bits(size, held))
                model[name] = held
            elif action < 0.9:
                index = rng.randrange(size)
                picker.drop_chunk(name, index)
                model.get(name, set()).discard(index)
            else:
                picker.remove_source(name)
                model.pop(name, None)
            expected = [sum(1 for held in model.values() if i in held) for i in range(size)]
            assert picker.availability == expected
            assert all(picker.useful(n) == bool(model.get(n)) for n in names)


def test_set_bitfield_same_source_replaced() -> None:
    picker = Picker(Bitfield(9), random.Random(18))
    picker.set_bitfield("a", bits(9, [0, 8]))
    picker.set_bitfield("a", bits(9, [1, 8]))
    assert picker.availability == [0, 1, 0, 0, 0, 0, 0, 0, 1]
    picker.set_bitfield("a", Bitfield(9))
    assert picker.availability == [0] * 9
