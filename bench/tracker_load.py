"""Tracker load benchmark: many simulated peers from a few processes against one real `shoal tracker`.

Each worker process holds a few grpc.aio channels (separate TCP connections) and announces for its share of the
simulated peers; every peer holds `--files-per-peer` files drawn from a catalog, as a real peer would announce
them. Two runs against the same tracker process:
  paced      every peer announces once per `--interval` (3 s default: 10,000 peers offer 3,333 announces/s),
             while the parent measures GetPeers latency (p50/p99) and the tracker's CPU and RSS;
  saturate   every worker announces back to back with `--concurrency` calls in flight: the tracker's ceiling.
With `--streams`, a third run instead of both: every peer holds one Session stream (its full state once, then
`--churn` deltas a second across all peers, each dropping one file and adding another) and the window opens once
the tracker lists every peer.
The load generator runs on the same machine and competes with the tracker for the same cores; the report says
how much CPU each side used. Kraken's reference point: 15,000 hosts announcing every 3 s, 5,000 announces/s.
Only 127.0.0.1 is dialled; peer addresses are strings in 127.0.0.0/8 that nothing connects to.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from shoal import net
from shoal.localswarm import free_port, wait_serving
from shoal.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

KRAKEN_RATE = 5000.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = 0.01  # paced workers issue what is due every 10 ms


@dataclass(frozen=True)
class Plan:
    """What one worker does; picklable for spawned processes."""

    address: str
    peers: int
    files_per_peer: int
    catalog: int
    worker: int
    workers: int
    channels: int
    concurrency: int
    mode: str  # "paced" or "saturate"
    interval: float
    duration: float
    seed: int = 7


def file_id(index: int) -> str:
    """A valid, stable file id for catalog entry `index`."""
    return hashlib.sha256(f"shoal-bench-file-{index}".encode()).hexdigest()


def announcement(peer: int, plan: Plan) -> tracker_pb2.AnnounceRequest:
    """Simulated peer `peer`: a unique id and loopback-range address, and its files from the catalog."""
    rng = random.Random(plan.seed * 1_000_003 + peer)
    picks = rng.sample(range(plan.catalog), min(plan.files_per_peer, plan.catalog))
    address = f"127.{1 + peer // 65536}.{(peer // 256) % 256}.{peer % 256}:7401"
    return tracker_pb2.AnnounceRequest(
        peer=common_pb2.PeerInfo(peer_id=f"sim-{peer:07d}", address=address),
        files=[
            tracker_pb2.HeldFile(
                file=common_pb2.FileInfo(file_id=file_id(j), name=f"file-{j}.bin", size=1 << 30), complete=True
            )
            for j in picks
        ],
    )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def _drive(plan: Plan) -> dict[str, Any]:
    options = [*net.CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
    channels = [grpc.aio.insecure_channel(plan.address, options=options) for _ in range(plan.channels)]
    stubs = [tracker_pb2_grpc.TrackerStub(c) for c in channels]
    requests = [announcement(p, plan) for p in range(plan.worker, plan.peers, plan.workers)]
    ok = errors = 0
    latencies: list[float] = []
    slots = asyncio.Semaphore(plan.concurrency)

    async def announce(index: int) -> None:
        nonlocal ok, errors
        started = time.perf_counter()
        try:
            await stubs[index % len(stubs)].Announce(requests[index], timeout=net.TRACKER_DEADLINE)
            ok += 1
            if index % 8 == 0:
                latencies.append(time.perf_counter() - started)
        except grpc.aio.AioRpcError:
            errors += 1
        finally:
            slots.release()

    tasks: set[asyncio.Task[None]] = set()

    async def launch(index: int) -> None:
        await slots.acquire()
        task = asyncio.create_task(announce(index))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    started = time.monotonic()
    end = started + plan.duration
    issued = 0
    if plan.mode == "paced":  # announce k of round r is due at start + (r + k/n) * interval
        n = len(requests)
        while time.monotonic() < end:
            due = int((time.monotonic() - started) / plan.interval * n) + 1
            while issued < due and time.monotonic() < end:
                await launch(issued % n)
                issued += 1
            await asyncio.sleep(TICK)
    else:
        while time.monotonic() < end:
            await launch(issued % len(requests))
            issued += 1
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - started
    for channel in channels:
        await channel.close(None)
    return {"ok": ok, "errors": errors, "issued": issued, "seconds": elapsed, "latencies": latencies}


async def _drive_streams(plan: Plan, stop: Any, churn: float) -> dict[str, Any]:
    """Open one Session per simulated peer, send `churn` deltas a second (this worker's share) until `stop`."""
    options = [*net.CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(plan.address, options=options) for _ in range(plan.channels)]
    stubs = [tracker_pb2_grpc.TrackerStub(c) for c in channels]
    peers = list(range(plan.worker, plan.peers, plan.workers))
    calls: list[Any] = []
    held: list[list[int]] = []
    slots = asyncio.Semaphore(plan.concurrency)
    errors = 0

    async def open_one(index: int, peer: int) -> None:
        nonlocal errors
        async with slots:
            state = announcement(peer, plan)
            call = stubs[index % len(stubs)].Session()
            try:
                await call.write(tracker_pb2.SessionUpdate(peer=state.peer, files=state.files))
                await call.read()
            except grpc.aio.AioRpcError:
                errors += 1
                return
            calls.append(call)
            held.append([int(f.file.name[5:-4]) for f in state.files])

    started = time.monotonic()
    await asyncio.gather(*(open_one(i, p) for i, p in enumerate(peers)))
    opened = time.monotonic() - started
    rng = random.Random(plan.worker)
    sent = 0
    began = time.monotonic()
    while not stop.is_set() and calls:
        due = int((time.monotonic() - began) * churn)
        while sent < due:
            k = rng.randrange(len(calls))
            gone = held[k].pop(rng.randrange(len(held[k])))
            new = rng.randrange(plan.catalog)
            held[k].append(new)
            update = tracker_pb2.SessionUpdate(
                dropped_file_ids=[file_id(gone)],
                files=[
                    tracker_pb2.HeldFile(
                        file=common_pb2.FileInfo(file_id=file_id(new), name=f"file-{new}.bin", size=1 << 30),
                        complete=True,
                    )
                ],
            )
            try:
                await calls[k].write(update)
            except grpc.aio.AioRpcError:
                errors += 1
            sent += 1
        await asyncio.sleep(TICK * 10)
    for call in calls:
        call.cancel()
    for channel in channels:
        await channel.close(None)
    return {"ok": len(calls), "errors": errors, "open_seconds": opened, "deltas": sent}


def stream_worker_main(plan: Plan, stop: Any, churn: float, results: Any) -> None:
    """Entry point of a stream worker process."""
    tally = asyncio.run(_drive_streams(plan, stop, churn))
    times = os.times()
    tally["cpu"] = times.user + times.system
    results.put(tally)


def run_streams(args: argparse.Namespace, address: str, tracker_pid: int) -> dict[str, Any]:
    """Hold one stream per peer; once all are listed, measure the tracker over `args.duration` seconds."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    stop = ctx.Event()
    churn = args.churn / args.workers
    plans = [
        Plan(
            address,
            args.peers,
            args.files_per_peer,
            args.catalog,
            w,
            args.workers,
            args.channels,
            args.concurrency,
            "streams",
            args.interval,
            args.duration,
        )
        for w in range(args.workers)
    ]
    procs = [ctx.Process(target=stream_worker_main, args=(p, stop, churn, results), daemon=True) for p in plans]
    ramp0 = time.monotonic()
    for proc in procs:
        proc.start()
    listed = 0
    while time.monotonic() - ramp0 < 300:
        time.sleep(1.0)
        listed = live_peers(address)
        if listed >= args.peers:
            break
    ramp = time.monotonic() - ramp0
    time.sleep(2.0)  # let the last registrations settle
    cpu0, wall0 = cpu_seconds(tracker_pid), time.monotonic()
    get_peers = asyncio.run(probe_get_peers(address, args.catalog, args.duration, args.probe_rate))
    cpu1, wall1 = cpu_seconds(tracker_pid), time.monotonic()
    rss, peak = rss_mb(tracker_pid)
    still = live_peers(address)
    stop.set()
    tallies = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    finite = [x for x in get_peers if x != float("inf")]
    return {
        "mode": "streams",
        "offered_per_s": None,
        "announces_per_s": 0.0,
        "errors": sum(t["errors"] for t in tallies),
        "streams_open": sum(t["ok"] for t in tallies),
        "ramp_seconds": ramp,
        "deltas": sum(t["deltas"] for t in tallies),
        "tracker_cpu_pct": 100 * (cpu1 - cpu0) / (wall1 - wall0),
        "tracker_rss_mb": rss,
        "tracker_peak_rss_mb": peak,
        "loadgen_cpu_pct": 100 * sum(t["cpu"] for t in tallies) / max(1.0, time.monotonic() - ramp0),
        "live_peers_listed": still,
        "get_peers_calls": len(get_peers),
        "get_peers_failed": len(get_peers) - len(finite),
        "get_peers_p50_ms": percentile(finite, 50) * 1000,
        "get_peers_p99_ms": percentile(finite, 99) * 1000,
    }


def worker_main(plan: Plan, results: Any) -> None:
    """Entry point of a worker process: drive the plan, put the tallies and own CPU time on the queue."""
    tally = asyncio.run(_drive(plan))
    times = os.times()
    tally["cpu"] = times.user + times.system
    results.put(tally)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> tuple[float, float]:
    """Current and peak RSS in MB, from /proc/PID/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


async def probe_get_peers(address: str, catalog: int, seconds: float, rate: float) -> list[float]:
    """GetPeers for random catalog files at `rate` per second for `seconds`; return latencies in seconds."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address, options=net.CHANNEL_OPTIONS) as channel:
        stub = tracker_pb2_grpc.TrackerStub(channel)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            request = tracker_pb2.GetPeersRequest(file_id=file_id(random.randrange(catalog)))
            started = time.perf_counter()
            try:
                await stub.GetPeers(request, timeout=net.TRACKER_DEADLINE)
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError:
                latencies.append(float("inf"))
            await asyncio.sleep(1 / rate)
    return latencies


def live_peers(address: str) -> int:
    """How many peers the tracker lists as live."""
    with grpc.insecure_channel(address, options=net.CHANNEL_OPTIONS) as channel:
        reply = tracker_pb2_grpc.TrackerStub(channel).ListPeers(tracker_pb2.ListPeersRequest(), timeout=30)
        return len(reply.peers)


def run_phase(args: argparse.Namespace, address: str, tracker_pid: int, mode: str) -> dict[str, Any]:
    """Run one phase with `args.workers` processes; measure the tracker meanwhile."""
    duration = args.duration if mode == "paced" else args.saturate_duration
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    plans = [
        Plan(
            address,
            args.peers,
            args.files_per_peer,
            args.catalog,
            w,
            args.workers,
            args.channels,
            args.concurrency,
            mode,
            args.interval,
            duration,
        )
        for w in range(args.workers)
    ]
    procs = [ctx.Process(target=worker_main, args=(plan, results), daemon=True) for plan in plans]
    for proc in procs:
        proc.start()
    time.sleep(args.warmup)  # workers import grpc and build their requests before the window opens
    cpu0, wall0 = cpu_seconds(tracker_pid), time.monotonic()
    window = max(1.0, duration - args.warmup - 1.0)
    get_peers = asyncio.run(probe_get_peers(address, args.catalog, window, args.probe_rate)) if mode == "paced" else []
    if mode != "paced":
        time.sleep(window)
    cpu1, wall1 = cpu_seconds(tracker_pid), time.monotonic()
    rss, peak = rss_mb(tracker_pid)
    listed = live_peers(address)
    tallies = [results.get(timeout=duration + 120) for _ in procs]
    for proc in procs:
        proc.join(30)
    ok = sum(t["ok"] for t in tallies)
    seconds = max(t["seconds"] for t in tallies)
    announce_latencies = [x for t in tallies for x in t["latencies"]]
    finite = [x for x in get_peers if x != float("inf")]
    return {
        "mode": mode,
        "offered_per_s": args.peers / args.interval if mode == "paced" else None,
        "announces_per_s": ok / seconds,
        "errors": sum(t["errors"] for t in tallies),
        "announce_p50_ms": percentile(announce_latencies, 50) * 1000,
        "announce_p99_ms": percentile(announce_latencies, 99) * 1000,
        "tracker_cpu_pct": 100 * (cpu1 - cpu0) / (wall1 - wall0),
        "tracker_rss_mb": rss,
        "tracker_peak_rss_mb": peak,
        "loadgen_cpu_pct": 100 * sum(t["cpu"] for t in tallies) / seconds,
        "live_peers_listed": listed,
        "get_peers_calls": len(get_peers),
        "get_peers_failed": len(get_peers) - len(finite),
        "get_peers_p50_ms": percentile(finite, 50) * 1000,
        "get_peers_p99_ms": percentile(finite, 99) * 1000,
    }


def describe(result: dict[str, Any], args: argparse.Namespace) -> str:
    """One phase as readable lines."""
    lines = [f"== {result['mode']}"]
    if result["mode"] == "streams":
        lines.append(
            f"  streams           {result['streams_open']} open ({result['errors']} errors), all listed after "
            f"{result['ramp_seconds']:.0f} s; {result['deltas']} deltas sent in all ({args.churn:g}/s)"
        )
    if result["offered_per_s"]:
        lines.append(
            f"  offered           {result['offered_per_s']:.0f} announces/s ({args.peers} peers every "
            f"{args.interval:g} s, {args.files_per_peer} files each)"
        )
    if result["mode"] != "streams":
        lines.append(
            f"  sustained         {result['announces_per_s']:.0f} announces/s ({result['errors']} errors), "
            f"announce p50 {result['announce_p50_ms']:.1f} ms p99 {result['announce_p99_ms']:.1f} ms"
        )
    lines += [
        f"  tracker           CPU {result['tracker_cpu_pct']:.0f}% of one core, RSS {result['tracker_rss_mb']:.0f} MB "
        f"(peak {result['tracker_peak_rss_mb']:.0f} MB), lists {result['live_peers_listed']} live peers",
        f"  load generator    CPU {result['loadgen_cpu_pct']:.0f}% of one core ({args.workers} processes)",
    ]
    if result["get_peers_calls"]:
        lines.append(
            f"  GetPeers          p50 {result['get_peers_p50_ms']:.1f} ms p99 {result['get_peers_p99_ms']:.1f} ms "
            f"over {result['get_peers_calls']} calls ({result['get_peers_failed']} failed)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags; defaults are the issue's workload."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--peers", type=int, default=10_000, help="simulated peers")
    parser.add_argument("--files-per-peer", type=int, default=10)
    parser.add_argument("--catalog", type=int, default=1_000, help="distinct files the peers' holdings come from")
    parser.add_argument("--interval", type=float, default=3.0, help="announce interval (s) of the paced run")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--channels", type=int, default=4, help="gRPC channels (connections) per worker")
    parser.add_argument("--concurrency", type=int, default=128, help="announces in flight per worker")
    parser.add_argument("--duration", type=float, default=30.0, help="paced run length (s)")
    parser.add_argument("--saturate-duration", type=float, default=20.0, help="saturation run length (s)")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before each measuring window opens")
    parser.add_argument("--probe-rate", type=float, default=20.0, help="GetPeers calls per second while paced")
    parser.add_argument("--skip-saturate", action="store_true")
    parser.add_argument("--streams", action="store_true", help="Session streams instead of paced and saturate")
    parser.add_argument("--churn", type=float, default=100.0, help="deltas per second across all stream peers")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.peers < 1 or args.workers < 1 or args.channels < 1 or args.concurrency < 1:
        parser.error("--peers, --workers, --channels and --concurrency must be at least 1")
    if args.duration <= args.warmup + 1 or args.saturate_duration <= args.warmup + 1:
        parser.error("durations must exceed --warmup by more than a second")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start a tracker, run both phases, print the figures; 1 only if the run itself broke."""
    args = parse_args(argv)
    address = f"127.0.0.1:{free_port()}"
    log = Path(tempfile.mkstemp(prefix="shoal-tracker-load-", suffix=".log")[1])
    with open(log, "wb") as out:
        tracker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shoal.cli",
                "--log-level",
                "WARNING",
                "tracker",
                "--listen",
                address,
                "--announce-interval",
                str(args.interval),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    results: list[dict[str, Any]] = []
    try:
        wait_serving(address, timeout=30)
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"tracker pid {tracker.pid} on {address}; {os.cpu_count()} cores shared with the load generator; "
            f"load average before {load}"
        )
        if args.streams:
            result = run_streams(args, address, tracker.pid)
            results.append(result)
            print(describe(result, args), flush=True)
        for mode in () if args.streams else ("paced", "saturate"):
            if mode == "saturate" and args.skip_saturate:
                continue
            result = run_phase(args, address, tracker.pid, mode)
            results.append(result)
            print(describe(result, args), flush=True)
        print("load average after " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
        if args.streams:
            return 0 if results[0]["live_peers_listed"] >= args.peers else 1
        best = max(r["announces_per_s"] for r in results)
        verdict = "reaches" if best >= KRAKEN_RATE else "does not reach"
        print(
            f"== verdict: one tracker process {verdict} Kraken's {KRAKEN_RATE:.0f} announces/s here "
            f"(best {best:.0f}/s, with the load generator on the same {os.cpu_count()} cores)"
        )
        if args.json is not None:
            args.json.write_text(
                json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2) + "\n"
            )
        return 0
    except (OSError, TimeoutError, grpc.RpcError, RuntimeError) as err:
        print(f"tracker_load: run broken: {err}; tracker log {log}", file=sys.stderr)
        return 1
    finally:
        tracker.terminate()
        try:
            tracker.wait(10)
        except subprocess.TimeoutExpired:
            tracker.kill()
            tracker.wait(5)
        if tracker.returncode not in (0, -15):
            print(f"tracker exited {tracker.returncode}; log {log}", file=sys.stderr)
        else:
            log.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
