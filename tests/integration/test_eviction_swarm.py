"""Eviction during a 16-peer swarm: small quotas evict files others fetch from them, and no download breaks."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers.cli import ok, put, shoal
from helpers.files import make_file, sha256_of
from helpers.polling import wait_until
from helpers.processes import start_peers

from shoal.localswarm import LocalSwarm, Proc

MiB = 1024 * 1024
FILES = 4
FILE_SIZE = 3 * MiB
LEECHERS = 16
# 8 MiB: high mark 7.6 MiB, low 6.8 MiB. Two 3 MiB files fit; a third evicts the least recently used one
# (while the other leechers may be fetching it from this peer).
QUOTA = "8MiB"


def fetch_all(swarm: LocalSwarm, leecher: Proc, start: int, ids: list[str], out: Path) -> list[tuple[str, Path]]:
    """Get every file, starting at a different one per leecher; each get must succeed."""
    got = []
    for step in range(len(ids)):
        file_id = ids[(start + step) % len(ids)]
        target = out / f"{leecher.name}-{file_id[:8]}.bin"
        ok(shoal(swarm, leecher, "get", file_id, "-o", str(target), timeout=240))
        got.append((file_id, target))
    return got


def test_eviction_during_a_swarm_never_breaks_a_download(swarm: LocalSwarm, tmp_path: Path) -> None:
    seeder = swarm.start_peer("--chunk-size", "256KiB")
    leechers = start_peers(swarm, LEECHERS, "--cache-size", QUOTA)
    digests, ids = {}, []
    for n in range(FILES):
        source = tmp_path / f"file{n}.bin"
        digest = make_file(source, FILE_SIZE)
        file_id = put(swarm, seeder, source)
        digests[file_id] = digest
        ids.append(file_id)

    def listed() -> bool:
        return all(shoal(swarm, leechers[0], "peers", f).returncode == 0 for f in ids)

    wait_until(listed, what="every file listed")
    out = tmp_path / "out"
    out.mkdir()
    started = time.monotonic()
    with ThreadPoolExecutor(LEECHERS) as pool:
        runs = [pool.submit(fetch_all, swarm, leecher, i, ids, out) for i, leecher in enumerate(leechers)]
        results = [run.result() for run in runs]
    elapsed = time.monotonic() - started
    for got in results:
        for file_id, target in got:
            assert sha256_of(target) == digests[file_id], target
    for i, leecher in enumerate(leechers):
        held = json.loads(ok(shoal(swarm, leecher, "--json", "ls")))["files"]
        # Each leecher fetched four files and keeps two: the least recently used (fetched, or served to
        # others) were evicted to stay under its quota; the file it fetched last is always among the two.
        assert len(held) == 2 and all(f["complete"] for f in held), (leecher.name, held)
        assert ids[(i + FILES - 1) % FILES] in {f["file"]["file_id"] for f in held}, (leecher.name, held)
        status = json.loads(ok(shoal(swarm, leecher, "--json", "status")))
        assert int(status["store_bytes"]) == 2 * FILE_SIZE
    print(f"{LEECHERS} leechers x {FILES} files of {FILE_SIZE // MiB} MiB with eviction in {elapsed:.1f}s")
