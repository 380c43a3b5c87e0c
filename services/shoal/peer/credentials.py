"""The secrets tracker replicas bind this peer's id to: in memory and in a 0600 file in the data dir.

A replica binds a new lease to the secret the first announce carries (or issues one if it carries none) and then
requires it on every Announce and Leave for the id while the lease lives (shoal.tracker.registry states the rule).
The peer makes one secret of its own and brings it to every replica, so a lost reply or a restarted replica never
leaves it without the secret; what a replica answers is kept per replica, in case one issues its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from pathlib import Path

from shoal.v1 import tracker_pb2

logger = logging.getLogger(__name__)

FILE_NAME = "tracker-secrets.json"
MAX_ENTRIES = 64  # replicas remembered; the oldest are forgotten first (replica addresses change with pods)
MAX_SECRET = 128  # bytes, as the tracker caps it
MAX_FILE_BYTES = 64 * 1024
OWN = "*"  # the file's key for this peer's own secret


class TrackerSecrets:
    """Secrets by tracker replica address ('ip:port' as dialled)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        self._secrets: dict[str, str] | None = None  # None until read from disk
        self._lock = asyncio.Lock()

    def get(self, replica: str) -> str:
        """The secret to show `replica`: what it answered before, else this peer's own ("" before load())."""
        known = self._secrets or {}
        return known.get(replica) or known.get(OWN, "")

    async def load(self) -> None:
        """Read the file once; make and save this peer's own secret if it has none."""
        async with self._lock:
            if self._secrets is not None:
                return
            loaded = await asyncio.to_thread(_read, self.path)
            if OWN not in loaded:
                loaded[OWN] = secrets.token_urlsafe(32)
                await self._save(loaded)
            self._secrets = loaded

    async def _save(self, snapshot: dict[str, str]) -> None:
        try:
            await asyncio.to_thread(_write, self.path, snapshot)
        except OSError as err:  # kept in memory still: only a restart before the lease lapses loses it
            logger.warning("cannot save tracker secrets to %s: %s", self.path, err)

    async def announcement(self, request: tracker_pb2.AnnounceRequest, replica: str) -> tracker_pb2.AnnounceRequest:
        """A copy of `request` carrying this replica's secret and saying that this peer keeps secrets."""
        await self.load()
        signed = tracker_pb2.AnnounceRequest()
        signed.CopyFrom(request)
        signed.peer_secret = self.get(replica)
        signed.accepts_secret = True
        return signed

    def leave_request(self, peer_id: str, replica: str) -> tracker_pb2.LeaveRequest:
        """A Leave for `replica`, with the secret it issued."""
        return tracker_pb2.LeaveRequest(peer_id=peer_id, peer_secret=self.get(replica))

    async def remember(self, replica: str, secret: str) -> None:
        """Keep the secret a replica answered with (an empty one, from an older tracker, changes nothing)."""
        if not secret or len(secret.encode()) > MAX_SECRET:
            return
        await self.load()
        async with self._lock:
            assert self._secrets is not None
            if self.get(replica) == secret:
                return
            self._secrets.pop(replica, None)
            self._secrets[replica] = secret  # newest last
            while len(self._secrets) > MAX_ENTRIES:
                del self._secrets[next(k for k in self._secrets if k != OWN)]
            await self._save(dict(self._secrets))


def _read(path: Path) -> dict[str, str]:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as err:
        logger.warning("cannot read tracker secrets %s: %s; starting without", path, err)
        return {}
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError(f"over {MAX_FILE_BYTES} bytes")
        loaded = json.loads(raw)
        if not isinstance(loaded, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        logger.warning("ignoring unreadable tracker secrets %s: %s", path, err)
        return {}
    kept = {
        k: v
        for k, v in loaded.items()
        if isinstance(k, str) and isinstance(v, str) and v and len(v.encode("utf-8", "surrogatepass")) <= MAX_SECRET
    }
    return dict(list(kept.items())[-MAX_ENTRIES:])


def _write(path: Path, secrets: dict[str, str]) -> None:
    """Replace the file atomically; it is 0600 from its first byte."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # an older tmp file may have other bits
        f.write(json.dumps(secrets, indent=1).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
