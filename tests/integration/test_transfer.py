"""Transfers between real peer processes: concurrency, churn, restarts, shutdown, health and memory."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.cli import CLI_TIMEOUT, ok, put, shoal, shoal_json, start_get
from helpers.files import make_file, sha256_of
from helpers.polling import wait_until
from helpers.processes import start_peers
from helpers.tls import dial, dial_aio

from shoal.localswarm import LocalSwarm, Proc, wait_serving
from shoal.v1 import peer_pb2, peer_pb2_grpc, tracker_pb2, tracker_pb2_grpc

MiB = 1024 * 1024


def holder_ids(swarm: LocalSwarm, asker: Proc, file_id: str) -> set[str]:
    """Peer ids the tracker lists for a file, asked through `asker` (empty when none)."""
    result = shoal(swarm, asker, "--json", "peers", file_id)
    if result.returncode == 4:
        return set()
    return {h["peer"]["peer_id"] for h in json.loads(ok(result))["holders"]}


def peer_id(swarm: LocalSwarm, peer: Proc) -> str:
    return str(json.loads(ok(shoal(swarm, peer, "status", "--json")))["peer"]["peer_id"])


def get_json(swarm: LocalSwarm, peer: Proc, file_id: str, output: Path) -> dict[str, Any]:
    return shoal_json(swarm, peer, "get", file_id, "--output", str(output))


def test_concurrent_downloaders_all_verify(swarm: LocalSwarm, tmp_path: Path) -> None:
    seeder, *leechers = start_peers(swarm, 4)
    source = tmp_path / "shared.bin"
    digest = make_file(source, 8 * MiB + 123)
    file_id = put(swarm, seeder, source, "--chunk-size", str(256 * 1024))
    wait_until(lambda: bool(holder_ids(swarm, leechers[0], file_id)), what="the file to be listed")
    gets = {peer.name: start_get(peer, file_id, tmp_path / f"{peer.name}.out") for peer in leechers}
    try:
        for name, proc in gets.items():
            out, err = proc.communicate(timeout=CLI_TIMEOUT)
            assert proc.returncode == 0, f"{name}: {err}"
            result = json.loads(out.splitlines()[-1])
            assert result["done"] is True
            assert result["total_bytes"] == 8 * MiB + 123
            assert sha256_of(Path(result["output"])) == digest, name
    finally:
        for proc in gets.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_chain_survives_the_seeder_leaving(swarm: LocalSwarm, tmp_path: Path) -> None:
    seeder, first, second = start_peers(swarm, 3)
    source = tmp_path / "relay.bin"
    digest = make_file(source, 4 * MiB + 1)
    file_id = put(swarm, seeder, source, "--chunk-size", str(256 * 1024))
    wait_until(lambda: bool(holder_ids(swarm, first, file_id)), what="the seeder to be listed")
    get_json(swarm, first, file_id, tmp_path / "first.out")
    assert sha256_of(tmp_path / "first.out") == digest
    assert swarm.stop_proc(seeder) == 0
    first_id = peer_id(swarm, first)
    wait_until(lambda: holder_ids(swarm, second, file_id) == {first_id}, what="only the first downloader to be listed")
    get_json(swarm, second, file_id, tmp_path / "second.out")
    assert sha256_of(tmp_path / "second.out") == digest


def test_restart_keeps_identity_and_files(swarm: LocalSwarm, tmp_path: Path) -> None:
    seeder, other = start_peers(swarm, 2)
    source = tmp_path / "kept.bin"
    digest = make_file(source, 1 * MiB + 7)
    file_id = put(swarm, seeder, source)
    before = peer_id(swarm, seeder)
    wait_until(lambda: holder_ids(swarm, other, file_id) == {before}, what="the seeder to be listed")
    assert swarm.stop_proc(seeder) == 0
    assert holder_ids(swarm, other, file_id) == set()

    swarm.restart(seeder)
    assert peer_id(swarm, seeder) == before
    files = json.loads(ok(shoal(swarm, seeder, "ls", "--json")))["files"]
    assert [(f["file"]["file_id"], f["complete"]) for f in files] == [(file_id, True)]
    wait_until(lambda: holder_ids(swarm, other, file_id) == {before}, what="the restarted seeder to be listed again")
    get_json(swarm, other, file_id, tmp_path / "after-restart.out")
    assert sha256_of(tmp_path / "after-restart.out") == digest


@pytest.mark.swarm_config(announce_interval=10.0)  # a 30 s lease: only Leave can make the tracker forget at once
def test_sigterm_exits_zero_and_leaves_the_tracker_at_once(swarm: LocalSwarm, tmp_path: Path) -> None:
    leaving, asker = start_peers(swarm, 2)
    source = tmp_path / "brief.bin"
    make_file(source, 1000)
    file_id = put(swarm, leaving, source)
    leaving_id = peer_id(swarm, leaving)
    wait_until(lambda: holder_ids(swarm, asker, file_id) == {leaving_id}, what="the peer to be listed")

    with dial(swarm, swarm.trackers[0]) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)  # the handshake is not part of the timed span
        swarm.signal(leaving, signal.SIGTERM)
        assert leaving.popen.wait(timeout=20) == 0
        exited = time.monotonic()
        holders = tracker_pb2_grpc.TrackerStub(channel).GetPeers(
            tracker_pb2.GetPeersRequest(file_id=file_id), timeout=10
        )
        asked = time.monotonic() - exited
    assert list(holders.holders) == []
    assert asked < 5.0, asked  # asked seconds after the exit; the lease had 30 s left
    result = shoal(swarm, asker, "peers", file_id)
    assert result.returncode == 4, result.stdout
    assert "no live peer holds" in result.stderr
    assert "peer stopping" in leaving.log_path.read_text()


async def test_tracker_and_peer_report_serving(swarm: LocalSwarm) -> None:
    (peer,) = start_peers(swarm, 1)
    for proc, service in ((swarm.trackers[0], "shoal.v1.Tracker"), (peer, "shoal.v1.Peer")):
        async with dial_aio(swarm, proc) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (proc.address, name)


def chunks_done(swarm: LocalSwarm, peer: Proc, file_id: str) -> tuple[int, int, bool]:
    """(verified chunks, total chunks, complete) of a file in a peer's store; zeros when absent."""
    for local in json.loads(ok(shoal(swarm, peer, "ls", "--json")))["files"]:
        if local["file"]["file_id"] == file_id:
            return local["chunks_done"], local["chunks_total"], local["complete"]
    return 0, 0, False


def slow_seed(swarm: LocalSwarm, tmp_path: Path, size: int = 3 * MiB, rate: int = MiB) -> tuple[Proc, Proc, str, str]:
    """A seeder capped at `rate` bytes/s holding `size` bytes in 64 KiB chunks, and a leecher that sees it."""
    seeder = swarm.start_peer("--upload-limit", str(rate), wait=False)
    leecher = swarm.start_peer()
    wait_serving(seeder.probe_address)
    source = tmp_path / "slow.bin"
    digest = make_file(source, size)
    file_id = put(swarm, seeder, source, "--chunk-size", str(64 * 1024))
    wait_until(lambda: bool(holder_ids(swarm, leecher, file_id)), what="the file to be listed")
    return seeder, leecher, file_id, digest


def test_two_gets_of_one_file_on_one_peer_share_the_download(swarm: LocalSwarm, tmp_path: Path) -> None:
    _, leecher, file_id, digest = slow_seed(swarm, tmp_path, size=2 * MiB, rate=2 * MiB)
    gets = [start_get(leecher, file_id, tmp_path / "first.bin")]
    try:
        wait_until(lambda: chunks_done(swarm, leecher, file_id)[0] >= 1, what="the download to start")
        gets.append(start_get(leecher, file_id, tmp_path / "second.bin"))
        for get in gets:
            _, err = get.communicate(timeout=CLI_TIMEOUT)
            assert get.returncode == 0, err
    finally:
        for get in gets:
            if get.poll() is None:
                get.kill()
                get.communicate()
    assert sha256_of(tmp_path / "first.bin") == sha256_of(tmp_path / "second.bin") == digest


def test_interrupted_get_resumes_from_verified_chunks(swarm: LocalSwarm, tmp_path: Path) -> None:
    # 6 s of transfer: the interrupt must land mid-download even when a loaded machine makes each poll slow.
    _, leecher, file_id, digest = slow_seed(swarm, tmp_path, size=6 * MiB)
    output = tmp_path / "resumed.bin"
    first = start_get(leecher, file_id, output)
    try:
        wait_until(lambda: chunks_done(swarm, leecher, file_id)[0] >= 8, what="a few chunks to arrive")
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 130, err
    assert err.strip() == "shoal: interrupted"
    time.sleep(1.0)  # the daemon stops a download nobody waits for; nothing more may arrive
    done, total, complete = chunks_done(swarm, leecher, file_id)
    assert 8 <= done < total and not complete
    assert chunks_done(swarm, leecher, file_id)[0] == done, "the download kept running without a client"
    assert not output.exists()

    result = get_json(swarm, leecher, file_id, output)
    assert result["sources"]["resumed_chunks"] == done
    assert sha256_of(output) == digest


def test_peer_restarted_mid_download_resumes_and_exports(swarm: LocalSwarm, tmp_path: Path) -> None:
    # 6 s of transfer: the stop must land mid-download even when a loaded machine makes each poll slow.
    _, leecher, file_id, digest = slow_seed(swarm, tmp_path, size=6 * MiB)
    output = tmp_path / "after-restart.bin"
    client = start_get(leecher, file_id, output)
    try:
        wait_until(lambda: chunks_done(swarm, leecher, file_id)[0] >= 8, what="a few chunks to arrive")
        assert swarm.stop_proc(leecher) == 0
        _, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode != 0
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not output.exists()

    swarm.restart(leecher)  # resumes on its own and exports to the output the interrupted get asked for
    wait_until(output.exists, timeout=60, what="the resumed download to be exported")
    assert sha256_of(output) == digest
    assert chunks_done(swarm, leecher, file_id)[2]


def peak_rss_bytes(proc: Proc) -> int:
    """VmHWM (peak resident set) of a running process."""
    for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {proc.name}")


@pytest.mark.slow
def test_256_mib_file_with_bounded_memory(swarm: LocalSwarm, tmp_path: Path) -> None:
    seeder, leecher = start_peers(swarm, 2)
    size = 256 * MiB
    source = tmp_path / "big.bin"
    digest = make_file(source, size)
    file_id = put(swarm, seeder, source)
    source.unlink()  # the seeder has its own copy; keep the disk footprint down
    wait_until(lambda: bool(holder_ids(swarm, leecher, file_id)), what="the file to be listed")
    output = tmp_path / "big.out"
    result = get_json(swarm, leecher, file_id, output)
    assert result["total_bytes"] == size
    assert sha256_of(output) == digest
    for proc in (seeder, leecher):
        assert proc.alive()
        peak = peak_rss_bytes(proc)
        assert peak < 150 * 1000 * 1000, f"{proc.name} peaked at {peak / 1e6:.0f} MB"


def test_editing_the_exported_copy_never_changes_what_the_peer_serves(swarm: LocalSwarm, tmp_path: Path) -> None:
    seeder, leecher = start_peers(swarm, 2)
    source = tmp_path / "shared.bin"
    make_file(source, 1 * MiB + 7)
    file_id = put(swarm, seeder, source, "--chunk-size", str(256 * 1024))
    wait_until(lambda: bool(holder_ids(swarm, leecher, file_id)), what="the file to be listed")
    output = tmp_path / "mine.bin"  # same filesystem as the data dirs
    get_json(swarm, leecher, file_id, output)

    os.chmod(output, 0o644)  # it is the user's file: they may make it writable and edit it
    with open(output, "r+b") as edit:
        edit.write(b"edited by its owner")
    with dial(swarm, seeder) as channel:
        manifest = peer_pb2_grpc.PeerStub(channel).GetManifest(peer_pb2.GetManifestRequest(file_id=file_id), timeout=10)
    with dial(swarm, leecher) as channel:
        try:
            chunk = peer_pb2_grpc.PeerStub(channel).GetChunk(
                peer_pb2.GetChunkRequest(file_id=file_id, index=0), timeout=10
            )
        except grpc.RpcError as err:
            # Refusing to serve a copy it cannot vouch for is fine; any other failure (a dead peer) is not.
            assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DATA_LOSS), err
            return
    assert hashlib.sha256(chunk.data).digest() == manifest.manifest.chunk_sha256[0], "served bytes that fail the hash"
