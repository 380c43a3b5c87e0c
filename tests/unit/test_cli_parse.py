"""The CLI's parser, env-var defaults, usage errors, help, completion and output rendering (no daemon, no sockets)."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal import cli, config, logs
from shoal.cli import output
from shoal.cli.output import plain
from shoal.v1 import common_pb2, control_pb2

GOOD_ID = "ab" * 32
PEER = ["peer", "--tracker", "t:7400", "--data-dir", "/d"]  # the two settings `peer` cannot do without


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SHOAL_* variable from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("SHOAL_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Server commands configure root logging; keep that out of the test process."""
    monkeypatch.setattr(logs, "setup", lambda *args, **kwargs: None)


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
    args = cli.parse_args(PEER)
    assert args.upload_limit == 0
    assert args.download_limit == 0
    assert args.chunk_size == config.DEFAULT_CHUNK_SIZE
    assert args.upload_slots == config.DEFAULT_UPLOAD_SLOTS
    assert args.max_peers == config.DEFAULT_MAX_PEERS_PER_DOWNLOAD
    assert args.requests_per_peer == config.DEFAULT_REQUESTS_PER_PEER
    assert args.listen == "0.0.0.0:7401"
    assert args.tracker == ("t:7400",) and args.data_dir == Path("/d") and args.zone == ""
    assert args.json is False and args.log_level == "INFO" and args.log_format == "text"
    assert cli.parse_args(["ls"]).peer is None
    tracker = cli.parse_args(["tracker"])
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
    args = cli.parse_args(["peer"])
    assert args.upload_limit == 1_000_000
    assert args.download_limit == 2_000_000
    assert args.chunk_size == 65536
    assert args.upload_slots == 3
    assert args.max_peers == 5
    assert args.requests_per_peer == 7
    assert args.tracker == ("t1:7400", "t2:7400")
    assert args.listen == "127.0.0.1:9000"
    assert args.data_dir == Path("/var/lib/shoal")
    assert args.advertise == "peer-0:7401"
    assert args.control == "unix:/run/shoal.sock"
    assert args.zone == "eu-1a"
    assert args.log_level == "DEBUG"


def test_env_feeds_tracker_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_ANNOUNCE_INTERVAL", "1.5")
    monkeypatch.setenv("SHOAL_PEER_TTL", "4")
    monkeypatch.setenv("SHOAL_LISTEN", "127.0.0.1:7500")
    args = cli.parse_args(["tracker"])
    assert args.announce_interval == 1.5
    assert args.peer_ttl == 4.0
    assert args.listen == "127.0.0.1:7500"


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_UPLOAD_LIMIT", "1000")
    monkeypatch.setenv("SHOAL_PEER", "unix:/from/env.sock")
    assert cli.parse_args([*PEER, "--upload-limit", "5"]).upload_limit == 5
    assert cli.parse_args(["--peer", "unix:/flag.sock", "ls"]).peer == "unix:/flag.sock"


def test_empty_env_value_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_UPLOAD_LIMIT", "")
    monkeypatch.setenv("SHOAL_PEER", "")
    assert cli.parse_args(PEER).upload_limit == 0
    assert cli.parse_args(["ls"]).peer is None


def test_peer_env_and_data_dir_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOAL_PEER", "unix:/run/a.sock")
    monkeypatch.setenv("SHOAL_DATA_DIR", str(tmp_path))
    assert cli.parse_args(["ls"]).peer == "unix:/run/a.sock"
    monkeypatch.delenv("SHOAL_PEER")
    assert cli.parse_args(["ls"]).peer == f"unix:{tmp_path.resolve() / 'control.sock'}"


def test_metrics_port_env_is_an_int(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_METRICS_PORT", "9100")
    for argv in (PEER, ["tracker"]):
        value = cli.parse_args(argv).metrics_port
        assert value == 9100 and isinstance(value, int), (argv, value)


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
    args = cli.parse_args(argv)
    assert args.command == "ls"
    assert args.peer == "unix:/p.sock"
    assert args.json is True


@pytest.mark.parametrize("command", [["ls"], ["status"], ["search", "x"], ["peers", GOOD_ID], ["put", "f"]])
def test_json_defaults_false_and_peer_none(command: list[str]) -> None:
    args = cli.parse_args(command)
    assert args.json is False
    assert args.peer is None


def test_after_command_wins_over_before() -> None:
    args = cli.parse_args(["--peer", "unix:/before.sock", "ls", "--peer", "unix:/after.sock"])
    assert args.peer == "unix:/after.sock"


def test_before_kept_with_env_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_PEER", "unix:/env.sock")
    args = cli.parse_args(["--peer", "unix:/before.sock", "get", GOOD_ID, "-o", "out"])
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
    ("name", "value", "command"),
    [
        ("UPLOAD_LIMIT", "10 parsecs", PEER),
        ("DOWNLOAD_LIMIT", "1.5", PEER),
        ("CHUNK_SIZE", "big", PEER),
        ("CHUNK_SIZE", "1MB/s", PEER),
        ("ANNOUNCE_INTERVAL", "soon", ["tracker"]),
        ("LOG_LEVEL", "LOUD", ["tracker"]),
        ("LOG_FORMAT", "xml", PEER),
        ("DEMO_SIZE", "huge", ["demo"]),
    ],
)
def test_bad_env_value_breaks_the_command_that_reads_it(
    name: str, value: str, command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(f"SHOAL_{name}", value)
    assert cli.main(command) == 2
    line = one_error_line(capsys)
    assert f"SHOAL_{name}" in line and repr(value) in line


@pytest.mark.parametrize("name", ["CHUNK_SIZE", "UPLOAD_LIMIT", "ANNOUNCE_INTERVAL", "LOG_LEVEL", "DEMO_SIZE"])
def test_bad_env_value_leaves_other_commands_alone(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"SHOAL_{name}", "garbage")
    monkeypatch.setenv("SHOAL_PEER", "unix:/p.sock")
    for argv in (["ls"], ["get", GOOD_ID, "-o", "x"], ["search", "x"], ["put", "f", "--chunk-size", "64KiB"]):
        assert cli.parse_args(argv).peer == "unix:/p.sock"


def test_help_works_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHOAL_CHUNK_SIZE", "garbage")
    monkeypatch.setenv("SHOAL_LOG_LEVEL", "LOUD")
    for argv in (["ls", "--help"], ["peer", "--help"], ["--help"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == 0, argv
    assert "usage: shoal" in capsys.readouterr().out


def test_log_level_flag_is_checked_even_where_unused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--log-level", "LOUD", "ls"]) == 2
    assert "--log-level 'LOUD'" in one_error_line(capsys)
    assert cli.parse_args(["--log-level", "debug", "--log-format", "JSON", *PEER]).log_level == "DEBUG"
    assert cli.parse_args(["--log-format", "JSON", *PEER]).log_format == "json"


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
    data = plain(progress)
    assert data["done_bytes"] == big and isinstance(data["done_bytes"], int)
    assert data["total_bytes"] == 2**53 + 1
    assert data["file"] == {"file_id": GOOD_ID, "name": "f", "size": big}
    assert data["sources"]["from_complete_bytes"] == 3 and data["sources"]["peers"] == 2
    assert data["done"] is True and data["seconds"] == 1.5
    assert json.loads(json.dumps(data))["done_bytes"] == big

    manifest = common_pb2.Manifest(
        name="m", size=5, chunk_size=16384, chunk_sha256=[b"\x00\x01", b"\xff"], file_sha256=b"\xab\xcd"
    )
    rendered = plain(manifest)
    assert rendered["file_sha256"] == "abcd"
    assert rendered["chunk_sha256"] == ["0001", "ff"]
    assert rendered["size"] == 5 and rendered["chunk_size"] == 16384


def test_plain_includes_defaults_and_repeated_messages() -> None:
    reply = control_pb2.ListResponse(
        files=[control_pb2.LocalFile(file=common_pb2.FileInfo(file_id=GOOD_ID, name="a", size=1))]
    )
    data = plain(reply)
    assert isinstance(data["files"], list) and len(data["files"]) == 1
    assert data["files"][0]["file"]["size"] == 1
    empty = plain(control_pb2.GetProgress())
    assert empty["done_bytes"] == 0 and empty["done"] is False
    assert empty["file"] == {"file_id": "", "name": "", "size": 0}


# ---- help, version, completion ------------------------------------------------------------------


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare with single spaces


@pytest.mark.parametrize("command", sorted(config.COMMANDS))
def test_help_shows_each_flags_default_and_variable(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = _help([command], capsys)
    for setting in config.COMMANDS[command]:
        assert setting.flag in text, setting
        start = text.index(f"{setting.flag} {setting.metavar}".rstrip() + " " + setting.help.split()[0])
        described = text[start : text.index(")", text.index("(default: ", start)) + 1]
        assert described.count(" --") == 0 and len(described) < 200, described  # this flag's own help
        if setting.env_name:
            assert f"env {setting.env_name}" in described, described


def test_help_names_the_real_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["peer"], capsys)
    assert "(default: 1MiB; env SHOAL_CHUNK_SIZE)" in text
    assert "(default: 0.0.0.0:7401; env SHOAL_LISTEN)" in text
    assert "(default: 8; env SHOAL_UPLOAD_SLOTS)" in text
    assert "(default: 3; env SHOAL_ANNOUNCE_INTERVAL)" in _help(["tracker"], capsys)


@pytest.mark.parametrize("command", list(cli.parser.COMMANDS))
def test_every_command_has_an_example_and_described_positionals(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help([command], capsys)
    assert f"example: shoal {command}" in text or f"example: shoal --json {command}" in text, text
    for action in cli.build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            positionals = [a for a in action.choices[command]._actions if not a.option_strings]
            assert all(a.help for a in positionals), (command, [a.dest for a in positionals])


def test_version_comes_from_the_installed_package(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"shoal {version('shoal')}\n"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for word in ("tracker", "get", "--chunk-size", "--overwrite", "--log-format"):
        assert word in script, word
    assert ("complete -o" in script) if shell == "bash" else script.startswith("#compdef shoal")


def test_completion_of_an_unknown_shell_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["completion", "fish"])
    assert exited.value.code == 2


# ---- units on the command line ------------------------------------------------------------------


def test_sizes_and_rates_accept_units() -> None:
    args = cli.parse_args([*PEER, "--chunk-size", "4MiB", "--upload-limit", "50MB/s", "--download-limit", "50M"])
    assert args.chunk_size == 4 * 1024 * 1024
    assert args.upload_limit == 50_000_000
    assert args.download_limit == 50 * 1024 * 1024
    assert cli.parse_args([*PEER, "--chunk-size", "65536"]).chunk_size == 65536
    assert cli.parse_args(["demo", "--size", "1GiB"]).size == 1024**3
    assert cli.parse_args(["put", "f", "--chunk-size", "256k"]).chunk_size == 256 * 1024
    assert cli.parse_args(["tracker", "--announce-interval", "500ms", "--peer-ttl", "3s"]).peer_ttl == 3.0


@pytest.mark.parametrize("size", ["8KiB", "17MiB", "0"])
def test_chunk_size_keeps_its_range(size: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*PEER, "--chunk-size", size]) == 2
    assert "--chunk-size" in one_error_line(capsys)


def test_put_chunk_size_zero_means_the_daemons() -> None:
    assert cli.parse_args(["put", "f"]).chunk_size == 0


# ---- what `get` prints --------------------------------------------------------------------------


def _final(received: int, peers: int, seconds: float, total: int, resumed: int = 0) -> control_pb2.GetProgress:
    return control_pb2.GetProgress(
        file=common_pb2.FileInfo(file_id=GOOD_ID, name="model.bin", size=total),
        done_bytes=total,
        total_bytes=total,
        done=True,
        sources=control_pb2.SourceShare(from_complete_bytes=received, peers=peers, resumed_chunks=resumed),
        seconds=seconds,
    )


def test_summary_rate_counts_bytes_transferred_in_binary_units() -> None:
    mib = 1024 * 1024
    line = output.summary_line(_final(received=2 * mib, peers=1, seconds=2.0, total=8 * mib, resumed=6), Path("/o"))
    assert line == (
        "/o: received 2.0 MiB from 1 peer in 2.00s (1.0 MiB/s); 0% from peers still downloading, "
        "6 chunks resumed from disk"
    )
    assert "from 3 peers" in output.summary_line(_final(mib, 3, 1.0, mib), Path("/o"))


def test_summary_of_a_file_already_held() -> None:
    line = output.summary_line(_final(received=0, peers=0, seconds=0.001, total=10**9, resumed=954), Path("/o/m"))
    assert line == "model.bin already held; exported to /o/m"


def test_progress_bar_draws_in_binary_units_and_ends_its_line() -> None:
    now = [0.0]
    stream = io.StringIO()
    bar = output.ProgressBar("model.bin", 4 * 1024 * 1024, stream=stream, clock=lambda: now[0])
    now[0] = 2.0
    bar.update(2 * 1024 * 1024)
    bar.update(3 * 1024 * 1024)  # within 0.1 s of the last draw: skipped
    drawn = stream.getvalue()
    assert drawn.startswith("\rmodel.bin |") and "50% 2.0 MiB/4.0 MiB 1.0 MiB/s ETA 2s" in drawn
    assert "3.0 MiB" not in drawn
    bar.close()
    bar.close()
    assert stream.getvalue().endswith("\x1b[K\n")


def test_json_lines_are_one_object_each(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_json_line(plain(control_pb2.GetProgress(done_bytes=5, total_bytes=10)))
    output.print_json_line(output.summary_data(_final(10, 1, 1.0, 10), Path("/o")))
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["done"] for line in lines] == [False, True]
    assert json.loads(lines[-1])["output"] == "/o"


# ---- the client path starts small ---------------------------------------------------------------

HEAVY = ("shoal.peer", "shoal.tracker", "shoal.metrics", "shoal.store", "shoal.demo", "shoal.localswarm",
         "prometheus_client", "kubernetes", "yaml", "shtab")  # fmt: skip


def _modules_after(argv: list[str], tmp_path: Path) -> tuple[int, set[str]]:
    code = (
        "import sys\nfrom shoal.cli import main\n"
        f"code = main({argv!r})\n"
        "print(' '.join(sorted(sys.modules)))\nsys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    return done.returncode, set(done.stdout.split())


def test_client_commands_import_no_daemon_metrics_or_kubernetes(tmp_path: Path) -> None:
    code, modules = _modules_after(["--peer", f"unix:{tmp_path / 'none.sock'}", "ls"], tmp_path)
    assert code == cli.EXIT_UNREACHABLE
    assert "grpc" in modules  # the call was really made
    assert sorted(m for m in modules if any(m == h or m.startswith(f"{h}.") for h in HEAVY)) == []


def test_help_imports_not_even_grpc(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "shoal", "ls", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and "usage: shoal ls" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "shoal.cli" in imported
    assert not {"grpc", "google.protobuf", *HEAVY} & imported, sorted(imported)
