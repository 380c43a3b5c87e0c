"""The swarm bench's closing table: every row, Shoal beside its aria2 reference, the ratios and the targets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from bench.swarm_measure import MB, Result

MIB = 2**20
RATIO_TARGET = 1.25  # T/T_min at N = 16 (stretch goal)
SEEDER_TARGET = 2.0  # seeder upload, in F
CPU_RATIO_TARGET = 2.0  # client CPU-s per GB, Shoal / aria2 in the same run (issue 11)
TARGET_N = 16
RSS_TARGET = 100 * 10**6  # every leecher daemon's peak RSS at N = 16, bytes (issue 11)


def pairs(results: list[Result]) -> list[tuple[Result, Result]]:
    """(Shoal, aria2) rows of the same N, sharing mode."""
    shoal = {r.n: r for r in results if r.tool == "shoal" and r.mode == "sharing"}
    return [(shoal[r.n], r) for r in results if r.tool == "aria2" and r.n in shoal]


def comparison(shoal: Result, ref: Result) -> dict[str, float]:
    """Shoal against its reference for one N: T/T_min and client CPU-s per GB, both and their ratio."""
    return {
        "n": shoal.n,
        "shoal_t_over_tmin": shoal.ratio,
        "aria2_t_over_tmin": ref.ratio,
        "t_over_tmin_ratio": shoal.ratio / ref.ratio,
        "shoal_cpu_s_per_gb": shoal.cpu_per_gb,
        "aria2_cpu_s_per_gb": ref.cpu_per_gb,
        "cpu_s_per_gb_ratio": shoal.cpu_per_gb / ref.cpu_per_gb if ref.cpu_per_gb else float("inf"),
    }


def report(results: list[Result]) -> None:
    """Print every row, then the Shoal / aria2 ratios per N, then the targets."""
    print()
    head = f"{'tool':<6} {'mode':<12} {'N':>3} {'F MiB':>6} {'cap MB/s':>8} {'T s':>7} {'T_min s':>7} {'T/T_min':>7} "
    print(head + f"{'seeder up':>9} {'CPU-s':>6} {'CPU-s/GB':>8} {'busy':>5} {'load':>5}  verified")
    for r in results:
        print(
            f"{r.tool:<6} {r.mode:<12} {r.n:>3} {r.size / MIB:>6.0f} {r.cap / MB:>8.1f} {r.seconds:>7.2f} "
            f"{r.bound:>7.2f} {r.ratio:>7.2f} {r.seeder_up / r.size:>8.2f}F {r.cpu:>6.1f} {r.cpu_per_gb:>8.1f} "
            f"{r.busy_cores:>5.2f} {r.load:>5}  {r.verified}/{r.n}{'' if r.ok else f' BROKEN ({len(r.failed)} failed)'}"
        )
    sources = sorted({r.cpu_source for r in results})
    print(
        "(T: launch of all downloads to the last finish; CPU-s: every client process of the tool over T "
        f"(from {' and '.join(sources)}); per GB of the N x F delivered; busy: machine cores; load: 1-min before)"
    )
    matched = pairs(results)
    if matched:
        print(f"\n{'N':>3} {'T/T_min shoal':>13} {'aria2':>6} {'shoal/aria2':>11}   {'CPU-s/GB shoal':>14} ", end="")
        print(f"{'aria2':>6} {'shoal/aria2':>11}")
        for shoal, ref in matched:
            c = comparison(shoal, ref)
            print(
                f"{shoal.n:>3} {c['shoal_t_over_tmin']:>13.2f} {c['aria2_t_over_tmin']:>6.2f} "
                f"{c['t_over_tmin_ratio']:>11.2f}   {c['shoal_cpu_s_per_gb']:>14.1f} {c['aria2_cpu_s_per_gb']:>6.1f} "
                f"{c['cpu_s_per_gb_ratio']:>11.2f}"
            )
    targets(results, matched)


def targets(results: list[Result], matched: list[tuple[Result, Result]]) -> None:
    """PASS/FAIL lines: the bound and seeder targets, and issue 11's goals against aria2 in the same run."""
    sharing = [r for r in results if r.tool == "shoal" and r.mode == "sharing"]
    if not sharing:
        return
    at = [r for r in sharing if r.n == TARGET_N] or [max(sharing, key=lambda r: r.n)]
    for r in at:
        ok = "PASS" if r.ok and r.ratio <= RATIO_TARGET else "FAIL"
        print(f"{ok} ratio: T/T_min {r.ratio:.2f} at N = {r.n} (target <= {RATIO_TARGET})")
    for r in at:
        if r.peer_rss:
            ok = "PASS" if r.peer_rss[-1] <= RSS_TARGET else "FAIL"
            median = r.peer_rss[len(r.peer_rss) // 2]
            print(
                f"{ok} peer peak RSS: max {r.peer_rss[-1] / MB:.0f} MB, median {median / MB:.0f}"
                f" MB over {len(r.peer_rss)} leechers (N = {r.n}; target <= {RSS_TARGET / MB:.0f} MB)"
            )
    worst = max(sharing, key=lambda r: r.seeder_up)
    ok = "PASS" if worst.seeder_up <= SEEDER_TARGET * worst.size else "FAIL"
    print(f"{ok} seeder upload: at most {worst.seeder_up / worst.size:.2f} F (N = {worst.n}; target <= 2 F)")
    if not matched:
        return
    shoal, ref = next(((s, a) for s, a in matched if s.n == TARGET_N), max(matched, key=lambda pair: pair[0].n))
    c = comparison(shoal, ref)
    both_ok = shoal.ok and ref.ok
    ok = "PASS" if both_ok and c["t_over_tmin_ratio"] < 1 else "FAIL"
    print(f"{ok} vs aria2: T/T_min {shoal.ratio:.2f} against {ref.ratio:.2f} at N = {shoal.n} (goal: below aria2)")
    ok = "PASS" if both_ok and c["cpu_s_per_gb_ratio"] <= CPU_RATIO_TARGET else "FAIL"
    print(
        f"{ok} vs aria2: client CPU-s per GB {shoal.cpu_per_gb:.1f} against {ref.cpu_per_gb:.1f} at N = {shoal.n}, "
        f"{c['cpu_s_per_gb_ratio']:.2f}x (goal <= {CPU_RATIO_TARGET:g}x)"
    )


def write_json(path: Path, results: list[Result], revision: str) -> None:
    """Every row (with its derived figures) and the per-N comparison, for scripts and the docs."""
    rows: list[dict[str, Any]] = []
    for r in results:
        row = dataclasses.asdict(r)
        row.update(t_over_tmin=r.ratio, cpu_s_per_gb=r.cpu_per_gb, seeder_up_f=r.seeder_up / r.size, ok=r.ok)
        rows.append(row)
    doc = {"revision": revision, "rows": rows, "comparison": [comparison(s, a) for s, a in pairs(results)]}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
