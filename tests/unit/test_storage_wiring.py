"""Storage wiring without sockets: --cache-size, the keeper, the downloads table's stop rules, ls and put text."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from helpers.clocks import FakeClock

from shoal import config
from shoal.cache import Cache, NoRoom
from shoal.cli import output
from shoal.config import PeerConfig
from shoal.peer.downloads import Downloads
from shoal.peer.keeper import Keeper
from shoal.peer.listing import OutputExists, local_file, named_output
from shoal.peer.node import Node
from shoal.peer.swarm import Download
from shoal.quota import Quota, QuotaSpec
from shoal.store import Entry, NotHeld, Store
from shoal.v1 import common_pb2, control_pb2

KiB = 1024
CS = 16 * KiB


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("10GiB", 10 * 1024**3), ("500M", 500 * 1024**2), ("80%", 0.8), ("100%", 1.0)]
)
def test_cache_size_takes_bytes_or_a_share_of_the_filesystem(text: str, value: int | float) -> None:
    parsed = config.parse_cache_size(text)
    assert parsed == value and type(parsed) is type(value)
    QuotaSpec.of(parsed)  # every accepted value is a valid quota


@pytest.mark.parametrize("text", ["0%", "101%", "-5%", "x%", "10 parsecs"])
def test_cache_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        config.parse_cache_size(text)


def test_cache_size_reaches_the_peer_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOAL_CACHE_SIZE", "50%")
    values = config.resolve(config.COMMANDS["peer"], {"tracker": "t:1", "data_dir": str(tmp_path)})
    assert PeerConfig.from_values(values).cache_size == 0.5


class Sleeper(Download):
    """A download that runs until cancelled."""

    def __init__(self, node: Node, file_id: str) -> None:
        super().__init__(node, None, None, file_id)  # type: ignore[arg-type]

    async def run(self) -> Entry:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def publish(store: Store, tmp_path: Path, name: str, size: int) -> Entry:
    source = tmp_path / name
    source.write_bytes(os.urandom(size))
    return store.publish(source, name, CS)


def keeper_setup(tmp_path: Path, limit: int) -> tuple[Store, Downloads, Keeper, list[int], FakeClock]:
    clock = FakeClock(1000.0)
    store = Store(tmp_path / "data", clock=clock)
    store.open()
    node = Node(PeerConfig(listen="127.0.0.1:0", trackers=("t:1",), data_dir=store.root), store, "me", "a:1")
    announced: list[int] = []
    downloads = Downloads(node, lambda file_id, output: Sleeper(node, file_id), lambda: None)
    keeper = Keeper(Cache(store, Quota(limit)), downloads, lambda: announced.append(1))
    return store, downloads, keeper, announced, clock


async def test_keeper_evicts_for_admission_and_announces_the_withdrawal(tmp_path: Path) -> None:
    store, _, keeper, announced, clock = keeper_setup(tmp_path, 10 * CS)
    old = publish(store, tmp_path, "old", 4 * CS)
    clock.advance(1)
    new = publish(store, tmp_path, "new", 4 * CS)
    await keeper.admit("", 3 * CS)  # 11 CS > 9.5: the least recently used goes
    assert store.get(old.file_id) is None and store.get(new.file_id) is not None
    assert announced == [1] and keeper.cache.evictions_total == 1
    with pytest.raises(NoRoom, match="larger than"):
        await keeper.admit("", 10 * CS)
    assert store.get(new.file_id) is not None


async def test_keeper_never_evicts_a_running_download(tmp_path: Path) -> None:
    store, downloads, keeper, _, _ = keeper_setup(tmp_path, 10 * CS)
    held = publish(store, tmp_path, "held", 8 * CS)
    downloads.start(held.file_id, "")  # pretend a download of it runs (it is complete, but listed as active)
    await asyncio.sleep(0)
    assert downloads.active() == {held.file_id}
    with pytest.raises(NoRoom):
        await keeper.admit("", 3 * CS)
    assert await keeper.sweep() == []
    await downloads.stop(held.file_id)
    assert downloads.active() == set()
    await keeper.admit("", 3 * CS)
    assert store.get(held.file_id) is None


async def test_keeper_remove_stops_the_download_and_withdraws(tmp_path: Path) -> None:
    store, downloads, keeper, announced, _ = keeper_setup(tmp_path, 0)
    held = publish(store, tmp_path, "held", 2 * CS)
    _, task = downloads.start(held.file_id, "")
    await asyncio.sleep(0)
    removed = await keeper.remove(held.file_id)
    assert removed.file_id == held.file_id and task.cancelled() and announced == [1]
    with pytest.raises(NotHeld):
        await keeper.remove(held.file_id)
    with pytest.raises(NotHeld):
        await keeper.pin(held.file_id, True)


async def test_a_client_cancel_marks_the_download_stopped_but_shutdown_does_not(tmp_path: Path) -> None:
    store, downloads, _, _, _ = keeper_setup(tmp_path, 0)
    partial = []
    for name in ("a", "b"):
        entry = publish(store, tmp_path, name, CS)
        store.remove(entry.file_id)
        partial.append(store.begin(entry.file_id, entry.manifest, ""))
    first, second = partial
    _, task = downloads.start(first.file_id, "")
    downloads.attach(first.file_id)
    _, other = downloads.start(second.file_id, "")
    await asyncio.sleep(0)
    downloads.detach(first.file_id, cancelled=True)  # the user's Ctrl-C
    await asyncio.gather(task, return_exceptions=True)
    for running in downloads.cancel_all():  # the peer stopping
        await asyncio.gather(running, return_exceptions=True)
    assert first.stopped and not second.stopped and other.cancelled()
    assert [e.file_id for e in store.resumable()] == [second.file_id]
    store.unstop(first.file_id)
    assert not first.stopped and len(store.resumable()) == 2


def test_local_file_state_and_names(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.open()
    entry = publish(store, tmp_path, "f", CS)
    entry.aliases.append("g")
    row = local_file(entry, set())
    assert row.state == control_pb2.LOCAL_FILE_STATE_COMPLETE and row.held_bytes == CS and list(row.aliases) == ["g"]
    assert not row.pinned and row.last_used_unix > 0


def test_named_output_refuses_an_existing_file_unless_overwrite(tmp_path: Path) -> None:
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(OutputExists):
        named_output(tmp_path, "m.bin", overwrite=False)
    assert named_output(tmp_path, "m.bin", overwrite=True) == tmp_path / "m.bin"
    assert named_output(tmp_path, "new.bin", overwrite=False) == tmp_path / "new.bin"


def test_put_line_says_how_and_under_which_name() -> None:
    info = common_pb2.FileInfo(file_id="ab" * 32, name="a.bin", size=2048)
    linked = control_pb2.PutResponse(file=info, chunks=1, method=control_pb2.PUT_METHOD_LINK)
    assert "your file is now read-only" in output.put_line(linked, "a.bin")
    added = control_pb2.PutResponse(file=info, chunks=1, held_as="a.bin", added_name=True)
    assert output.put_line(added, "b.bin") == "already held as a.bin (2.0 KiB, 1 chunks); added the name b.bin"
    again = control_pb2.PutResponse(file=info, chunks=1, held_as="a.bin")
    assert "also named b.bin" in output.put_line(again, "b.bin")


def test_ls_lines_show_size_pin_last_use_and_state() -> None:
    now = 1_000_000.0
    reply = control_pb2.ListResponse(
        files=[
            control_pb2.LocalFile(
                file=common_pb2.FileInfo(file_id="ab" * 32, name="m.bin", size=3 * 1024**2),
                complete=True,
                pinned=True,
                last_used_unix=now - 7200,
                state=control_pb2.LOCAL_FILE_STATE_COMPLETE,
                aliases=["n.bin"],
            ),
            control_pb2.LocalFile(
                file=common_pb2.FileInfo(file_id="cd" * 32, name="p.bin", size=1024),
                chunks_done=1,
                chunks_total=4,
                last_used_unix=now - 5,
                state=control_pb2.LOCAL_FILE_STATE_STOPPED,
            ),
        ]
    )
    header, first, second = output.ls_lines(reply, now)
    assert header.split()[1:] == ["SIZE", "PIN", "LAST", "USE", "STATE", "NAME"]
    assert "3.0 MiB" in first and " yes " in first and "2h ago" in first and "complete" in first
    assert first.endswith("m.bin, n.bin")
    assert "5s ago" in second and "stopped 1/4" in second


def test_summary_rate_uses_the_transfer_time() -> None:
    final = control_pb2.GetProgress(
        file=common_pb2.FileInfo(name="m"),
        total_bytes=4 * 1024**2,
        done=True,
        seconds=10.0,
        transfer_seconds=2.0,
        sources=control_pb2.SourceShare(from_complete_bytes=4 * 1024**2, peers=2),
    )
    assert "(2.0 MiB/s)" in output.summary_line(final, Path("/o"))
