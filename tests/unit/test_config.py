"""Settings: flag over variable over default, typed errors carrying the setting, and the README's table."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path

import pytest

from shoal import config, logs

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SHOAL_* variable from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("SHOAL_"):
            monkeypatch.delenv(name)


def test_flag_beats_variable_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.CHUNK_SIZE.read(None) == config.DEFAULT_CHUNK_SIZE
    monkeypatch.setenv("SHOAL_CHUNK_SIZE", "64KiB")
    assert config.CHUNK_SIZE.read(None) == 65536
    assert config.CHUNK_SIZE.read("2MiB") == 2 * 1024 * 1024
    monkeypatch.setenv("SHOAL_CHUNK_SIZE", "")  # empty counts as unset
    assert config.CHUNK_SIZE.read(None) == config.DEFAULT_CHUNK_SIZE


def test_errors_carry_the_setting_and_name_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_UPLOAD_LIMIT", "lots")
    with pytest.raises(config.ConfigError) as from_env:
        config.UPLOAD_LIMIT.read(None)
    assert from_env.value.setting is config.UPLOAD_LIMIT
    assert str(from_env.value).startswith("SHOAL_UPLOAD_LIMIT='lots': ")
    with pytest.raises(config.ConfigError) as from_flag:
        config.UPLOAD_SLOTS.read("0")
    assert from_flag.value.setting is config.UPLOAD_SLOTS
    assert str(from_flag.value) == "--upload-slots '0': must be at least 1"
    with pytest.raises(config.ConfigError) as missing:
        config.TRACKERS.read(None)
    assert missing.value.setting is config.TRACKERS
    assert str(missing.value) == "--tracker ADDR[,ADDR...] (or SHOAL_TRACKER) is required"


@pytest.mark.parametrize(
    ("setting", "text"),
    [
        (config.TRACKERS, "t1:7400,nohost"),
        (config.TRACKERS, " , "),
        (config.PEER_LISTEN, "bad"),
        (config.ADVERTISE, "[::1"),
        (config.METRICS_PORT, "70000"),
        (config.ANNOUNCE_INTERVAL, "0s"),
        (config.PEER_TTL, "-1"),
        (config.CHUNK_SIZE, "32MiB"),
        (config.DOWNLOAD_LIMIT, "-1"),
        (config.LOG_FORMAT, "yaml"),
        (config.DEMO_PEERS, "0"),
        (config.REQUIRE_PEER_SECRETS, "maybe"),
    ],
)
def test_checks_live_with_the_setting(setting: config.Setting, text: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        setting.read(text)
    assert err.value.setting is setting


def test_resolve_reads_only_what_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_CHUNK_SIZE", "garbage")
    values = config.resolve(config.COMMANDS["ls"], {"peer": "unix:/p.sock"})
    assert values == {"peer": "unix:/p.sock", "control_token_file": None}
    with pytest.raises(config.ConfigError):
        config.resolve(config.COMMANDS["peer"], {"tracker": "t:1", "data_dir": "/d"})


def test_peer_config_from_values() -> None:
    values = config.resolve(
        config.COMMANDS["peer"], {"tracker": "a:1, b:2", "data_dir": "/d", "upload_limit": "1MB/s", "zone": "z"}
    )
    cfg = config.PeerConfig.from_values(values)
    assert cfg.trackers == ("a:1", "b:2") and cfg.data_dir == Path("/d") and cfg.upload_limit == 1_000_000
    assert cfg.zone == "z" and cfg.control_address == "unix:/d/control.sock"
    tracker = config.TrackerConfig.from_values(config.resolve(config.COMMANDS["tracker"], {"announce_interval": "2s"}))
    assert tracker.ttl == 6.0 and tracker.listen == "0.0.0.0:7400"


def test_every_command_setting_is_unique_and_documented() -> None:
    readme = README.read_text()
    table = readme[readme.index("## Flags and environment") :]
    for command, settings in config.COMMANDS.items():
        flags = [s.flag for s in settings]
        assert len(flags) == len(set(flags)), command
        for setting in settings:
            assert setting.help and setting.flag.startswith("--")
            if setting.env_name:
                assert re.search(rf"`{re.escape(setting.env_name)}`", table), f"{setting.env_name} not in README"


# ---- logging ------------------------------------------------------------------------------------


def test_json_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.setup("INFO", "json", stream=stream)
        log = logging.getLogger("shoal.test")
        log.debug("hidden")
        log.info("hello %s", "world")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["hello world", "failed"]
    assert {"time", "level", "logger", "message"} <= set(lines[0]) and "exception" not in lines[0]
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "shoal.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", lines[0]["time"])
    assert "RuntimeError: boom" in lines[1]["exception"]


def test_text_log_lines() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.setup("warning", "text", stream=stream)
        logging.getLogger("shoal.test").warning("careful")
        logging.getLogger("shoal.test").info("quiet")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert re.fullmatch(r"\S+ \S+ WARNING shoal.test: careful\n", stream.getvalue())


def test_tls_files_go_together() -> None:
    values = config.resolve(config.COMMANDS["tracker"], {"tls_cert": "/c.pem", "tls_key": "/k.pem", "tls_ca": "/a.pem"})
    files = config.TrackerConfig.from_values(values).tls
    assert files == config.TlsFiles(Path("/c.pem"), Path("/k.pem"), Path("/a.pem"))
    assert config.TrackerConfig.from_values(config.resolve(config.COMMANDS["tracker"], {})).tls is None
    partial = config.resolve(config.COMMANDS["peer"], {"tracker": "t:1", "data_dir": "/d", "tls_cert": "/c.pem"})
    with pytest.raises(config.ConfigError) as caught:
        config.PeerConfig.from_values(partial)
    assert caught.value.setting is config.TLS_KEY


def test_health_listen_brackets_a_bare_ipv6_pod_ip() -> None:
    values = config.resolve(config.COMMANDS["tracker"], {"health_listen": "fd00::5:7402"})
    assert config.TrackerConfig.from_values(values).health_listen == "[fd00::5]:7402"


def test_require_peer_secrets_is_off_unless_the_flag_or_variable_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def required(flags: dict[str, str | None]) -> bool:
        return config.TrackerConfig.from_values(config.resolve(config.COMMANDS["tracker"], flags)).require_secrets

    assert config.TrackerConfig().require_secrets is False
    assert required({}) is False
    assert required({"require_secrets": "true"}) is True  # what the bare flag stands for
    for text, expected in (("1", True), ("YES", True), ("on", True), ("false", False), ("0", False), ("", False)):
        monkeypatch.setenv("SHOAL_REQUIRE_PEER_SECRETS", text)
        assert required({}) is expected, text
    with pytest.raises(config.ConfigError) as err:
        monkeypatch.setenv("SHOAL_REQUIRE_PEER_SECRETS", "maybe")
        required({})
    assert err.value.setting is config.REQUIRE_PEER_SECRETS
