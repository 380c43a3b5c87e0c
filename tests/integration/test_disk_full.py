"""A download onto a full disk fails with one clear line and leaves no complete file behind."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.localswarm import LocalSwarm

MakeFile = Callable[[Path, int], str]
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs, which needs root (CI runs as root)")


@pytest.fixture
def small_disk(swarm: LocalSwarm) -> Iterator[Path]:
    """A 12 MiB tmpfs mounted where the swarm's next peer keeps its data dir; unmounted after that peer stops."""
    mount = swarm.workdir / f"peer{len(swarm.peers)}"  # LocalSwarm.start_peer names data dirs this way
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        for peer in swarm.peers:
            if peer.data_dir == mount:
                swarm.stop_proc(peer)
        if subprocess.run(["umount", str(mount)], timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True, timeout=30)


def test_download_onto_a_full_disk_fails_cleanly(
    swarm: LocalSwarm, small_disk: Path, tmp_path: Path, make_file: MakeFile
) -> None:
    downloader = swarm.start_peer()
    seeder = swarm.start_peer()
    assert downloader.data_dir == small_disk
    source = tmp_path / "big.bin"
    make_file(source, 32 * MiB)
    put = swarm.cli(seeder, "put", str(source), timeout=120)
    file_id = put.stdout.splitlines()[-1]
    deadline = time.monotonic() + 15
    while swarm.cli(downloader, "peers", file_id, timeout=60, check=False).returncode != 0:
        assert time.monotonic() < deadline, "the tracker never listed the seeder"
        time.sleep(0.1)

    output = tmp_path / "big.out"
    result = swarm.cli(downloader, "get", file_id, "--output", str(output), timeout=120, check=False)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("shoal: ") and "disk full" in lines[0], lines
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".big.out")] == []

    assert downloader.alive()
    listed = json.loads(swarm.cli(downloader, "ls", "--json", timeout=60).stdout)["files"]
    assert [f for f in listed if f["complete"]] == []
    assert list((small_disk / "files").iterdir()) == []
