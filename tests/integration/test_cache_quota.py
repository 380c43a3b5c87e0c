"""The cache quota and the storage verbs with real daemons: eviction, rm, cancel, pin, put without a copy."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import command, ok, put, shoal
from helpers.files import make_file, sha256_of
from helpers.polling import wait_until
from helpers.processes import start_peers

from shoal.localswarm import LocalSwarm, Proc
from shoal.v1 import control_pb2

MiB = 1024 * 1024
UNKNOWN_ID = "0123456789abcdef" * 4


def listing(swarm: LocalSwarm, peer: Proc) -> dict[str, dict[str, Any]]:
    """`ls --json` by file id."""
    files = json.loads(ok(shoal(swarm, peer, "--json", "ls")))["files"]
    return {f["file"]["file_id"]: f for f in files}


def withdrawn(swarm: LocalSwarm, asker: Proc, file_id: str) -> bool:
    """No live peer is listed for the file any more."""
    return shoal(swarm, asker, "peers", file_id).returncode == 4


def one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == code, f"exit {result.returncode}: {result.stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("shoal: ") and text in lines[0], result.stderr


def test_quota_evicts_least_recently_used_and_keeps_pinned(swarm: LocalSwarm, tmp_path: Path) -> None:
    """10 MiB quota (high 9.5, low 8.5 MiB), five 2 MiB files: the least recently used unpinned one goes."""
    peer, other = start_peers(swarm, 2, "--cache-size", "10MiB")
    ids = {}
    for name in ("pinned", "old", "recent", "newer"):
        make_file(tmp_path / name, 2 * MiB)
        ids[name] = put(swarm, peer, tmp_path / name)
    ok(shoal(swarm, peer, "pin", ids["pinned"]))
    (tmp_path / "out").mkdir()
    ok(shoal(swarm, peer, "get", ids["old"], "-o", f"{tmp_path / 'out'}/"))
    assert (tmp_path / "out" / "old").exists()
    # "old" was just used (exported), so "recent" is now the least recently used unpinned file.
    make_file(tmp_path / "incoming", 2 * MiB)
    ids["incoming"] = put(swarm, peer, tmp_path / "incoming")
    held = listing(swarm, peer)
    assert set(held) == {ids["pinned"], ids["old"], ids["newer"], ids["incoming"]}, held
    assert held[ids["pinned"]]["pinned"] and held[ids["pinned"]]["state"] == control_pb2.LOCAL_FILE_STATE_COMPLETE
    status = json.loads(ok(shoal(swarm, peer, "--json", "status")))
    assert int(status["cache_quota_bytes"]) == 10 * MiB and int(status["store_bytes"]) == 8 * MiB
    wait_until(lambda: withdrawn(swarm, other, ids["recent"]), what="the evicted file withdrawn from the tracker")
    assert shoal(swarm, other, "peers", ids["pinned"]).returncode == 0
    text = ok(shoal(swarm, peer, "ls"))
    assert "yes" in text.splitlines()[[i for i, line in enumerate(text.splitlines()) if ids["pinned"] in line][0]]
    # Unpinned, the pinned file is the oldest: the next file in pushes it out.
    ok(shoal(swarm, peer, "unpin", ids["pinned"]))
    make_file(tmp_path / "last", 2 * MiB)
    ids["last"] = put(swarm, peer, tmp_path / "last")
    assert ids["pinned"] not in listing(swarm, peer)


def test_a_download_that_cannot_fit_fails_before_writing(swarm: LocalSwarm, tmp_path: Path) -> None:
    seeder = swarm.start_peer()
    small = swarm.start_peer("--cache-size", "4MiB")
    make_file(tmp_path / "keep", 3 * MiB)
    kept = put(swarm, small, tmp_path / "keep")
    ok(shoal(swarm, small, "pin", kept))
    make_file(tmp_path / "big", 2 * MiB)
    wanted = put(swarm, seeder, tmp_path / "big")
    wait_until(lambda: shoal(swarm, small, "peers", wanted).returncode == 0, what="the file listed")
    result = shoal(swarm, small, "get", wanted, "-o", str(tmp_path / "got"))
    one_line_error(result, 1, "cannot fit 2.0 MiB in the cache quota of 4.0 MiB")
    assert "pinned" in result.stderr
    assert set(listing(swarm, small)) == {kept}
    assert small.data_dir is not None and not any((small.data_dir / "partial").iterdir())
    assert not (tmp_path / "got").exists()


def test_rm_pin_unpin_cancel_on_files_not_held(swarm: LocalSwarm, tmp_path: Path) -> None:
    (peer,) = start_peers(swarm, 1)
    for verb in ("rm", "pin", "unpin", "cancel"):
        one_line_error(shoal(swarm, peer, verb, UNKNOWN_ID), 4, UNKNOWN_ID)
    make_file(tmp_path / "f", MiB)
    file_id = put(swarm, peer, tmp_path / "f")
    one_line_error(shoal(swarm, peer, "cancel", file_id), 4, "nothing to cancel")
    pinned = json.loads(ok(shoal(swarm, peer, "--json", "pin", file_id)))
    assert pinned["file"]["pinned"] is True
    assert "removed" in ok(shoal(swarm, peer, "rm", file_id))
    assert listing(swarm, peer) == {}
    one_line_error(shoal(swarm, peer, "rm", file_id), 4, "not held")


@pytest.mark.swarm_config(announce_interval=5.0)  # a 15 s lease: only an immediate withdrawal passes
def test_rm_withdraws_from_the_tracker_at_once(swarm: LocalSwarm, tmp_path: Path) -> None:
    holder, asker = start_peers(swarm, 2)
    make_file(tmp_path / "f", MiB)
    file_id = put(swarm, holder, tmp_path / "f")
    wait_until(lambda: shoal(swarm, asker, "peers", file_id).returncode == 0, what="the file listed")
    ok(shoal(swarm, holder, "rm", file_id))
    wait_until(lambda: withdrawn(swarm, asker, file_id), timeout=10.0, interval=0.05, what="withdrawal")


def _slow_download(swarm: LocalSwarm, tmp_path: Path) -> tuple[Proc, Proc, str, str]:
    seeder = swarm.start_peer("--upload-limit", "1M")
    leecher = swarm.start_peer()
    digest = make_file(tmp_path / "slow", 12 * MiB)
    file_id = put(swarm, seeder, tmp_path / "slow", "--chunk-size", "256KiB")
    wait_until(lambda: shoal(swarm, leecher, "peers", file_id).returncode == 0, what="the file listed")
    return seeder, leecher, file_id, digest


def _started(swarm: LocalSwarm, leecher: Proc, file_id: str) -> subprocess.Popen[str]:
    get = subprocess.Popen(
        command(leecher, "get", file_id, "-o", str(leecher.data_dir) + "-out.bin"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def downloading() -> bool:
        entry = listing(swarm, leecher).get(file_id)
        return (
            entry is not None
            and entry["state"] == control_pb2.LOCAL_FILE_STATE_DOWNLOADING
            and entry["chunks_done"] > 0
        )

    wait_until(downloading, timeout=30, what="the download under way")
    return get


def test_cancel_drops_the_download_and_it_does_not_come_back(swarm: LocalSwarm, tmp_path: Path) -> None:
    _, leecher, file_id, _ = _slow_download(swarm, tmp_path)
    get = _started(swarm, leecher, file_id)
    try:
        assert "cancelled" in ok(shoal(swarm, leecher, "cancel", file_id))
        assert get.wait(30) == 1
    finally:
        get.kill()
        get.communicate()
    assert listing(swarm, leecher) == {}
    swarm.stop_proc(leecher)
    swarm.restart(leecher)
    assert listing(swarm, leecher) == {}


def test_ctrl_c_stops_and_a_restart_does_not_resume_until_get(swarm: LocalSwarm, tmp_path: Path) -> None:
    _, leecher, file_id, digest = _slow_download(swarm, tmp_path)
    get = _started(swarm, leecher, file_id)
    get.send_signal(signal.SIGINT)
    assert get.wait(30) == 130
    get.communicate()

    def stopped() -> dict[str, Any] | None:
        entry = listing(swarm, leecher).get(file_id)
        return entry if entry is not None and entry["state"] == control_pb2.LOCAL_FILE_STATE_STOPPED else None

    wait_until(stopped, what="the download stopped")
    swarm.stop_proc(leecher)
    swarm.restart(leecher)
    entry = stopped()
    assert entry is not None, listing(swarm, leecher)
    done = entry["chunks_done"]
    assert 0 < done < entry["chunks_total"]
    out = tmp_path / "resumed.bin"
    summary = json.loads(ok(shoal(swarm, leecher, "--json", "get", file_id, "-o", str(out))).splitlines()[-1])
    assert summary["sources"]["resumed_chunks"] >= done
    assert sha256_of(out) == digest
    assert listing(swarm, leecher)[file_id]["state"] == control_pb2.LOCAL_FILE_STATE_COMPLETE


def test_put_stores_no_second_copy(swarm: LocalSwarm, tmp_path: Path) -> None:
    (peer,) = start_peers(swarm, 1)
    assert peer.data_dir is not None
    source = tmp_path / "linked.bin"
    make_file(source, MiB)
    reply = json.loads(ok(shoal(swarm, peer, "--json", "put", str(source))))
    stored = peer.data_dir / "files" / reply["file"]["file_id"] / "data"
    if reply["method"] == control_pb2.PUT_METHOD_REFLINK:  # a copy-on-write clone: the user's file stays writable
        assert os.stat(source).st_ino != os.stat(stored).st_ino
    else:
        assert reply["method"] == control_pb2.PUT_METHOD_LINK, reply
        assert os.stat(source).st_ino == os.stat(stored).st_ino and os.stat(source).st_nlink == 2
        assert not os.stat(source).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    text_source = tmp_path / "text.bin"
    make_file(text_source, MiB)
    assert "no bytes copied" in ok(shoal(swarm, peer, "put", str(text_source))).splitlines()[0]

    moved = tmp_path / "moved.bin"
    digest = make_file(moved, MiB)
    inode = os.stat(moved).st_ino
    reply = json.loads(ok(shoal(swarm, peer, "--json", "put", "--move", str(moved))))
    assert reply["method"] == control_pb2.PUT_METHOD_MOVE and not moved.exists()
    stored = peer.data_dir / "files" / reply["file"]["file_id"] / "data"
    assert os.stat(stored).st_ino == inode and sha256_of(stored) == digest


def test_put_name_on_content_already_held(swarm: LocalSwarm, tmp_path: Path) -> None:
    (peer,) = start_peers(swarm, 1)
    make_file(tmp_path / "a.bin", MiB)
    file_id = put(swarm, peer, tmp_path / "a.bin", "--copy")
    again = ok(shoal(swarm, peer, "put", str(tmp_path / "a.bin"), "--name", "b.bin", "--copy")).splitlines()
    assert again[0].startswith("already held as a.bin") and "added the name b.bin" in again[0], again
    assert again[-1] == file_id
    assert listing(swarm, peer)[file_id]["aliases"] == ["b.bin"]
    same = ok(shoal(swarm, peer, "put", str(tmp_path / "a.bin"), "--name", "b.bin", "--copy")).splitlines()
    assert same[0].startswith("already held as a.bin") and "nothing stored" in same[0], same
