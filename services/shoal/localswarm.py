"""A swarm of real tracker and peer processes on 127.0.0.1, for the demo, tests and benches."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoal.config import TlsFiles

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(address: str, timeout: float = 30.0) -> None:
    """Block until the gRPC health service at `address` reports SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not SERVING after {timeout}s")
            time.sleep(0.05)


@dataclass
class Proc:
    """One running shoal process."""

    name: str
    args: list[str]
    address: str
    log_path: Path
    popen: subprocess.Popen[bytes]
    data_dir: Path | None = None
    metrics_port: int | None = None
    health: str | None = None  # the plaintext health-only address, when it has one

    @property
    def probe_address(self) -> str:
        """Where wait_serving asks: the health-only address of a TLS process, else its gRPC address."""
        return self.health or self.address

    @property
    def control(self) -> str:
        """The control address of a peer."""
        assert self.data_dir is not None
        return f"unix:{self.data_dir / 'control.sock'}"

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None


@dataclass
class LocalSwarm:
    """Starts and stops shoal processes under one work dir; stop() always cleans up."""

    workdir: Path
    announce_interval: float = 1.0
    extra_env: dict[str, str] = field(default_factory=dict)
    tls: TlsFiles | None = None  # every process serves and dials with mutual TLS, probed on a health-only port
    trackers: list[Proc] = field(default_factory=list)
    peers: list[Proc] = field(default_factory=list)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        env = {**os.environ, **self.extra_env}
        env.pop("SHOAL_PEER", None)
        return subprocess.Popen(
            [sys.executable, "-m", "shoal.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def _secure_args(self) -> tuple[list[str], str | None]:
        """TLS flags and a plaintext health address, when this swarm runs with TLS."""
        if self.tls is None:
            return [], None
        health = f"127.0.0.1:{free_port()}"
        files = self.tls
        flags = ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]
        return [*flags, "--health-listen", health], health

    def start_tracker(self, port: int | None = None, metrics: bool = False, wait: bool = True) -> Proc:
        """Start one tracker on 127.0.0.1."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        name = f"tracker{len(self.trackers)}"
        address = f"127.0.0.1:{port or free_port()}"
        args = ["tracker", "--listen", address, "--announce-interval", str(self.announce_interval)]
        metrics_port = free_port() if metrics else None
        if metrics_port:
            args += ["--metrics-port", str(metrics_port)]
        secure, health = self._secure_args()
        args += secure
        proc = Proc(name, args, address, self.workdir / f"{name}.log", self._spawn(name, args), health=health)
        proc.metrics_port = metrics_port
        self.trackers.append(proc)
        if wait:
            wait_serving(proc.probe_address)
        return proc

    def restart(self, proc: Proc, wait: bool = True) -> None:
        """Start a stopped process again with the same arguments (same port, same data dir)."""
        proc.popen = self._spawn(proc.name, proc.args)
        if wait:
            wait_serving(proc.probe_address)

    def start_peer(self, *extra: str, metrics: bool = False, wait: bool = True) -> Proc:
        """Start one peer on 127.0.0.1 announcing to every tracker started so far."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        name = f"peer{len(self.peers)}"
        address = f"127.0.0.1:{free_port()}"
        data_dir = self.workdir / name
        args = [
            "peer",
            "--listen",
            address,
            "--tracker",
            ",".join(t.address for t in self.trackers),
            "--data-dir",
            str(data_dir),
            *extra,
        ]
        metrics_port = free_port() if metrics else None
        if metrics_port:
            args += ["--metrics-port", str(metrics_port)]
        secure, health = self._secure_args()
        args += secure
        proc = Proc(name, args, address, self.workdir / f"{name}.log", self._spawn(name, args), data_dir, health=health)
        proc.metrics_port = metrics_port
        self.peers.append(proc)
        if wait:
            wait_serving(proc.probe_address)
        return proc

    def cli(self, peer: Proc, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a `shoal` client command against a peer's control socket."""
        return subprocess.run(
            [sys.executable, "-m", "shoal.cli", "--peer", peer.control, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def signal(self, proc: Proc, sig: int) -> None:
        """Send a signal to a process."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.popen.pid, sig)

    def stop_proc(self, proc: Proc, timeout: float = 10.0) -> int | None:
        """SIGTERM (SIGCONT first, in case it was stopped), then SIGKILL after timeout; returns exit code."""
        if proc.popen.poll() is not None:
            return proc.popen.returncode
        self.signal(proc, signal.SIGCONT)
        self.signal(proc, signal.SIGTERM)
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(proc, signal.SIGKILL)
            proc.popen.wait(5)
            return None

    def stop(self) -> dict[str, int | None]:
        """Stop peers, then trackers; return each process's exit code."""
        codes = {}
        for proc in [*self.peers, *self.trackers]:
            codes[proc.name] = self.stop_proc(proc)
        return codes
