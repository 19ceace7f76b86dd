"""Engine benchmark: socktop's refresh against `ss` and psutil, measured in the same run.

    make bench            (or: python tests/perf/bench.py [--sizes 20000,50000,200000] [--runs 7]
                                                          [--populations incident,idle])

Builds loopback populations held by child processes: first the incident mix
(demo.builders.build_incident: mostly TIME_WAIT toward one hot destination,
ESTABLISHED, a CLOSE_WAIT leak, orphaned FIN_WAIT2, 200 connect/close a
second), then idle ESTABLISHED pairs. Each reader is timed once per round,
in turn, so that load from elsewhere falls on all of them alike; the medians
are printed with their ratios against `ss -tan` / `ss -tanp` of the same
run, and the peak RSS of this (the refreshing) process. It asserts nothing:
figures on a shared machine are for reading, not for gating. Run it in a
private network namespace: `unshare -n sh -c 'ip link set lo up; make bench'`.
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

from socktop.analyze.findings import analyze
from socktop.demo.builders import TIME_WAIT_LEN, Population, build_incident, build_population, sockstat_time_wait
from socktop.model.engine import Engine

TARGETS = (
    "incident mix: full refresh <= 0.5x `ss -tan` at 50k; `socktop --json` (whole process) <= 1.0x "
    "`ss -tanp` at 25k and 50k; at 200k a refresh under 1 s and RSS <= 250 MB"
)
PSUTIL_MAX = 50_000  # psutil.net_connections takes seconds beyond this: not worth the wait
BUILDERS: dict[str, Callable[[int], Population]] = {"incident": build_incident, "idle": build_population}


def run_quietly(argv: list[str]) -> Callable[[], object]:
    return lambda: subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def alternating_medians(actions: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Each action once per round, in turn, for ``runs`` rounds; the median seconds of each."""
    timings: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(runs):
        for name, action in actions.items():
            started = time.perf_counter()
            action()
            timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in timings.items()}


def await_time_wait_gone(most: int = 100) -> None:
    """Wait (up to TCP_TIMEWAIT_LEN) for an earlier population's TIME_WAIT to expire: they would
    count in the next table, and 200k needs the room under tcp_max_tw_buckets."""
    deadline = time.monotonic() + TIME_WAIT_LEN + 5
    while sockstat_time_wait() > most and time.monotonic() < deadline:
        time.sleep(1.0)


def bench_size(population: str, size: int, runs: int) -> dict[str, float]:
    await_time_wait_gone()
    with BUILDERS[population](size):
        engine = Engine()
        started = time.perf_counter()
        first = engine.refresh()
        figures = {"sockets": float(len(first.sockets)),
                   "first refresh (full owner scan)": time.perf_counter() - started}
        actions: dict[str, Callable[[], object]] = {
            "socktop full refresh": engine.refresh,
            "ss -tan": run_quietly(["ss", "-tan"]),
            "socktop refresh + findings": lambda: analyze(engine.refresh()),
            "socktop snapshot only": engine.backend.sockets,
            "ss -tanp": run_quietly(["ss", "-tanp"]),
            # --netns self: the namespace ss reads (as root the default reads every namespace on the host)
            "socktop --json (process)": run_quietly([sys.executable, "-m", "socktop", "--json", "--netns", "self"]),
        }
        if size <= PSUTIL_MAX:
            actions["psutil.net_connections"] = lambda: psutil.net_connections("tcp")
        figures.update(alternating_medians(actions, runs))
        figures["peak RSS MB (socktop)"] = peak_rss_mb()
    return figures


def report(population: str, size: int, figures: dict[str, float]) -> None:
    ss, ssp = figures["ss -tan"], figures["ss -tanp"]
    print(f"\n== {population} population {size:,} (sockets in the table: {int(figures['sockets']):,}) ==")
    for name, value in figures.items():
        if name == "sockets" or name.startswith("peak"):
            continue
        print(f"  {name:34s} {value * 1000:9.1f} ms   {value / ss:5.2f}x ss -tan")
    refresh = figures["socktop full refresh"]
    print(f"  {'peak RSS (this process)':34s} {figures['peak RSS MB (socktop)']:9.1f} MB")
    print(f"  full refresh / ss -tan             {refresh / ss:5.2f}   (target <= 0.5 at 50k, incident)")
    print(f"  refresh + findings / ss -tan       {figures['socktop refresh + findings'] / ss:5.2f}")
    print(f"  snapshot only / ss -tan            {figures['socktop snapshot only'] / ss:5.2f}")
    if "psutil.net_connections" in figures:
        print(f"  psutil / full refresh              {figures['psutil.net_connections'] / refresh:5.1f}x")
    print(f"  socktop --json / ss -tanp          {figures['socktop --json (process)'] / ssp:5.2f}   "
          "(target <= 1.0 at 25k and 50k, incident)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,50000,200000", help="comma-separated population sizes")
    parser.add_argument("--populations", default="incident,idle", help=f"comma-separated, of {', '.join(BUILDERS)}")
    parser.add_argument("--runs", type=int, default=7, help="rounds per median (at least 5)")
    options = parser.parse_args()
    if shutil.which("ss") is None:
        print("bench: needs iproute2's ss", file=sys.stderr)
        return 1
    populations = options.populations.split(",")
    if not set(populations) <= set(BUILDERS):
        print(f"bench: --populations takes {', '.join(BUILDERS)}", file=sys.stderr)
        return 2
    runs = max(5, options.runs)
    print(f"socktop engine benchmark, {psutil.cpu_count()} cores, medians of {runs} alternating rounds")
    print(f"targets: {TARGETS}")
    for population in populations:
        for size in (int(text) for text in options.sizes.split(",")):
            report(population, size, bench_size(population, size, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
