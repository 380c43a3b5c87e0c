"""Helpers for driving real shoal processes in the fault suite: files, waits, CLI calls, tracker views, progress."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc

from shoal import net
from shoal.demo import make_file, sha256_of  # noqa: F401 - the scenarios import them from here
from shoal.localswarm import LocalSwarm, Proc, wait_serving
from shoal.v1 import control_pb2, control_pb2_grpc, tracker_pb2, tracker_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")
MiB = 1024 * 1024


def shrink(root: Path, over: int = MiB) -> None:
    """Delete every file larger than `over` under root (data dirs of finished scenarios), to spare the disk."""
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and path.stat().st_size > over:
                path.unlink()


def wait_until(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; raise AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def start_peers(swarm: LocalSwarm, count: int, *extra: str) -> list[Proc]:
    """Start `count` peers at once and wait until every one serves (faster than one by one)."""
    peers = [swarm.start_peer(*extra, wait=False) for _ in range(count)]
    for peer in peers:
        wait_serving(peer.address, timeout=60)
    return peers


def start_trackers(swarm: LocalSwarm, count: int) -> list[Proc]:
    """Start `count` trackers at once and wait until every one serves."""
    trackers = [swarm.start_tracker(wait=False) for _ in range(count)]
    for tracker in trackers:
        wait_serving(tracker.address, timeout=60)
    return trackers


def cli_json(swarm: LocalSwarm, peer: Proc, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run `shoal --json ARGS` against a peer and parse its output; raise with stderr on failure."""
    done = swarm.cli(peer, "--json", *args, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"shoal {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    # `get --json` streams one object per progress message and ends with the summary; others print one document.
    data: dict[str, Any] = json.loads(done.stdout.splitlines()[-1] if args[0] == "get" else done.stdout)
    return data


def put(swarm: LocalSwarm, peer: Proc, path: Path) -> str:
    """Publish a file on a peer; return its id."""
    return str(cli_json(swarm, peer, "put", str(path))["file"]["file_id"])


def control_stub(peer: Proc) -> tuple[grpc.Channel, control_pb2_grpc.ControlStub]:
    """A blocking channel and stub for a peer's control API."""
    channel = grpc.insecure_channel(peer.control, options=net.CHANNEL_OPTIONS)
    return channel, control_pb2_grpc.ControlStub(channel)


def status(peer: Proc) -> control_pb2.StatusResponse:
    """A peer's status (counters since its start)."""
    channel, stub = control_stub(peer)
    with channel:
        reply: control_pb2.StatusResponse = stub.Status(control_pb2.StatusRequest(), timeout=10)
        return reply


# ---- trackers, queried directly ----------------------------------------------------------------


@contextlib.contextmanager
def tracker_stub(address: str) -> Iterator[tracker_pb2_grpc.TrackerStub]:
    """A blocking TrackerStub for one replica."""
    with grpc.insecure_channel(address, options=net.CHANNEL_OPTIONS) as channel:
        yield tracker_pb2_grpc.TrackerStub(channel)


@dataclass(frozen=True)
class TrackerView:
    """What one replica lists: peer ids with their addresses, and (complete, partial) holder counts per file."""

    peers: tuple[tuple[str, str], ...]
    files: dict[str, tuple[int, int]]

    @property
    def peer_ids(self) -> list[str]:
        """Listed peer ids, with duplicates if any."""
        return [peer_id for peer_id, _ in self.peers]


def tracker_view(address: str, timeout: float = 3.0) -> TrackerView | None:
    """ListPeers and SearchFiles('') of one replica, or None if it does not answer."""
    try:
        with tracker_stub(address) as stub:
            peers = stub.ListPeers(tracker_pb2.ListPeersRequest(), timeout=timeout)
            found = stub.SearchFiles(tracker_pb2.SearchFilesRequest(term="", limit=1000), timeout=timeout)
    except grpc.RpcError:
        return None
    return TrackerView(
        peers=tuple((p.peer_id, p.address) for p in peers.peers),
        files={r.file.file_id: (r.complete_holders, r.partial_holders) for r in found.results},
    )


def peer_ids(peers: list[Proc]) -> set[str]:
    """The ids of running peers, read from their data dirs."""
    ids = set()
    for peer in peers:
        assert peer.data_dir is not None
        ids.add((peer.data_dir / "peer_id").read_text().strip())
    return ids


# ---- downloads with progress samples -----------------------------------------------------------


@dataclass
class Watch:
    """A download through the control API's Get stream, sampling (time, verified bytes) every 0.2 s."""

    peer: Proc
    file_id: str
    output: Path
    samples: list[tuple[float, int]] = field(default_factory=list)
    final: control_pb2.GetProgress | None = None
    error: str = ""
    started: float = 0.0
    finished: float = 0.0
    _thread: threading.Thread | None = None
    _channel: grpc.Channel | None = None

    def start(self) -> Watch:
        """Start the download in a background thread."""
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"get-{self.peer.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        channel, stub = control_stub(self.peer)
        self._channel = channel
        try:
            request = control_pb2.GetRequest(file_id=self.file_id, output=str(self.output))
            for progress in stub.Get(request, timeout=600):
                self.samples.append((time.monotonic(), progress.done_bytes))
                if progress.done:
                    self.final = progress
        except grpc.RpcError as err:
            self.error = f"{err.code().name}: {err.details()}"
        finally:
            self.finished = time.monotonic()
            channel.close()

    def wait(self, timeout: float) -> Watch:
        """Wait for the stream to end (success or failure)."""
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"download on {self.peer.name} still running after {timeout:.0f}s")
        return self

    def cancel(self) -> None:
        """Stop waiting (the thread ends when the channel closes)."""
        if self._channel is not None:
            self._channel.close()

    @property
    def done(self) -> bool:
        """True once the stream ended with a final progress message."""
        return self.final is not None

    @property
    def seconds(self) -> float:
        """Wall time from start to the end of the stream."""
        return self.finished - self.started

    def done_bytes(self) -> int:
        """Verified bytes at the latest sample."""
        return self.samples[-1][1] if self.samples else 0

    def rate(self, start: float, end: float) -> float:
        """Verified bytes per second between two monotonic times (from the nearest samples)."""
        inside = [(t, d) for t, d in self.samples if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def longest_stall(self, after: float) -> float:
        """Longest time after `after` (monotonic) during which verified bytes did not grow."""
        longest = 0.0
        last_change = after
        previous = None
        for stamp, done in self.samples:
            if stamp < after:
                previous = done
                continue
            if previous is None or done > previous:
                longest = max(longest, stamp - last_change)
                last_change = stamp
            previous = done
        return longest


def log_time(log: Path, needle: str) -> float | None:
    """Wall-clock time (time.time()) of the first line of a shoal log containing `needle`."""
    with contextlib.suppress(OSError), open(log, errors="replace") as lines:
        for line in lines:
            if needle in line:
                with contextlib.suppress(ValueError):
                    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def run(cmd: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a setup command (ip, iptables), raising with its stderr on failure when check is set."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return done
