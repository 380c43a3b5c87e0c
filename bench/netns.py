"""Network namespaces for benches and fault tests: hosts on one private bridge, tc-capped uplinks, sure cleanup.

Layout: a bridge `br0` in its own namespace `<prefix><pid>-<n>-br`, and per host a namespace `<prefix><pid>-<n>-<label>`
joined to it by a veth pair (`eth0` inside the host, `pN` on the bridge). Hosts get addresses on a private test
subnet and no route beyond it, so nothing they send can leave the lab, and nothing touches the root namespace's
network. The owner pid in every name lets `sweep` tell leftovers of a crashed run from a live lab.

    with Lab() as lab:
        a = lab.add_host("a", cap=10e6)           # uplink capped to 10 MB/s (htb on a's eth0 egress)
        b = lab.add_host("b")
        tracker = lab.popen(b, ["shoal", "tracker", "--listen", f"{b.ip}:7400"])
        lab.run(a, ["curl", "-s", f"http://{b.ip}:7400/"], check=False)
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "shoalb-"
DEFAULT_SUBNET = "10.77.0.0/24"
UPLINK = "eth0"
BRIDGE = "br0"
IP = "ip"
TC = "tc"


class LabError(RuntimeError):
    """A namespace, link or qdisc command failed."""


def require_root() -> None:
    """Namespaces, veths and qdiscs need CAP_NET_ADMIN; fail with one clear line otherwise."""
    if os.geteuid() != 0:
        raise LabError("network namespaces need root: run as root (e.g. sudo make bench-swarm)")


def sh(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a command, raising LabError with its stderr when it fails and `check` is set."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


@dataclass(frozen=True)
class Host:
    """One namespace on the lab bridge."""

    label: str
    netns: str
    ip: str
    port: str  # its veth end in the bridge namespace
    dev: str = UPLINK  # its veth end inside its own namespace

    def argv(self, command: Sequence[str]) -> list[str]:
        """`command` to run inside this host's namespace (`ip netns exec` execs it: same pid)."""
        return [IP, "netns", "exec", self.netns, *command]


def namespaces(prefix: str) -> list[str]:
    """Named namespaces whose names start with `prefix`."""
    listed = sh([IP, "-j", "netns", "list"], check=False).stdout.strip()
    names = [item["name"] for item in json.loads(listed)] if listed else []
    return [name for name in names if name.startswith(prefix)]


def netns_pids(netns: str) -> list[int]:
    """Processes living in a namespace."""
    out = sh([IP, "netns", "pids", netns], check=False).stdout
    return [int(word) for word in out.split()]


def pid_alive(pid: int) -> bool:
    """True while a process exists and is not a zombie (a SIGKILLed owner may linger as one)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def kill_pids(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM (after SIGCONT, in case a test stopped them), then SIGKILL whatever outlives `grace`."""
    for sig in (signal.SIGCONT, signal.SIGTERM):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def delete_netns(netns: str, grace: float = 5.0) -> None:
    """Stop every process in a namespace, then delete it (its veth ends go with it)."""
    kill_pids(netns_pids(netns), grace)
    sh([IP, "netns", "del", netns], check=False)


def sweep(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete namespaces under `prefix` left by runs whose owner process is gone; return their names."""
    stale = []
    for name in namespaces(prefix):
        match = re.match(r"(\d+)-", name[len(prefix) :])
        if match and pid_alive(int(match.group(1))):
            continue
        delete_netns(name, grace=2.0)
        stale.append(name)
    if stale:
        logger.warning("removed %d namespaces left by an earlier run: %s", len(stale), " ".join(stale))
    return stale


class Lab:
    """A bridge namespace plus host namespaces on a private subnet; `teardown` (also at exit) removes them all."""

    _serial = 0  # several labs in one process get distinct names

    def __init__(self, prefix: str = DEFAULT_PREFIX, subnet: str = DEFAULT_SUBNET) -> None:
        network = ipaddress.ip_network(subnet)
        if not isinstance(network, ipaddress.IPv4Network) or not network.is_private:
            raise LabError(f"the lab subnet must be a private IPv4 network, got {subnet}")
        if not re.fullmatch(r"[a-z][a-z0-9]*-", prefix):
            raise LabError(f"prefix must look like 'name-', got {prefix!r}")
        self.prefix = prefix
        self.network = network
        Lab._serial += 1
        self.owner = f"{prefix}{os.getpid()}-{Lab._serial}-"
        self.bridge_ns = self.owner + "br"
        self.hosts: dict[str, Host] = {}
        self._addresses: Iterator[ipaddress.IPv4Address] = network.hosts()
        self._created: list[str] = []
        self._started = False

    # ---- building ----------------------------------------------------------------------------
    def start(self) -> Lab:
        """Sweep leftovers of crashed runs, then create the bridge namespace and its bridge."""
        require_root()
        sweep(self.prefix)
        atexit.register(self.teardown)
        self._started = True
        self._add_netns(self.bridge_ns)
        sh([IP, "-n", self.bridge_ns, "link", "add", BRIDGE, "type", "bridge"])
        sh([IP, "-n", self.bridge_ns, "link", "set", BRIDGE, "up"])
        return self

    def _add_netns(self, name: str) -> None:
        sh([IP, "netns", "add", name])
        self._created.append(name)
        sh([IP, "-n", name, "link", "set", "lo", "up"])
        # No IPv6: no router solicitations or DAD chatter on the bridge, only the traffic under test.
        sysctl = ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        sh([IP, "netns", "exec", name, *sysctl], check=False)

    def add_host(self, label: str, cap: float | None = None) -> Host:
        """A namespace wired to the bridge with the next free address; `cap` bytes/s limits its uplink."""
        if not self._started:
            raise LabError("call Lab.start() (or enter the Lab) before adding hosts")
        if label in self.hosts or not re.fullmatch(r"[a-z0-9]+", label):
            raise LabError(f"host label must be new and [a-z0-9]+, got {label!r}")
        try:
            address = next(self._addresses)
        except StopIteration:
            raise LabError(f"no free address left in {self.network}") from None
        host = Host(label, self.owner + label, str(address), f"p{len(self.hosts)}")
        self._add_netns(host.netns)
        veth = ["type", "veth", "peer", "name", host.dev, "netns", host.netns]
        sh([IP, "-n", self.bridge_ns, "link", "add", host.port, *veth])
        sh([IP, "-n", self.bridge_ns, "link", "set", host.port, "master", BRIDGE, "up"])
        sh([IP, "-n", host.netns, "addr", "add", f"{address}/{self.network.prefixlen}", "dev", host.dev])
        sh([IP, "-n", host.netns, "link", "set", host.dev, "up"])
        self.hosts[label] = host
        if cap is not None:
            self.set_cap(host, cap)
        return host

    def set_cap(self, host: Host, rate: float | None, burst: str = "15k") -> None:
        """Cap a host's uplink to `rate` bytes/s with htb on its egress (None removes the cap).

        htb counts whole frames (Ethernet + IP + TCP headers), so TCP payload tops out near 95% of `rate`.
        """
        if rate is None:
            sh([TC, "-n", host.netns, "qdisc", "del", "dev", host.dev, "root"], check=False)
            return
        if rate <= 0:
            raise LabError(f"cap must be positive, got {rate}")
        bits = f"{int(rate * 8)}bit"
        tc = [TC, "-n", host.netns]
        sh([*tc, "qdisc", "replace", "dev", host.dev, "root", "handle", "1:", "htb", "default", "10"])
        sh(
            [*tc, "class", "replace", "dev", host.dev, "parent", "1:", "classid", "1:10", "htb"]
            + ["rate", bits, "ceil", bits, "burst", burst, "cburst", burst, "quantum", "1514"]
        )

    def set_link(self, host: Host, up: bool) -> None:
        """Cut a host off the bridge (or reconnect it), as a pulled cable would."""
        sh([IP, "-n", self.bridge_ns, "link", "set", host.port, "up" if up else "down"])

    # ---- using -------------------------------------------------------------------------------
    def run(
        self, host: Host, command: Sequence[str], *, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a host and wait for it."""
        return sh(host.argv(command), check=check, timeout=timeout)

    def popen(self, host: Host, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a command inside a host; `teardown` kills it if the caller does not."""
        return subprocess.Popen(host.argv(command), **kwargs)

    def uplink_bytes(self) -> dict[str, int]:
        """Bytes each host has sent up its uplink, read from the bridge side in one call."""
        out = sh([IP, "-n", self.bridge_ns, "-s", "-j", "link", "show"]).stdout
        by_port = {link["ifname"]: int(link["stats64"]["rx"]["bytes"]) for link in json.loads(out)}
        return {label: by_port.get(host.port, 0) for label, host in self.hosts.items()}

    # ---- cleaning up -------------------------------------------------------------------------
    def teardown(self) -> None:
        """Kill every process in the lab's namespaces and delete them; safe to call twice."""
        for name in reversed(self._created):
            delete_netns(name)
        self._created.clear()
        self.hosts.clear()
        if self._started:
            atexit.unregister(self.teardown)
            self._started = False

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.teardown()
