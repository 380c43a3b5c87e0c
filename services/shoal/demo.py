"""`shoal demo`: two trackers and several peers as real processes; one publishes, all others fetch."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.localswarm import LocalSwarm
from shoal.samples import make_file, sha256_of

logger = logging.getLogger(__name__)


def write_scrape_config(swarm: LocalSwarm) -> Path:
    """Write <workdir>/prometheus.yml scraping every tracker and peer of the swarm every second."""
    from shoal.exporter import scrape_config

    jobs = {
        "shoal-tracker": [f"127.0.0.1:{proc.metrics_port}" for proc in swarm.trackers if proc.metrics_port],
        "shoal-peer": [f"127.0.0.1:{proc.metrics_port}" for proc in swarm.peers if proc.metrics_port],
    }
    path = swarm.workdir / "prometheus.yml"
    path.write_text(scrape_config(jobs))
    return path


def print_metrics(swarm: LocalSwarm, config: Path) -> None:
    """Where to scrape, and the Prometheus command line that does it."""
    print("\nmetrics endpoints:")
    for proc in [*swarm.trackers, *swarm.peers]:
        print(f"  {proc.name:<8} http://127.0.0.1:{proc.metrics_port}/metrics")
    print(f"prometheus scrape config: {config}")
    print(
        f"  prometheus --config.file={config} --storage.tsdb.path={swarm.workdir / 'prometheus-data'} "
        "--web.listen-address=127.0.0.1:9090"
    )
    dashboard = Path(__file__).resolve().parents[2] / "dashboards" / "shoal.json"
    if dashboard.exists():
        print(f"grafana dashboard: {dashboard} (pick a Prometheus data source for ${{datasource}})")


def wait_for_stop() -> None:
    """Sleep until SIGINT or SIGTERM (SIGINT too when started in the background, where it is ignored)."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every copy verified and every process exited cleanly."""
    if args.peers < 1 or args.size < 0:
        print("shoal: --peers must be at least 1 and --size not negative", file=sys.stderr)
        return 2
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="shoal-demo-"))
    swarm = LocalSwarm(workdir)
    ok = True
    try:
        print(f"work dir {workdir}")
        for _ in range(2):
            tracker = swarm.start_tracker(metrics=args.metrics)
            print(f"tracker  {tracker.address}" + (f"  metrics port {tracker.metrics_port}" if args.metrics else ""))
        for _ in range(args.peers + 1):
            swarm.start_peer(metrics=args.metrics, wait=False)
        from shoal.localswarm import wait_serving

        for peer in swarm.peers:
            wait_serving(peer.address)
            print(f"{peer.name:<8} {peer.address}" + (f"  metrics port {peer.metrics_port}" if args.metrics else ""))
        scrape = write_scrape_config(swarm) if args.metrics else None
        if scrape is not None:
            print(f"prometheus scrape config written to {scrape}")
        source = workdir / "demo.bin"
        expected = make_file(source, args.size)
        seeder, leechers = swarm.peers[0], swarm.peers[1:]
        put = swarm.cli(seeder, "put", str(source))
        file_id = put.stdout.strip().splitlines()[-1]
        print(f"published {args.size} bytes on {seeder.name} as {file_id}")
        time.sleep(swarm.announce_interval * 1.5)  # let the trackers hear of it
        started = time.monotonic()
        gets = {
            peer.name: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shoal.cli",
                    "--peer",
                    peer.control,
                    "--json",
                    "get",
                    file_id,
                    "--output",
                    str(workdir / f"{peer.name}.out"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for peer in leechers
        }
        print(f"\n{'peer':<8} {'seconds':>8} {'MB/s':>8} {'peers':>6} {'from leechers':>14}  verified")
        for name, proc in gets.items():
            out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                ok = False
                print(f"{name:<8} FAILED: {err.strip()}")
                continue
            result = json.loads(out.splitlines()[-1])  # get --json streams progress lines, the summary last
            seconds = float(result["seconds"])
            sources = result["sources"]
            received = sources["from_complete_bytes"] + sources["from_partial_bytes"]
            share = 100.0 * sources["from_partial_bytes"] / received if received else 0.0
            verified = sha256_of(Path(result["output"])) == expected
            ok = ok and verified
            rate = args.size / seconds / 1e6 if seconds > 0 else 0.0
            print(
                f"{name:<8} {seconds:>8.2f} {rate:>8.1f} {sources['peers']:>6} {share:>13.0f}%  "
                f"{'yes' if verified else 'NO'}"
            )
        wall = time.monotonic() - started
        print(
            f"\nall {len(leechers)} downloads done in {wall:.2f}s; {'every copy verified' if ok else 'FAILURES above'}"
        )
        if scrape is not None:
            print_metrics(swarm, scrape)
            print("\nswarm left running for Prometheus/Grafana; Ctrl-C (or SIGTERM) to stop", flush=True)
            wait_for_stop()
    finally:
        codes = swarm.stop()
        unclean = {name: code for name, code in codes.items() if code != 0}
        if unclean:
            ok = False
            print(f"processes that did not exit cleanly: {unclean}")
        else:
            print(f"stopped {len(codes)} processes cleanly")
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1
