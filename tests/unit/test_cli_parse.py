"""The CLI's parser, env-var defaults, usage errors and JSON rendering (no daemon, no sockets)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shoal import cli, config
from shoal.v1 import common_pb2, control_pb2

GOOD_ID = "ab" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SHOAL_* variable from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("SHOAL_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Server commands configure root logging; keep that out of the test process."""
    monkeypatch.setattr(cli, "_setup_logging", lambda level: None)


@pytest.fixture(autouse=True)
def no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A usage error must stop main() before any server starts; fail fast instead of serving."""
    from shoal.peer import daemon
    from shoal.tracker import server

    async def refuse(cfg: object) -> None:
        raise AssertionError("main() went on to start a server")

    monkeypatch.setattr(daemon, "run_peer", refuse)
    monkeypatch.setattr(server, "run_tracker", refuse)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("shoal: ")
    assert "Traceback" not in captured.err
    assert captured.out == ""
    return lines[0]


# ---- defaults from the environment --------------------------------------------------------------


def test_defaults_without_env() -> None:
    args = cli.build_parser().parse_args(["peer"])
    assert args.upload_limit == 0
    assert args.download_limit == 0
    assert args.chunk_size == config.DEFAULT_CHUNK_SIZE
    assert args.upload_slots == config.DEFAULT_UPLOAD_SLOTS
    assert args.max_peers == config.DEFAULT_MAX_PEERS_PER_DOWNLOAD
    assert args.requests_per_peer == config.DEFAULT_REQUESTS_PER_PEER
    assert args.listen == "0.0.0.0:7401"
    assert args.tracker is None and args.data_dir is None and args.zone == ""
    assert args.peer is None and args.json is False and args.log_level == "INFO"
    tracker = cli.build_parser().parse_args(["tracker"])
    assert tracker.listen == "0.0.0.0:7400"
    assert tracker.announce_interval == config.DEFAULT_ANNOUNCE_INTERVAL
    assert tracker.peer_ttl is None


def test_env_feeds_peer_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "SHOAL_UPLOAD_LIMIT": "1000000",
        "SHOAL_DOWNLOAD_LIMIT": "2000000",
        "SHOAL_CHUNK_SIZE": "65536",
        "SHOAL_UPLOAD_SLOTS": "3",
        "SHOAL_MAX_PEERS": "5",
        "SHOAL_REQUESTS_PER_PEER": "7",
        "SHOAL_TRACKER": "t1:7400,t2:7400",
        "SHOAL_LISTEN": "127.0.0.1:9000",
        "SHOAL_DATA_DIR": "/var/lib/shoal",
        "SHOAL_ADVERTISE": "peer-0:7401",
        "SHOAL_CONTROL": "unix:/run/shoal.sock",
        "SHOAL_ZONE": "eu-1a",
        "SHOAL_LOG_LEVEL": "DEBUG",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = cli.build_parser().parse_args(["peer"])
    assert args.upload_limit == 1_000_000
    assert args.download_limit == 2_000_000
    assert args.chunk_size == 65536
    assert args.upload_slots == 3
    assert args.max_peers == 5
    assert args.requests_per_peer == 7
    assert args.tracker == "t1:7400,t2:7400"
    assert args.listen == "127.0.0.1:9000"
    assert args.data_dir == "/var/lib/shoal"
    assert args.advertise == "peer-0:7401"
    assert args.control == "unix:/run/shoal.sock"
    assert args.zone == "eu-1a"
    assert args.log_level == "DEBUG"


def test_env_feeds_tracker_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_ANNOUNCE_INTERVAL", "1.5")
    monkeypatch.setenv("SHOAL_PEER_TTL", "4")
    monkeypatch.setenv("SHOAL_LISTEN", "127.0.0.1:7500")
    args = cli.build_parser().parse_args(["tracker"])
    assert args.announce_interval == 1.5
    assert args.peer_ttl == 4.0
    assert args.listen == "127.0.0.1:7500"


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_UPLOAD_LIMIT", "1000")
    monkeypatch.setenv("SHOAL_PEER", "unix:/from/env.sock")
    parser = cli.build_parser()
    assert parser.parse_args(["peer", "--upload-limit", "5"]).upload_limit == 5
    assert parser.parse_args(["--peer", "unix:/flag.sock", "ls"]).peer == "unix:/flag.sock"


def test_empty_env_value_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_UPLOAD_LIMIT", "")
    monkeypatch.setenv("SHOAL_PEER", "")
    args = cli.build_parser().parse_args(["peer"])
    assert args.upload_limit == 0
    assert args.peer is None


def test_peer_env_and_data_dir_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOAL_PEER", "unix:/run/a.sock")
    monkeypatch.setenv("SHOAL_DATA_DIR", str(tmp_path))
    assert cli.build_parser().parse_args(["ls"]).peer == "unix:/run/a.sock"
    monkeypatch.delenv("SHOAL_PEER")
    assert cli.build_parser().parse_args(["ls"]).peer == f"unix:{tmp_path.resolve() / 'control.sock'}"


def test_metrics_port_env_is_an_int(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_METRICS_PORT", "9100")
    for command in ("peer", "tracker"):
        value = cli.build_parser().parse_args([command]).metrics_port
        assert value == 9100 and isinstance(value, int), (command, value)


# ---- --peer / --json on either side of the command ----------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--peer", "unix:/p.sock", "--json", "ls"],
        ["ls", "--peer", "unix:/p.sock", "--json"],
        ["--json", "ls", "--peer", "unix:/p.sock"],
        ["--peer", "unix:/p.sock", "ls", "--json"],
    ],
)
def test_peer_and_json_before_or_after_command(argv: list[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert args.command == "ls"
    assert args.peer == "unix:/p.sock"
    assert args.json is True


@pytest.mark.parametrize("command", [["ls"], ["status"], ["search", "x"], ["peers", GOOD_ID], ["put", "f"]])
def test_json_defaults_false_and_peer_none(command: list[str]) -> None:
    args = cli.build_parser().parse_args(command)
    assert args.json is False
    assert args.peer is None


def test_after_command_wins_over_before() -> None:
    args = cli.build_parser().parse_args(["--peer", "unix:/before.sock", "ls", "--peer", "unix:/after.sock"])
    assert args.peer == "unix:/after.sock"


def test_before_kept_with_env_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_PEER", "unix:/env.sock")
    args = cli.build_parser().parse_args(["--peer", "unix:/before.sock", "get", GOOD_ID, "-o", "out"])
    assert args.peer == "unix:/before.sock"
    assert args.output == "out"


# ---- main(): usage errors -----------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["xyz", "a" * 63, "g" * 64])
def test_get_malformed_id(bad_id: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = cli.main(["--peer", f"unix:{tmp_path / 'none.sock'}", "get", bad_id, "-o", str(tmp_path / "out")])
    assert code == cli.EXIT_USAGE == 2
    assert "malformed file id" in one_error_line(capsys)


def test_peers_malformed_id(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["peers", "nothex", "--peer", f"unix:{tmp_path / 'none.sock'}"]) == 2
    assert "malformed file id" in one_error_line(capsys)


@pytest.mark.parametrize("command", [["ls"], ["status"], ["get", GOOD_ID, "-o", "out"]])
def test_no_peer(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(command) == 2
    line = one_error_line(capsys)
    assert "--peer" in line and "SHOAL_PEER" in line


def test_peer_without_tracker(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["peer", "--data-dir", str(tmp_path)]) == 2
    assert "--tracker" in one_error_line(capsys)


def test_peer_without_data_dir(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["peer", "--tracker", "127.0.0.1:7400"]) == 2
    assert "--data-dir" in one_error_line(capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["peer", "--tracker", "nohost", "--data-dir", "/tmp/x"],
        ["peer", "--tracker", "t:7400", "--data-dir", "/tmp/x", "--listen", "bad"],
        ["peer", "--tracker", "t:7400", "--data-dir", "/tmp/x", "--chunk-size", "1"],
        ["peer", "--tracker", "t:7400", "--data-dir", "/tmp/x", "--upload-limit", "-1"],
        ["peer", "--tracker", "t:7400", "--data-dir", "/tmp/x", "--upload-slots", "0"],
        ["tracker", "--listen", "nope"],
        ["tracker", "--announce-interval", "0"],
    ],
)
def test_server_flag_validation(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    one_error_line(capsys)


@pytest.mark.parametrize(
    ("name", "value"),
    [("UPLOAD_LIMIT", "10MB"), ("DOWNLOAD_LIMIT", "1.5"), ("CHUNK_SIZE", "big"), ("ANNOUNCE_INTERVAL", "soon")],
)
def test_bad_env_value(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(f"SHOAL_{name}", value)
    assert cli.main(["ls"]) == 2
    line = one_error_line(capsys)
    assert f"SHOAL_{name}" in line and repr(value) in line


def test_argparse_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["no-such-command"])
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


# ---- plain() ------------------------------------------------------------------------------------


def test_plain_keeps_uint64_as_int_and_bytes_as_hex() -> None:
    big = 2**64 - 1
    progress = control_pb2.GetProgress(
        file=common_pb2.FileInfo(file_id=GOOD_ID, name="f", size=big),
        done_bytes=big,
        total_bytes=2**53 + 1,  # beyond float precision: must not go through a double
        done=True,
        sources=control_pb2.SourceShare(from_complete_bytes=3, peers=2),
        seconds=1.5,
    )
    data = cli.plain(progress)
    assert data["done_bytes"] == big and isinstance(data["done_bytes"], int)
    assert data["total_bytes"] == 2**53 + 1
    assert data["file"] == {"file_id": GOOD_ID, "name": "f", "size": big}
    assert data["sources"]["from_complete_bytes"] == 3 and data["sources"]["peers"] == 2
    assert data["done"] is True and data["seconds"] == 1.5
    assert json.loads(json.dumps(data))["done_bytes"] == big

    manifest = common_pb2.Manifest(
        name="m", size=5, chunk_size=16384, chunk_sha256=[b"\x00\x01", b"\xff"], file_sha256=b"\xab\xcd"
    )
    rendered = cli.plain(manifest)
    assert rendered["file_sha256"] == "abcd"
    assert rendered["chunk_sha256"] == ["0001", "ff"]
    assert rendered["size"] == 5 and rendered["chunk_size"] == 16384


def test_plain_includes_defaults_and_repeated_messages() -> None:
    reply = control_pb2.ListResponse(
        files=[control_pb2.LocalFile(file=common_pb2.FileInfo(file_id=GOOD_ID, name="a", size=1))]
    )
    data = cli.plain(reply)
    assert isinstance(data["files"], list) and len(data["files"]) == 1
    assert data["files"][0]["file"]["size"] == 1
    empty = cli.plain(control_pb2.GetProgress())
    assert empty["done_bytes"] == 0 and empty["done"] is False
    assert empty["file"] == {"file_id": "", "name": "", "size": 0}
