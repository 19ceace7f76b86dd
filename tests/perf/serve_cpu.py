"""Exporter CPU: a real `socktop serve --interval 15` over the 50k incident mix, scraped every 15 s.

    unshare -n sh -c 'ip link set lo up; .venv/bin/python tests/perf/serve_cpu.py [--size 50000]
                      [--seconds 60] [--interval 15] [--netns self] [--profile DIR]'

Builds the incident mix (demo.builders.build_incident: TIME_WAIT made again as
the kernel frees it, 200 connect/close a second, so hundreds of destroy events a
second), starts `socktop serve` as its own process, waits for its first
collection, then for ``--seconds`` scrapes /metrics every interval and reads
the process's CPU time from /proc/PID/stat (and each thread's from
/proc/PID/task/*/stat, threads named after their Python names; what exited
threads used, e.g. one per HTTP request, is the remainder). It prints the CPU
share of one core, per thread, the collections' durations as
socktop_collection_duration_seconds reported them, and `ss -tan` timed in the
same run for scale. Then, with ``--compare ROUNDS``, in this process and on the
same incident: one exporter collection (refresh, findings, metric families) after
an interval against the TUI's refresh (refresh, findings, view) after 1 s, CPU
and wall medians (issue 12: a collection costs no more than the TUI's refresh).
With ``--profile DIR`` every thread of serve runs under
cProfile and leaves DIR/THREAD.prof (the profiler's own cost inflates the CPU
figures: profile and measure in separate runs). It asserts nothing: figures
on a shared machine are for reading. Target (issue 12): <= 2% of one core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from socktop.demo.builders import build_incident

TICKS = os.sysconf("SC_CLK_TCK")
# Runs `socktop serve` with each thread's OS name set to its Python name (so /proc/PID/task/*/comm says
# which is which), and with PROFILE_DIR each thread under cProfile, dumped when it ends or at exit.
BOOTSTRAP = r"""
import atexit, ctypes, os, sys, threading
libc = ctypes.CDLL(None)
directory = os.environ.get("SERVE_CPU_PROFILE")
profiles = {}
def dump(name, profile):
    profile.create_stats()
    profile.dump_stats(os.path.join(directory, name.replace("/", "_") + ".prof"))
original = threading.Thread.run
def run(self):
    libc.prctl(15, self.name[:15].encode(), 0, 0, 0)  # PR_SET_NAME
    if not directory or not self.name.startswith("socktop"):
        return original(self)
    import cProfile
    profile = profiles[self.name] = cProfile.Profile()
    profile.enable()
    try:
        return original(self)
    finally:
        profile.disable()
        dump(self.name, profiles.pop(self.name))
threading.Thread.run = run
if directory:
    import cProfile
    main = cProfile.Profile()
    atexit.register(lambda: [dump(name, profile) for name, profile in [("main", main), *profiles.items()]])
    main.enable()
from socktop.cli import main as socktop
sys.argv[0] = "socktop"
code = socktop()
sys.stderr.flush()
sys.exit(code)
"""


def cpu_seconds(stat_path: str) -> np.ndarray:
    """(utime, stime) of a process or thread, in seconds (fields 14 and 15 of its stat line)."""
    with open(stat_path) as stat:
        fields = stat.read().rpartition(")")[2].split()
    return np.array([int(fields[11]), int(fields[12])]) / TICKS


def threads(pid: int) -> dict[str, np.ndarray]:
    """(utime, stime) per live thread, by OS name (the same name summed)."""
    found: dict[str, np.ndarray] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            found[name] = found.get(name, 0.0) + cpu_seconds(str(task / "stat"))
        except OSError:
            continue  # ended meanwhile
    return found


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as reply:
        return reply.read().decode()


def gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def ss_seconds(runs: int = 3) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["ss", "-tan"], stdout=subprocess.DEVNULL, check=True)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def compare(rounds: int, interval: float) -> dict[str, tuple[float, float]]:
    """Median (CPU, wall) seconds of an exporter collection ``interval`` after the last and of the TUI's
    refresh 1 s after its last, on engines of their own, alternated."""
    from socktop.analyze.findings import analyze
    from socktop.model.engine import Engine
    from socktop.serve.server import Exporter
    from socktop.ui.view import ViewSpec, build_view

    exporter, tui = Exporter(Engine("netlink", interval), interval), Engine("netlink", 1.0)

    def tui_refresh() -> None:  # what the TUI's poller does per refresh
        snapshot = tui.refresh()
        analyze(snapshot)
        build_view(snapshot, ViewSpec(), None)

    timings: dict[str, list[tuple[float, float]]] = {"exporter collection": [], "TUI refresh": []}
    for action in (exporter.collect_once, tui_refresh):
        action()  # the first (a whole owner scan) is not counted
    for _ in range(rounds):
        for name, action, pause in (("exporter collection", exporter.collect_once, interval),
                                    ("TUI refresh", tui_refresh, 1.0)):
            time.sleep(pause)
            cpu, wall = time.thread_time(), time.perf_counter()
            action()
            timings[name].append((time.thread_time() - cpu, time.perf_counter() - wall))
    for engine in (exporter.engine, tui):
        engine.close()
    return {name: (statistics.median(c for c, _ in values), statistics.median(w for _, w in values))
            for name, values in timings.items() if values}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time after the first collection")
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds between building and starting serve")
    parser.add_argument("--netns", default="self", help="serve's --netns (default self: the incident's own "
                        "namespace, as deploy/ runs it; 'all' as root also reads every other namespace on the host)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR")
    parser.add_argument("--compare", type=int, default=0, metavar="ROUNDS")
    options = parser.parse_args()
    lifetime = options.settle + options.seconds + (4 + options.compare) * (options.interval + 2) + 120
    env = dict(os.environ)
    if options.profile:
        options.profile.mkdir(parents=True, exist_ok=True)
        env["SERVE_CPU_PROFILE"] = str(options.profile.resolve())
    with build_incident(options.size, lifetime=lifetime) as incident:
        print(f"incident: about {incident.sockets:,} sockets; settling {options.settle:g} s", flush=True)
        time.sleep(options.settle)
        serve = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, "serve", "--listen", "127.0.0.1:0", "--interval", str(options.interval),
             "--netns", options.netns],
            stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert serve.stderr is not None
            line = serve.stderr.readline()
            if "/metrics" not in line:
                raise SystemExit(f"serve did not start: {line.strip()}")
            port = int(line.split("/metrics")[0].rpartition(":")[2])
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the first collection (and the first owner scan) not counted
                try:
                    scrape(port, "/healthz")
                    break
                except OSError:
                    time.sleep(0.5)
            time.sleep(1.0)
            before, threads_before = cpu_seconds(f"/proc/{serve.pid}/stat"), threads(serve.pid)
            started = time.monotonic()
            durations: list[float] = []
            ss = []
            sockets = None
            while (elapsed := time.monotonic() - started) < options.seconds:
                text = scrape(port)
                durations.append(gauge(text, "socktop_collection_duration_seconds") or float("nan"))
                sockets = sum(float(l.split()[1]) for l in text.splitlines() if l.startswith("socktop_sockets{"))
                ss.append(ss_seconds())
                time.sleep(min(options.interval, max(0.0, options.seconds - (time.monotonic() - started))))
            wall = time.monotonic() - started
            after, threads_after = cpu_seconds(f"/proc/{serve.pid}/stat"), threads(serve.pid)
            collections = gauge(scrape(port), "socktop_collections_total")
        finally:
            serve.terminate()
            serve.wait(60)
        compared = compare(options.compare, options.interval)
    used = after - before
    print(f"sockets (last scrape): {sockets:,.0f}; collections in all: {collections:.0f}")
    print(f"serve CPU: {used.sum():.2f} s over {wall:.1f} s = {100 * used.sum() / wall:.2f}% of one core "
          f"(target <= 2% at --interval 15); user {used[0]:.2f} s, system {used[1]:.2f} s")
    named = {name: threads_after[name] - threads_before.get(name, 0.0) for name in threads_after}
    named["exited threads"] = np.maximum(used - sum(named.values()), 0.0)  # (clock ticks round per thread)
    for name, seconds in sorted(named.items(), key=lambda pair: -pair[1].sum()):
        print(f"  {name:<22} {seconds.sum():6.2f} s  {100 * seconds.sum() / wall:5.2f}%  "
              f"(user {seconds[0]:.2f}, system {seconds[1]:.2f})")
    shown = ", ".join(f"{d * 1000:.0f}" for d in durations)
    print(f"socktop_collection_duration_seconds at each scrape (ms): {shown}; ss -tan median "
          f"{statistics.median(ss) * 1000:.0f} ms")
    for name, (cpu, wall_seconds) in compared.items():
        print(f"{name}: median CPU {cpu * 1000:.0f} ms, wall {wall_seconds * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
