"""Single-pair benchmark: one file from peer A to peer B through shoal, against nginx + curl on loopback.

Targets: shoal reaches at least half of curl's throughput, and each peer stays under 150 MB RSS.
With --tls, the same transfers run again with mutual TLS on every shoal daemon ("shoal-tls"), for TLS's cost.
The figures are the point, so a missed target still exits 0; only a broken run (a process that
died, a timeout, a hash mismatch) exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bench.nginx import NGINX, configure
from bench.nginx import argv as nginx_argv

from shoal.localswarm import free_port
from shoal.samples import make_file, sha256_of

MB = 1_000_000
RSS_LIMIT_MB = 150.0
THROUGHPUT_RATIO = 0.5
BIN_DIR = Path(sys.executable).parent
UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


class BenchError(RuntimeError):
    """Something broke: the run has no valid figures."""


@dataclass
class Result:
    """One timed transfer."""

    tool: str
    run: int
    seconds: float
    size: int
    rss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def mbps(self) -> float:
        return self.size / MB / self.seconds


def parse_size(text: str) -> int:
    """Parse '1GiB', '256MiB', '500MB', '1e9' or a plain byte count."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgG]i?)?[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size: {text!r}")
    size = int(float(match.group(1)) * UNITS[(match.group(2) or "").lower()])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return size


def read_status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class RssSampler(threading.Thread):
    """Poll VmRSS of some processes every 50 ms and keep each one's peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak_kb = dict.fromkeys(pids, 0)
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            for name, pid in self.pids.items():
                self.peak_kb[name] = max(self.peak_kb[name], read_status_kb(pid, "VmRSS"))
            if self.done.wait(0.05):
                return

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.join()
        return {name: kb * 1024 / MB for name, kb in self.peak_kb.items()}


class Procs:
    """Daemons started by the bench, each logging to a file; all stopped in `stop_all`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.running[name] = proc
        return proc

    def check(self, name: str) -> None:
        code = self.running[name].poll()
        if code is not None:
            raise BenchError(f"{name} exited with code {code}\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(f"  {name}| {line}" for line in text.splitlines()[-lines:])

    def stop(self, name: str) -> None:
        proc = self.running.pop(name)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


def run_cmd(argv: list[str], timeout: float, log: Path) -> str:
    """Run a client command, append its stderr to `log`, return stdout; raise on failure."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(argv)}") from exc
    with log.open("ab") as out:
        out.write(done.stderr)
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace")[-2000:]
        raise BenchError(f"exit {done.returncode}: {' '.join(argv)}\n{stderr}")
    return done.stdout.decode(errors="replace")


def wait_for(what: str, ready: Callable[[], bool], alive: Callable[[], None], timeout: float = 30.0) -> None:
    """Poll `ready` until it holds, failing early if `alive` raises."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        if ready():
            return
        time.sleep(0.1)
    raise BenchError(f"{what} not ready after {timeout:.0f} s")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ShoalPair:
    """A tracker, a seeding peer A, and a fresh peer B per run."""

    def __init__(self, work: Path, procs: Procs, shoal: str, timeout: float, tls: list[str] | None = None) -> None:
        self.work, self.procs, self.shoal, self.timeout = work, procs, shoal, timeout
        self.log = work / "logs" / "clients.log"
        self.tracker = ""
        self.tls = tls or []  # --tls-cert/--tls-key/--tls-ca for every daemon, or none

    def control(self, data_dir: Path) -> str:
        return f"unix:{data_dir / 'control.sock'}"

    def start_tracker(self) -> None:
        port = free_port()
        self.tracker = f"127.0.0.1:{port}"
        self.procs.start("tracker", [self.shoal, "tracker", "--listen", self.tracker, *self.tls])
        wait_for("tracker", lambda: port_open(port), lambda: self.procs.check("tracker"))

    def start_peer(self, name: str, data_dir: Path) -> int:
        data_dir.mkdir(parents=True)
        listen = f"127.0.0.1:{free_port()}"
        flags = ["--listen", listen, "--tracker", self.tracker, "--data-dir", str(data_dir), *self.tls]
        proc = self.procs.start(name, [self.shoal, "peer", *flags])
        status = [self.shoal, "--peer", self.control(data_dir), "status", "--json"]

        def ready() -> bool:
            if not (data_dir / "control.sock").exists():
                return False
            try:
                return subprocess.run(status, capture_output=True, timeout=10, check=False).returncode == 0
            except subprocess.TimeoutExpired:
                return False

        wait_for(name, ready, lambda: self.procs.check(name))
        return proc.pid

    def put(self, data_dir: Path, path: Path) -> str:
        out = run_cmd([self.shoal, "--peer", self.control(data_dir), "put", str(path)], self.timeout, self.log)
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        if not lines:
            raise BenchError("`shoal put` printed no file id")
        return lines[-1]

    def get(self, data_dir: Path, file_id: str, output: Path) -> float:
        argv = [self.shoal, "--peer", self.control(data_dir), "get", file_id, "--output", str(output)]
        start = time.perf_counter()
        run_cmd(argv, self.timeout, self.log)
        return time.perf_counter() - start


NGINX_HTTP = """\
    access_log off;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
"""


def start_nginx(work: Path, procs: Procs, nginx: str) -> int:
    prefix = work / "nginx"
    port = free_port()
    configure(prefix, NGINX_HTTP.format(port=port, root=work))
    procs.start("nginx", nginx_argv(prefix, nginx))
    wait_for("nginx", lambda: port_open(port), lambda: procs.check("nginx"))
    return port


# The names shoal.tls checks: one certificate serves tracker and peers in a bench.
NAMES = ("shoal-tracker", "shoal-peer")
EXTENSIONS = "subjectAltName=" + ",".join(f"DNS:{n}" for n in NAMES) + "\nextendedKeyUsage=serverAuth,clientAuth\n"
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def make_certs(directory: Path) -> list[str]:
    """Write ca.crt, tls.crt and tls.key (ECDSA P-256, as cert-manager's chart default) and return the daemon flags."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ext.cnf").write_text(EXTENSIONS)
    _openssl(
        "req", "-x509", *EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=bench-ca", cwd=directory
    )
    _openssl("req", *EC, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=bench", cwd=directory)
    _openssl(
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "tls.crt", "-days", "2", "-extfile", "ext.cnf", cwd=directory,
    )  # fmt: skip
    return [
        "--tls-cert", str(directory / "tls.crt"), "--tls-key", str(directory / "tls.key"),
        "--tls-ca", str(directory / "ca.crt"),
    ]  # fmt: skip


def warm_page_cache(work: Path, size: int) -> None:
    """Give both tools the same start: no writeback pending, and memory for `size` bytes of page cache
    already touched once (on a fresh VM the first touch of guest memory costs several times more,
    which would penalise whichever tool runs first)."""
    scratch = work / "warm-up"
    block = bytes(4 * 1024 * 1024)
    with open(scratch, "wb") as out:
        for _ in range(0, size, len(block)):
            out.write(block)
    scratch.unlink()
    os.sync()


def shoal_runs(
    args: argparse.Namespace, work: Path, procs: Procs, source: Path, want: str, tool: str, tls: list[str]
) -> list[Result]:
    """A tracker, a seeder and `args.runs` fresh leechers, each timed fetching the file; then all stopped."""
    results: list[Result] = []
    pair = ShoalPair(work, procs, args.shoal, args.timeout, tls)
    pair.start_tracker()
    dir_a = work / f"{tool}-peer-a"
    pid_a = pair.start_peer("peer-a", dir_a)
    start = time.perf_counter()
    file_id = pair.put(dir_a, source)
    print(f"{tool} put: {file_id} in {time.perf_counter() - start:.2f} s", flush=True)
    for run in range(1, args.runs + 1):
        dir_b = work / f"{tool}-peer-b{run}"
        pid_b = pair.start_peer(f"peer-b{run}", dir_b)
        output = work / f"out-{tool}-{run}"
        warm_page_cache(work, args.size)
        sampler = RssSampler({"A": pid_a, "B": pid_b})
        sampler.start()
        try:
            seconds = pair.get(dir_b, file_id, output)
        finally:
            peaks = sampler.stop()
        hwm = {
            "A": read_status_kb(pid_a, "VmHWM") * 1024 / MB,
            "B": read_status_kb(pid_b, "VmHWM") * 1024 / MB,
        }
        if sha256_of(output) != want:
            raise BenchError(f"{tool} run {run}: sha256 of {output} differs from the source")
        results.append(Result(tool, run, seconds, args.size, {k: max(peaks[k], hwm[k]) for k in peaks}))
        print(f"{tool} get run {run}: {seconds:.2f} s, sha256 ok", flush=True)
        procs.stop(f"peer-b{run}")
        output.unlink()
        shutil.rmtree(dir_b, ignore_errors=True)
    procs.stop_all()
    shutil.rmtree(dir_a, ignore_errors=True)
    return results


def bench(args: argparse.Namespace, work: Path, procs: Procs) -> list[Result]:
    source = work / "file"
    print(f"writing {args.size / MB:.0f} MB of random data to {source} ...", flush=True)
    want = make_file(source, args.size)
    results = shoal_runs(args, work, procs, source, want, "shoal", [])
    if args.tls:
        results += shoal_runs(args, work, procs, source, want, "shoal-tls", make_certs(work / "tls"))

    port = start_nginx(work, procs, args.nginx)
    for run in range(1, args.runs + 1):
        output = work / f"out-curl-{run}"
        argv = [args.curl, "-sS", "--fail", "-o", str(output), f"http://127.0.0.1:{port}/file"]
        warm_page_cache(work, args.size)
        start = time.perf_counter()
        run_cmd(argv, args.timeout, work / "logs" / "clients.log")
        seconds = time.perf_counter() - start
        if sha256_of(output) != want:
            raise BenchError(f"curl run {run}: sha256 of {output} differs from the source")
        results.append(Result("curl", run, seconds, args.size))
        print(f"curl run {run}: {seconds:.2f} s, sha256 ok", flush=True)
        output.unlink()
    procs.stop_all()
    return results


def report(results: list[Result]) -> None:
    print()
    print(f"{'tool':<9} {'run':>3} {'seconds':>9} {'MB/s':>9} {'peer A MB':>10} {'peer B MB':>10}")
    for r in results:
        rss = [f"{r.rss_mb[k]:>10.1f}" if k in r.rss_mb else f"{'-':>10}" for k in ("A", "B")]
        print(f"{r.tool:<9} {r.run:>3} {r.seconds:>9.2f} {r.mbps:>9.1f} {rss[0]} {rss[1]}")
    shoal = statistics.median(r.mbps for r in results if r.tool == "shoal")
    curl = statistics.median(r.mbps for r in results if r.tool == "curl")
    ratio = shoal / curl
    print(f"\nshoal/curl throughput ratio: {ratio:.2f} (medians: shoal {shoal:.1f} MB/s, curl {curl:.1f} MB/s)")
    ok = "PASS" if ratio >= THROUGHPUT_RATIO else "FAIL"
    print(f"{ok} throughput: shoal/curl {ratio:.2f} (target >= {THROUGHPUT_RATIO})")
    for peer in ("A", "B"):
        peak = max(r.rss_mb[peer] for r in results if r.tool == "shoal")
        ok = "PASS" if peak < RSS_LIMIT_MB else "FAIL"
        print(f"{ok} rss: peer {peer} peak {peak:.1f} MB (target < {RSS_LIMIT_MB:.0f} MB)")
    secured = [r.mbps for r in results if r.tool == "shoal-tls"]
    if secured:
        tls = statistics.median(secured)
        peaks = {p: max(r.rss_mb[p] for r in results if r.tool == "shoal-tls") for p in ("A", "B")}
        print(
            f"TLS cost: shoal-tls {tls:.1f} MB/s = {tls / shoal:.2f} x plaintext shoal "
            f"(peak RSS A {peaks['A']:.1f} MB, B {peaks['B']:.1f} MB)"
        )
    print("(peak RSS = max of VmRSS sampled every 50 ms during the get and the process's VmHWM)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=2**30, help="file size, e.g. 1GiB, 256MiB (default 1GiB)")
    parser.add_argument("--runs", type=int, default=1, help="timed transfers per tool (default 1)")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir (default: /tmp)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per command (default 900)")
    parser.add_argument("--shoal", default=str(BIN_DIR / "shoal"), help="shoal executable (default: the venv's)")
    parser.add_argument("--nginx", default=NGINX, help="nginx executable (Debian's nginx-light)")
    parser.add_argument("--curl", default=shutil.which("curl") or "/usr/bin/curl", help="curl executable")
    parser.add_argument("--tls", action="store_true", help="also time shoal with mutual TLS on (row shoal-tls)")
    parser.add_argument(
        "--hold-freed-memory",
        action="store_true",
        help="pause the VM's free page reporting during the run, for both tools (root; see FreedMemoryHeld)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


PAGE_REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
NO_REPORTING = "11"  # above the largest buddy order (10): no free block is ever reported


class FreedMemoryHeld:
    """While active, this VM keeps freed memory instead of handing it back to the host.

    With virtio-balloon free page reporting, guest memory freed for about a second goes back to the
    host, and the next write to it costs a host page fault: on this VM a plain `dd` of 1 GiB into a new
    file runs at 0.2-4.7 GB/s depending only on how recently memory was freed. That penalises the
    slower tool far more than the faster one (a 1 s transfer writes into memory the warm-up just
    touched, a 3 s one mostly into cold memory). Raising the kernel's page_reporting_order stops the
    reporting, for both tools alike; the old value is put back afterwards.
    """

    def __init__(self) -> None:
        self.saved: str | None = None

    def __enter__(self) -> FreedMemoryHeld:
        try:
            self.saved = PAGE_REPORTING_ORDER.read_text().strip()
            PAGE_REPORTING_ORDER.write_text(NO_REPORTING)
        except OSError as err:
            raise BenchError(f"--hold-freed-memory needs root and free page reporting ({err})") from err
        print(f"free page reporting paused (page_reporting_order {self.saved} -> {NO_REPORTING})", flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            PAGE_REPORTING_ORDER.write_text(self.saved)
            print(f"free page reporting restored (page_reporting_order {self.saved})", flush=True)


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in (args.shoal, args.nginx, args.curl):
        if not os.access(tool, os.X_OK):
            print(f"error: {tool} is not executable (make venv system-deps)", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="shoal-pair-", dir=args.workdir)).resolve()
    (work / "logs").mkdir()
    procs = Procs(work / "logs")
    try:
        with FreedMemoryHeld() if args.hold_freed_memory else contextlib.nullcontext():
            results = bench(args, work, procs)
        report(results)
        return 0
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        print(f"\nBROKEN: {exc}", file=sys.stderr)
        for name in sorted(p.stem for p in (work / "logs").glob("*.log")):
            print(procs.tail(name), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
