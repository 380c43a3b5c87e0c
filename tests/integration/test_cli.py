"""The `shoal` client commands as a user runs them: subprocesses against real peer daemons."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import ok, put, shoal
from helpers.files import make_file, sha256_of
from helpers.polling import wait_until
from helpers.processes import start_peers

from shoal.localswarm import LocalSwarm, Proc, free_port

FILE_ID = re.compile(r"[0-9a-f]{64}")
UNKNOWN_ID = "0123456789abcdef" * 4
CLI_TIMEOUT = 60.0


@dataclass
class Pair:
    """Two peers sharing one tracker: the seeder publishes, the leecher fetches."""

    swarm: LocalSwarm
    seeder: Proc
    leecher: Proc


@pytest.fixture(scope="module")
def pair(module_swarm: LocalSwarm) -> Pair:
    seeder, leecher = start_peers(module_swarm, 2)
    return Pair(module_swarm, seeder, leecher)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """Errors are exactly one line on stderr, start with 'shoal:', carry no traceback, and exit non-zero."""
    lines = result.stderr.splitlines()
    assert result.returncode == code, f"exit {result.returncode}, stderr {result.stderr!r}"
    assert len(lines) == 1, f"expected one stderr line, got {result.stderr!r}"
    assert lines[0].startswith("shoal: "), lines
    assert text in lines[0], lines
    assert "Traceback" not in result.stderr + result.stdout


def wait_listed(pair: Pair, file_id: str) -> None:
    """Wait until the leecher hears from the tracker that someone holds `file_id`."""
    wait_until(lambda: shoal(pair.swarm, pair.leecher, "peers", file_id).returncode == 0, what=f"{file_id} listed")


def status(pair: Pair, peer: Proc) -> dict[str, Any]:
    data = json.loads(ok(shoal(pair.swarm, peer, "status", "--json")))
    assert isinstance(data, dict)
    return data


def test_put_prints_the_id_last(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "notes.bin"
    make_file(source, 300_000)
    lines = ok(shoal(pair.swarm, pair.seeder, "put", str(source))).splitlines()
    assert FILE_ID.fullmatch(lines[-1]), lines
    assert lines[0].startswith("published notes.bin ("), lines
    as_json = json.loads(ok(shoal(pair.swarm, pair.seeder, "--json", "put", str(source))))
    assert as_json["file"]["file_id"] == lines[-1]
    assert as_json["file"]["size"] == 300_000


def test_get_writes_an_identical_file_and_prints_a_summary(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    digest = make_file(source, 3 * 1024 * 1024 + 17)
    file_id = put(pair.swarm, pair.seeder, source)
    wait_listed(pair, file_id)
    output = tmp_path / "out" / "copy.bin"
    output.parent.mkdir()
    result = shoal(pair.swarm, pair.leecher, "get", file_id, "--output", str(output))
    lines = ok(result).splitlines()
    assert sha256_of(output) == digest
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rf"{re.escape(str(output))}: received 3\.0 MiB from 1 peer in \d+\.\d\ds \([\d.]+ [KMG]iB/s\); "
        r"0% from peers still downloading",
        lines[0],
    ), lines
    assert result.stderr == ""


def test_json_get_asks_for_progress_once_a_second(module_swarm: LocalSwarm, pair: Pair, tmp_path: Path) -> None:
    # A slow download (2 MB/s cap): the daemon's default is a message every 0.2 s, the JSON client asks for 1 s.
    slow = start_peers(module_swarm, 1, "--download-limit", "2000000")[0]
    source = tmp_path / "slow.bin"
    digest = make_file(source, 4 * 1024 * 1024)
    file_id = put(pair.swarm, pair.seeder, source)
    wait_listed(pair, file_id)
    output = tmp_path / "slow.out"
    started = time.monotonic()
    lines = ok(shoal(module_swarm, slow, "--json", "get", file_id, "--output", str(output))).splitlines()
    elapsed = time.monotonic() - started
    assert sha256_of(output) == digest
    progress = [json.loads(line) for line in lines[:-1]]
    assert progress and not any(p["done"] for p in progress)
    assert elapsed > 1.5, f"the cap should make this take about 2 s, took {elapsed:.2f} s"
    # At the default 0.2 s this would be about elapsed / 0.2 lines; at 1 s no more than one a second plus the first.
    assert len(progress) <= elapsed + 1, f"{len(progress)} progress lines in {elapsed:.2f} s"


def test_search_is_a_case_insensitive_substring(pair: Pair, tmp_path: Path) -> None:
    tag = os.urandom(4).hex()
    source = tmp_path / "whatever.bin"
    make_file(source, 50_000)
    file_id = put(pair.swarm, pair.seeder, source, "--name", f"Quarterly-Report-{tag}.ISO")
    wait_listed(pair, file_id)
    for term in (f"report-{tag}", f"QUARTERLY-REPORT-{tag.upper()}", f"{tag}.iso"):
        found = ok(shoal(pair.swarm, pair.leecher, "search", term)).splitlines()
        assert len(found) == 1, (term, found)
        assert found[0].startswith(file_id), found
        assert f"Quarterly-Report-{tag}.ISO" in found[0]
        assert "(1 complete, 0 partial)" in found[0]
    result = shoal(pair.swarm, pair.leecher, "search", f"no-such-{tag}")
    assert_one_line_error(result, 4, "no file matches")
    assert result.stdout == ""


def test_peers_lists_the_holder(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "held.bin"
    make_file(source, 10_000)
    file_id = put(pair.swarm, pair.seeder, source)
    wait_listed(pair, file_id)
    seeder = status(pair, pair.seeder)["peer"]
    assert isinstance(seeder, dict)
    lines = ok(shoal(pair.swarm, pair.leecher, "peers", file_id)).splitlines()
    assert lines == [f"{seeder['peer_id']}  {seeder['address']}  complete"]
    assert seeder["address"] == pair.seeder.address


def test_ls_shows_what_the_peer_holds(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "listed.bin"
    make_file(source, 2048)
    file_id = put(pair.swarm, pair.seeder, source)
    lines = ok(shoal(pair.swarm, pair.seeder, "ls")).splitlines()
    assert any(line.startswith(file_id) and line.endswith("listed.bin") and " complete " in line for line in lines)
    files = json.loads(ok(shoal(pair.swarm, pair.seeder, "ls", "--json")))["files"]
    keys = ("file", "complete", "chunks_done", "chunks_total")
    mine = [{k: f[k] for k in keys} for f in files if f["file"]["file_id"] == file_id]
    assert mine == [
        {
            "file": {"file_id": file_id, "name": "listed.bin", "size": 2048},
            "complete": True,
            "chunks_done": 1,
            "chunks_total": 1,
        }
    ]


def test_status_text_and_json_reflect_the_transfer(pair: Pair, tmp_path: Path) -> None:
    tracker = pair.swarm.trackers[0].address
    text = ok(shoal(pair.swarm, pair.leecher, "status"))
    assert re.search(r"^peer +[0-9a-f]{32}$", text, re.M), text
    assert f"address   {pair.leecher.address}" in text
    assert f"trackers  {tracker} (up: {tracker})" in text
    assert f"data dir  {pair.leecher.data_dir}" in text

    seeder_before, leecher_before = status(pair, pair.seeder), status(pair, pair.leecher)
    size = 2 * 1024 * 1024 + 5
    source = tmp_path / "counted.bin"
    make_file(source, size)
    file_id = put(pair.swarm, pair.seeder, source, "--chunk-size", "65536")
    wait_listed(pair, file_id)
    ok(shoal(pair.swarm, pair.leecher, "get", file_id, "--output", str(tmp_path / "counted.out")))
    seeder_after, leecher_after = status(pair, pair.seeder), status(pair, pair.leecher)
    for data in (seeder_before, leecher_before, seeder_after, leecher_after):
        for key in ("uploaded_bytes", "downloaded_bytes"):
            assert type(data[key]) is int, (key, data[key])
    assert leecher_after["downloaded_bytes"] - leecher_before["downloaded_bytes"] == size
    assert seeder_after["uploaded_bytes"] - seeder_before["uploaded_bytes"] >= size
    assert leecher_after["trackers_up"] == [tracker]


@pytest.mark.parametrize(
    ("size", "extra", "chunks"),
    [(0, [], 0), (131072, ["--chunk-size", "65536"], 2)],
    ids=["empty", "two-chunks"],
)
def test_edge_sizes_round_trip(pair: Pair, tmp_path: Path, size: int, extra: list[str], chunks: int) -> None:
    source = tmp_path / "edge.bin"
    digest = make_file(source, size)
    lines = ok(shoal(pair.swarm, pair.seeder, "put", str(source), *extra)).splitlines()
    assert f", {chunks} chunks)" in lines[0], lines
    file_id = lines[-1]
    wait_listed(pair, file_id)
    output = tmp_path / "edge.out"
    ok(shoal(pair.swarm, pair.leecher, "get", file_id, "--output", str(output)))
    assert output.stat().st_size == size
    assert sha256_of(output) == digest
    listed = json.loads(ok(shoal(pair.swarm, pair.leecher, "ls", "--json")))["files"]
    assert [(f["complete"], f["chunks_total"]) for f in listed if f["file"]["file_id"] == file_id] == [(True, chunks)]


@pytest.mark.parametrize("name", ["a/b", "..", "../up", "/etc/passwd", "."])
def test_put_rejects_names_that_are_paths(pair: Pair, tmp_path: Path, name: str) -> None:
    source = tmp_path / "plain.bin"
    make_file(source, 100)
    result = shoal(pair.swarm, pair.seeder, "put", str(source), "--name", name)
    assert_one_line_error(result, 2, "invalid file name")
    names = [f["file"]["name"] for f in json.loads(ok(shoal(pair.swarm, pair.seeder, "ls", "--json")))["files"]]
    assert name not in names


@pytest.mark.parametrize("command", ["get", "peers"])
def test_malformed_id_is_a_usage_error(pair: Pair, tmp_path: Path, command: str) -> None:
    extra = ["--output", str(tmp_path / "x")] if command == "get" else []
    result = shoal(pair.swarm, pair.leecher, command, "not-a-file-id", *extra)
    assert_one_line_error(result, 2, "malformed file id 'not-a-file-id'")


@pytest.mark.parametrize("command", ["get", "peers"])
def test_unknown_id_is_not_found(pair: Pair, tmp_path: Path, command: str) -> None:
    output = tmp_path / "never"
    extra = ["--output", str(output)] if command == "get" else []
    result = shoal(pair.swarm, pair.leecher, command, UNKNOWN_ID, *extra)
    assert_one_line_error(result, 4, f"no live peer holds {'file ' if command == 'get' else ''}{UNKNOWN_ID}")
    assert not output.exists()


def test_unreachable_daemon_exits_3(pair: Pair, tmp_path: Path) -> None:
    for address in (f"unix:{tmp_path / 'nobody.sock'}", f"127.0.0.1:{free_port()}"):
        result = subprocess.run(
            [sys.executable, "-m", "shoal.cli", "--peer", address, "status"],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
        assert_one_line_error(result, 3, f"cannot reach the shoal daemon at {address}")


def test_put_of_a_missing_path_exits_4(pair: Pair, tmp_path: Path) -> None:
    missing = tmp_path / "missing.bin"
    assert_one_line_error(shoal(pair.swarm, pair.seeder, "put", str(missing)), 4, f"no such file: {missing}")


def test_get_into_a_missing_directory_fails(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "dirless.bin"
    make_file(source, 1000)
    file_id = put(pair.swarm, pair.seeder, source)
    output = tmp_path / "no" / "such" / "dir" / "out.bin"
    result = shoal(pair.swarm, pair.leecher, "get", file_id, "--output", str(output))
    assert_one_line_error(result, 4, f"output directory does not exist: {output.parent}")
    assert not output.parent.exists()


def test_get_into_a_directory_never_replaces_its_namesake(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "to-dir.bin"
    make_file(source, 1000)
    file_id = put(pair.swarm, pair.seeder, source)
    wait_listed(pair, file_id)
    result = shoal(pair.swarm, pair.leecher, "get", file_id, "--output", str(tmp_path))
    assert_one_line_error(result, 1, f"output exists: {source}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["to-dir.bin"]


def test_put_of_a_directory_is_a_usage_error(pair: Pair, tmp_path: Path) -> None:
    assert_one_line_error(shoal(pair.swarm, pair.seeder, "put", str(tmp_path)), 2, f"not a regular file: {tmp_path}")


def test_shoal_peer_env_var_replaces_the_flag(pair: Pair) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_PEER", "SHOAL_DATA_DIR")}
    command = [sys.executable, "-m", "shoal.cli", "status", "--json"]
    with_env = subprocess.run(
        command, env={**env, "SHOAL_PEER": pair.leecher.control}, capture_output=True, text=True, timeout=CLI_TIMEOUT
    )
    assert json.loads(ok(with_env))["peer"]["address"] == pair.leecher.address
    without = subprocess.run(command, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert_one_line_error(without, 2, "no daemon given")


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root (CI runs as root)")
def test_get_never_replaces_a_device_node(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "to-null.bin"
    make_file(source, 100_000)
    file_id = put(pair.swarm, pair.seeder, source)
    wait_listed(pair, file_id)
    null = tmp_path / "null"  # a private twin of /dev/null (char device 1:3)
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    result = shoal(pair.swarm, pair.leecher, "get", file_id, "--output", str(null))
    assert stat.S_ISCHR(os.lstat(null).st_mode), f"{null} is no longer a device node (exit {result.returncode})"
    if result.returncode != 0:  # refusing is fine too, with one clear line
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("command", ["tracker", "peer"])
def test_a_busy_listen_address_is_one_clear_line(command: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        argv = [sys.executable, "-m", "shoal.cli", command, "--listen", address]
        if command == "peer":
            argv += ["--tracker", "127.0.0.1:9", "--data-dir", str(tmp_path / "data")]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    ours = [line for line in result.stderr.splitlines() if line.startswith("shoal:")]
    what = "tracker address " if command == "tracker" else ""
    assert ours == [f"shoal: cannot listen on {what}{address}: address in use or not local"]
    assert "Traceback" not in result.stderr
