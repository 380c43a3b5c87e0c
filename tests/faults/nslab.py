"""Shoal processes in network namespaces (bench/netns.py's Lab), iptables faults, and a tracker probe inside the lab.

The lab's bridge lives in its own namespace and the root namespace has no address on it, so the test process
cannot dial a tracker itself: a small probe process runs inside a lab host and answers "view of ADDRESS" queries
over its stdin/stdout. Peers' control sockets are unix sockets on disk, reachable from anywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc
from bench.netns import Host, Lab
from faults.harness import TrackerView, control_stub, run
from faults.probe import PLAINTEXT
from helpers.polling import wait_until
from helpers.tls import tls_args

from shoal.config import TlsFiles
from shoal.localswarm import LocalSwarm, Proc
from shoal.v1 import control_pb2

logger = logging.getLogger(__name__)

TESTS = Path(__file__).resolve().parents[1]  # holds faults/ and helpers/: the probe's import root
PREFIX = "shoalf-"  # distinct from the benches' prefix, so neither sweeps the other's live namespaces
TRACKER_PORT = 7400
PEER_PORT = 7401


class Probe:
    """A long-lived `python -m faults.probe` inside one lab host: asks trackers for their view."""

    def __init__(self, host: Host, tls: TlsFiles | None) -> None:
        secure = tls_args(tls) if tls is not None else []
        self._popen = subprocess.Popen(
            host.argv([sys.executable, "-m", "faults.probe", *secure]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=TESTS,
            env={**os.environ, "PYTHONPATH": str(TESTS)},
        )

    def view(self, address: str, plaintext: bool = False) -> TrackerView | None:
        """ListPeers and SearchFiles('') of the tracker at `address` (without TLS if `plaintext`), None if no answer."""
        assert self._popen.stdin is not None and self._popen.stdout is not None
        self._popen.stdin.write((PLAINTEXT if plaintext else "") + address + "\n")
        self._popen.stdin.flush()
        line = self._popen.stdout.readline()
        if not line:
            raise RuntimeError("tracker probe died")
        data = json.loads(line)
        if data is None:
            return None
        return TrackerView(
            peers=tuple((str(p), str(a)) for p, a in data["peers"]),
            files={str(k): (int(v[0]), int(v[1])) for k, v in data["files"].items()},
        )

    def close(self) -> None:
        """End the probe."""
        with contextlib.suppress(OSError):
            if self._popen.stdin is not None:
                self._popen.stdin.close()
        try:
            self._popen.wait(5)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait(5)


class NsSwarm:
    """Trackers and peers as real processes, each in a lab host; stop() tears down processes and the lab.

    With `tls` every tracker and peer serves and dials with mutual TLS, and so does the probe."""

    def __init__(self, workdir: Path, interval: float, tls: TlsFiles | None = None) -> None:
        self.workdir = workdir
        self.interval = interval
        self.tls = tls
        self.lab = Lab(prefix=PREFIX)
        self.local = LocalSwarm(workdir, tls=tls)  # for cli(), signal() and stop_proc() on our Proc records
        self.rules: list[tuple[Host, list[str]]] = []
        self._probe: Probe | None = None

    def __enter__(self) -> NsSwarm:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lab.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def host(self, label: str) -> Host:
        """A new namespace on the lab bridge."""
        return self.lab.add_host(label)

    def _secure(self) -> list[str]:
        return tls_args(self.tls) if self.tls is not None else []

    def _spawn(self, host: Host, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        env = {key: value for key, value in os.environ.items() if not key.startswith("SHOAL_")}
        return subprocess.Popen(
            host.argv([sys.executable, "-m", "shoal.cli", *args]),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def tracker(self, host: Host) -> Proc:
        """Start a tracker in `host` and wait until it answers the probe."""
        address = f"{host.ip}:{TRACKER_PORT}"
        name = f"tracker-{host.label}"
        args = ["tracker", "--listen", address, "--announce-interval", str(self.interval), *self._secure()]
        proc = Proc(name, args, address, self.workdir / f"{name}.log", self._spawn(host, name, args))
        self.local.trackers.append(proc)
        if self._probe is None:
            self._probe = Probe(host, self.tls)
        wait_until(lambda: self.view(address) is not None, timeout=60, what=f"tracker in {host.label} to answer")
        if self.tls is not None:  # the switch really switched: this tracker refuses a plaintext client
            assert self._probe.view(address, plaintext=True) is None, f"{name} answered a plaintext client"
        return proc

    def peer(self, host: Host, trackers: list[Proc], *extra: str) -> Proc:
        """Start a peer in `host` announcing to `trackers`; wait until its control API answers."""
        address = f"{host.ip}:{PEER_PORT}"
        name = f"peer-{host.label}"
        data_dir = self.workdir / name
        args = ["peer", "--listen", address, "--tracker", ",".join(t.address for t in trackers)]
        args += ["--data-dir", str(data_dir), *extra, *self._secure()]
        proc = Proc(name, args, address, self.workdir / f"{name}.log", self._spawn(host, name, args), data_dir)
        self.local.peers.append(proc)
        wait_until(lambda: _answers(proc), timeout=60, what=f"peer in {host.label} to answer")
        return proc

    def view(self, address: str) -> TrackerView | None:
        """What the tracker at `address` lists (through the probe inside the lab)."""
        assert self._probe is not None, "start a tracker first"
        return self._probe.view(address)

    def iptables(self, host: Host, rule: list[str]) -> None:
        """Append an iptables rule inside `host` (removed by unblock() or stop())."""
        run(host.argv(["iptables", "-A", *rule]))
        self.rules.append((host, rule))

    def unblock(self, host: Host | None = None) -> None:
        """Delete the rules added in `host` (every host when None)."""
        for entry in list(self.rules):
            rule_host, rule = entry
            if host is None or rule_host == host:
                run(rule_host.argv(["iptables", "-D", *rule]), check=False)
                self.rules.remove(entry)

    def stop(self) -> None:
        """Stop every process, remove iptables rules, delete every namespace; never raises."""
        try:
            self.local.stop()
        finally:
            if self._probe is not None:
                self._probe.close()
            with contextlib.suppress(Exception):
                self.unblock()
            self.lab.teardown()


def _answers(peer: Proc) -> bool:
    if not peer.alive():
        raise AssertionError(f"{peer.name} exited with {peer.popen.returncode}; see {peer.log_path}")
    channel, stub = control_stub(peer)
    try:
        with channel:
            stub.Status(control_pb2.StatusRequest(), timeout=1)
    except grpc.RpcError:
        time.sleep(0.05)
        return False
    return True
