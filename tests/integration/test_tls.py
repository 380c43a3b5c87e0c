"""Mutual TLS on real listeners and channels: transfers work, strangers are refused, rotated files take effect."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.cli import CLI_TIMEOUT, put, start_get, wait_listed
from helpers.files import make_file, sha256_of
from helpers.processes import running_swarm, start_peers
from helpers.tls import Authority, pem
from helpers.tls import channel_credentials as credentials

from shoal import tls
from shoal.config import TlsFiles, TrackerConfig
from shoal.localswarm import LocalSwarm
from shoal.peer.links import LinkPool
from shoal.tracker.server import RunningTracker, start_tracker
from shoal.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

MiB = 1024 * 1024
WHO = "/shoal.test.Who/Name"  # a test-only method answering with the caller's certificate CN


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority.create(tmp_path / "ca")


@pytest.fixture
def stranger_ca(tmp_path: Path) -> Authority:
    return Authority.create(tmp_path / "other-ca", "stranger-ca")


@pytest.fixture
async def tls_tracker(ca: Authority, tmp_path: Path) -> AsyncIterator[tuple[RunningTracker, TlsFiles]]:
    files = ca.issue(tmp_path / "tracker", "tracker", (tls.TRACKER_NAME,))
    running = await start_tracker(TrackerConfig(listen="127.0.0.1:0", announce_interval=1.0, tls=files))
    try:
        yield running, files
    finally:
        await running.stop(grace=0)


async def list_peers(channel: grpc.aio.Channel) -> tracker_pb2.ListPeersResponse:
    stub = tracker_pb2_grpc.TrackerStub(channel)
    return await stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=3.0)


def secure(address: str, creds: grpc.ChannelCredentials, name: str = tls.TRACKER_NAME) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", name)])


async def assert_refused(channel: grpc.aio.Channel) -> None:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await list_peers(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# ---- a real swarm over TLS ----------------------------------------------------------------------


@pytest.mark.swarm_config(tls=True)
def test_transfer_between_peers_through_a_tls_tracker(swarm: LocalSwarm, tmp_path: Path) -> None:
    seeder, *leechers = start_peers(swarm, 3)
    source = tmp_path / "shared.bin"
    digest = make_file(source, 4 * MiB + 7)
    file_id = put(swarm, seeder, source, "--chunk-size", str(256 * 1024))
    wait_listed(swarm, leechers[0], file_id)
    gets = {peer.name: start_get(peer, file_id, tmp_path / f"{peer.name}.out") for peer in leechers}
    try:
        for name, proc in gets.items():
            out, err = proc.communicate(timeout=CLI_TIMEOUT)
            assert proc.returncode == 0, f"{name}: {err}"
            assert sha256_of(Path(json.loads(out.splitlines()[-1])["output"])) == digest, name
    finally:
        for proc in gets.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for daemon in [*swarm.trackers, seeder]:
        log = daemon.log_path.read_text()
        assert "uses mutual TLS" in log and "WITHOUT TLS" not in log, daemon.name


@pytest.mark.swarm_config(tls=True)
async def test_daemons_refuse_clients_without_a_certificate_from_the_ca(
    swarm: LocalSwarm, stranger_ca: Authority, tmp_path: Path
) -> None:
    (peer,) = start_peers(swarm, 1)
    assert swarm.tls is not None
    stranger = stranger_ca.issue(tmp_path / "stranger", "stranger")
    for target, name in ((swarm.trackers[0].address, tls.TRACKER_NAME), (peer.address, tls.PEER_NAME)):
        await assert_refused(grpc.aio.insecure_channel(target))  # plaintext to a TLS port
        only_ca = grpc.ssl_channel_credentials(root_certificates=swarm.tls.ca.read_bytes())
        await assert_refused(secure(target, only_ca, name))  # TLS, but no client certificate
        # A certificate from another CA (trusting ours, so only the server's check can refuse it).
        await assert_refused(secure(target, _mixed(stranger, swarm.tls), name))
        async with secure(target, credentials(swarm.tls), name) as good:  # the daemon still serves the honest
            health = health_pb2_grpc.HealthStub(good)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=3.0)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # The health-only port answers in plaintext; the gRPC port does not.
    assert peer.health is not None
    async with grpc.aio.insecure_channel(peer.health) as plain:
        reply = await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3.0)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _mixed(client: TlsFiles, trusted: TlsFiles) -> grpc.ChannelCredentials:
    """A client certificate from `client`'s CA that trusts the server's CA `trusted`."""
    cert, key, _ = pem(client)
    return grpc.ssl_channel_credentials(
        root_certificates=trusted.ca.read_bytes(), private_key=key, certificate_chain=cert
    )


# ---- the tracker in this process: names, rotation -----------------------------------------------


async def test_a_certificate_for_another_role_is_not_taken_for_a_tracker(ca: Authority, tmp_path: Path) -> None:
    files = ca.issue(tmp_path / "peer", "peer", (tls.PEER_NAME,))
    running = await start_tracker(TrackerConfig(listen="127.0.0.1:0", tls=files))
    try:
        client = tls.Transport(ca.issue(tmp_path / "client", "client"))
        await assert_refused(client.open_channel(f"127.0.0.1:{running.port}", tls.TRACKER_NAME))
        async with client.open_channel(f"127.0.0.1:{running.port}", tls.PEER_NAME) as channel:
            await list_peers(channel)
    finally:
        await running.stop(grace=0)


async def test_rotated_server_certificate_is_used_without_restart(
    tls_tracker: tuple[RunningTracker, TlsFiles], ca: Authority, tmp_path: Path
) -> None:
    running, files = tls_tracker
    address = f"127.0.0.1:{running.port}"
    client = credentials(ca.issue(tmp_path / "client", "client"))
    async with secure(address, client) as before:
        await list_peers(before)
    await assert_refused(secure(address, client, "rotated.shoal-tracker"))
    # cert-manager renews: a new certificate (a name more) from the same CA, written over the same paths.
    ca.issue(files.cert.parent, "tracker", (tls.TRACKER_NAME, "rotated.shoal-tracker"))
    async with secure(address, client, "rotated.shoal-tracker") as after:
        await list_peers(after)


async def test_rotated_client_certificate_is_presented_on_new_channels(ca: Authority, tmp_path: Path) -> None:
    server_files = ca.issue(tmp_path / "server", "server")
    names: list[str] = []

    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        names.append(list(context.auth_context()["x509_common_name"])[0].decode())
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("shoal.test.Who", {"Name": grpc.unary_unary_rpc_method_handler(who)})]
    )
    port = tls.Transport(server_files).bind(server, "127.0.0.1:0")
    await server.start()
    try:
        client_files = ca.issue(tmp_path / "client", "client-1")
        now = [0.0]
        transport = tls.Transport(client_files, clock=lambda: now[0], recheck=1.0)
        pool = LinkPool(transport)
        first = pool.link(f"127.0.0.1:{port}")
        await first.channel.unary_unary(WHO, None, None)(b"", timeout=3.0)
        ca.issue(tmp_path / "client", "client-1", cn="client-2")
        assert pool.link(f"127.0.0.1:{port}") is first  # not looked at again before `recheck`
        now[0] = 2.0
        second = pool.link(f"127.0.0.1:{port}")
        assert second is not first and transport.generation == 1
        await second.channel.unary_unary(WHO, None, None)(b"", timeout=3.0)
        assert names == ["client-1", "client-2"]
        await pool.close()
    finally:
        await server.stop(0)


async def test_a_plaintext_tracker_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shoal.tls"):
        running = await start_tracker(TrackerConfig(listen="127.0.0.1:0"))
        await running.stop(grace=0)
    warnings = [r for r in caplog.records if "WITHOUT TLS" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_a_plaintext_peer_warns_in_its_log(tmp_path: Path) -> None:
    # A plaintext swarm of its own, whatever SHOAL_TEST_TLS asks of the `swarm` fixture.
    with running_swarm(tmp_path / "plain", announce_interval=0.5, tls=None) as plain:
        assert plain.tls is None
        (peer,) = start_peers(plain, 1)
        assert peer.log_path.read_text().count("WITHOUT TLS") == 1


async def test_a_certificate_naming_ips_binds_the_announced_address(
    tls_tracker: tuple[RunningTracker, TlsFiles], ca: Authority, tmp_path: Path
) -> None:
    running, _ = tls_tracker
    pod = tls.Transport(ca.issue(tmp_path / "pod", "pod", (tls.PEER_NAME,), ips=("127.0.0.1",)))
    shared = tls.Transport(ca.issue(tmp_path / "shared", "shared", (tls.PEER_NAME,)))

    def announce(peer_id: str, address: str) -> tracker_pb2.AnnounceRequest:
        return tracker_pb2.AnnounceRequest(peer=common_pb2.PeerInfo(peer_id=peer_id, address=address))

    async with pod.open_channel(f"127.0.0.1:{running.port}", tls.TRACKER_NAME) as channel:
        stub = tracker_pb2_grpc.TrackerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Announce(announce("liar", "10.0.0.9:7401"), timeout=3.0)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await stub.Announce(announce("honest", "127.0.0.1:7401"), timeout=3.0)
    async with shared.open_channel(f"127.0.0.1:{running.port}", tls.TRACKER_NAME) as channel:
        # A role certificate names no IP: it proves membership only, and the address is the caller's word.
        await tracker_pb2_grpc.TrackerStub(channel).Announce(announce("other", "10.0.0.9:7401"), timeout=3.0)
    assert sorted(p.peer_id for p in running.registry.live_peers()) == ["honest", "other"]
