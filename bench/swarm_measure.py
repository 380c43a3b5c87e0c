"""What one swarm run measured, for Shoal or its aria2 reference: times, the bound, bytes and CPU."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.cgroup import CpuGroup
from bench.netns import Lab

MB = 1_000_000
GB = 1_000_000_000
SAMPLE_EVERY = 0.5
CLK_TCK = os.sysconf("SC_CLK_TCK")


def kumar_ross(n: int, size: float, u_s: float, uploads: list[float], d_min: float = float("inf")) -> float:
    """Minimum distribution time of a file of `size` bytes to n peers (Kumar & Ross 2006, fluid model)."""
    return max(size / u_s, size / d_min, n * size / (u_s + sum(uploads)))


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """utime + stime of live processes (all their threads) from /proc/PID/stat; gone ones are left out."""
    spent = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        spent[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK  # stat fields 14 and 15
    return spent


def host_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat: other people's load shows up here."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def children_cpu() -> float:
    """CPU seconds of reaped children (the `shoal get` clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Result:
    """One run: N leechers fetching one file with one tool."""

    mode: str
    n: int
    size: int
    cap: float
    seconds: float  # launch of the downloads -> last one finished
    swarm_seconds: float  # first download started in a daemon -> last finished (no CLI start-up)
    first: float
    bound: float
    seeder_up: int
    leechers_up: int
    leechers_down: int
    verified: int
    peer_cpu: float  # the long-lived processes in the lab's namespaces, from /proc/PID/stat
    client_cpu: float  # reaped children of the bench (the `shoal get` clients)
    busy_cores: float
    load: str
    tool: str = "shoal"
    cpu: float = 0.0  # every client process of the tool over T: the cgroup's count, else peer_cpu + client_cpu
    cpu_source: str = "proc"
    uplink: dict[str, int] = field(default_factory=dict)  # bytes on the wire per host during the run
    from_partial: int = 0  # bytes leechers got from peers that were still downloading
    failed: dict[str, str] = field(default_factory=dict)  # leechers whose download failed, with the error
    peer_rss: list[int] = field(default_factory=list)  # each leecher daemon's peak RSS (VmHWM), bytes

    @property
    def ok(self) -> bool:
        """Every download succeeded and every copy verified."""
        return not self.failed and self.verified == self.n

    @property
    def ratio(self) -> float:
        return self.seconds / self.bound

    @property
    def cpu_per_gb(self) -> float:
        """Client CPU-seconds per GB (10^9 bytes) delivered; N copies of F are delivered."""
        return self.cpu / (self.n * self.size / GB)

    def util(self, label: str) -> float:
        return self.uplink.get(label, 0) / (self.cap * self.seconds)


def daemon_peak_rss(pids: list[int]) -> int:
    """The largest VmHWM (bytes) among `pids` that run a `shoal peer` daemon; 0 when none is found."""
    peak = 0
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"peer" not in argv or b"--data-dir" not in argv:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return peak


class Meter:
    """CPU of the tool's processes, machine-wide busy cores and per-host uplink bytes between start() and stop().

    `pids` is asked at start and at stop, so processes started in between (aria2's leechers) are counted
    from zero. With a cgroup the tool's CPU is the group's count instead, exited processes included; without
    one it is `pids`' CPU plus, if `children` (the `shoal get`s), the bench's reaped children, which also
    include its own `ip` calls (a few ms each).
    """

    def __init__(
        self, lab: Lab, pids: Callable[[], list[int]], group: CpuGroup | None = None, children: bool = True
    ) -> None:
        self.lab, self.pids, self.group, self.children = lab, pids, group, children
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.peer_cpu = self.client_cpu = self.busy_cores = self.cpu = 0.0
        self._cpu: dict[int, float] = {}
        self._busy, self._child, self._group = (0.0, 0.0), 0.0, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def cpu_source(self) -> str:
        return "cgroup" if self.group else "proc"

    def _sample(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), self.lab.uplink_bytes()))
            if self._done.wait(SAMPLE_EVERY):
                self.samples.append((time.perf_counter(), self.lab.uplink_bytes()))
                return

    def start(self) -> None:
        self._cpu, self._busy, self._child = cpu_by_pid(self.pids()), host_busy(), children_cpu()
        self._group = self.group.usage() if self.group else 0.0
        self._thread.start()

    def stop(self) -> None:
        """Read the counters now (call it the moment the last download finished)."""
        group = self.group.usage() if self.group else 0.0
        now = cpu_by_pid(self.pids())
        self.peer_cpu = sum(spent - self._cpu.get(pid, 0.0) for pid, spent in now.items())
        busy, total = host_busy()
        self.busy_cores = (busy - self._busy[0]) / max(1.0, total - self._busy[1]) * (os.cpu_count() or 1)
        self._done.set()
        self._thread.join()
        self.client_cpu = children_cpu() - self._child
        if self.group:
            self.cpu = group - self._group
        else:
            self.cpu = self.peer_cpu + (self.client_cpu if self.children else 0.0)

    @property
    def uplink(self) -> dict[str, int]:
        """Bytes each host sent between the first and the last sample."""
        (_, first), (_, last) = self.samples[0], self.samples[-1]
        return {label: last[label] - first[label] for label in last}
