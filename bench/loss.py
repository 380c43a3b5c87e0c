"""Packet loss on the only source's link: a Shoal download against one plain TCP stream over the same link.

Three network namespaces on a private bridge (bench/netns.py, prefix `shoalloss-`): a tracker, a source peer that
publishes a random file, and a downloader host. As in tests/faults/test_network.py::test_g_packet_loss_on_source_link,
every veth hands the stack one frame per packet (`gso_max_segs 1`), so "10% of packets" means per-frame loss, and the
source host drops that share of what it sends and receives at random (iptables `statistic --mode random` on INPUT
and OUTPUT of its device).

One clean download (no loss) and one clean TCP stream come first, for scale. Then, for --runs rounds, alternately:
  shoal  a fresh downloader peer (new data dir, so nothing on disk and no pooled channel) runs `shoal get`;
         wall time of the command, the copy sha256-checked; the peer is stopped after, so it never serves the next.
  tcp    one plain TCP stream of the same size from the source host to the downloader host: a python socket
         server and client, timed from the connect to the end of the stream.
The goal (efficiency issue): median shoal time / median TCP time <= 1.5. Each Shoal round also counts what the
downloader logged about the source: dropped as stalled ("sent nothing"), or as failing.

The figures are the point: a missed goal still exits 0; a broken run (a get failing, a copy not verifying) exits 1.
Needs root. JSON of the figures: .cache/bench/loss-<UTC time>.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench.netns import Host, Lab, LabError, pid_alive, require_root, sh
from bench.pair import BenchError, Procs, parse_size, run_cmd, wait_for
from bench.swarm import revision

from shoal.samples import make_file, sha256_of

MIB = 2**20
MB = 1e6
PREFIX = "shoalloss-"  # its own: never sweeps the namespaces of a live swarm bench or fault test
WORK_PREFIX = "shoal-loss-"
TRACKER_PORT = 7400
PEER_PORT = 7401
TCP_PORT = 9000
GOAL = 1.5
SHOAL = str(Path(sys.executable).parent.absolute() / "shoal")
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "bench"

TCP_SERVER = """
import socket, subprocess, sys
size, port = int(sys.argv[1]), int(sys.argv[2])
block = bytes(1 << 16)
with socket.create_server(("0.0.0.0", port)) as server:
    print("listening", flush=True)
    conn, peer = server.accept()
    with conn:
        left = size
        while left > 0:
            conn.sendall(block[: min(left, len(block))])
            left -= len(block)
        conn.recv(1)  # the client has every byte: the sender's tcp_info, before the connection goes
        ss = ["ss", "-tinH", "state", "established", "( sport = :%d and dst %s )" % (port, peer[0])]
        print(subprocess.run(ss, capture_output=True, text=True).stdout, flush=True)
"""
TCP_CLIENT = """
import socket, sys, time
started = time.monotonic()
received = 0
size = int(sys.argv[3])
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=120)
with conn:
    while received < size and (data := conn.recv(1 << 20)):
        received += len(data)
    seconds = time.monotonic() - started
    conn.sendall(b"x")
    conn.recv(1)
print(received, seconds)
"""
SS_FIELDS = {"busy": r"\bbusy:(\d+)ms", "retrans": r"\bretrans:\d+/(\d+)", "bytes_retrans": r"\bbytes_retrans:(\d+)"}


def tcp_info(ss_output: str) -> dict[str, float]:
    """The sender's view of its connection from `ss -ti`: busy seconds (data in flight), segments resent."""
    found: dict[str, float] = {}
    for name, pattern in SS_FIELDS.items():
        match = re.search(pattern, ss_output)
        if match:
            found[name] = int(match.group(1)) / (1000 if name == "busy" else 1)
    return found


@dataclass
class Fetch:
    """One timed transfer."""

    tool: str  # "shoal" or "tcp"
    loss: float
    seconds: float
    size: int
    transfer_seconds: float = 0.0  # shoal: the daemon's own count, from the first chunk request to the last chunk
    ok: bool = True
    stalled_drops: int = 0  # shoal: times the downloader dropped the source as "sent nothing"
    failing_drops: int = 0  # ... as failing (three failed calls in a row)
    error: str = ""
    log_lines: list[str] = field(default_factory=list)  # shoal: the downloader's warnings about its source
    sender: dict[str, float] = field(default_factory=dict)  # the source's tcp_info at the end (ss -ti)

    @property
    def mbps(self) -> float:
        return self.size / self.seconds / MB if self.seconds > 0 else 0.0


class LossLab:
    """The lab's hosts and the Shoal processes in them."""

    def __init__(self, lab: Lab, work: Path, args: argparse.Namespace) -> None:
        self.lab, self.work, self.args = lab, work, args
        self.exe, self.timeout = args.shoal, args.timeout
        (work / "logs").mkdir()
        self.procs = Procs(work / "logs")
        self.log = work / "logs" / "clients.log"
        self.tracker_host = lab.add_host("tracker")
        self.src = lab.add_host("src")
        self.dl = lab.add_host("dl")
        for host in (self.tracker_host, self.src, self.dl):
            lab.run(host, ["ip", "link", "set", "dev", host.dev, "gso_max_segs", "1"])
        self.tracker = f"{self.tracker_host.ip}:{TRACKER_PORT}"
        self.source_address = f"{self.src.ip}:{PEER_PORT}"
        self.rules: list[list[str]] = []

    def shoal(self, name: str, *args: str) -> list[str]:
        """A client command against a peer's control socket (a unix socket: reachable from the root namespace)."""
        return [self.exe, "--peer", f"unix:{self.work / name / 'control.sock'}", *args]

    def start_tracker(self) -> None:
        self.procs.start("tracker", self.tracker_host.argv([self.exe, "tracker", "--listen", self.tracker]))

    def start_peer(self, name: str, host: Host) -> None:
        """A peer with a fresh data dir; returns once it holds a tracker lease."""
        (self.work / name).mkdir()
        flags = ["--listen", f"{host.ip}:{PEER_PORT}", "--tracker", self.tracker, "--data-dir", str(self.work / name)]
        self.procs.start(name, host.argv([self.exe, "peer", *flags, *self.args.peer_args]))

        def ready() -> bool:
            if not (self.work / name / "control.sock").exists():
                return False
            try:
                status = json.loads(run_cmd(self.shoal(name, "--json", "status"), self.timeout, self.log))
            except BenchError:
                return False
            return bool(status["trackers_up"])

        def alive() -> None:
            self.procs.check(name)
            self.procs.check("tracker")

        wait_for(name, ready, alive, timeout=60)

    def put(self, path: Path) -> str:
        argv = self.shoal("src", "put", str(path))
        if self.args.chunk_size:
            argv += ["--chunk-size", str(self.args.chunk_size)]
        words = run_cmd(argv, self.timeout, self.log).split()
        if not words:
            raise BenchError("`shoal put` printed no file id")
        return words[-1]

    def wait_sole_holder(self, asker: str, file_id: str) -> None:
        """Until the tracker tells `asker` that the source, and no one else, holds the file."""

        def only_source() -> bool:
            done = subprocess.run(self.shoal(asker, "--json", "peers", file_id), capture_output=True, check=False)
            if done.returncode != 0:
                return False
            holders = json.loads(done.stdout).get("holders", [])
            return [(h["peer"]["address"], h.get("complete", False)) for h in holders] == [(self.source_address, True)]

        wait_for("the source as the only holder", only_source, lambda: self.procs.check("src"), timeout=60)

    def set_loss(self, loss: float) -> None:
        """Drop `loss` of the frames the source host sends and receives (0 removes the rules)."""
        for rule in self.rules:
            self.lab.run(self.src, ["iptables", "-D", *rule], check=False)
        self.rules.clear()
        if loss <= 0:
            return
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
            rule = [chain, flag, self.src.dev, "-m", "statistic", "--mode", "random", "--probability", str(loss)]
            rule += ["-j", "DROP"]
            self.lab.run(self.src, ["iptables", "-A", *rule])
            self.rules.append(rule)

    def shoal_get(self, name: str, file_id: str, loss: float, digest: str) -> Fetch:
        """A fresh downloader peer fetches the file; it is stopped afterwards."""
        self.start_peer(name, self.dl)
        try:
            self.wait_sole_holder(name, file_id)
            out = self.work / f"{name}.out"
            argv = self.shoal(name, "--json", "get", file_id, "--output", str(out))
            start = time.perf_counter()
            try:
                answer = run_cmd(argv, self.timeout, self.log)
            except BenchError as err:
                seconds = time.perf_counter() - start
                return self._judge(Fetch("shoal", loss, seconds, self.args.size, ok=False, error=str(err)[-800:]), name)
            seconds = time.perf_counter() - start
            sender = self.sender_info()
            final = json.loads(answer.splitlines()[-1])
            fetch = Fetch("shoal", loss, seconds, self.args.size, float(final.get("transfer_seconds", 0.0)))
            fetch.sender = sender
            fetch.ok = sha256_of(out) == digest
            if not fetch.ok:
                fetch.error = "the copy does not match the source's sha256"
            out.unlink(missing_ok=True)
            return self._judge(fetch, name)
        finally:
            self.procs.stop(name)  # it leaves the tracker: the next round has the source only
            shutil.rmtree(self.work / name, ignore_errors=True)

    def sender_info(self) -> dict[str, float]:
        """tcp_info of the source's connection to the downloader (the pooled channel stays open after a get)."""
        ss = ["ss", "-tinH", "state", "established", f"( sport = :{PEER_PORT} and dst {self.dl.ip} )"]
        return tcp_info(self.lab.run(self.src, ss, check=False).stdout)

    def _judge(self, fetch: Fetch, name: str) -> Fetch:
        """What the downloader logged about its source."""
        text = (self.work / "logs" / f"{name}.log").read_text(errors="replace")
        lines = [line for line in text.splitlines() if self.source_address in line and "WARNING" in line]
        fetch.stalled_drops = sum(f"source {self.source_address} sent nothing" in line for line in lines)
        fetch.failing_drops = sum(f"source {self.source_address} failing" in line for line in lines)
        fetch.log_lines = lines[-20:]
        return fetch

    def tcp(self, loss: float) -> Fetch:
        """One plain TCP stream of the file's size, source host to downloader host."""
        return plain_tcp(self.src, self.dl, self.args.size, loss, self.timeout)


def plain_tcp(src: Host, dl: Host, size: int, loss: float, timeout: float) -> Fetch:
    """One plain TCP stream of `size` bytes from `src` to `dl`: the reference for a Shoal download on that link.

    A broken stream (no byte for the client's socket timeout, cut short, past `timeout`) comes back with ok False
    and its error, so a caller can report it and go on.
    """
    server = subprocess.Popen(
        src.argv([sys.executable, "-c", TCP_SERVER, str(size), str(TCP_PORT)]), stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "listening":
            raise BenchError("the TCP server did not start")
        client = [sys.executable, "-c", TCP_CLIENT, src.ip, str(TCP_PORT), str(size)]
        started = time.perf_counter()
        try:
            done = sh(dl.argv(client), timeout=timeout)
        except (LabError, subprocess.TimeoutExpired) as err:
            return Fetch("tcp", loss, time.perf_counter() - started, size, ok=False, error=str(err)[-300:])
        received, seconds = done.stdout.split()
        fetch = Fetch("tcp", loss, float(seconds), size)
        try:
            fetch.sender = tcp_info(server.communicate(timeout=30)[0])
        except subprocess.TimeoutExpired:
            pass
        if int(received) != size:
            fetch.ok, fetch.error = False, f"stream cut short: {received} of {size} bytes"
        return fetch
    finally:
        server.kill()
        server.wait(10)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def show(fetch: Fetch, label: str) -> None:
    extra = ""
    if fetch.tool == "shoal":
        extra = f" (in the daemon {fetch.transfer_seconds:.2f} s; source dropped: "
        extra += f"{fetch.stalled_drops} stalled, {fetch.failing_drops} failing)"
    if "busy" in fetch.sender:
        extra += f"; sender busy {fetch.sender['busy']:.1f} s, {fetch.sender.get('retrans', 0):.0f} segments resent"
    state = "" if fetch.ok else f"  BROKEN: {fetch.error}"
    print(f"  {label:<14} {fetch.tool:<5} {fetch.seconds:7.2f} s  {fetch.mbps:6.2f} MB/s{extra}{state}", flush=True)
    for line in fetch.log_lines[-5:] if fetch.tool == "shoal" else []:
        print(f"      dl| {line[:200]}")


def summarize(clean: list[Fetch], lossy: list[Fetch], args: argparse.Namespace) -> dict[str, Any]:
    shoal = [f.seconds for f in lossy if f.tool == "shoal" and f.ok]
    tcp = [f.seconds for f in lossy if f.tool == "tcp" and f.ok]
    shoal_med, tcp_med = median(shoal), median(tcp)
    ratio = shoal_med / tcp_med if shoal and tcp else float("nan")
    per_round = [s.seconds / t.seconds for s, t in zip(lossy[0::2], lossy[1::2], strict=True) if s.ok and t.ok]
    stalled = sum(f.stalled_drops for f in lossy if f.tool == "shoal")
    failing = sum(f.failing_drops for f in lossy if f.tool == "shoal")
    size = args.size
    clean_by = {f.tool: f for f in clean}
    print(
        f"\n{args.loss:.0%} loss on the source's link, {size / MIB:g} MiB, {args.runs} rounds ("
        f"load average {Path('/proc/loadavg').read_text().split()[0]})\n"
        f"  shoal median {shoal_med:.2f} s ({size / shoal_med / MB:.2f} MB/s), runs "
        f"{', '.join(f'{s:.2f}' for s in shoal)}\n"
        f"  tcp   median {tcp_med:.2f} s ({size / tcp_med / MB:.2f} MB/s), runs {', '.join(f'{t:.2f}' for t in tcp)}\n"
        f"  clean: shoal {clean_by['shoal'].seconds:.2f} s ({clean_by['shoal'].mbps:.1f} MB/s), "
        f"tcp {clean_by['tcp'].seconds:.2f} s ({clean_by['tcp'].mbps:.1f} MB/s)\n"
        f"  ratio shoal/tcp (medians) {ratio:.2f} (goal <= {GOAL}: {'met' if ratio <= GOAL else 'MISSED'}); "
        f"per round {', '.join(f'{r:.2f}' for r in per_round)}\n"
        f"  source dropped by the downloader: {stalled} times as stalled, {failing} as failing",
        flush=True,
    )
    return {
        "bench": "loss",
        "revision": args.revision,
        "size": size,
        "loss": args.loss,
        "runs": args.runs,
        "peer_args": args.peer_args,
        "cpus": os.cpu_count(),
        "clean": [asdict(f) for f in clean],
        "lossy": [asdict(f) for f in lossy],
        "shoal_median_seconds": shoal_med,
        "tcp_median_seconds": tcp_med,
        "ratio": ratio,
        "ratio_per_round": per_round,
        "goal": GOAL,
        "goal_met": ratio <= GOAL,
        "stalled_drops": stalled,
        "failing_drops": failing,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=16 * MIB, help="file size (default 16MiB)")
    parser.add_argument("--runs", type=int, default=3, help="lossy rounds, each a shoal get and a TCP stream")
    parser.add_argument("--loss", type=float, default=0.1, help="share of frames dropped each way (default 0.1)")
    parser.add_argument("--chunk-size", type=parse_size, default=0, help="passed to `shoal put` (default: shoal's)")
    parser.add_argument("--peer-args", default="", help='extra flags for every `shoal peer`, e.g. "--max-peers 8"')
    parser.add_argument("--subnet", default="10.78.0.0/24", help="private test subnet (default 10.78.0.0/24)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per command (default 600)")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir (default /tmp)")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the daemons' logs here")
    parser.add_argument("--shoal", default=SHOAL, help="shoal executable (default: the venv's)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures (default .cache/bench/)")
    args = parser.parse_args(argv)
    if args.runs < 1 or not 0 <= args.loss < 1 or args.size < 1:
        parser.error("--runs must be >= 1, --loss in [0, 1), --size positive")
    args.peer_args = shlex.split(args.peer_args)
    return args


def sweep_workdirs(parent: Path) -> None:
    """Remove work dirs of earlier runs whose process is gone (killed with SIGKILL: no finally ran)."""
    for path in parent.glob(f"{WORK_PREFIX}*-*"):
        owner = path.name.removeprefix(WORK_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)


def on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def bench(lab: Lab, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    world = LossLab(lab, work, args)
    try:
        world.start_tracker()
        world.start_peer("src", world.src)
        blob = work / "file"
        digest = make_file(blob, args.size)
        file_id = world.put(blob)
        print(f"published {file_id[:16]}... ({args.size / MIB:g} MiB) on the source {world.source_address}", flush=True)
        clean = [world.shoal_get("clean", file_id, 0.0, digest), world.tcp(0.0)]
        for fetch in clean:
            show(fetch, "clean")
        world.set_loss(args.loss)
        print(f"dropping {args.loss:.0%} of the source host's frames each way (iptables statistic)", flush=True)
        lossy: list[Fetch] = []
        for round_ in range(1, args.runs + 1):
            for fetch in (world.shoal_get(f"dl{round_}", file_id, args.loss, digest), world.tcp(args.loss)):
                lossy.append(fetch)
                show(fetch, f"round {round_}")
        figures = summarize(clean, lossy, args)
        figures["broken"] = [f"{f.tool} ({f.error})" for f in clean + lossy if not f.ok]
        return figures
    finally:
        world.set_loss(0.0)
        for name in reversed(list(world.procs.running)):  # peers before the tracker: they leave it cleanly
            world.procs.stop(name)
        if args.keep_logs:
            shutil.rmtree(args.keep_logs, ignore_errors=True)
            shutil.copytree(work / "logs", args.keep_logs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        require_root()
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not os.access(args.shoal, os.X_OK):
        print(f"error: {args.shoal} is not executable (make venv)", file=sys.stderr)
        return 2
    if shutil.which("iptables") is None:
        print("error: iptables is missing (make system-deps)", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    sweep_workdirs(args.workdir or Path(tempfile.gettempdir()))
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=args.workdir)).resolve()
    lab = Lab(prefix=PREFIX, subnet=args.subnet)
    try:
        lab.start()
        args.revision = revision()
        print(f"shoal: {args.shoal} at {args.revision}; {os.cpu_count()} CPUs; peer flags: {args.peer_args or '-'}")
        figures = bench(lab, work, args)
        path = args.json or CACHE / f"loss-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")
        if figures["broken"]:
            print(f"\nBROKEN: {'; '.join(figures['broken'])}", file=sys.stderr)
            return 1
        return 0
    except (BenchError, LabError, OSError, subprocess.SubprocessError) as exc:
        print(f"\nBROKEN: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        lab.teardown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
