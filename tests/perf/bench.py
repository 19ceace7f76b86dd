"""Engine benchmark: socktop's refresh against `ss` and psutil, measured in the same run.

    make bench            (or: python tests/perf/bench.py [--sizes 1000,10000,50000] [--runs 7])

Builds loopback populations of ESTABLISHED pairs held by child processes,
times each reader as a median of several runs, and prints the medians,
the ratios and the peak RSS of this (the refreshing) process. It asserts
nothing: figures on a shared machine are for reading, not for gating.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import psutil

from socktop.demo.builders import build_population
from socktop.model.engine import Engine

TARGETS = (
    "full refresh <= 0.75x `ss -tan` at 10k and 50k; >= 8x faster than psutil at 50k; "
    "RSS <= 150 MB at 50k; `socktop --json` (whole process, >= 20k) faster than `ss -tanp`"
)


def median_seconds(action: Callable[[], object], runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def run_quietly(argv: list[str]) -> Callable[[], object]:
    return lambda: subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_size(size: int, runs: int) -> dict[str, float]:
    with build_population(size):
        engine = Engine()
        started = time.perf_counter()
        first = engine.refresh()
        figures = {"sockets": float(len(first.sockets)), "first refresh (full owner scan)": time.perf_counter() - started}
        figures["socktop full refresh"] = median_seconds(engine.refresh, runs)
        figures["socktop snapshot only"] = median_seconds(engine.backend.sockets, runs)
        figures["peak RSS MB (socktop)"] = peak_rss_mb()
        figures["ss -tan"] = median_seconds(run_quietly(["ss", "-tan"]), runs)
        figures["ss -tanp"] = median_seconds(run_quietly(["ss", "-tanp"]), runs)
        figures["socktop --json (process)"] = median_seconds(
            run_quietly([sys.executable, "-m", "socktop", "--json"]), runs)
        figures["psutil.net_connections"] = median_seconds(lambda: psutil.net_connections("tcp"), max(3, runs // 2))
    return figures


def report(size: int, figures: dict[str, float]) -> None:
    ss = figures["ss -tan"]
    print(f"\n== population {size:,} (sockets in the table: {int(figures['sockets']):,}) ==")
    for name, value in figures.items():
        if name == "sockets" or name.startswith("peak"):
            continue
        print(f"  {name:34s} {value * 1000:9.1f} ms   {value / ss:5.2f}x ss -tan")
    refresh = figures["socktop full refresh"]
    print(f"  {'peak RSS (this process)':34s} {figures['peak RSS MB (socktop)']:9.1f} MB")
    print(f"  full refresh / ss -tan             {refresh / ss:5.2f}   (target <= 0.75)")
    print(f"  snapshot only / ss -tan            {figures['socktop snapshot only'] / ss:5.2f}")
    print(f"  psutil / full refresh              {figures['psutil.net_connections'] / refresh:5.1f}x  (target >= 8 at 50k)")
    print(f"  socktop --json / ss -tanp          {figures['socktop --json (process)'] / figures['ss -tanp']:5.2f}   (target < 1 at >= 20k)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,50000", help="comma-separated population sizes")
    parser.add_argument("--runs", type=int, default=7, help="runs per median (at least 5)")
    options = parser.parse_args()
    if shutil.which("ss") is None:
        print("bench: needs iproute2's ss", file=sys.stderr)
        return 1
    runs = max(5, options.runs)
    print(f"socktop engine benchmark, {psutil.cpu_count()} cores, medians of {runs} runs")
    print(f"targets: {TARGETS}")
    for size in (int(text) for text in options.sizes.split(",")):
        report(size, bench_size(size, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
