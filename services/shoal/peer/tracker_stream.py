"""One long-lived Session stream per tracker replica: the peer's full state first, then only what changes.

The stream is the lease: the replica lists the peer while it lives and drops it when it ends, so nothing is sent
while nothing changes (HTTP/2 keepalive, in gRPC's core, proves both ends alive). A replica older than the Session
rpc answers UNIMPLEMENTED; the caller then announces to it as before, and tries a stream again RETRY_STREAM_AFTER
seconds later (the replica may have been upgraded in the meantime).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

import grpc

from shoal import net
from shoal.peer.credentials import TrackerSecrets
from shoal.v1 import tracker_pb2, tracker_pb2_grpc

logger = logging.getLogger(__name__)

RETRY_STREAM_AFTER = 300.0  # seconds of unary announces to a replica that refused a stream before trying again
RESEND_LEFT_OUT_AFTER = 30.0  # seconds before sending every file again when the replica left some out for its caps
MAX_BACKOFF = 3.0  # seconds between attempts to reopen a stream at most
LEAVE_WAIT = 1.0  # seconds a leaving peer waits for the replica to end its session

Snapshot = Callable[[], tracker_pb2.AnnounceRequest]


class StreamUnsupported(Exception):
    """The replica is older than the Session rpc (it answered UNIMPLEMENTED): announce to it instead."""


class ReplicaSession:
    """Keeps one replica's lease with a Session stream, reopened with backoff whenever it breaks.

    `snapshot` gives the peer's current full state (its PeerInfo and every file it holds) as an AnnounceRequest;
    after each poke() the session sends the replica the difference from what it sent last.
    """

    def __init__(
        self,
        address: str,
        stub: Callable[[], tracker_pb2_grpc.TrackerStub],
        secrets: TrackerSecrets,
        snapshot: Snapshot,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self._stub = stub
        self._secrets = secrets
        self._snapshot = snapshot
        self._clock = clock
        self.up = False  # the replica accepted the stream that is open now
        self._changed = asyncio.Event()
        self._resend_all = False
        self._retry_at = float("-inf")  # streams are not tried before this (after UNIMPLEMENTED)
        self._failures = 0
        self._leaving = False
        self._call: grpc.aio.StreamStreamCall[tracker_pb2.SessionUpdate, tracker_pb2.SessionReply] | None = None

    def wanted(self) -> bool:
        """False while the replica is known to be older than the Session rpc (announce to it instead)."""
        return self._clock() >= self._retry_at

    def poke(self) -> None:
        """The peer's holdings may have changed: send the difference."""
        self._changed.set()

    async def run(self) -> None:
        """Hold a stream until the peer leaves; raise StreamUnsupported if the replica is older than streams."""
        while not self._leaving:
            try:
                await self._hold_one()
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    logger.info("tracker %s has no Session rpc (an older tracker): announcing instead", self.address)
                    self._retry_at = self._clock() + RETRY_STREAM_AFTER
                    raise StreamUnsupported(self.address) from None
                if self.up or self._failures == 0:
                    logger.warning(
                        "tracker %s %s (%s: %s); retrying with backoff",
                        self.address,
                        "session broken" if self.up else "unreachable",
                        err.code().name,
                        err.details(),
                    )
            finally:
                self.up = False
                self._call = None
            if self._leaving:
                break
            self._failures += 1
            await asyncio.sleep(min(MAX_BACKOFF, 0.1 * 2 ** min(self._failures, 6)) * random.uniform(0.5, 1.0))

    async def leave(self) -> None:
        """Half-close the stream, so the replica drops this peer at once, and stop reopening it."""
        self._leaving = True
        call = self._call
        if call is None:
            return
        if not self.up:  # still waiting for the replica (it is down): nothing to leave, and a half-close would wait
            call.cancel()
            return
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, TimeoutError):
            await asyncio.wait_for(call.done_writing(), LEAVE_WAIT)
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(call.code(), LEAVE_WAIT)
        call.cancel()  # a no-op once the replica has ended it

    async def _hold_one(self) -> None:
        """Open one stream, send the full state, then deltas until the stream ends."""
        self._changed.clear()
        self._resend_all = False
        state = await self._secrets.announcement(self._snapshot(), self.address)
        sent = {held.file.file_id: held for held in state.files}
        # wait_for_ready: a replica coming back is reached as soon as the channel reconnects; no deadline, for the
        # stream lives as long as the peer does (keepalive ends it if the replica stops answering).
        call = self._stub().Session(wait_for_ready=True)  # asked each time: TLS files may have rotated
        self._call = call
        # The stream waits for the replica as long as it takes; say so once when it does not answer soon.
        quiet = asyncio.get_running_loop().call_later(net.TRACKER_DEADLINE, self._warn_unanswered)
        try:
            await call.write(
                tracker_pb2.SessionUpdate(
                    peer=state.peer,
                    files=state.files,
                    peer_secret=state.peer_secret,
                    accepts_secret=state.accepts_secret,
                )
            )
            reply = await call.read()
            if not isinstance(reply, tracker_pb2.SessionReply):  # EOF before any reply: the replica is stopping
                return
            quiet.cancel()
            await self._secrets.remember(self.address, reply.peer_secret)
            logger.info("tracker %s reachable; lease held by a session", self.address)
            self.up = True
            self._failures = 0
            self._note(reply)
            await self._send_changes(call, sent)
        finally:
            quiet.cancel()
            call.cancel()  # a no-op once the call has ended

    async def _send_changes(
        self,
        call: grpc.aio.StreamStreamCall[tracker_pb2.SessionUpdate, tracker_pb2.SessionReply],
        sent: dict[str, tracker_pb2.HeldFile],
    ) -> None:
        """Send a delta after every poke while reading the replica's replies; return when the stream ends."""
        replies = asyncio.create_task(self._read_replies(call))
        try:
            while not self._leaving:
                changed = asyncio.create_task(self._changed.wait())
                done, _ = await asyncio.wait({replies, changed}, return_when=asyncio.FIRST_COMPLETED)
                if replies in done:
                    changed.cancel()
                    replies.result()  # raises what ended the stream
                    return
                self._changed.clear()
                update = self._delta(sent)
                if update is not None and not self._leaving:
                    await call.write(update)
            await replies
        finally:
            replies.cancel()

    async def _read_replies(
        self, call: grpc.aio.StreamStreamCall[tracker_pb2.SessionUpdate, tracker_pb2.SessionReply]
    ) -> None:
        while True:
            reply = await call.read()
            if not isinstance(reply, tracker_pb2.SessionReply):  # EOF: the replica ended the session
                await call.code()  # the status says why; a non-OK one raises from read() instead
                return
            self._note(reply)

    def _warn_unanswered(self) -> None:
        if self._failures == 0:  # later attempts were already reported when the stream broke
            logger.warning(
                "tracker %s unreachable (no answer in %.0fs); waiting for it", self.address, net.TRACKER_DEADLINE
            )

    def _note(self, reply: tracker_pb2.SessionReply) -> None:
        """Files left out for the replica's caps are sent again later, when it may have room."""
        if reply.left_out and not self._resend_all:
            logger.warning(
                "tracker %s left %d files out (it holds its maximum); sending again in %.0fs",
                self.address,
                reply.left_out,
                RESEND_LEFT_OUT_AFTER,
            )
            self._resend_all = True
            asyncio.get_running_loop().call_later(RESEND_LEFT_OUT_AFTER, self._changed.set)

    def _delta(self, sent: dict[str, tracker_pb2.HeldFile]) -> tracker_pb2.SessionUpdate | None:
        """What changed since `sent` (which becomes the current state); None when nothing did."""
        current = {held.file.file_id: held for held in self._snapshot().files}
        dropped = [file_id for file_id in sent if file_id not in current]
        resend = self._resend_all
        self._resend_all = False
        files = [held for file_id, held in current.items() if resend or sent.get(file_id) != held]
        sent.clear()
        sent.update(current)
        if not dropped and not files:
            return None
        return tracker_pb2.SessionUpdate(files=files, dropped_file_ids=dropped)
