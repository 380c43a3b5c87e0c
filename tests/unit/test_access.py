"""Control API credentials: token files, one-time caller tickets, and terminal-safe names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.clocks import FakeClock

from shoal import callers, content
from shoal.cli.output import escape
from shoal.peer import access
from shoal.peer.sources import MAX_CANDIDATES, Sources
from shoal.v1 import common_pb2


def test_token_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("abc\n")
    os.chmod(path, 0o600)
    assert callers.read_token(path) == b"abc"
    for mode in (0o640, 0o604, 0o660):
        os.chmod(path, mode)
        with pytest.raises(callers.AccessError, match="readable by others"):
            callers.read_token(path)
    os.chmod(path, 0o600)
    path.write_text("\n")
    with pytest.raises(callers.AccessError, match="empty"):
        callers.read_token(path)
    with pytest.raises(callers.AccessError):
        callers.read_token(tmp_path / "missing")


def test_tickets_are_single_use_and_expire() -> None:
    clock = FakeClock()
    tickets = access.Tickets(required=True, clock=clock)
    someone = access.Caller(1234, 1234)
    ticket = tickets.issue(someone)
    assert tickets.redeem(ticket) == someone
    assert tickets.redeem(ticket) is None  # once only
    late = tickets.issue(someone)
    clock.advance(access.TICKET_TTL + 1)
    assert tickets.redeem(late) is None
    assert tickets.redeem("forged") is None


def test_ticket_table_is_bounded() -> None:
    tickets = access.Tickets(required=True, clock=FakeClock())
    for _ in range(access.MAX_TICKETS + 50):
        tickets.issue(access.Caller(1, 1))
    assert len(tickets._tickets) <= access.MAX_TICKETS


def test_trusted_callers() -> None:
    assert access.Caller(0, 0).trusted
    assert access.Caller(os.geteuid(), 0).trusted
    assert not access.Caller(54321, 54321).trusted or os.geteuid() == 54321


def test_control_characters_are_refused_in_names_and_escaped_when_printed() -> None:
    for bad in ("a\x1b[31m", "tab\t", "nl\n", "del\x7f", "c1\x9b"):
        with pytest.raises(content.ContentError):
            content.check_name(bad)
        assert escape(bad).isprintable()
    assert content.check_name("ünïcode ok.bin") == "ünïcode ok.bin"
    assert escape("plain name") == "plain name"


def test_candidates_are_bounded() -> None:
    me = common_pb2.PeerInfo(peer_id="me", address="127.0.0.1:1")
    sources = Sources(me, max_peers=4, max_window=4, clock=FakeClock())
    flood = [common_pb2.PeerInfo(peer_id=f"p{i}", address=f"10.0.{i // 250}.{i % 250}:1") for i in range(3000)]
    sources.offer(flood)
    assert len(sources.candidates) == MAX_CANDIDATES
