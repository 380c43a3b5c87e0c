"""The CLI as a new user meets it, against a real tracker and peers: addresses, summaries, outputs, JSON, Ctrl-C."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.files import make_file, sha256_of
from helpers.polling import wait_until

from shoal.localswarm import LocalSwarm, Proc, wait_serving

MiB = 1024 * 1024
CLI_TIMEOUT = 60.0
UNKNOWN_ID = "0123456789abcdef" * 4


@dataclass
class Trio:
    """A fast seeder, a seeder capped at 1 MiB/s (downloads that last a few seconds) and a leecher."""

    swarm: LocalSwarm
    seeder: Proc
    slow: Proc
    leecher: Proc


@pytest.fixture(scope="module")
def trio(module_swarm: LocalSwarm) -> Trio:
    seeder = module_swarm.start_peer(wait=False)
    slow = module_swarm.start_peer("--upload-limit", "1MiB/s", wait=False)
    leecher = module_swarm.start_peer(wait=False)
    for peer in (seeder, slow, leecher):
        wait_serving(peer.probe_address)
    return Trio(module_swarm, seeder, slow, leecher)


def shoal(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m shoal ARGS` with the environment given (SHOAL_* of the caller removed)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def on(peer: Proc, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A client command against one peer's control socket."""
    return shoal("--peer", peer.control, *args, env=env)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == code, f"exit {result.returncode}, stderr {result.stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("shoal: ") and text in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def publish(trio: Trio, peer: Proc, path: Path, size: int, *extra: str) -> tuple[str, str]:
    """Write a random file, publish it on `peer`, wait until the leecher sees a holder; (id, sha256)."""
    digest = make_file(path, size)
    file_id = ok(on(peer, "put", str(path), *extra)).splitlines()[-1]
    wait_until(lambda: on(trio.leecher, "peers", file_id).returncode == 0, timeout=15, what=f"{file_id} listed")
    return file_id, digest


# ---- 2: a bad variable breaks only the command that reads it ------------------------------------


def test_a_bad_variable_breaks_only_its_command(trio: Trio, tmp_path: Path) -> None:
    assert "usage: shoal ls" in ok(shoal("ls", "--help", env={"SHOAL_CHUNK_SIZE": "1MiB"}))
    assert ok(on(trio.leecher, "status", env={"SHOAL_CHUNK_SIZE": "garbage", "SHOAL_LOG_LEVEL": "LOUD"}))
    ok(on(trio.leecher, "ls", env={"SHOAL_CHUNK_SIZE": "garbage"}))
    argv = ["peer", "--tracker", trio.swarm.trackers[0].address, "--data-dir", str(tmp_path / "d")]
    line = one_line_error(shoal(*argv, env={"SHOAL_CHUNK_SIZE": "garbage"}), 2, "SHOAL_CHUNK_SIZE='garbage'")
    assert "not a size" in line
    assert not (tmp_path / "d").exists()
    one_line_error(shoal("--log-level", "LOUD", "tracker", "--listen", "127.0.0.1:0"), 2, "--log-level 'LOUD'")


def test_log_format_json_from_a_real_peer(trio: Trio) -> None:
    peer = trio.swarm.start_peer("--log-format", "json", "--chunk-size", "256KiB")
    try:
        deadline = time.monotonic() + 10
        while "lease held" not in peer.log_path.read_text():
            assert time.monotonic() < deadline, peer.log_path.read_text()
            time.sleep(0.1)
        records = [json.loads(line) for line in peer.log_path.read_text().splitlines() if line.strip()]
        assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
        assert any(r["logger"] == "shoal.peer.daemon" and "listening on" in r["message"] for r in records)
    finally:
        trio.swarm.stop_proc(peer)


# ---- 6: any target the CLI cannot reach is one line and exit 3 ----------------------------------


# Only targets that resolve without a DNS query (tests talk to loopback only): a closed loopback port, /etc/hosts'
# localhost, and forms that cannot be parsed at all. A bare name like `garbage` takes the same path after its lookup.
@pytest.mark.parametrize("target", ["unix:", "127.0.0.1:notaport", "127.0.0.1:1", "localhost:1", "[::1"])
def test_unreachable_or_unparseable_daemon_is_cannot_reach(target: str) -> None:
    started = time.monotonic()
    one_line_error(shoal("--peer", target, "ls"), 3, f"cannot reach the shoal daemon at {target}")
    assert time.monotonic() - started < 20


# ---- 7: the summary ------------------------------------------------------------------------------


def test_summary_rate_counts_what_moved_and_a_held_file_says_so(trio: Trio, tmp_path: Path) -> None:
    file_id, digest = publish(trio, trio.seeder, tmp_path / "sum.bin", 3 * MiB + 5, "--chunk-size", "1MiB")
    first = tmp_path / "first.bin"
    line = ok(on(trio.leecher, "get", file_id, "-o", str(first))).strip()
    match = re.fullmatch(
        rf"{re.escape(str(first))}: received 3\.0 MiB from 1 peer in (\d+\.\d\d)s \(([\d.]+) ([KMG]iB)/s\); "
        r"0% from peers still downloading",
        line,
    )
    assert match, line
    seconds, rate, unit = float(match[1]), float(match[2]), match[3]
    per_second = rate * {"KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}[unit]
    size = 3 * MiB + 5  # the rate is what moved over the time it took, within the rounding of both figures
    assert size / (seconds + 0.005) * 0.95 <= per_second <= size / max(seconds - 0.005, 1e-6) * 1.05, line
    again = tmp_path / "again.bin"
    assert ok(on(trio.leecher, "get", file_id, "-o", str(again))).strip() == (
        f"sum.bin already held; exported to {again}"
    )
    assert sha256_of(first) == sha256_of(again) == digest


# ---- 8: outputs ----------------------------------------------------------------------------------


def test_get_into_a_directory_uses_the_published_name(trio: Trio, tmp_path: Path) -> None:
    file_id, digest = publish(trio, trio.seeder, tmp_path / "src.bin", 200_000, "--name", "weights.bin")
    into = tmp_path / "models"
    into.mkdir()
    line = ok(on(trio.leecher, "get", file_id, "-o", f"{into}/")).strip()
    assert line.startswith(f"{into / 'weights.bin'}: received "), line
    assert sha256_of(into / "weights.bin") == digest
    assert sorted(p.name for p in into.iterdir()) == ["weights.bin"]

    refused = on(trio.leecher, "get", file_id, "-o", str(into))  # an existing directory, without the slash
    one_line_error(refused, 1, f"output exists: {into / 'weights.bin'} (pass --overwrite to replace it)")
    (into / "weights.bin").unlink()
    (into / "weights.bin").write_bytes(b"mine")
    one_line_error(on(trio.leecher, "get", file_id, "-o", str(into)), 1, "output exists")
    assert (into / "weights.bin").read_bytes() == b"mine"
    assert "already held; exported to" in ok(on(trio.leecher, "get", file_id, "-o", str(into), "--overwrite"))
    assert sha256_of(into / "weights.bin") == digest

    missing = on(trio.leecher, "get", file_id, "-o", f"{tmp_path / 'nowhere'}/")
    one_line_error(missing, 4, f"output directory does not exist: {tmp_path / 'nowhere'}")


def test_an_existing_output_file_is_refused_unless_overwrite(trio: Trio, tmp_path: Path) -> None:
    file_id, digest = publish(trio, trio.seeder, tmp_path / "over.bin", 100_000)
    output = tmp_path / "taken.bin"
    output.write_bytes(b"precious")
    one_line_error(on(trio.leecher, "get", file_id, "-o", str(output)), 1, f"output exists: {output}")
    assert output.read_bytes() == b"precious"
    ok(on(trio.leecher, "get", file_id, "-o", str(output), "--overwrite"))
    assert sha256_of(output) == digest


# ---- 9: nothing found is exit 4 for search and peers alike ---------------------------------------


def test_empty_search_and_peers_are_not_found(trio: Trio) -> None:
    for args in (["search", "no-such-name-" + os.urandom(4).hex()], ["peers", UNKNOWN_ID]):
        for json_flag in ([], ["--json"]):
            result = on(trio.leecher, *json_flag, *args)
            one_line_error(result, 4, "no file matches" if args[0] == "search" else "no live peer holds")


# ---- 10: get --json streams ----------------------------------------------------------------------


def test_get_json_streams_progress_then_the_summary(trio: Trio, tmp_path: Path) -> None:
    # About 4 s at the slow seeder's 1 MiB/s: `get --json` asks for a progress line a second.
    file_id, digest = publish(trio, trio.slow, tmp_path / "slow.bin", 4 * MiB, "--chunk-size", "64KiB")
    output = tmp_path / "streamed.bin"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "--peer", trio.leecher.control, "--json", "get", file_id, "-o", str(output)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert proc.poll() is None, "the first line should arrive while the download runs"
    rest, err = proc.communicate(timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, err
    objects = [json.loads(line) for line in [first, *rest.splitlines()]]
    progress, summary = objects[:-1], objects[-1]
    assert len(progress) >= 3, objects
    assert all(not p["done"] and "output" not in p for p in progress)
    done = [p["done_bytes"] for p in progress]
    assert done == sorted(done) and done[-1] <= 4 * MiB
    assert summary["done"] is True and summary["output"] == str(output)
    assert summary["file"]["file_id"] == file_id and summary["total_bytes"] == 4 * MiB
    assert summary["sources"]["peers"] == 1 and summary["seconds"] > 0.5
    assert sha256_of(output) == digest


# ---- 7: the bar follows stderr being a terminal; Ctrl-C leaves a clean line ----------------------


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    master, slave = pty.openpty()
    try:
        yield master, slave
    finally:
        for fd in (master, slave):
            try:
                os.close(fd)
            except OSError:
                pass


def _read_until(fd: int, done: Callable[[bytes], bool], timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while not done(seen) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_ctrl_c_mid_bar_leaves_a_clean_line(trio: Trio, tmp_path: Path, terminal: tuple[int, int]) -> None:
    master, slave = terminal
    file_id, _ = publish(trio, trio.slow, tmp_path / "long.bin", 4 * MiB, "--chunk-size", "64KiB")
    output = tmp_path / "never.bin"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "--peer", trio.leecher.control, "get", file_id, "-o", str(output)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    try:
        drawn = _read_until(master, lambda seen: seen.count(b"\x1b[K") >= 2, timeout=20)
        assert re.search(rb"\rlong\.bin \|#* *\| +\d+% [\d.]+ [KM]i?B/4\.0 MiB [\d.]+ [KM]i?B/s ETA \d+s", drawn), drawn
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        tail = drawn + _read_until(master, lambda seen: b"interrupted" in seen and seen.endswith(b"\n"), timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert out == ""
    assert tail.split(b"\x1b[K")[-1] == b"\r\nshoal: interrupted\r\n", tail[-200:]
    assert not output.exists()
