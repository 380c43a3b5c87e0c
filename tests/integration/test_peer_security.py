"""A hostile raw gRPC client and a tampered disk against real peers: refused with a status, honest peers served."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import grpc
import pytest
from helpers.cli import ok, put, shoal
from helpers.files import make_file, sha256_of
from helpers.polling import wait_until
from helpers.tls import dial, raw_connection, role_name

from shoal.localswarm import LocalSwarm, Proc
from shoal.net import PEER_STREAMS_PER_CONNECTION as MAX_STREAMS_PER_CONNECTION
from shoal.v1 import common_pb2, peer_pb2, peer_pb2_grpc

CHUNK = 64 * 1024
SIZE = 16 * CHUNK
SETTINGS, HEADERS, RST_STREAM = 4, 1, 3
MAX_CONCURRENT_STREAMS, REFUSED_STREAM = 3, 7


def call(swarm: LocalSwarm, peer: Proc, method: str, request: object) -> tuple[grpc.StatusCode, object]:
    """One raw call to a peer's peer-facing port (as a member of the swarm under TLS): (status, reply or None)."""
    with dial(swarm, peer) as channel:
        stub = peer_pb2_grpc.PeerStub(channel)
        try:
            return grpc.StatusCode.OK, getattr(stub, method)(request, timeout=10)
        except grpc.RpcError as err:
            return err.code(), None


def publish(swarm: LocalSwarm, peer: Proc, tmp_path: Path, name: str) -> str:
    source = tmp_path / name
    make_file(source, SIZE)
    return put(swarm, peer, source, "--chunk-size", "64KiB", "--copy")  # a store copy of its own (one link)


def corrupt(peer: Proc, file_id: str, index: int) -> None:
    """Flip one byte of chunk `index` in the store's own copy (one link: no export shares it)."""
    assert peer.data_dir is not None
    data = peer.data_dir / "files" / file_id / "data"
    assert data.stat().st_nlink == 1
    with open(data, "r+b") as f:  # root writes through 0444
        f.seek(index * CHUNK + 7)
        byte = f.read(1)
        f.seek(index * CHUNK + 7)
        f.write(bytes([byte[0] ^ 0xFF]))


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_literal(name: str, value: str) -> bytes:
    """An HPACK literal header without indexing (RFC 7541 6.2.2), short strings only."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def h2_read(sock: socket.socket, seconds: float) -> list[tuple[int, int, bytes]]:
    """Frames (type, stream, payload) the server sends within `seconds`."""
    buf, frames = b"", []
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        buf += data
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            length = int.from_bytes(buf[:3], "big")
            frames.append((buf[3], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9 : 9 + length]))
            buf = buf[9 + length :]
    return frames


def held(swarm: LocalSwarm, peer: Proc) -> str:
    return ok(shoal(swarm, peer, "ls"))


def test_oversized_fields_are_refused_and_injected_holders_not_passed_on(swarm: LocalSwarm, tmp_path: Path) -> None:
    seeder = swarm.start_peer()
    file_id = publish(swarm, seeder, tmp_path, "a.bin")
    me = common_pb2.PeerInfo(peer_id="hostile", address="127.0.0.1:9")

    huge_address = common_pb2.PeerInfo(peer_id="hostile", address="h" * 10_000)
    code, _ = call(swarm, seeder, "Exchange", peer_pb2.ExchangeRequest(file_id=file_id, peer=huge_address))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    huge_id = common_pb2.PeerInfo(peer_id="i" * 5_000, address="127.0.0.1:9")
    code, _ = call(swarm, seeder, "Exchange", peer_pb2.ExchangeRequest(file_id=file_id, peer=huge_id))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    spam = [common_pb2.PeerInfo(peer_id=f"x{i}", address=f"10.9.{i // 250}.{i % 250}:1") for i in range(101)]
    code, _ = call(swarm, seeder, "Exchange", peer_pb2.ExchangeRequest(file_id=file_id, peer=me, known=spam))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    code, _ = call(swarm, seeder, "Exchange", peer_pb2.ExchangeRequest(file_id=file_id, peer=me, bitfield=bytes(4096)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = call(swarm, seeder, "GetChunk", peer_pb2.GetChunkRequest(file_id=file_id, index=0, peer_id="p" * 5_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    # Holders named by an inbound caller are not taken in, so never handed to other peers either.
    injected = [common_pb2.PeerInfo(peer_id=f"inj{i}", address=f"10.66.0.{i}:7401") for i in range(20)]
    code, _ = call(swarm, seeder, "Exchange", peer_pb2.ExchangeRequest(file_id=file_id, peer=me, known=injected))
    assert code == grpc.StatusCode.OK
    other = common_pb2.PeerInfo(peer_id="other", address="127.0.0.1:10")
    code, reply = call(swarm, seeder, "Exchange", peer_pb2.ExchangeRequest(file_id=file_id, peer=other))
    assert code == grpc.StatusCode.OK
    assert isinstance(reply, peer_pb2.ExchangeResponse)
    assert not [p for p in reply.known if p.address.startswith("10.66.")]

    log = seeder.log_path.read_text()
    assert "refused a peer call" in log and "h" * 81 not in log  # one line each, attacker text shortened

    # Still serving honest peers.
    leecher = swarm.start_peer()
    wait_until(lambda: shoal(swarm, leecher, "peers", file_id).returncode == 0, what="the seeder listed")
    out = tmp_path / "a.out"
    ok(shoal(swarm, leecher, "get", file_id, "-o", str(out)))
    assert sha256_of(out) == sha256_of(tmp_path / "a.bin")


def test_streams_beyond_the_cap_on_one_connection_are_refused(swarm: LocalSwarm, tmp_path: Path) -> None:
    """A raw HTTP/2 client opens 300 calls on one connection and never sends a body."""
    seeder = swarm.start_peer()
    file_id = publish(swarm, seeder, tmp_path, "s.bin")
    # Under TLS the client is a member with the swarm's certificate, speaking HTTP/2 inside the TLS session.
    with raw_connection(seeder.address, swarm.tls, role_name(swarm, seeder)) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(SETTINGS, 0, 0))
        first = h2_read(sock, 1.0)
        settings = {}
        for kind, _, payload in first:
            if kind == SETTINGS and payload:
                settings.update(
                    {int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
                     for i in range(0, len(payload), 6)}
                )  # fmt: skip
        assert settings.get(MAX_CONCURRENT_STREAMS) == MAX_STREAMS_PER_CONNECTION
        sock.sendall(h2_frame(SETTINGS, 1, 0))
        scheme = "https" if swarm.tls else "http"
        block = b"".join(
            h2_literal(k, v)
            for k, v in (
                (":method", "POST"), (":scheme", scheme), (":path", "/shoal.v1.Peer/Exchange"),
                (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers"),
            )
        )  # fmt: skip
        end_headers = 4
        sock.sendall(b"".join(h2_frame(HEADERS, end_headers, 2 * i + 1, block) for i in range(300)))
        replies = h2_read(sock, 2.0)
        refused = [sid for kind, sid, p in replies if kind == RST_STREAM and int.from_bytes(p, "big") == REFUSED_STREAM]
        assert len(refused) >= 300 - MAX_STREAMS_PER_CONNECTION

        # With those streams held open, an honest leecher still downloads from the same seeder.
        leecher = swarm.start_peer()
        wait_until(lambda: shoal(swarm, leecher, "peers", file_id).returncode == 0, what="the seeder listed")
        out = tmp_path / "s.out"
        ok(shoal(swarm, leecher, "get", file_id, "-o", str(out)))
        assert sha256_of(out) == sha256_of(tmp_path / "s.bin")
    assert seeder.alive()


def test_a_chunk_changed_on_disk_is_never_served_nor_exported(swarm: LocalSwarm, tmp_path: Path) -> None:
    seeder = swarm.start_peer()
    served, exported, checked, intact = (publish(swarm, seeder, tmp_path, f"{n}.bin") for n in "sfvi")
    leecher = swarm.start_peer()
    wait_until(lambda: shoal(swarm, leecher, "peers", served).returncode == 0, what="the seeder listed")

    # Served: the caller gets DATA_LOSS, the file is dropped here and withdrawn from the tracker.
    corrupt(seeder, served, 3)
    code, _ = call(swarm, seeder, "GetChunk", peer_pb2.GetChunkRequest(file_id=served, index=3, peer_id="x"))
    assert code == grpc.StatusCode.DATA_LOSS
    assert served not in held(swarm, seeder)
    wait_until(lambda: shoal(swarm, leecher, "peers", served).returncode == 4, what="the file withdrawn")

    # Exported by `get` on the same peer: refused with exit 1, nothing written.
    corrupt(seeder, exported, 0)
    out = tmp_path / "exported.out"
    result = shoal(swarm, seeder, "get", exported, "-o", str(out))
    assert result.returncode == 1, result.stderr
    assert "corrupt" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    assert exported not in held(swarm, seeder)

    # Verified on demand: exit 1 and dropped; an intact file verifies.
    corrupt(seeder, checked, 15)
    result = shoal(swarm, seeder, "verify", checked)
    assert result.returncode == 1, result.stderr
    assert checked not in held(swarm, seeder)
    assert "ok" in ok(shoal(swarm, seeder, "verify", intact))

    # The seeder still serves what is intact.
    assert seeder.alive()
    copy = tmp_path / "intact.out"
    ok(shoal(swarm, leecher, "get", intact, "-o", str(copy)))
    assert sha256_of(copy) == sha256_of(tmp_path / "i.bin")


def test_local_files_and_bad_input(swarm: LocalSwarm, tmp_path: Path) -> None:
    peer = swarm.start_peer()
    assert peer.data_dir is not None
    assert peer.data_dir.stat().st_mode & 0o077 == 0
    file_id = publish(swarm, peer, tmp_path, "ok.bin")
    manifest = peer.data_dir / "files" / file_id / "manifest.pb"
    assert manifest.stat().st_mode & 0o077 == 0

    source = tmp_path / "plain.bin"
    make_file(source, 1000)
    for args in (
        ("put", str(source), "--name", "evil\x1b[31mname"),
        ("put", str(source), "--chunk-size", "3"),
        ("get", file_id, "-o", str(tmp_path / ("n" * 300))),
        ("get", file_id, "-o", str(peer.data_dir / "files" / "x.bin")),
    ):
        result = shoal(swarm, peer, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "\x1b" not in result.stderr
    assert peer.alive()


@pytest.mark.parametrize("name", ["bell\x07", "tab\there", "del\x7f"])
def test_control_characters_in_a_name_are_refused_at_publish(swarm: LocalSwarm, tmp_path: Path, name: str) -> None:
    peer = swarm.peers[0] if swarm.peers else swarm.start_peer()
    source = tmp_path / "x.bin"
    make_file(source, 100)
    refused = shoal(swarm, peer, "put", str(source), "--name", name)
    assert refused.returncode == 2 and "control characters" in refused.stderr
    assert os.path.basename(str(source)) not in held(swarm, peer)
