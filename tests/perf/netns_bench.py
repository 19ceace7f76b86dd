"""Namespaces benchmark: one refresh of N namespaces of S sockets each, against one namespace of N x S.

    sudo python tests/perf/netns_bench.py [20x1000]     (make bench runs it as root)

Each namespace is dumped through a socket opened once inside it, and each
dump walks the kernel's whole socket hash table, which every namespace
shares (unless made with net.ipv4.tcp_child_ehash_entries set): N
namespaces cost N walks. An idle namespace (its activity counters did not
move) keeps its last dump for up to 10 s. So three cases are timed, each
in alternating rounds with `ss -tan` inside the big namespace:

- idle: the populations as built (nothing moves), socktop as it runs;
- busy, shared table: every namespace dumped at every refresh (the worst case);
- busy, own tables: the same with namespaces made while tcp_child_ehash_entries was
  set (in the namespace this runs in; put back afterwards).

Target: idle many/one <= 1.3. Figures on a shared machine are for reading, not gating.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the namespace helpers

from namespaces import named_netns, population_in_netns  # noqa: E402

from socktop.collect.netns import Selection  # noqa: E402
from socktop.model.engine import Engine  # noqa: E402

TARGET = 1.3
CHILD_EHASH = "net.ipv4.tcp_child_ehash_entries"


def bench_namespaces(count: int, size: int, runs: int, busy: bool) -> dict[str, float]:
    """Medians (seconds) of alternating rounds: the many namespaces, the one, and ss -tan in the one."""
    with ExitStack() as stack:
        many = [stack.enter_context(named_netns("socktop-bench")) for _ in range(count)]
        held_many = sum(stack.enter_context(population_in_netns(name, size)) for name in many)
        one = stack.enter_context(named_netns("socktop-bench"))
        held_one = stack.enter_context(population_in_netns(one, count * size))
        engines = {"many": Engine(netns=Selection.parse(",".join(many))), "one": Engine(netns=Selection.parse(one))}
        for engine in engines.values():
            stack.callback(engine.close)
            if busy and engine.namespaces is not None:
                engine.namespaces.keep_for = 0.0
            engine.refresh()  # the first refresh scans every process's descriptors
        timings: dict[str, list[float]] = {"many": [], "one": [], "ss": []}
        for _ in range(runs):
            for key, engine in engines.items():
                started = time.perf_counter()
                engine.refresh()
                timings[key].append(time.perf_counter() - started)
            started = time.perf_counter()
            subprocess.run(["ip", "netns", "exec", one, "ss", "-tan"], stdout=subprocess.DEVNULL, check=True)
            timings["ss"].append(time.perf_counter() - started)
        figures = {key: statistics.median(values) for key, values in timings.items()}
        figures["sockets many"], figures["sockets one"] = float(held_many), float(held_one)
        return figures


def report_namespaces(case: str, count: int, size: int, figures: dict[str, float]) -> None:
    many, one, ss = figures["many"], figures["one"], figures["ss"]
    print(f"\n== {case}: {count} namespaces of {size:,} ({int(figures['sockets many']):,} sockets) against one of "
          f"{int(figures['sockets one']):,} ==")
    print(f"  refresh, {count} namespaces            {many * 1000:9.1f} ms   {many / ss:5.2f}x ss -tan (in the one)")
    print(f"  refresh, one namespace             {one * 1000:9.1f} ms   {one / ss:5.2f}x ss -tan")
    print(f"  many / one                         {many / one:5.2f}" + (f"   (target <= {TARGET})" if case == "idle" else ""))


def run(count: int, size: int, runs: int) -> None:
    report_namespaces("idle", count, size, bench_namespaces(count, size, runs, busy=False))
    report_namespaces("busy, shared socket table", count, size, bench_namespaces(count, size, runs, busy=True))
    path = Path("/proc/sys") / CHILD_EHASH.replace(".", "/")
    if not path.exists():
        print(f"\n(busy, own tables: skipped; this kernel has no {CHILD_EHASH}, Linux 5.19+)")
        return
    before = path.read_text().strip()
    path.write_text(str(4 * size))  # only namespaces made from now on get a table of their own
    try:
        figures = bench_namespaces(count, size, runs, busy=True)
    finally:
        path.write_text(before)
    report_namespaces(f"busy, own tables ({CHILD_EHASH}={4 * size})", count, size, figures)


def main() -> int:
    if os.geteuid() != 0:
        print("netns bench: creating namespaces needs root", file=sys.stderr)
        return 1
    count, size = (int(part) for part in (sys.argv[1] if len(sys.argv) > 1 else "20x1000").split("x"))
    run(count, size, 7)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
