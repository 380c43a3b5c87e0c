"""`shoal get URL` through a swarm of real peers, with nginx's access log as the witness of what the origin sent."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.nginx import argv as nginx_argv
from bench.nginx import configure
from helpers.cli import command, ok, shoal, shoal_json
from helpers.files import make_file, sha256_of
from helpers.polling import wait_until
from helpers.processes import running_swarm, start_peers
from origins.servers import Nginx, free_port, start

from shoal.localswarm import LocalSwarm, Proc

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.origins

ANNOUNCE = 0.5  # a short lease: a killed importer drops out of its claim within ~1.5 s
GET_TIMEOUT = 240.0
_BYTES = re.compile(r" (?:200|206) GET (\S+) .* bytes=(\d+) ")


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[LocalSwarm]:
    with running_swarm(tmp_path / "swarm", ANNOUNCE) as running:
        yield running


def served(nginx: Nginx, name: str) -> int:
    """Bytes nginx sent for a file (plain or through /slow/), from its own access log."""
    total = 0
    for line in nginx.lines():
        match = _BYTES.search(line)
        if match and match.group(1).rsplit("/", 1)[-1] == name:
            total += int(match.group(2))
    return total


def get_all(peers: list[Proc], url: str, outputs: list[Path], *extra: str) -> list[subprocess.Popen[str]]:
    """`shoal get URL` on every peer at the same moment."""
    return [
        subprocess.Popen(
            command(peer, "get", url, "--output", str(out), *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for peer, out in zip(peers, outputs, strict=True)
    ]


def finish(gets: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    """Exit code and stderr of every get."""
    results = []
    for get in gets:
        try:
            _, err = get.communicate(timeout=GET_TIMEOUT)
        except subprocess.TimeoutExpired:
            get.kill()
            _, err = get.communicate()
        results.append((get.returncode, err))
    return results


def coalesce(nginx: Nginx, swarm: LocalSwarm, tmp_path: Path, size: int, peers: int) -> None:
    name = f"coalesce-{size}.bin"
    digest = make_file(nginx.root / name, size)
    started = start_peers(swarm, peers)
    outputs = [tmp_path / f"out{i}.bin" for i in range(peers)]
    results = finish(get_all(started, nginx.url(name), outputs))
    assert all(code == 0 for code, _ in results), results
    assert all(sha256_of(out) == digest for out in outputs)
    sent = served(nginx, name)
    assert sent <= 1.1 * size, f"the origin sent {sent} bytes for a {size}-byte file"
    # The URL is what users see: ls, search and peers.
    assert nginx.url(name) in ok(shoal(swarm, started[0], "ls"))
    assert nginx.url(name) in ok(shoal(swarm, started[0], "search", name))
    holders = ok(shoal(swarm, started[0], "peers", nginx.url(name))).splitlines()
    assert len(holders) == peers - 1 and all("complete" in line for line in holders), holders


def test_eight_peers_one_origin_fetch(nginx: Nginx, swarm: LocalSwarm, tmp_path: Path) -> None:
    coalesce(nginx, swarm, tmp_path, 24 * 1024 * 1024 + 12345, 8)


@pytest.mark.slow
def test_eight_peers_one_origin_fetch_256mib(nginx: Nginx, swarm: LocalSwarm, tmp_path: Path) -> None:
    coalesce(nginx, swarm, tmp_path, 256 * 1024 * 1024, 8)


def importer_of(peers: list[Proc]) -> Proc | None:
    """The peer whose log says it reads from the origin."""
    for peer in peers:
        if peer.log_path.exists() and "from the origin" in peer.log_path.read_text():
            return peer
    return None


def part_length(peer: Proc) -> int:
    assert peer.data_dir is not None
    return sum(p.stat().st_size for p in (peer.data_dir / "origins").glob("*.part"))


def test_importer_killed_midway_hands_on(nginx: Nginx, swarm: LocalSwarm, tmp_path: Path) -> None:
    size = 32 * 1024 * 1024
    name = "killed.bin"
    digest = make_file(nginx.root / name, size)
    peers = start_peers(swarm, 5)
    outputs = [tmp_path / f"out{i}.bin" for i in range(len(peers))]
    gets = get_all(peers, nginx.url(f"slow/{name}"), outputs)  # 4 MB/s per request: an import of ~8 s
    importer = wait_until(lambda: importer_of(peers), timeout=60, what="an importer")
    wait_until(lambda: part_length(importer) >= size // 3, timeout=60, what="a third imported")
    importer.popen.kill()
    importer.popen.wait()
    index = peers.index(importer)
    results = finish(gets)
    for i, (code, err) in enumerate(results):
        if i != index:
            assert code == 0, err
            assert sha256_of(outputs[i]) == digest
    sent = served(nginx, name)
    assert sent <= 1.1 * size, f"the origin sent {sent} bytes for a {size}-byte file"
    assert importer_of([p for p in peers if p is not importer]) is not None  # someone took the import over


def test_changed_origin_is_a_new_id_never_a_mix(nginx: Nginx, swarm: LocalSwarm, tmp_path: Path) -> None:
    size = 8 * 1024 * 1024
    path = nginx.root / "changing.bin"
    make_file(path, size)
    first, second = start_peers(swarm, 2)
    # Changed mid-import: the get fails (If-Range answered 200) and leaves nothing under the output name.
    get = get_all([first], nginx.url("slow/changing.bin"), [tmp_path / "mid.bin"])[0]
    wait_until(lambda: part_length(first) >= 1024 * 1024, timeout=60, what="the import under way")
    new_digest = make_file(path.with_suffix(".new"), size)
    os.utime(path.with_suffix(".new"), (time.time() + 5, time.time() + 5))
    os.replace(path.with_suffix(".new"), path)
    code, err = finish([get])[0]
    assert code == 1 and "validator" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "mid.bin").exists()
    # A get now imports the new version under a new id.
    one = shoal_json(swarm, first, "get", nginx.url("changing.bin"), "-o", str(tmp_path / "one.bin"))
    assert sha256_of(tmp_path / "one.bin") == new_digest
    newer = make_file(path.with_suffix(".new"), size)
    os.utime(path.with_suffix(".new"), (time.time() + 10, time.time() + 10))
    os.replace(path.with_suffix(".new"), path)
    two = shoal_json(swarm, second, "get", nginx.url("changing.bin"), "-o", str(tmp_path / "two.bin"))
    assert sha256_of(tmp_path / "two.bin") == newer
    assert two["file"]["file_id"] != one["file"]["file_id"]


def test_digest_mismatch_and_missing_files(nginx: Nginx, swarm: LocalSwarm, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    (nginx.root / "digest.bin").write_bytes(data)
    (peer,) = start_peers(swarm, 1)
    wrong = "sha256:" + "0" * 64
    result = shoal(swarm, peer, "get", nginx.url("digest.bin"), "-o", str(tmp_path / "bad.bin"), "--digest", wrong)
    assert result.returncode == 1 and "does not match" in result.stderr, result.stderr
    assert not (tmp_path / "bad.bin").exists()
    right = "sha256:" + hashlib.sha256(data).hexdigest()
    (tmp_path / "headers").write_text("# sent to the origin only\nX-Token: tok-from-a-file-77\n")
    good = ("-o", str(tmp_path / "good.bin"), "--digest", right, "--header", f"@{tmp_path / 'headers'}")
    ok(shoal(swarm, peer, "get", nginx.url("digest.bin"), *good))
    assert (tmp_path / "good.bin").read_bytes() == data
    # The header reached nginx and no log of the peer.
    assert any("token=[tok-from-a-file-77]" in line for line in nginx.lines())
    assert "tok-from-a-file-77" not in peer.log_path.read_text()
    bad = shoal(swarm, peer, "get", nginx.url("digest.bin"), "-o", str(tmp_path / "z"), "--header", "Range: 0-1")
    assert bad.returncode == 2 and "0-1" not in bad.stderr, bad.stderr
    missing = shoal(swarm, peer, "get", nginx.url("no-such.bin"), "-o", str(tmp_path / "x.bin"))
    assert missing.returncode == 4 and "status 404" in missing.stderr and len(missing.stderr.splitlines()) == 1
    (nginx.root / "denied").mkdir(exist_ok=True)
    (nginx.root / "denied" / "d.bin").write_bytes(b"x")
    denied = shoal(swarm, peer, "get", nginx.url("denied/d.bin"), "-o", str(tmp_path / "y.bin"))
    assert denied.returncode == 4 and "status 403" in denied.stderr, denied.stderr
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / "y.bin").exists()


PLAIN_NGINX = """\
    access_log {prefix}/access.log;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
"""


def test_preheat_then_origin_down(swarm: LocalSwarm, tmp_path: Path) -> None:
    root, prefix = tmp_path / "www", tmp_path / "nginx"
    root.mkdir()
    prefix.mkdir()
    port = free_port()
    configure(prefix, PLAIN_NGINX.format(prefix=prefix, root=root, port=port))
    argv = nginx_argv(prefix)
    origin = start(argv, prefix / "stdout.log", port, "nginx")
    url = f"http://127.0.0.1:{port}/preheated.bin"
    try:
        digest = make_file(root / "preheated.bin", 6 * 1024 * 1024 + 7)
        peers = [*start_peers(swarm, 2, "--zone", "zone-a"), *start_peers(swarm, 2, "--zone", "zone-b")]
        out = ok(shoal(swarm, peers[0], "preheat", url, "--replicas", "2"))
        assert "(2 peers in zones zone-a,zone-b)" in out, out
    finally:
        origin.stop()
    fresh = swarm.start_peer()
    ok(shoal(swarm, fresh, "get", url, "-o", str(tmp_path / "fresh.bin")))
    assert sha256_of(tmp_path / "fresh.bin") == digest
    # With the origin down and no copy in the swarm, the get fails at once with the origin's failure.
    missing = shoal(swarm, fresh, "get", f"http://127.0.0.1:{port}/other.bin", "-o", str(tmp_path / "o.bin"))
    assert missing.returncode != 0 and not (tmp_path / "o.bin").exists()


RANGED_NGINX = PLAIN_NGINX.replace(
    "access_log {prefix}/access.log;",
    "log_format ranged '$status range=[$http_range] bytes=$body_bytes_sent';\n"
    "    access_log {prefix}/access.log ranged;\n    limit_rate 4m;",
)


def test_origin_down_midway_resumes_without_reading_a_chunk_twice(swarm: LocalSwarm, tmp_path: Path) -> None:
    root, prefix = tmp_path / "www", tmp_path / "nginx"
    root.mkdir()
    prefix.mkdir()
    port = free_port()
    configure(prefix, RANGED_NGINX.format(prefix=prefix, root=root, port=port))
    argv = nginx_argv(prefix)
    size = 24 * 1024 * 1024
    digest = make_file(root / "flaky.bin", size)
    (peer,) = start_peers(swarm, 1)
    url = f"http://127.0.0.1:{port}/flaky.bin"
    origin = start(argv, prefix / "stdout.log", port, "nginx")
    try:
        get = get_all([peer], url, [tmp_path / "out.bin"])[0]
        wait_until(lambda: part_length(peer) >= size // 3, timeout=60, what="a third imported")
    finally:
        origin.stop()
    code, err = finish([get])[0]
    assert code != 0 and "127.0.0.1" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.bin").exists()
    kept = part_length(peer)
    assert kept >= size // 3
    origin = start(argv, prefix / "stdout.log", port, "nginx")
    try:
        ok(shoal(swarm, peer, "get", url, "-o", str(tmp_path / "out.bin")))
    finally:
        origin.stop()
    assert sha256_of(tmp_path / "out.bin") == digest
    # Every chunk nginx sent in full, it sent once: the second get went on where the first stopped.
    ranges = re.findall(r"^206 range=\[bytes=(\d+)-(\d+)\] bytes=(\d+)$", (prefix / "access.log").read_text(), re.M)
    full = [(int(a), int(b)) for a, b, sent in ranges if int(sent) == int(b) - int(a) + 1 and int(b) > 0]
    assert len(full) == len(set(full)), "a chunk was read twice"
    assert sum(b - a + 1 for a, b in full) == size


def test_a_tracker_lost_midway_changes_nothing(nginx: Nginx, tmp_path: Path) -> None:
    size = 24 * 1024 * 1024
    name = "tracker-lost.bin"
    digest = make_file(nginx.root / name, size)
    with running_swarm(tmp_path / "swarm", ANNOUNCE, trackers=2) as swarm:
        peers = start_peers(swarm, 4)
        outputs = [tmp_path / f"out{i}.bin" for i in range(len(peers))]
        gets = get_all(peers, nginx.url(f"slow/{name}"), outputs)
        importer = wait_until(lambda: importer_of(peers), timeout=60, what="an importer")
        wait_until(lambda: part_length(importer) >= size // 4, timeout=60, what="a quarter imported")
        swarm.trackers[0].popen.kill()
        results = finish(gets)
    assert all(code == 0 for code, _ in results), results
    assert all(sha256_of(out) == digest for out in outputs)
    sent = served(nginx, name)
    assert sent <= 1.1 * size, f"the origin sent {sent} bytes for a {size}-byte file"
