"""Fuzz the Session handler: random update sequences get replies or documented codes, and the lease ends with it."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, NoReturn, cast

import grpc
from helpers.clocks import FakeClock
from helpers.registry_audit import audit
from hypothesis import given
from hypothesis import strategies as st

from shoal.tracker.registry import Limits, Registry
from shoal.tracker.session import hold_session
from shoal.v1 import common_pb2, tracker_pb2

ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}
EOF = object()


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code)
        self.code = code


class ScriptedContext:
    """A stream whose peer sends `updates` then half-closes; replies are kept."""

    def __init__(self, updates: list[tracker_pb2.SessionUpdate]) -> None:
        self._updates = list(updates)
        self.replies: list[tracker_pb2.SessionReply] = []

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # plaintext: no certificate names the caller

    async def read(self) -> object:
        return self._updates.pop(0) if self._updates else EOF

    async def write(self, reply: tracker_pb2.SessionReply) -> None:
        self.replies.append(reply)


async def refuse(context: object, rpc: str, code: grpc.StatusCode, detail: str) -> NoReturn:
    assert len(detail) < 400
    raise Aborted(code)


def run(coro: Coroutine[Any, Any, Any]) -> None:
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError("handler suspended")


file_ids = st.one_of(st.sampled_from([f"{n:064x}" for n in range(6)]), st.text(max_size=70))
held_files = st.builds(
    lambda fid, name: tracker_pb2.HeldFile(file=common_pb2.FileInfo(file_id=fid, name=name, size=1)),
    file_ids,
    st.sampled_from(["a", "b", "\n"]),
)
updates = st.builds(
    lambda pid, files, dropped, secret: tracker_pb2.SessionUpdate(
        peer=common_pb2.PeerInfo(peer_id=pid, address="10.0.0.1:1") if pid else None,
        files=files,
        dropped_file_ids=dropped,
        peer_secret=secret,
    ),
    st.sampled_from(["", "p1", "p2", "\x00"]),
    st.lists(held_files, max_size=5),
    st.lists(file_ids, max_size=3),
    st.sampled_from(["", "s" * 22]),
)


@given(sessions=st.lists(st.lists(updates, max_size=6), min_size=1, max_size=4))
def test_sessions_end_with_their_lease(sessions: list[list[tracker_pb2.SessionUpdate]]) -> None:
    registry = Registry(3.0, clock=FakeClock(), limits=Limits(max_peers=2, max_files=4, max_holdings=6))
    for script in sessions:
        context = ScriptedContext(script)
        try:
            run(hold_session(registry, cast(grpc.aio.ServicerContext, context), refuse))
        except Aborted as err:
            assert err.code in ALLOWED
        audit(registry)
        assert registry.sessions == 0, "a session outlived its stream"
