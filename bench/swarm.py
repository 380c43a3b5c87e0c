"""Swarm benchmark: one seeder and N leechers, each a real `shoal peer` in its own network namespace.

Every peer's uplink is capped with tc htb (bench/netns.py), so the network enforces the fluid model of
Kumar & Ross, "Peer-assisted file distribution: the minimum distribution time" (2006):
    T_min = max(F/u_s, F/d_min, N*F/(u_s + sum u_i)),  here d_min = infinity (only uplinks are capped).
All N `shoal get`s are launched at the same moment; T is the time until the last one exits. htb counts
Ethernet/IP/TCP headers, so even perfect scheduling would measure T/T_min of about 1.05.

Modes:
  sharing      leechers serve each other (u_s = u_i = cap).
  seeder-only  leechers run with `--upload-slots 1 --upload-limit 1`: they announce and accept requests but
               serve at 1 byte/s, i.e. not at all (u_i ~ 0, so T_min = N*F/u_s). Their peers still send them
               requests, which hang until Shoal gives up on them: a contrast, not a tuned baseline.

Reference (--reference aria2, the default): after each sharing row, the same hosts, caps and file run aria2
(bench/aria2.py: opentracker, mktorrent -l 18, one seeding and N leeching aria2c), so every sharing row has its
reference from the same run. For both tools the bench counts client CPU over T: every process of the tool (Shoal:
the peer daemons and the `shoal get`s; aria2: every aria2c) runs in a per-run cgroup v2 group (bench/cgroup.py),
whose cpu.stat counts exited processes and children too; without one, /proc/PID/stat plus reaped children.
CPU-s per GB = that CPU / (N*F / 10^9), the bytes delivered.

Targets: T/T_min <= 1.25 at N = 16 and the seeder uploads at most 2*F (sharing mode); against aria2 in the same
run (issue 11): T/T_min below aria2's and client CPU-s per GB at most 2x aria2's, at N = 16. The figures are the
point, so a missed target still exits 0; a broken run (a get that failed, a copy that did not verify) is
reported in the table, the other runs go on, and the bench exits 1. Needs root. Data dirs live under
--workdir (default /tmp) and are removed afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from bench import aria2
from bench.cgroup import CpuGroup
from bench.netns import Host, Lab, LabError, netns_pids, pid_alive, require_root
from bench.pair import BenchError, Procs, make_certs, parse_size, run_cmd, wait_for
from bench.swarm_measure import MB, Meter, Result, daemon_peak_rss, kumar_ross
from bench.swarm_report import report, write_json

from shoal.samples import make_file, sha256_of

MIB = 2**20
TRACKER_PORT = 7400
PEER_PORT = 7401
WORK_PREFIX = "shoal-swarm-"
NO_SHARING_FLAGS = ["--upload-slots", "1", "--upload-limit", "1"]
SHOAL = str(Path(sys.executable).parent.absolute() / "shoal")


def revision() -> str:
    """The commit plus a digest of services/shoal's sources: the figures belong to exactly that code."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, check=False)
    digest = hashlib.sha256()
    for path in sorted((root / "services" / "shoal").rglob("*.py")):
        digest.update(path.read_bytes())
    return f"{done.stdout.decode().strip() or 'unknown commit'} (sources {digest.hexdigest()[:12]})"


class Swarm:
    """Tracker, seeder and leechers of one run, each started inside its host's namespace."""

    def __init__(
        self, hosts: dict[str, Host], work: Path, procs: Procs, args: argparse.Namespace, group: CpuGroup | None
    ) -> None:
        self.hosts, self.work, self.procs = hosts, work, procs
        # The peers and the `shoal get`s run inside the run's CPU group (when there is one).
        self.wrap: Callable[[list[str]], list[str]] = group.wrap if group else list
        self.exe, self.peer_args, self.timeout = args.shoal, args.peer_args, args.timeout
        self.tls: list[str] = args.tls_flags  # mutual TLS flags for every daemon (--tls), or none
        self.log = work / "logs" / "clients.log"
        self.tracker = f"{hosts['tracker'].ip}:{TRACKER_PORT}"

    def shoal(self, name: str, *args: str) -> list[str]:
        """A client command against a peer's control socket: a unix socket, so it works from the root namespace."""
        return [self.exe, "--peer", f"unix:{self.work / name / 'control.sock'}", *args]

    def start(self, leechers: list[str], leecher_flags: list[str]) -> None:
        """Start the tracker, the seeder and the leechers; return once every peer holds a tracker lease."""
        tracker = [self.exe, "tracker", "--listen", self.tracker, *self.tls]
        self.procs.start("tracker", self.hosts["tracker"].argv(tracker))
        for name in ["seeder", *leechers]:
            host = self.hosts[name]
            (self.work / name).mkdir()
            flags = ["--listen", f"{host.ip}:{PEER_PORT}", "--tracker", self.tracker, "--data-dir"]
            flags += [str(self.work / name), *self.tls, *self.peer_args, *(leecher_flags if name != "seeder" else [])]
            self.procs.start(name, self.wrap(host.argv([self.exe, "peer", *flags])))
        with ThreadPoolExecutor(len(leechers) + 1) as pool:
            list(pool.map(self.wait_ready, ["seeder", *leechers]))

    def status(self, name: str) -> dict[str, Any]:
        """`shoal status --json` of one peer."""
        return dict(json.loads(run_cmd(self.shoal(name, "--json", "status"), self.timeout, self.log)))

    def wait_ready(self, name: str) -> None:
        """Until the peer's control API answers and it holds a tracker lease."""

        def ready() -> bool:
            if not (self.work / name / "control.sock").exists():
                return False
            try:
                return bool(self.status(name)["trackers_up"])
            except BenchError:
                return False

        def alive() -> None:
            self.procs.check(name)
            self.procs.check("tracker")

        wait_for(name, ready, alive, timeout=60)

    def put(self, source: Path, chunk_size: int, asker: str) -> str:
        """Publish on the seeder; wait until the tracker tells `asker` the seeder holds it (own entries are hidden)."""
        argv = self.shoal("seeder", "put", str(source), "--chunk-size", str(chunk_size))
        words = run_cmd(argv, self.timeout, self.log).split()
        if not words:
            raise BenchError("`shoal put` printed no file id")
        file_id = words[-1]

        def listed() -> bool:
            peers = subprocess.run(self.shoal(asker, "--json", "peers", file_id), capture_output=True, check=False)
            return peers.returncode == 0 and any(h["complete"] for h in json.loads(peers.stdout)["holders"])

        wait_for("tracker listing", listed, lambda: self.procs.check("seeder"), timeout=30)
        return file_id

    def fetch_all(
        self, leechers: list[str], file_id: str, out: Path
    ) -> tuple[dict[str, float], dict[str, Any], dict[str, str]]:
        """Launch one `shoal get` per leecher at the same moment; return exit times, JSON answers and failures."""
        gets = {
            name: subprocess.Popen(
                self.wrap(self.shoal(name, "--json", "get", file_id, "--output", str(out / name))),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for name in leechers
        }
        ends: dict[str, float] = {}
        answers: dict[str, tuple[bytes, bytes]] = {}

        def wait(name: str) -> None:
            try:
                answers[name] = gets[name].communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                gets[name].kill()
                out, err = gets[name].communicate()
                answers[name] = out, err + f"\ntimed out after {self.timeout:.0f} s".encode()
            ends[name] = time.perf_counter()

        try:
            with ThreadPoolExecutor(len(leechers)) as pool:
                list(pool.map(wait, leechers))
        finally:
            for proc in gets.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        done = {name: json.loads(answers[name][0].splitlines()[-1]) for name in leechers if gets[name].returncode == 0}
        failed = {
            name: f"exit {gets[name].returncode}: {answers[name][1].decode(errors='replace').strip()[-500:]}"
            for name in leechers
            if name not in done
        }
        return ends, done, failed


def run_once(lab: Lab, hosts: dict[str, Host], args: argparse.Namespace, mode: str, n: int) -> Result:
    """A fresh swarm of n leechers: launch every get at once, measure, verify, stop it."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{mode}-n{n}-", dir=args.work))
    (run_dir / "logs").mkdir()
    (run_dir / "out").mkdir()
    procs = Procs(run_dir / "logs")
    group = CpuGroup.create("shoal") if args.cgroup else None
    swarm = Swarm(hosts, run_dir, procs, args, group)
    leechers = [f"l{i}" for i in range(n)]
    keep_dir = args.keep_logs / f"{mode}-n{n}" if args.keep_logs else None
    try:
        swarm.start(leechers, NO_SHARING_FLAGS if mode == "seeder-only" else [])
        file_id = swarm.put(args.source, args.chunk_size, leechers[0])
        bound = kumar_ross(n, args.size, args.cap, [0.0 if mode == "seeder-only" else args.cap] * n)
        os.sync()  # no writeback of the setup's files pending during the timed part
        names = ["seeder", *leechers]
        meter = Meter(lab, lambda: [pid for name in names for pid in netns_pids(hosts[name].netns)], group)
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"{mode} N={n}: launching {n} gets at once (T_min {bound:.2f} s, load {load}) ...", flush=True)
        meter.start()
        start = time.perf_counter()
        ends, answers, failed = swarm.fetch_all(leechers, file_id, run_dir / "out")
        meter.stop()
        rss = [daemon_peak_rss(netns_pids(hosts[name].netns)) for name in leechers]
        stats = {name: swarm.status(name) for name in ["seeder", *leechers]}
        starts = [ends[name] - float(answers[name]["seconds"]) for name in answers] or [start]
        result = Result(
            mode=mode,
            n=n,
            size=args.size,
            cap=args.cap,
            seconds=max(ends.values()) - start,
            swarm_seconds=max(ends.values()) - min(starts),
            first=min(ends.values()) - start,
            bound=bound,
            seeder_up=int(stats["seeder"]["uploaded_bytes"]),
            leechers_up=sum(int(stats[name]["uploaded_bytes"]) for name in leechers),
            leechers_down=sum(int(stats[name]["downloaded_bytes"]) for name in leechers),
            verified=sum(sha256_of(run_dir / "out" / name) == args.digest for name in answers),
            failed=failed,
            peer_cpu=meter.peer_cpu,
            client_cpu=meter.client_cpu,
            busy_cores=meter.busy_cores,
            load=load,
            cpu=meter.cpu,
            cpu_source=meter.cpu_source,
            uplink=meter.uplink,
            from_partial=sum(int(a["sources"]["from_partial_bytes"]) for a in answers.values()),
            peer_rss=sorted(rss),
        )
        describe(result, leechers)
        for name, error in failed.items():
            print(f"  FAILED {name}: {error}\n{procs.tail(name, 6)}", flush=True)
        if keep_dir:
            keep(keep_dir, run_dir, meter.samples, stats, answers)
        return result
    except BenchError:
        for name in ["tracker", "seeder", *leechers]:
            print(procs.tail(name, 8), file=sys.stderr)
        if keep_dir:
            shutil.rmtree(keep_dir, ignore_errors=True)
            shutil.copytree(run_dir / "logs", keep_dir)
        raise
    finally:
        procs.stop_all()
        if group:
            group.remove()
        shutil.rmtree(run_dir, ignore_errors=True)


def describe(r: Result, leechers: list[str]) -> None:
    """One run's detail: where the time and the bytes went."""
    utils = sorted(r.util(name) for name in leechers)
    f = r.size
    print(
        f"  T {r.seconds:.2f} s (first leecher {r.first:.2f} s; in the daemons {r.swarm_seconds:.2f} s), "
        f"T_min {r.bound:.2f} s, ratio {r.ratio:.2f}; {r.verified}/{r.n} copies verified"
        f"{f', {len(r.failed)} gets FAILED' if r.failed else ''}\n"
        f"  uploaded: seeder {r.seeder_up / f:.2f} F, leechers {r.leechers_up / f:.2f} F; "
        f"leechers kept {r.leechers_down / f:.2f} F ({r.from_partial / (r.n * f):.0%} from peers still downloading); "
        f"waste {(r.seeder_up + r.leechers_up - r.leechers_down) / f:.2f} F\n"
        f"  uplink use over T: seeder {r.util('seeder'):.0%}, leechers median {utils[len(utils) // 2]:.0%} "
        f"(min {utils[0]:.0%}, max {utils[-1]:.0%})\n"
        f"  CPU: peers {r.peer_cpu:.1f} s ({r.peer_cpu / r.seconds:.2f} cores), get clients {r.client_cpu:.1f} s; "
        f"all clients {r.cpu:.1f} s = {r.cpu_per_gb:.1f} CPU-s per GB ({r.cpu_source}); "
        f"machine busy {r.busy_cores:.2f} of {os.cpu_count()} cores; load before {r.load}"
        + (
            f"\n  leecher daemons' peak RSS: median {r.peer_rss[len(r.peer_rss) // 2] / MB:.0f} MB, "
            f"max {r.peer_rss[-1] / MB:.0f} MB"
            if r.peer_rss
            else ""
        ),
        flush=True,
    )


def keep(dest: Path, run_dir: Path, samples: list[tuple[float, dict[str, int]]], *extra: dict[str, Any]) -> None:
    """Copy the run's logs, the uplink timeline (CSV, bytes sent per host) and the peers' JSON answers."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(run_dir / "logs", dest)
    labels = sorted(samples[0][1])
    lines = ["t," + ",".join(labels)]
    lines += [f"{t - samples[0][0]:.3f}," + ",".join(str(b[k] - samples[0][1][k]) for k in labels) for t, b in samples]
    (dest / "uplink.csv").write_text("\n".join(lines) + "\n")
    (dest / "results.json").write_text(json.dumps(list(extra), indent=2, sort_keys=True))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="4,8,16", help="leecher counts, comma-separated (default 4,8,16)")
    parser.add_argument("--size", type=parse_size, default=64 * MIB, help="file size F (default 64MiB)")
    parser.add_argument("--cap", type=float, default=10e6, help="every peer's uplink, bytes/s (default 10e6)")
    parser.add_argument("--mode", choices=["sharing", "seeder-only", "both"], default="both")
    parser.add_argument("--chunk-size", type=parse_size, default=None, help="passed to `shoal put` (default: shoal's)")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy each run's logs and timeline here")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir (default /tmp)")
    parser.add_argument("--subnet", default="10.77.0.0/24", help="private test subnet (default 10.77.0.0/24)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per command (default 900)")
    parser.add_argument("--shoal", default=SHOAL, help="shoal executable (default: the venv's)")
    parser.add_argument(
        "--reference",
        choices=["aria2", "none"],
        default="aria2",
        help="after each sharing row, run aria2 on the same hosts, caps and file (default aria2)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every row and the ratios here")
    parser.add_argument(
        "--no-cgroup", dest="cgroup", action="store_false", help="count CPU from /proc/PID/stat, not a cgroup"
    )
    parser.add_argument("--tls", action="store_true", help="mutual TLS on the tracker and every peer (shoal only)")
    parser.add_argument(
        "--peer-args", type=shlex.split, default=[], help='extra flags for every `shoal peer`, e.g. "--max-peers 8"'
    )
    args = parser.parse_args(argv)
    try:
        args.ns = sorted({int(word) for word in args.n.split(",") if word.strip()})
    except ValueError:
        parser.error(f"--n wants numbers like 4,8,16, got {args.n!r}")
    if not args.ns or args.ns[0] < 1 or args.cap <= 0:
        parser.error("--n needs counts >= 1 and --cap must be positive")
    args.modes = ["sharing", "seeder-only"] if args.mode == "both" else [args.mode]
    return args


def sweep_workdirs(parent: Path) -> None:
    """Remove work dirs of earlier runs whose process is gone (killed with SIGKILL: no finally ran)."""
    for path in parent.glob(f"{WORK_PREFIX}*-*"):
        owner = path.name.removeprefix(WORK_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            print(f"removing {path}, left by an earlier run")
            shutil.rmtree(path, ignore_errors=True)


def on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
    missing = aria2.missing_tools() if args.reference == "aria2" else []
    if missing:
        print(f"error: the aria2 reference needs {' '.join(missing)} (make system-deps)", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    sweep_workdirs(args.workdir or Path(tempfile.gettempdir()))
    args.work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=args.workdir)).resolve()
    lab = Lab(subnet=args.subnet)
    try:
        lab.start()
        hosts = {"tracker": lab.add_host("tracker")}
        for name in ["seeder", *(f"l{i}" for i in range(args.ns[-1]))]:
            hosts[name] = lab.add_host(name, cap=args.cap)
        print(f"lab: {len(hosts)} namespaces on {args.subnet}, uplinks capped at {args.cap / MB:g} MB/s (htb)")
        code = revision()
        print(f"shoal: {args.shoal} at {code}; {os.cpu_count()} CPUs; peer flags: {shlex.join(args.peer_args) or '-'}")
        args.source = args.work / "file"
        args.digest = make_file(args.source, args.size)
        args.chunk_size = args.chunk_size or 0
        args.tls_flags = make_certs(args.work / "tls") if args.tls else []
        if args.tls:
            print("shoal daemons run with mutual TLS (--tls); the aria2 reference does not")
        results = []
        for mode in args.modes:
            for n in args.ns:
                results.append(run_once(lab, hosts, args, mode, n))
                if mode == "sharing" and args.reference == "aria2":
                    results.append(aria2.run_aria2(lab, hosts, args, n))
        report(results)
        if args.json:
            write_json(args.json, results, code)
            print(f"wrote {args.json}")
        if revision() != code:
            print(f"WARNING: services/shoal changed during the bench ({code} -> {revision()}): runs mixed versions")
        broken = [f"{r.tool} {r.mode} N={r.n}" for r in results if not r.ok]
        if broken:
            print(f"\nBROKEN: gets failed or copies did not verify in {', '.join(broken)}", file=sys.stderr)
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
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
