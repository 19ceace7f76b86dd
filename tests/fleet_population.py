"""Loopback populations for the exporter tests, run as their own processes.

    python fleet_population.py leak NAME START RATE MAX SECONDS
        one process named NAME holding START CLOSE_WAIT sockets, RATE more each
        second up to MAX once it gets SIGUSR1; prints "ready PORT" on stdout.
    python fleet_population.py farm PROCESSES LISTENERS PAIRS CLOSE_WAIT SECONDS
        PROCESSES forked children, each with LISTENERS listening ports, PAIRS
        ESTABLISHED pairs spread over them and CLOSE_WAIT half-closed ones;
        prints "ready PID..." once every child is built.

    python fleet_population.py measure PROCESSES LISTENERS PAIRS CLOSE_WAIT TOP ROUNDS CPU_SECONDS
        a farm as above, then one exporter collection in this network namespace;
        prints one JSON line: sockets, listening ports, processes, series on
        /metrics and their bound; with ROUNDS, the medians of that many rounds of
        a collection, the TUI's refresh and `ss -tan`, alternated; with
        CPU_SECONDS, the CPU share of collecting every 15 s for that long.
        Run it in a private network namespace (unshare -n).

Both stop when their stdin reaches end of file (the test closed it or died)
or after SECONDS, whichever comes first; children of a farm stop with it.
Only 127.0.0.1, only ports the kernel picks.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time


def rename(name: str) -> None:
    with open("/proc/self/comm", "w", encoding="utf-8", errors="surrogateescape") as comm:
        comm.write(name)


def listener(backlog: int = 128) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


def connected(server: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A client connected to ``server`` and the end ``server`` accepted."""
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    return client, accepted


def pairs(server: socket.socket, n: int) -> list[socket.socket]:
    """n connected pairs on ``server``, both ends held: 2n ESTABLISHED."""
    return [end for _ in range(n) for end in connected(server)]


def close_waits(server: socket.socket, n: int) -> list[socket.socket]:
    """n accepted ends left in CLOSE_WAIT: the client closes, the server never does."""
    held: list[socket.socket] = []
    for _ in range(n):
        client, accepted = connected(server)
        client.close()
        held.append(accepted)
    return held


def stdin_closed(timeout: float) -> bool:
    """Wait up to ``timeout`` for end of file on stdin (it never carries data)."""
    ready, _, _ = select.select([sys.stdin.buffer], [], [], max(0.0, timeout))
    return bool(ready) and not os.read(sys.stdin.fileno(), 1)


def leak(name: str, start: int, rate: float, most: int, seconds: float) -> None:
    """Holds ``start`` CLOSE_WAIT; grows by ``rate`` a second once SIGUSR1 says go (the watchers are ready)."""
    go = signal.SIGUSR1
    signal.pthread_sigmask(signal.SIG_BLOCK, {go})
    rename(name)
    server = listener(1024)
    held = close_waits(server, start)
    print(f"ready {server.getsockname()[1]}", flush=True)
    deadline = time.monotonic() + seconds
    growing = False
    while time.monotonic() < deadline:
        if stdin_closed(1.0 if rate else deadline - time.monotonic()):
            return
        growing = growing or go in signal.sigpending()
        if growing and len(held) < most:
            held += close_waits(server, min(int(rate), most - len(held)))


def farm(processes: int, listeners: int, n_pairs: int, n_close_wait: int, seconds: float) -> None:
    ready_read, ready_write = os.pipe()
    children: list[int] = []
    for index in range(processes):
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            rename(f"farm-{index}")
            servers = [listener() for _ in range(listeners)]
            held = [pairs(servers[i % listeners], 1) for i in range(n_pairs)]
            held.append(close_waits(servers[0], n_close_wait))
            os.write(ready_write, b"r")
            stdin_closed(seconds)
            os._exit(0)
        children.append(pid)
    os.close(ready_write)
    got = 0
    deadline = time.monotonic() + 120
    while got < processes and time.monotonic() < deadline:
        chunk = os.read(ready_read, processes)
        if not chunk:
            break
        got += len(chunk)
    try:
        if got == processes:
            print("ready " + " ".join(map(str, children)), flush=True)
            stdin_closed(seconds)
        else:
            print(f"failed: {got} of {processes} children ready", flush=True)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in children:
            os.waitpid(pid, 0)


def measure(processes: int, listeners: int, n_pairs: int, n_close_wait: int, top: int, rounds: int,
            cpu_seconds: float) -> None:
    import json
    import subprocess
    import threading

    from prometheus_client import CollectorRegistry, generate_latest

    import statistics

    from socktop.analyze.findings import analyze
    from socktop.collect.records import TcpState
    from socktop.model.engine import Engine
    from socktop.serve.metrics import series_bound
    from socktop.serve.server import Exporter
    from socktop.ui.view import ViewSpec, build_view

    child = subprocess.Popen([sys.executable, __file__, "farm", str(processes), str(listeners), str(n_pairs),
                              str(n_close_wait), "600"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        if not line.startswith("ready"):
            raise SystemExit(f"farm failed: {line.strip()}")
        exporter = Exporter(Engine("auto", 15.0), 15.0, top)
        exporter.collect_once()  # the first one also scans every process's descriptors
        timings: dict[str, list[float]] = {"collect": [], "tui_refresh": [], "ss": []}
        for _ in range(rounds):  # alternated, medians: the machine is shared
            started = time.perf_counter()
            exporter.collect_once()
            timings["collect"].append(time.perf_counter() - started)
            started = time.perf_counter()
            snapshot = exporter.engine.refresh()  # what the TUI's poller does per refresh
            analyze(snapshot, exporter.thresholds)
            build_view(snapshot, ViewSpec(), None)
            timings["tui_refresh"].append(time.perf_counter() - started)
            started = time.perf_counter()
            subprocess.run(["ss", "-tan"], stdout=subprocess.DEVNULL, check=True, timeout=60)
            timings["ss"].append(time.perf_counter() - started)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(exporter)
        text = generate_latest(registry).decode()
        published = exporter.published
        assert published is not None, exporter.last_error
        aggregates = published.snapshot.aggregates
        result = {
            "sockets": aggregates.total,
            "listening_ports": len(aggregates.listening_ports),
            "processes": len([g for g in aggregates.by_process.values() if g.process is not None]),
            "close_wait": aggregates.by_state.get(TcpState.CLOSE_WAIT, 0),
            "series": sum(1 for line in text.splitlines() if line and not line.startswith("#")),
            "bound": series_bound(top),
        }
        if rounds:
            collect, tui, ss = (statistics.median(timings[name]) for name in ("collect", "tui_refresh", "ss"))
            result.update(collect_seconds=round(collect, 4), tui_refresh_seconds=round(tui, 4),
                          ss_seconds=round(ss, 4), collect_vs_tui=round(collect / tui, 2),
                          collect_vs_ss=round(collect / ss, 2))
        if cpu_seconds > 0:
            stop = threading.Event()
            thread = threading.Thread(target=exporter.run, args=(stop,))
            cpu, wall = time.process_time(), time.monotonic()
            thread.start()
            stop.wait(cpu_seconds)
            stop.set()
            thread.join()
            result["cpu_share"] = round((time.process_time() - cpu) / (time.monotonic() - wall), 4)
            result["collections"] = exporter.collections
        print(json.dumps(result), flush=True)
    finally:
        child.stdin.close()
        child.wait(60)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "leak":
        leak(args[0], int(args[1]), float(args[2]), int(args[3]), float(args[4]))
    elif role == "measure":
        measure(*map(int, args[:6]), float(args[6]))
    else:
        farm(*map(int, args[:4]), float(args[4]))
