"""What the fault suite observes of real shoal processes: tracker views, peer status, download progress, logs."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc
from helpers.tls import channel

from shoal import net, tls
from shoal.config import TlsFiles
from shoal.localswarm import Proc
from shoal.v1 import control_pb2, control_pb2_grpc, tracker_pb2, tracker_pb2_grpc

logger = logging.getLogger(__name__)

MiB = 1024 * 1024


def shrink(root: Path, over: int = MiB) -> None:
    """Delete every file larger than `over` under root (data dirs of finished scenarios), to spare the disk."""
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and path.stat().st_size > over:
                path.unlink()


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
def tracker_stub(address: str, files: TlsFiles | None) -> Iterator[tracker_pb2_grpc.TrackerStub]:
    """A blocking TrackerStub for one replica, over mutual TLS with `files` (the swarm's), else plaintext."""
    with channel(address, files, tls.TRACKER_NAME) as opened:
        yield tracker_pb2_grpc.TrackerStub(opened)


@dataclass(frozen=True)
class TrackerView:
    """What one replica lists: peer ids with their addresses, and (complete, partial) holder counts per file."""

    peers: tuple[tuple[str, str], ...]
    files: dict[str, tuple[int, int]]

    @property
    def peer_ids(self) -> list[str]:
        """Listed peer ids, with duplicates if any."""
        return [peer_id for peer_id, _ in self.peers]


def tracker_view(address: str, files: TlsFiles | None, timeout: float = 3.0) -> TrackerView | None:
    """ListPeers and SearchFiles('') of one replica, dialled with the swarm's TLS files; None if it does not answer."""
    try:
        with tracker_stub(address, files) as stub:
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
