"""RSS under churn: socktop's engine refreshing an incident for minutes, its memory sampled.

    unshare -n sh -c 'ip link set lo up; .venv/bin/python tests/perf/rss_churn.py [--size 20000] [--minutes 10]'

Builds the incident mix (demo.builders.build_incident, with its 200 connect/close
a second) plus a client that opens and closes connections toward a server at
``--rate`` a second, closing first (each a TIME_WAIT and a destroy event), and
refreshes an Engine every second. After a warm-up as long as the cookie ledger
keeps a closed socket's owner (so the ledger is full), it prints the resident
set size every minute and the last against the first. It asserts nothing.
Target: flat within 10% over 10 minutes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

from socktop.demo.builders import Job, build_incident, listen, spawn_worker, stop_processes
from socktop.model.churn import LEDGER_AGE
from socktop.model.engine import Engine


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0, help="extra client-first connections a second")
    parser.add_argument("--warmup", type=float, default=LEDGER_AGE + 20, help="seconds before the first sample")
    options = parser.parse_args()
    seconds = options.warmup + options.minutes * 60
    with build_incident(options.size, lifetime=seconds + 30):
        server = listen(socket.AF_INET, backlog=1024)
        port = server.getsockname()[1]
        crawler = [spawn_worker(Job("cache-srv", seconds, server.family), server),
                   spawn_worker(Job("crawler", seconds, socket.AF_INET, port=port, rate=options.rate,
                                    limit=int(options.rate * seconds)))]
        try:
            engine = Engine(interval=1.0)
            started = time.monotonic()
            samples: list[tuple[float, float]] = []
            next_sample = started + options.warmup
            while (now := time.monotonic()) - started < seconds:
                snapshot = engine.refresh()
                if now >= next_sample:
                    samples.append((now - started, rss_mb()))
                    churn = snapshot.churn
                    print(f"  {now - started:6.0f} s  RSS {samples[-1][1]:7.1f} MB  sockets {len(snapshot.sockets):,}  "
                          f"ledger {len(engine.churn.ledger):,}  closes/s "
                          f"{(churn.closes_per_second or 0) if churn else 0:.0f}", flush=True)
                    next_sample += 60
                time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
            engine.close()
        finally:
            stop_processes(crawler)
    if len(samples) >= 2:
        first, last = samples[0][1], samples[-1][1]
        print(f"RSS {first:.1f} MB after the warm-up, {last:.1f} MB at the end: {last / first:.3f}x "
              f"(target within 10%), max {max(rss for _, rss in samples):.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
