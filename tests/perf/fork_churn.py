"""Owner-scan cost under fork churn, measured apart from TIME_WAIT churn.

    unshare -n sh -c 'ip link set lo up; .venv/bin/python tests/perf/fork_churn.py [--seconds 20] [--forks 10]'

A server accepts on loopback; a forker starts ``--forks`` children a
second, each of which connects, holds its socket about a second and exits
(the case where a fork is the only change). socktop refreshes every 0.5 s
meanwhile; the script prints, per refresh, how many /proc/PID/fd
directories and fd links the owner scan read, against the number of
processes in /proc, and the refresh time against `ss -tanp` timed in the
same rounds. It asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

from socktop.model.engine import Engine

FORKER = """
import os, socket, sys, time
port, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + seconds
while time.monotonic() < end:
    if os.fork() == 0:
        s = socket.create_connection(("127.0.0.1", port)); time.sleep(1.0); s.close(); os._exit(0)
    time.sleep(1 / rate)
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
"""

SERVER = """
import socket, sys, threading
listener = socket.create_server(("127.0.0.1", 0), backlog=512)
print(listener.getsockname()[1], flush=True)
held = []
while True:
    conn, _ = listener.accept(); held.append(conn); held[:] = held[-200:]
"""


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--forks", type=float, default=10.0, help="forks per second")
    options = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    engine = Engine("netlink")
    engine.refresh()  # the first refresh reads everything once
    forker = subprocess.Popen([sys.executable, "-c", FORKER, str(port), str(options.forks), str(options.seconds)])
    rows = []
    try:
        deadline = time.monotonic() + options.seconds
        while time.monotonic() < deadline:
            before = engine.scanner.stats.fd_dirs_read, engine.scanner.stats.links_read
            refresh = timed(engine.refresh)
            dirs = engine.scanner.stats.fd_dirs_read - before[0]
            links = engine.scanner.stats.links_read - before[1]
            ss = timed(lambda: subprocess.run(["ss", "-tanp"], capture_output=True, check=True))
            rows.append((len([name for name in os.listdir("/proc") if name.isdigit()]), dirs, links, refresh, ss))
            time.sleep(0.5)
    finally:
        forker.kill()
        server.kill()
        forker.wait()
        server.wait()
    processes = statistics.median(row[0] for row in rows)
    print(f"{len(rows)} refreshes under {options.forks:g} forks/s; {processes:.0f} processes in /proc")
    print(f"fd dirs read per refresh: median {statistics.median(r[1] for r in rows):.0f}, "
          f"max {max(r[1] for r in rows)}")
    print(f"fd links read per refresh: median {statistics.median(r[2] for r in rows):.0f}, "
          f"max {max(r[2] for r in rows)}")
    refresh, ss = statistics.median(r[3] for r in rows), statistics.median(r[4] for r in rows)
    print(f"refresh median {refresh * 1000:.1f} ms, ss -tanp median {ss * 1000:.1f} ms: {refresh / ss:.2f}x ss -tanp")
    print(f"full scans: {engine.scanner.stats.full_scans} (one every 30 s by design)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
