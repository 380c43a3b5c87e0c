"""The cache quota: the pure eviction policy, quota specs, and the keeper that applies it to a real store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.clocks import FakeClock
from unit.manifests import CS, build, chunks_of, pattern

from shoal.cache import Cache
from shoal.quota import HIGH_WATER, LOW_WATER, Quota, QuotaExceeded, QuotaSpec, Usage, human
from shoal.store import Store

MiB = 1024 * 1024


def use(
    name: str,
    size: int,
    last_used: float,
    *,
    complete: bool = True,
    pinned: bool = False,
    active: bool = False,
    pending: int = 0,
) -> Usage:
    return Usage(name, name, size, last_used, complete, pinned=pinned, active=active, pending=pending)


def ids(usages: list[Usage]) -> list[str]:
    return [u.file_id for u in usages]


# ---- the policy ---------------------------------------------------------------------------------


def test_marks_are_fractions_of_the_quota() -> None:
    quota = Quota(100 * MiB)
    assert (HIGH_WATER, LOW_WATER) == (0.95, 0.85)
    assert quota.high_bytes == 95 * MiB and quota.low_bytes == 85 * MiB


def test_nothing_evicted_at_or_below_the_high_mark() -> None:
    quota = Quota(100)
    assert quota.plan([use("a", 50, 1), use("b", 45, 2)]) == []  # 95 == high mark


def test_past_the_high_mark_lru_complete_files_go_down_to_the_low_mark() -> None:
    quota = Quota(100)
    entries = [use("new", 30, 30), use("old", 30, 10), use("mid", 30, 20), use("tiny", 6, 40)]  # 96 > 95
    assert ids(quota.plan(entries)) == ["old"]  # 96 - 30 = 66 <= 85: one is enough
    entries.append(use("more", 20, 50))  # 116: old (86) is not enough, mid (56) is
    assert ids(quota.plan(entries)) == ["old", "mid"]


def test_pinned_and_active_files_are_never_evicted() -> None:
    quota = Quota(100)
    entries = [
        use("pinned-old", 40, 1, pinned=True),
        use("downloading", 40, 2, complete=False, active=True),
        use("evictable", 30, 3),
    ]
    assert ids(quota.plan(entries)) == ["evictable"]
    assert ids(quota.plan(entries[:2] + [use("x", 20, 0, pinned=True)])) == []


def test_idle_partial_downloads_go_after_complete_files() -> None:
    quota = Quota(100)
    entries = [use("stopped", 50, 1, complete=False), use("done", 25, 5), use("done2", 25, 6)]
    assert ids(quota.plan(entries)) == ["done"]  # 100 -> 75: a newer complete file goes before an older partial
    entries.append(use("kept", 40, 0, pinned=True))
    assert ids(quota.plan(entries)) == ["done", "done2", "stopped"]  # 140 -> 115 -> 90 -> 40


def test_pending_bytes_of_running_downloads_count() -> None:
    quota = Quota(100)
    entries = [use("running", 10, 1, complete=False, active=True, pending=50), use("old", 40, 0)]
    assert ids(quota.plan(entries)) == ["old"]  # 10 + 50 + 40 = 100 > 95


def test_unlimited_never_evicts_or_refuses() -> None:
    quota = Quota(0)
    assert quota.unlimited
    assert quota.plan([use("a", 10**15, 1)]) == []
    assert quota.admit(10**15, [use("a", 10**15, 1)]) == []


def test_admit_without_eviction_when_it_fits_under_the_high_mark() -> None:
    quota = Quota(100)
    assert quota.admit(45, [use("a", 50, 1)]) == []


def test_admit_evicts_lru_down_to_the_low_mark() -> None:
    quota = Quota(100)
    entries = [use("a", 30, 1), use("b", 30, 2), use("c", 30, 3)]
    assert ids(quota.admit(20, entries)) == ["a"]  # 110 -> 80 <= 85
    assert ids(quota.admit(50, entries)) == ["a", "b"]  # 140 -> 110 -> 80


def test_admit_refuses_before_evicting_when_everything_is_pinned_or_in_use() -> None:
    quota = Quota(100 * MiB)
    entries = [
        use("p", 60 * MiB, 1, pinned=True),
        use("run", 10 * MiB, 2, complete=False, active=True, pending=10 * MiB),
        use("free", 5 * MiB, 3),
    ]
    with pytest.raises(QuotaExceeded) as caught:
        quota.admit(30 * MiB, entries)
    message = str(caught.value)
    assert "30.0 MiB" in message and "100.0 MiB" in message and "95.0 MiB" in message
    assert "60.0 MiB pinned" in message and "20.0 MiB in downloads running now" in message
    assert quota.evictions_total == 0


def test_admit_refuses_a_file_larger_than_the_high_mark() -> None:
    quota = Quota(100 * MiB)
    with pytest.raises(QuotaExceeded, match="larger than the 95.0 MiB high-water mark"):
        quota.admit(96 * MiB, [])
    assert quota.admit(95 * MiB, []) == []


def test_record_counts_evictions_and_bytes() -> None:
    quota = Quota(100)
    quota.record(use("a", 30, 1))
    quota.record(use("b", 12, 1))
    assert (quota.evictions_total, quota.evicted_bytes_total) == (2, 42)


@pytest.mark.parametrize(("limit", "high", "low"), [(-1, 0.95, 0.85), (100, 0.8, 0.9), (100, 1.5, 0.9), (100, 0.9, 0)])
def test_bad_quota_rejected(limit: int, high: float, low: float) -> None:
    with pytest.raises(ValueError):
        Quota(limit, high=high, low=low)


def test_human_units() -> None:
    assert human(0) == "0 B"
    assert human(1023) == "1023 B"
    assert human(1536) == "1.5 KiB"
    assert human(10 * 1024**3) == "10.0 GiB"
    assert human(3 * 1024**5) == "3072.0 TiB"


# ---- quota specs --------------------------------------------------------------------------------


def fake_statvfs(total_bytes: int) -> os.statvfs_result:
    frsize = 4096
    return os.statvfs_result((frsize, frsize, total_bytes // frsize, 0, 0, 0, 0, 0, 0, 255))


def test_spec_bytes_and_none() -> None:
    assert QuotaSpec().resolve(Path("/nowhere")) == 0
    assert QuotaSpec.of(0).resolve(Path("/nowhere")) == 0
    assert QuotaSpec.of(10 * 1024**3).resolve(Path("/nowhere")) == 10 * 1024**3


def test_spec_fraction_of_the_filesystem() -> None:
    seen: list[str] = []

    def statvfs(path: str) -> os.statvfs_result:
        seen.append(path)
        return fake_statvfs(1000 * MiB)

    assert QuotaSpec.of(0.8).resolve(Path("/data"), statvfs) == 800 * MiB
    assert seen == ["/data"]


def test_spec_fraction_of_a_real_filesystem(tmp_path: Path) -> None:
    fs = os.statvfs(tmp_path)
    assert QuotaSpec.of(0.5).resolve(tmp_path) == int(fs.f_blocks * fs.f_frsize * 0.5)


@pytest.mark.parametrize(
    "kwargs", [{"bytes": -1}, {"fraction": 1.5}, {"fraction": -0.1}, {"bytes": 5, "fraction": 0.5}]
)
def test_bad_spec_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        QuotaSpec(**kwargs)  # type: ignore[arg-type]


# ---- the keeper on a real store -----------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    store = Store(tmp_path / "data", clock=clock)
    store.open()
    yield store
    store.close()


def publish(store: Store, tmp_path: Path, name: str, size: int, seed: int) -> str:
    source = tmp_path / f"src-{name}"
    source.write_bytes(pattern(size, seed=seed))
    return store.publish(source, name, CS).file_id


def test_cache_sweep_evicts_lru_and_keeps_pinned(store: Store, tmp_path: Path, clock: FakeClock) -> None:
    names = {}
    for seed, name in enumerate(["a", "b", "c", "d"]):
        names[name] = publish(store, tmp_path, name, 4 * CS, seed)
        clock.advance(10)
    store.pin(names["a"])  # the oldest, but pinned
    store.read_chunk(store.get(names["b"]), 0)  # type: ignore[arg-type]  # served: now the newest
    cache = Cache(store, Quota(15 * CS))  # high 14.25 CS, low 12.75 CS; 16 CS held
    assert cache.bytes_used == 16 * CS and cache.quota_bytes == 15 * CS
    evicted = cache.sweep()
    assert ids(evicted) == [names["c"]]  # a pinned, c least recently used: 16 -> 12 CS
    assert store.get(names["c"]) is None and not (tmp_path / "data" / "files" / names["c"]).exists()
    assert {e.file_id for e in store.entries()} == {names["a"], names["b"], names["d"]}
    assert (cache.evictions_total, cache.evicted_bytes_total, cache.bytes_used) == (1, 4 * CS, 12 * CS)
    assert cache.sweep() == []


def test_cache_make_room_for_a_download(store: Store, tmp_path: Path, clock: FakeClock) -> None:
    old = publish(store, tmp_path, "old", 4 * CS, 1)
    clock.advance(5)
    new = publish(store, tmp_path, "new", 4 * CS, 2)
    cache = Cache(store, Quota(10 * CS))  # high 9.5 CS, low 8.5 CS
    incoming, manifest = build(pattern(3 * CS, seed=3))
    assert ids(cache.make_room(incoming, manifest.size)) == [old]  # 11 CS -> 7 CS
    assert store.get(old) is None and store.get(new) is not None
    store.begin(incoming, manifest, "")
    assert cache.make_room(incoming, manifest.size, {incoming}) == []  # resuming: already counted


def test_cache_make_room_refuses_and_evicts_nothing(store: Store, tmp_path: Path) -> None:
    pinned = publish(store, tmp_path, "pinned", 6 * CS, 1)
    store.pin(pinned)
    running, manifest = build(pattern(4 * CS, seed=2))
    entry = store.begin(running, manifest, "")
    store.write_chunk(entry, 0, chunks_of(pattern(4 * CS, seed=2))[0])
    cache = Cache(store, Quota(10 * CS))
    incoming, incoming_manifest = build(pattern(2 * CS, seed=3))
    with pytest.raises(QuotaExceeded, match="pinned"):
        cache.make_room(incoming, incoming_manifest.size, {running})
    assert store.get(pinned) is not None and store.get(running) is not None
    assert cache.evictions_total == 0
    assert cache.make_room(incoming, 0, {running}) == []  # an empty file always fits


def test_cache_open_resolves_a_fraction(store: Store, tmp_path: Path) -> None:
    cache = Cache.open(store, QuotaSpec.of(0.25), tmp_path)
    fs = os.statvfs(tmp_path)
    assert cache.quota_bytes == int(fs.f_blocks * fs.f_frsize * 0.25)


def test_cache_make_room_for_a_put_before_its_id_is_known(store: Store, tmp_path: Path, clock: FakeClock) -> None:
    old = publish(store, tmp_path, "old", 6 * CS, 1)
    store.pin(publish(store, tmp_path, "kept", 2 * CS, 2))
    cache = Cache(store, Quota(10 * CS))
    assert ids(cache.make_room("", 3 * CS)) == [old]
    with pytest.raises(QuotaExceeded):
        cache.make_room("", 8 * CS)  # 2 CS pinned + 8 CS > 9.5 CS
