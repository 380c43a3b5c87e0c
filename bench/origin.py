"""Origin benchmark: N peers `shoal get URL` at once against N plain `curl`s of the same URL, same run.

One nginx (optionally with a per-request rate cap, to stand in for a remote origin) serves one random file;
its access log counts the bytes it sent for each tool. Every copy is sha256-checked.

    python -m bench.origin --peers 4 --size 64MiB [--origin-rate 50m]
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.nginx import NGINX, configure
from bench.nginx import argv as nginx_argv
from bench.pair import parse_size, port_open, wait_for

from shoal.localswarm import LocalSwarm, free_port, wait_serving
from shoal.samples import make_file, sha256_of

logger = logging.getLogger(__name__)

NGINX_HTTP = """\
    log_format sent '$uri $status $body_bytes_sent';
    access_log {prefix}/access.log sent;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        {rate}
    }}
"""


def origin_bytes(log: Path, name: str) -> int:
    """Bytes nginx sent for /name, per its access log."""
    pattern = re.compile(rf"^/{re.escape(name)} (?:200|206) (\d+)$")
    return sum(int(m.group(1)) for line in log.read_text().splitlines() if (m := pattern.match(line)))


def run_all(argvs: list[list[str]], timeout: float) -> float:
    """Start every command at once; seconds until the last one ends (each must succeed)."""
    started = time.perf_counter()
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for a in argvs]
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise SystemExit(f"{proc.args!r}: exit {proc.returncode}: {err.decode(errors='replace')}")
    return time.perf_counter() - started


def bench(args: argparse.Namespace, work: Path) -> None:
    root = work / "www"
    root.mkdir()
    digest = make_file(root / "shoal.bin", args.size)
    (root / "curl.bin").hardlink_to(root / "shoal.bin")
    prefix = work / "nginx"
    port = free_port()
    rate = f"limit_rate {args.origin_rate};" if args.origin_rate else ""
    configure(prefix, NGINX_HTTP.format(prefix=prefix, port=port, root=root, rate=rate), connections=256)
    nginx = subprocess.Popen(
        nginx_argv(prefix, args.nginx),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    swarm = LocalSwarm(work / "swarm", announce_interval=1.0)
    try:
        wait_for("nginx", lambda: port_open(port), lambda: None)
        swarm.start_tracker()
        peers = [swarm.start_peer(wait=False) for _ in range(args.peers)]
        for peer in peers:
            wait_serving(peer.address)
        url = f"http://127.0.0.1:{port}"
        shoal_argvs = [
            [
                sys.executable,
                "-m",
                "shoal.cli",
                "--peer",
                p.control,
                "get",
                f"{url}/shoal.bin",
                "-o",
                str(work / f"s{i}"),
            ]
            for i, p in enumerate(peers)
        ]
        curl_argvs = [[args.curl, "-sSf", "-o", str(work / f"c{i}"), f"{url}/curl.bin"] for i in range(args.peers)]
        shoal_s = run_all(shoal_argvs, args.timeout)
        curl_s = run_all(curl_argvs, args.timeout)
        for i in range(args.peers):
            for out in (work / f"s{i}", work / f"c{i}"):
                if sha256_of(out) != digest:
                    raise SystemExit(f"{out}: wrong bytes")
        log = prefix / "access.log"
        mib = args.size / 2**20
        print(f"{args.peers} peers, {mib:.0f} MiB file, origin rate {args.origin_rate or 'unlimited'}")
        print("| tool | wall time (all N done) | origin bytes sent | x file size |")
        print("|---|---|---|---|")
        for tool, seconds, name in (("shoal get URL", shoal_s, "shoal.bin"), ("curl", curl_s, "curl.bin")):
            sent = origin_bytes(log, name)
            print(f"| {tool} | {seconds:.2f} s | {sent / 2**20:.1f} MiB | {sent / args.size:.2f} |")
    finally:
        swarm.stop()
        nginx.terminate()
        nginx.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4, help="peers (and curls) getting the URL at once")
    parser.add_argument("--size", type=parse_size, default=64 * 2**20, help="file size (e.g. 64MiB)")
    parser.add_argument("--origin-rate", default="", help="nginx limit_rate per request (e.g. 50m); none by default")
    parser.add_argument("--nginx", default=NGINX)
    parser.add_argument("--curl", default=shutil.which("curl") or "/usr/bin/curl")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shoal-bench-origin-") as tmp:
        bench(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
