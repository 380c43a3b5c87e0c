"""The aria2 reference of the swarm bench: the same namespaces, uplink caps and file, with aria2c and opentracker.

One run: opentracker (Debian's build: whitelist mode, so the torrent's info hash is listed) in the tracker's
namespace, a torrent made by mktorrent with 256 KiB pieces (`-l 18`), one seeding aria2c that checks its copy
(`--check-integrity`) and announces, then N leeching aria2c launched at the same moment. DHT and local peer
discovery are off, so peers meet only through the tracker and through peer exchange (on, as Shoal's peers also
exchange peer lists). `--seed-ratio=0.0` with no seed time keeps every finished leecher seeding until the bench
kills them after the last one finished, as Shoal's peers keep serving. A leecher's finish is the moment aria2 runs
its `--on-bt-download-complete` hook (every piece SHA-1-checked, before seeding), which writes the file's path
into a FIFO the bench reads. Bytes uploaded come from aria2's own JSON-RPC (on, loopback of each namespace).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from bench.cgroup import CpuGroup
from bench.netns import Host, Lab, netns_pids
from bench.pair import BenchError, Procs, wait_for
from bench.swarm_measure import MB, Meter, Result, kumar_ross

from shoal.samples import sha256_of

TOOLS = {"aria2c": "aria2", "mktorrent": "mktorrent", "opentracker": "opentracker"}  # executable: Debian package
TRACKER_PORT = 6969
BT_PORT = 6881
RPC_PORT = 6800
RPC_SECRET = "shoal-bench"  # loopback only; set so aria2 does not warn about an open RPC port
PIECE_LOG2 = 18  # 256 KiB pieces
TRACKER_USER = "nobody"
CURL_TIMEOUT = 5.0


def missing_tools() -> list[str]:
    """Debian packages whose executable is not on PATH."""
    return sorted({pkg for exe, pkg in TOOLS.items() if shutil.which(exe) is None})


def aria2_flags(done_hook: Path | None) -> list[str]:
    """Flags shared by the seeder and the leechers; a leecher also reports its finish through `done_hook`."""
    flags = [
        "--no-conf=true",  # no ~/.aria2/aria2.conf: the same client everywhere
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=true",
        "--disable-ipv6=true",
        "--seed-ratio=0.0",  # seed regardless of ratio, and no --seed-time: until the bench stops it
        "--bt-max-peers=0",  # unlimited
        f"--listen-port={BT_PORT}",
        "--file-allocation=none",
        "--enable-rpc=true",
        f"--rpc-listen-port={RPC_PORT}",
        f"--rpc-secret={RPC_SECRET}",
        "--show-console-readout=false",
        "--summary-interval=0",
        "--console-log-level=warn",
        f"--stop-with-process={os.getpid()}",  # never outlive the bench, even a SIGKILLed one
    ]
    return flags + ([f"--on-bt-download-complete={done_hook}"] if done_hook else ["--check-integrity=true"])


class Aria2Swarm:
    """opentracker, one seeding aria2c and N leeching aria2c of one run, each inside its host's namespace."""

    def __init__(
        self, hosts: dict[str, Host], work: Path, procs: Procs, group: CpuGroup | None, timeout: float
    ) -> None:
        self.hosts, self.work, self.procs, self.group, self.timeout = hosts, work, procs, group, timeout
        self.announce = f"http://{hosts['tracker'].ip}:{TRACKER_PORT}/announce"
        self.fifo = work / "done.fifo"
        self.hook = work / "done-hook.sh"

    def curl(self, host: Host, url: str, body: str | None = None) -> bytes | None:
        """GET (or POST `body`) from inside a namespace; None when it fails."""
        argv = ["curl", "-sS", "--max-time", str(CURL_TIMEOUT), *(["-d", body] if body else []), url]
        try:
            done = subprocess.run(host.argv(argv), capture_output=True, timeout=CURL_TIMEOUT + 5, check=False)
        except subprocess.TimeoutExpired:
            return None
        return done.stdout if done.returncode == 0 else None

    def rpc(self, name: str, method: str, *params: Any) -> Any:
        """One aria2 JSON-RPC call to a client's loopback listener."""
        call = {"jsonrpc": "2.0", "id": "bench", "method": method, "params": [f"token:{RPC_SECRET}", *params]}
        body = json.dumps(call)
        reply = self.curl(self.hosts[name], f"http://127.0.0.1:{RPC_PORT}/jsonrpc", body)
        if reply is None:
            raise BenchError(f"aria2 RPC {method} on {name} failed")
        answer = json.loads(reply)
        if "error" in answer:
            raise BenchError(f"aria2 RPC {method} on {name}: {answer['error']}")
        return answer["result"]

    def stats(self, name: str) -> dict[str, int]:
        """Bytes a client uploaded and holds (payload, aria2's own count) for the torrent it is seeding."""
        active = self.rpc(name, "aria2.tellActive", ["uploadLength", "completedLength"])
        return {key: sum(int(item[key]) for item in active) for key in ("uploadLength", "completedLength")}

    def make_torrent(self, source: Path) -> tuple[Path, str]:
        """A torrent of `source` with 256 KiB pieces; return it and its info hash (hex)."""
        torrent = self.work / "file.torrent"
        make = ["mktorrent", "-l", str(PIECE_LOG2), "-a", self.announce, "-o", str(torrent), str(source)]
        subprocess.run(make, capture_output=True, check=True, timeout=self.timeout)
        shown = subprocess.run(["aria2c", "-S", str(torrent)], capture_output=True, text=True, check=True, timeout=60)
        match = re.search(r"Info Hash: ([0-9a-f]{40})", shown.stdout)
        if not match:
            raise BenchError(f"aria2c -S printed no info hash for {torrent}")
        return torrent, match.group(1)

    def start_tracker(self, info_hash: str) -> None:
        """opentracker, chrooted into its own directory, whose whitelist holds the torrent's info hash."""
        root = self.work / "tracker"
        root.mkdir(mode=0o755)
        root.chmod(0o755)  # readable after it drops to `nobody`
        (root / "whitelist.txt").write_text(info_hash + "\n")
        (root / "whitelist.txt").chmod(0o644)
        ip, port = self.hosts["tracker"].ip, str(TRACKER_PORT)
        argv = ["opentracker", "-i", ip, "-p", port, "-P", port, "-d", str(root), "-u", TRACKER_USER]
        self.procs.start("tracker", self.hosts["tracker"].argv([*argv, "-w", "/whitelist.txt"]))

    def tracker_url(self, path: str, info_hash: str, **query: str) -> str:
        quoted = urllib.parse.urlencode({"info_hash": bytes.fromhex(info_hash), **query})
        return f"http://{self.hosts['tracker'].ip}:{TRACKER_PORT}/{path}?{quoted}"

    def tracker_ready(self, info_hash: str) -> bool:
        """The tracker answers and has loaded its whitelist: a `stopped` announce (which adds no peer) is accepted."""
        probe = {"peer_id": "-BENCHPROBE-00000000", "port": "1", "uploaded": "0", "downloaded": "0", "left": "0"}
        reply = self.curl(self.hosts["seeder"], self.tracker_url("announce", info_hash, event="stopped", **probe))
        return reply is not None and reply.startswith(b"d") and b"failure reason" not in reply

    def seeds(self, info_hash: str) -> int:
        """How many seeders the tracker lists (a scrape from the seeder's namespace)."""
        reply = self.curl(self.hosts["seeder"], self.tracker_url("scrape", info_hash))
        match = re.search(rb"8:completei(\d+)e", reply or b"")
        return int(match.group(1)) if match else 0

    def start_client(self, name: str, flags: list[str], directory: Path, torrent: Path) -> None:
        argv = self.hosts[name].argv(["aria2c", *flags, f"--dir={directory}", str(torrent)])
        self.procs.start(name, self.group.wrap(argv) if self.group else argv)

    def start_seeder(self, source: Path, torrent: Path, info_hash: str) -> None:
        """The seeder checks its hard-linked copy, then announces; return once the tracker lists it."""
        seed_dir = self.work / "seeder"
        seed_dir.mkdir()
        os.link(source, seed_dir / source.name)
        wait_for("opentracker", lambda: self.tracker_ready(info_hash), lambda: self.procs.check("tracker"), timeout=30)
        self.start_client("seeder", aria2_flags(None), seed_dir, torrent)

        def alive() -> None:
            self.procs.check("seeder")
            self.procs.check("tracker")

        wait_for("aria2 seeder listed", lambda: self.seeds(info_hash) >= 1, alive, timeout=120)

    def launch(self, leechers: list[str], torrent: Path) -> None:
        """Start every leecher at once; each reports its finish through the FIFO."""
        fifo = shlex.quote(str(self.fifo))
        self.hook.write_text(
            f"#!/bin/sh\n# aria2 calls it with GID, file count, path.\nprintf '%s\\n' \"$3\" > {fifo}\n"
        )
        self.hook.chmod(0o755)
        for name in leechers:
            (self.work / "out" / name).mkdir(parents=True)
            self.start_client(name, aria2_flags(self.hook), self.work / "out" / name, torrent)

    def wait_done(self, fd: int, leechers: list[str]) -> tuple[dict[str, float], dict[str, str]]:
        """Finish times from the FIFO until every leecher finished, one died, or the timeout passed."""
        ends: dict[str, float] = {}
        failed: dict[str, str] = {}
        deadline = time.perf_counter() + self.timeout
        pending = b""
        while len(ends) + len(failed) < len(leechers):
            left = deadline - time.perf_counter()
            if left <= 0:
                failed.update({n: f"timed out after {self.timeout:.0f} s" for n in leechers if n not in ends})
                break
            readable, _, _ = select.select([fd], [], [], min(1.0, left))
            now = time.perf_counter()
            if readable:
                pending += os.read(fd, 65536)
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    ends.setdefault(Path(line.decode()).parent.name, now)
            seeder = self.procs.running["seeder"].poll()
            for name in leechers:
                if seeder is not None and name not in ends:
                    failed.setdefault(
                        name, f"the aria2 seeder exited with code {seeder}\n{self.procs.tail('seeder', 6)}"
                    )
                code = self.procs.running[name].poll()
                if name not in ends and name not in failed and code is not None:
                    failed[name] = f"aria2c exited with code {code}\n{self.procs.tail(name, 6)}"
        return ends, failed


def run_aria2(lab: Lab, hosts: dict[str, Host], args: argparse.Namespace, n: int) -> Result:
    """The aria2 reference of one sharing row: same hosts, caps and file; measure, verify, stop it."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"aria2-n{n}-", dir=args.work))
    (run_dir / "logs").mkdir()
    procs = Procs(run_dir / "logs")
    group = CpuGroup.create("aria2") if args.cgroup else None
    swarm = Aria2Swarm(hosts, run_dir, procs, group, args.timeout)
    leechers = [f"l{i}" for i in range(n)]
    os.mkfifo(swarm.fifo)
    fd = os.open(swarm.fifo, os.O_RDWR | os.O_NONBLOCK)  # read-write: never blocks, never sees EOF
    try:
        torrent, info_hash = swarm.make_torrent(args.source)
        swarm.start_tracker(info_hash)
        swarm.start_seeder(args.source, torrent, info_hash)
        bound = kumar_ross(n, args.size, args.cap, [args.cap] * n)
        os.sync()
        names = ["seeder", *leechers]
        meter = Meter(lab, lambda: [pid for name in names for pid in netns_pids(hosts[name].netns)], group, False)
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"aria2 N={n}: launching {n} leechers at once (T_min {bound:.2f} s, load {load}) ...", flush=True)
        meter.start()
        start = time.perf_counter()
        swarm.launch(leechers, torrent)
        ends, failed = swarm.wait_done(fd, leechers)
        meter.stop()
        stats = {name: swarm.stats(name) for name in names if name not in failed}
        up = {name: stat["uploadLength"] for name, stat in stats.items()}
        kept = sum(stat["completedLength"] for name, stat in stats.items() if name != "seeder")
        for name in [*leechers, "seeder"]:  # before the tracker, so their `stopped` announces reach it
            procs.stop(name)
        result = Result(
            mode="sharing",
            tool="aria2",
            n=n,
            size=args.size,
            cap=args.cap,
            seconds=max(ends.values(), default=start) - start,
            swarm_seconds=max(ends.values(), default=start) - start,
            first=min(ends.values(), default=start) - start,
            bound=bound,
            seeder_up=up["seeder"],
            leechers_up=sum(up.get(name, 0) for name in leechers),
            leechers_down=kept,
            verified=sum(sha256_of(run_dir / "out" / name / args.source.name) == args.digest for name in ends),
            failed=failed,
            peer_cpu=meter.peer_cpu,
            client_cpu=meter.client_cpu,
            busy_cores=meter.busy_cores,
            load=load,
            cpu=meter.cpu,
            cpu_source=meter.cpu_source,
            uplink=meter.uplink,
        )
        describe(result, leechers)
        for name, error in failed.items():
            print(f"  FAILED {name}: {error}", flush=True)
        return result
    except (BenchError, subprocess.CalledProcessError):
        for name in ["tracker", "seeder", *leechers]:
            if name in procs.running:
                print(procs.tail(name, 8), flush=True)
        raise
    finally:
        os.close(fd)
        procs.stop_all()
        if args.keep_logs:
            shutil.rmtree(args.keep_logs / f"aria2-n{n}", ignore_errors=True)
            shutil.copytree(run_dir / "logs", args.keep_logs / f"aria2-n{n}")
        if group:
            group.remove()
        shutil.rmtree(run_dir, ignore_errors=True)


def describe(r: Result, leechers: list[str]) -> None:
    """One aria2 run's detail, in the words of the Shoal rows."""
    utils = sorted(r.util(name) for name in leechers)
    f = r.size
    waste = (r.seeder_up + r.leechers_up - r.leechers_down) / f
    print(
        f"  T {r.seconds:.2f} s (first leecher {r.first:.2f} s), T_min {r.bound:.2f} s, ratio {r.ratio:.2f}; "
        f"{r.verified}/{r.n} copies verified{f', {len(r.failed)} FAILED' if r.failed else ''}\n"
        f"  uploaded: seeder {r.seeder_up / f:.2f} F, leechers {r.leechers_up / f:.2f} F; "
        f"leechers kept {r.leechers_down / f:.2f} F; waste {waste:.2f} F\n"
        f"  uplink use over T: seeder {r.util('seeder'):.0%}, leechers median {utils[len(utils) // 2]:.0%} "
        f"(min {utils[0]:.0%}, max {utils[-1]:.0%}); cap {r.cap / MB:g} MB/s\n"
        f"  CPU: aria2c {r.cpu:.1f} s ({r.cpu_per_gb:.1f} CPU-s per GB, {r.cpu_source}), "
        f"machine busy {r.busy_cores:.2f} of {os.cpu_count()} cores; load before {r.load}",
        flush=True,
    )
