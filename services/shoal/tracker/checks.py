"""What the tracker accepts on the wire: caps, validation of requests, and how a refusal is answered and logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import grpc

from shoal import content, net
from shoal.tracker.registry import AddressTaken, Holding, NotOwner, Peer, RegistryError, RegistryFull, SecretRequired
from shoal.v1 import common_pb2, tracker_pb2

logger = logging.getLogger(__name__)

# Caps on what a request may carry (UTF-8 bytes for strings); anything over one is INVALID_ARGUMENT.
MAX_PEER_ID = 128
MAX_ADDRESS = 256
MAX_ZONE = 128
MAX_NAME = content.MAX_NAME_BYTES
MAX_SECRET = 128
MAX_TERM = 255
MAX_FILES_PER_ANNOUNCE = 10_000
# A full announce (10,000 files with 255-byte names) is ~3.4 MB; grpc refuses bigger requests with RESOURCE_EXHAUSTED.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
SHOWN = 64  # characters of an attacker's string kept in replies and logs
REFUSAL_LOGS_PER_SECOND = 20
SECRET_REQUIRED = "this tracker requires peers that prove their id with a secret; upgrade the peer"


def shown(text: str) -> str:
    """A caller's string for a reply or a log line: shortened, and repr'd so control characters stay escaped."""
    return repr(text[:SHOWN] + ("..." if len(text) > SHOWN else ""))


def _check_text(value: str, what: str, cap: int, *, required: bool = False) -> str:
    if required and not value:
        raise ValueError(f"{what} is required")
    if len(value.encode("utf-8", "surrogatepass")) > cap:
        raise ValueError(f"{what} longer than {cap} bytes: {shown(value)}")
    if not value.isprintable():
        raise ValueError(f"{what} has control characters: {shown(value)}")
    return value


def check_file_id(file_id: str) -> str:
    """Return file_id if it is 64 lowercase hex characters, else raise ValueError."""
    if not content.FILE_ID.fullmatch(file_id):  # strict: the canonical form only, no normalising
        raise ValueError(f"file_id must be 64 lowercase hex characters, got {shown(file_id)}")
    return file_id


def check_peer_id(peer_id: str) -> str:
    """Return peer_id if it is non-empty, printable and at most MAX_PEER_ID bytes, else raise ValueError."""
    return _check_text(peer_id, "peer_id", MAX_PEER_ID, required=True)


def check_secret(secret: str) -> str:
    """Return a presented peer secret if it is at most MAX_SECRET bytes, else raise ValueError."""
    if len(secret.encode("utf-8", "surrogatepass")) > MAX_SECRET:
        raise ValueError(f"peer_secret longer than {MAX_SECRET} bytes")  # never echoed: it may be someone's secret
    return secret


def peer_from_proto(info: common_pb2.PeerInfo) -> Peer:
    """Validate a PeerInfo and convert it; raise ValueError on bad input."""
    check_peer_id(info.peer_id)
    _check_text(info.address, "peer address", MAX_ADDRESS, required=True)
    try:
        net.split_host_port(info.address)
    except ValueError:
        raise ValueError(f"peer address must be host:port, got {shown(info.address)}") from None
    _check_text(info.zone, "zone", MAX_ZONE)
    return Peer(info.peer_id, info.address, info.zone)


def holdings_from_proto(files: Sequence[tracker_pb2.HeldFile]) -> list[Holding]:
    """Validate announced files and convert them; raise ValueError on bad input."""
    if len(files) > MAX_FILES_PER_ANNOUNCE:
        raise ValueError(f"at most {MAX_FILES_PER_ANNOUNCE} files per announce, got {len(files)}")
    holdings = []
    for held in files:
        info = held.file
        check_file_id(info.file_id)
        if len(info.name.encode("utf-8", "surrogatepass")) > MAX_NAME:
            raise ValueError(f"name of file {info.file_id} longer than {MAX_NAME} bytes: {shown(info.name)}")
        if info.size > content.MAX_FILE_SIZE:
            raise ValueError(f"size of file {info.file_id} over {content.MAX_FILE_SIZE} bytes: {info.size}")
        holdings.append(Holding(info.file_id, info.name, info.size, held.complete))
    return holdings


def peer_to_proto(peer: Peer) -> common_pb2.PeerInfo:
    """Convert a registry peer to its wire form."""
    return common_pb2.PeerInfo(peer_id=peer.peer_id, address=peer.address, zone=peer.zone)


class RefusalLog:
    """One warning per refused request, at most `per_second` a second (a flood must not become a log flood)."""

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_second = per_second
        self._clock = clock
        self._window = 0.0
        self._logged = 0
        self._suppressed = 0

    def __call__(self, rpc: str, code: grpc.StatusCode, caller: str, detail: str) -> None:
        now = self._clock()
        if now - self._window >= 1.0:
            self._window, self._logged = now, 0
        if self._logged >= self._per_second:
            self._suppressed += 1
            return
        self._logged += 1
        extra = f" ({self._suppressed} more refusals not logged)" if self._suppressed else ""
        self._suppressed = 0
        logger.warning("%s from %s refused with %s: %s%s", rpc, caller, code.name, detail, extra)


def dropped_from_proto(file_ids: Sequence[str]) -> list[str]:
    """Validate the file ids a session update drops; raise ValueError on bad input."""
    if len(file_ids) > MAX_FILES_PER_ANNOUNCE:
        raise ValueError(f"at most {MAX_FILES_PER_ANNOUNCE} dropped files per update, got {len(file_ids)}")
    return [check_file_id(file_id) for file_id in file_ids]


def refusal(err: RegistryError, peer: Peer, max_peers: int) -> tuple[grpc.StatusCode, str]:
    """The status code and detail that answer a registration the registry refused."""
    if isinstance(err, NotOwner):
        detail = f"peer id {shown(peer.peer_id)} is bound to a secret this request does not carry"
        return grpc.StatusCode.PERMISSION_DENIED, detail
    if isinstance(err, SecretRequired):
        return grpc.StatusCode.PERMISSION_DENIED, f"{SECRET_REQUIRED} (peer id {shown(peer.peer_id)})"
    if isinstance(err, AddressTaken):
        return grpc.StatusCode.ALREADY_EXISTS, f"address {shown(peer.address)} is held by another live peer"
    if isinstance(err, RegistryFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"tracker holds its maximum of {max_peers} peers"
    return grpc.StatusCode.ABORTED, f"peer id {shown(peer.peer_id)} was registered again: this session lost its lease"
