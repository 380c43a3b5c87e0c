"""A download onto a full disk fails with one clear line and leaves no complete file behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import put, shoal, shoal_json
from helpers.files import make_file
from helpers.polling import wait_until

from shoal.localswarm import LocalSwarm

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


def test_download_onto_a_full_disk_fails_cleanly(swarm: LocalSwarm, small_disk: Path, tmp_path: Path) -> None:
    downloader = swarm.start_peer()
    seeder = swarm.start_peer()
    assert downloader.data_dir == small_disk
    source = tmp_path / "big.bin"
    make_file(source, 32 * MiB)
    file_id = put(swarm, seeder, source)
    wait_until(lambda: shoal(swarm, downloader, "peers", file_id).returncode == 0, what="the seeder listed")

    output = tmp_path / "big.out"
    result = shoal(swarm, downloader, "get", file_id, "--output", str(output))
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("shoal: ") and "disk full" in lines[0], lines
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".big.out")] == []

    assert downloader.alive()
    listed = shoal_json(swarm, downloader, "ls")["files"]
    assert [f for f in listed if f["complete"]] == []
    assert list((small_disk / "files").iterdir()) == []
