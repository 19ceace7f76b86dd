"""The destroy feed and the cookie ledger, on real loopback traffic.

Counts are taken per port (the listener's, bound to port 0): other tests and
processes share the loopback, and their closes fall into other groups.
"""

from __future__ import annotations

import gc
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from loopback_sockets import alone

from socktop.analyze.config import DEFAULT_THRESHOLDS
from socktop.analyze.findings import analyze
from socktop.collect.destroy import NETLINK_SOCK_DIAG, ClosedSocket, DestroyFeed, FeedReader, RawEvents, closed_sockets
from socktop.collect.netlink import NetlinkBackend
from socktop.collect.records import ProcessInfo, TcpState
from socktop.demo.builders import LINGER_ABORT, listen, port_of
from socktop.model.aggregate import OwnerKind, process_key
from socktop.model.churn import CookieLedger, time_wait_makers
from socktop.model.engine import Engine
from socktop.ui.details import Selection, Styles, commands_for, describe

RATE = 200.0
CONNECTIONS = 600  # three seconds at RATE


def serve_and_close(listener: socket.socket, stop: threading.Event) -> None:
    """Accept, wait for the client's FIN, close: the client closed first and is left in TIME_WAIT."""
    listener.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _peer = listener.accept()
        except TimeoutError:
            continue
        with conn, suppress(OSError):  # a client that aborts resets the connection
            conn.settimeout(30.0)  # a bound, not a pace: on a loaded machine the test's first refresh takes
            # seconds, and a server that gave up first would be the side left in TIME_WAIT
            conn.recv(1)


@pytest.fixture
def server() -> Iterator[int]:
    """A port no earlier test's TIME_WAIT points to (its groups count this test's closes only), served
    from a thread."""
    listeners: list[socket.socket] = []

    def listener() -> socket.socket:
        listeners.append(listen(socket.AF_INET, backlog=512))
        return listeners[-1]

    served = alone(listener, port_of, lambda sock, record: record.local_port == port_of(sock)
                   and record.state is TcpState.LISTEN)
    stop = threading.Event()
    thread = threading.Thread(target=serve_and_close, args=(served, stop), daemon=True)
    thread.start()
    yield port_of(served)
    stop.set()
    thread.join()
    for sock in listeners:
        sock.close()


def connect_and_close(port: int, n: int, rate: float, made: list[tuple[int, float]] | None = None) -> None:
    """n connections at ``rate`` a second, each closed by the client first; each one's client port and
    the time it was closed are appended to ``made`` (a loaded machine keeps the pace only roughly)."""
    due = time.monotonic()
    for _ in range(n):
        due += 1.0 / rate
        with socket.create_connection(("127.0.0.1", port), 2.0) as client:
            local_port = client.getsockname()[1]
        if made is not None:
            made.append((local_port, time.monotonic()))
        time.sleep(max(0.0, due - time.monotonic()))


@contextmanager
def churning(port: int, rate: float = 50.0, most: int = 3_000) -> Iterator[None]:
    """Connections closed client-first at ``rate`` while the block runs (``most`` in all): a command
    started inside sees churn however long it takes to start."""
    stop = threading.Event()

    def run() -> None:
        for _ in range(most):
            if stop.wait(1.0 / rate):
                return
            with socket.create_connection(("127.0.0.1", port), 2.0):
                pass

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def count_closes(engine: Engine, counted: dict[str, int], expected: int, timeout: float = 60.0) -> dict[str, int]:
    """Refresh until every key of ``counted`` has ``expected`` closes (or the time is up)."""
    deadline = time.monotonic() + timeout
    while min(counted.values()) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        churn = engine.refresh().churn
        assert churn is not None
        counted = {key: count + churn.closes_on(key) for key, count in counted.items()}
    return counted


def test_close_rate_on_a_churning_port(server: int) -> None:
    engine = Engine()
    engine.refresh()
    made: list[tuple[int, float]] = []
    client = threading.Thread(target=connect_and_close, args=(server, CONNECTIONS, RATE, made))
    client.start()
    time.sleep(1.0)
    rates, closes = [], {f"out:{server}": 0, f"in:{server}": 0}
    while client.is_alive():
        snapshot = engine.refresh()
        churn = snapshot.churn
        assert churn is not None and not churn.lost
        for key in closes:
            closes[key] += churn.closes_on(key)
        if client.is_alive() and churn.seconds >= 1.0:
            # the rate the client kept over the same window (a loaded machine stalls it, then it catches up)
            start = snapshot.monotonic - churn.seconds
            kept = sum(start < closed <= snapshot.monotonic for _port, closed in list(made)) / churn.seconds
            rates.append((churn.by_port[f"out:{server}"].per_second, kept))
        time.sleep(0.5)
    client.join()
    closes = count_closes(engine, closes, CONNECTIONS)
    # every client end closed toward the port ("out"), every server end on it ("in"), each once
    assert closes == {f"out:{server}": CONNECTIONS, f"in:{server}": CONNECTIONS}
    # the events of the window's last moments may come a little late (the kernel broadcasts from a workqueue)
    assert rates and all(0.8 * kept - 0.1 * RATE <= rate <= 1.2 * kept + 0.1 * RATE for rate, kept in rates), rates
    engine.close()


CLIENT = """
import socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("connected", sock.getsockname()[1], flush=True)
sys.stdin.readline()
sock.close()
print("closed", flush=True)
sys.stdin.readline()
"""


def test_time_wait_is_tied_to_its_process_by_cookie(server: int) -> None:
    engine = Engine()
    with subprocess.Popen([sys.executable, "-c", CLIENT, str(server)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdin is not None and child.stdout is not None
        local_port = int(child.stdout.readline().split()[1])
        alive = engine.refresh()  # the dump sees the connection held by the child: the ledger learns its cookie
        (held,) = [r for r in alive.sockets if r.local_port == local_port and r.remote_port == server]
        assert alive.owners_of(held).kind is OwnerKind.DIRECT
        child.stdin.write("close\n")
        child.stdin.flush()
        assert child.stdout.readline() == "closed\n"

        def time_wait():
            snapshot = engine.refresh()
            found = [r for r in snapshot.sockets if r.local_port == local_port and r.remote_port == server]
            return snapshot, found

        deadline = time.monotonic() + 60
        snapshot, found = time_wait()
        while not (found and found[0].state is TcpState.TIME_WAIT) and time.monotonic() < deadline:
            time.sleep(0.05)
            snapshot, found = time_wait()
        (record,) = found
        assert (record.state, record.inode, record.cookie) == (TcpState.TIME_WAIT, 0, held.cookie)
        attribution = snapshot.owners_of(record)
        assert attribution.kind is OwnerKind.COOKIE
        assert [process.pid for process in attribution.processes] == [child.pid]
        child.stdin.write("exit\n")
        child.stdin.flush()
    # the process has exited: its TIME_WAIT is still tied to it
    later = engine.refresh()
    (record,) = [r for r in later.sockets if r.local_port == local_port and r.remote_port == server]
    assert [process.pid for process in later.owners_of(record).processes] == [child.pid]
    engine.close()


def test_a_connection_no_dump_saw_is_counted_but_not_tied_to_a_pid(server: int) -> None:
    engine = Engine()
    engine.refresh()
    connect_and_close(server, 5, 1000.0)
    count_closes(engine, {f"out:{server}": 0, f"in:{server}": 0}, 5)
    churn = engine.refresh().churn
    assert churn is not None
    tied = [group for key, group in churn.by_process.items() if key == process_key(os.getpid())]
    # the server ends go to the listener's process, inferred (never exact: no dump saw them held);
    # the client ends only to their destination, as no process holds a connection toward it
    assert tied and (tied[0].closes, tied[0].exact) == (5, 0)
    assert churn.by_port[f"out:{server}"].closes == churn.by_port[f"in:{server}"].closes == 5
    engine.close()


def queue_of(feed: DestroyFeed) -> tuple[str, str]:
    """The bytes the feed's socket holds unread and the events the kernel dropped on it
    (/proc/net/netlink's Rmem and Drops, found by the socket's inode)."""
    inode = str(os.fstat(feed.fileno()).st_ino)
    for line in Path("/proc/net/netlink").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[-1] == inode:
            return fields[4], fields[8]
    raise LookupError(f"no netlink socket with inode {inode}")


def broadcasts_done(feed: DestroyFeed, timeout: float = 5.0) -> None:
    """Wait until the feed's queue stops moving for half a second: the kernel broadcasts each close from
    a workqueue, which a loaded machine runs late (by far less than ``timeout``, the bound where other
    processes' closes keep the queue moving)."""
    deadline = time.monotonic() + timeout
    last, steady = None, 0
    while steady < 5 and time.monotonic() < deadline:
        now = queue_of(feed)
        steady = steady + 1 if now == last else 0
        last = now
        time.sleep(0.1)


def drain_until(feed: DestroyFeed, wanted, count: int, timeout: float = 30.0) -> list:
    """Drain until ``count`` events satisfy ``wanted`` (bounded); every matching event drained."""
    deadline = time.monotonic() + timeout
    found: list = []
    while len(found) < count and time.monotonic() < deadline:
        found += [event for event in feed.drain() if wanted(event)]
        time.sleep(0.02)
    return found


def test_overruns_are_counted_and_the_feed_goes_on(server: int) -> None:
    """A flood the feed is not drained under: the kernel drops events and says so, once per overflow."""
    with DestroyFeed(receive_buffer=65536) as feed:
        listener = listen(socket.AF_INET, backlog=512)
        with listener:
            port = port_of(listener)
            for _ in range(1_000):  # 2,000 events: far more than 64 kB of receive queue holds
                client = socket.create_connection(("127.0.0.1", port), 2.0)
                conn, _peer = listener.accept()
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
                client.close()
                conn.close()
        broadcasts_done(feed)

        def flood(events: list) -> list:  # the feed hears every close in the namespace: other processes' too
            return [event for event in events if port in (event.local_port, event.remote_port)]

        first = flood(feed.drain())
        assert feed.overruns >= 1 and 0 < len(first) < 2_000
        assert flood(feed.drain()) == []  # nothing left, and no wait
        connect_and_close(server, 3, 1000.0)
        ours = drain_until(feed, lambda e: server in (e.local_port, e.remote_port), 6)
        broadcasts_done(feed)
        assert len(ours + [e for e in feed.drain() if server in (e.local_port, e.remote_port)]) == 6


def feed_events() -> list[tuple[int, int, bool]]:
    """One connection sending 100 bytes, seen through a feed made from a socket opened here."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    with DestroyFeed(sock) as feed, socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _peer = listener.accept()
        client.sendall(b"x" * 100)
        server.recv(100)
        client.close()
        server.close()
        port = port_of(listener)
        return [(event.bytes_acked, event.retransmits, event.cookie > 0)
                for event in drain_until(feed, lambda event: event.remote_port == port, 1)]


def test_feed_from_a_socket_opened_elsewhere_and_without_root() -> None:
    """In a child that gave up root (user nobody, no groups), as an ordinary user runs socktop."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            os.write(writer, repr(feed_events()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        output = pipe.read()
    assert os.waitpid(pid, 0)[1] == 0
    # 100 bytes acknowledged, and the SYN and FIN: tcp_info's bytes_acked counts each as one
    assert output == repr([(102, 0, True)])


def test_ledger_is_bounded_in_entries_and_age() -> None:
    process = ProcessInfo(pid=1, start_ticks=1, name="p", cmdline="p", uid=0, user="root")
    ledger = CookieLedger(max_entries=1_000, max_age=10.0)
    cookies = list(range(1, 5_001))
    ledger.update(cookies, [(1,)] * len(cookies), {1: process}, now=0.0)
    assert len(ledger) == 5_000 and ledger.owners(42) == (process,)
    ledger.update([], [], {}, now=1.0)  # every socket left the table: the oldest go past max_entries
    assert len(ledger) == 1_000 == sum(1 for cookie in cookies if ledger.owners(cookie) == (process,))
    ledger.update([7], [None], {}, now=12.0)  # not held: nothing learnt, and the rest are too old
    assert len(ledger) == 0 and not any(map(ledger.owners, cookies))


def test_json_gives_churn_rates_with_sample(server: int) -> None:
    with churning(server):
        result = subprocess.run([sys.executable, "-m", "socktop", "--json", "--sample", "1.5", "--interval", "0.5"],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    churn = json.loads(result.stdout)["churn"]
    assert churn["available"] and churn["window_s"] > 0 and churn["closes_per_s"] > 0
    ports = {(row["direction"], row["port"]) for row in churn["ports"]}
    assert {("in", server), ("out", server)} <= ports
    one_shot = json.loads(subprocess.run([sys.executable, "-m", "socktop", "--json", "--backend", "proc"],
                                         capture_output=True, text=True, timeout=60, check=True).stdout)
    assert one_shot["churn"] == {"available": False, "note": "no close events with the proc backend (they need sock_diag)"}


def test_time_wait_port_finding_uses_the_close_rate_toward_the_destination(server: int) -> None:
    engine = Engine()
    engine.refresh()
    connect_and_close(server, 300, 1000.0)
    deadline = time.monotonic() + 30
    while True:  # the window (10 s) sums the refreshes: the events a loaded machine broadcasts late come in
        time.sleep(0.3)
        snapshot = engine.refresh()
        churn = snapshot.churn
        assert churn is not None
        toward = churn.toward("127.0.0.1", server)
        if (toward is not None and toward.closes >= 300) or time.monotonic() > deadline:
            break
    assert toward is not None and toward.closes == 300
    analysis = analyze(snapshot, replace(DEFAULT_THRESHOLDS, time_wait_group=100))
    (finding,) = [f for f in analysis.findings if f.id == f"time-wait-ports:127.0.0.1>127.0.0.1:{server}"]
    assert finding.metrics["rate_per_s"] == round(churn.toward("127.0.0.1", server).per_second, 2)
    assert any(line.startswith("connections closed toward it: ") for line in finding.evidence)
    engine.close()


def test_reader_gathers_between_refreshes_within_its_bound(server: int) -> None:
    """A socket queue of about 90 events, 800 events in about a second: the reader's thread keeps
    up, and its own buffer keeps the newest 500, counting what it dropped."""
    with DestroyFeed(receive_buffer=65536) as feed:
        reader = FeedReader(feed, pause=0.01, capacity=500)
        connect_and_close(server, 400, 400.0)
        broadcasts_done(feed)  # the last events reach the socket, and the thread takes them
        reader.stop()
        events = reader.take()
    received = feed.received  # what the thread (and the take) read: all 800, less what the kernel dropped
    assert feed.overruns or received >= 800  # 800 of ours, and whatever else closed on the host
    assert received > 100  # more than the socket's queue holds: the thread drained it while events came
    # the newest 500 kept, the rest counted as dropped
    assert len(events) == min(500, received) and reader.dropped == received - len(events)
    assert reader.dropped + feed.overruns >= 1


def seen_then_unseen(server: int, seen: int, unseen: int) -> tuple[Engine, set[int]]:
    """An engine whose refresh saw ``seen`` connections held, all then closed client-first, and
    ``unseen`` more opened and closed after it, and their client ports: once the server's thread has
    closed its ends (awaited here) the next refresh's TIME_WAIT hold both kinds."""
    engine = Engine()
    held = [socket.create_connection(("127.0.0.1", server)) for _ in range(seen)]
    engine.refresh()
    ports = {sock.getsockname()[1] for sock in held}
    for sock in held:
        sock.close()
    made: list[tuple[int, float]] = []
    connect_and_close(server, unseen, 1000.0, made)
    ports |= {port for port, _closed in made}
    await_time_wait(server, ports)
    return engine, ports


def await_time_wait(server: int, client_ports: set[int], remote: bool = True, timeout: float = 60.0) -> None:
    """Wait (bounded) until the TIME_WAIT of every connection between ``server`` and ``client_ports`` is
    there, on the client's side (``remote``: the server is the remote end) or on the server's: the side
    that closed first is in FIN_WAIT2 until the other closes, which a loaded machine does late. Read with
    a backend of its own: an engine's refresh would learn cookies."""
    backend, deadline = NetlinkBackend(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        ends = {(r.local_port, r.remote_port) if remote else (r.remote_port, r.local_port)
                for r in backend.sockets() if r.state is TcpState.TIME_WAIT}
        if all((port, server) in ends for port in client_ports):
            return
        time.sleep(0.05)


def test_who_makes_these_time_wait(server: int) -> None:
    """Exact for a connection a refresh saw held, unattributed for those born between refreshes
    (their client ends have no listener to infer from)."""
    engine, client_ports = seen_then_unseen(server, seen=3, unseen=4)
    with listen(socket.AF_INET, backlog=8) as closes_first:  # server-side TIME_WAIT: tied to the listener
        served, their_ports = port_of(closes_first), set()
        for _ in range(2):
            client = socket.create_connection(("127.0.0.1", served))
            their_ports.add(client.getsockname()[1])
            conn, _peer = closes_first.accept()
            conn.close()
            client.recv(1)
            client.close()
        await_time_wait(served, their_ports, remote=False)
        snapshot = engine.refresh()
    columns = snapshot.columns
    time_wait = columns.state == TcpState.TIME_WAIT
    # this test's client ends (a TIME_WAIT left toward an earlier listener on the same port is not ours)
    ours = (columns.remote_port == server) & np.isin(columns.local_port, list(client_ports))
    makers = time_wait_makers(snapshot, time_wait & ours)
    assert makers.total == 7
    assert [(process.pid, count) for process, count in makers.exact] == [(os.getpid(), 3)]
    assert (makers.inferred, makers.unattributed) == ((), 4)
    theirs = time_wait & (columns.local_port == served) & np.isin(columns.remote_port, list(their_ports))
    assert [(p.pid, n) for p, n in time_wait_makers(snapshot, theirs).inferred] == [(os.getpid(), 2)]
    # the same answers as owners_of, socket by socket, over the whole table
    every = [r for r in snapshot.sockets if not r.inode]
    by_kind: dict[OwnerKind, Counter] = {kind: Counter() for kind in OwnerKind}
    for record in every:
        attribution = snapshot.owners_of(record)
        by_kind[attribution.kind].update(attribution.processes or [None])
    makers = time_wait_makers(snapshot, np.ones(len(snapshot.sockets), bool))
    def by_pid(counts) -> dict[int, int]:  # the ledger keeps a process as it was when it held the socket
        return {process.pid: n for process, n in dict(counts).items() if process is not None}

    assert by_pid(makers.exact) == by_pid(by_kind[OwnerKind.COOKIE]) and makers.exact
    assert by_pid(makers.inferred) == by_pid(by_kind[OwnerKind.INFERRED])
    assert makers.unattributed == by_kind[OwnerKind.NONE][None] + by_kind[OwnerKind.INFERRED][None]
    engine.close()


def test_an_engine_dropped_without_close_stops_its_reader() -> None:
    engine = Engine()
    engine.refresh()
    engine.refresh()
    reader = engine._reader
    assert reader is not None and reader.running
    del engine
    gc.collect()
    deadline = time.monotonic() + 30
    while reader.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not reader.running


def drawer(selection: Selection, snapshot) -> str:
    from io import StringIO

    from rich.console import Console

    console = Console(width=200, record=True, file=StringIO())
    keys = {"kill": "k", "sysctl": "y", "ss": "c", "lsof": "l"}
    console.print(describe(selection, snapshot, commands_for(selection), Styles(), keys))
    return console.export_text()


def test_drawer_says_who_makes_these_time_wait_and_how_fast(server: int) -> None:
    engine, _client_ports = seen_then_unseen(server, seen=2, unseen=30)
    snapshot = engine.refresh()
    me = f"(pid {os.getpid()})"
    state = drawer(Selection("states", state=TcpState.TIME_WAIT), snapshot)
    assert f"{me} 2 exactly (it held them: same socket cookie)" in state
    assert "opened and closed between refreshes: no process can be named" in state
    assert "closes," in state and "opens over the last" in state
    port = drawer(Selection("ports", port=snapshot.aggregates.by_port[f"out:{server}"]), snapshot)
    assert f"{me} 2 exactly" in port and "30 opened and closed between refreshes" in port
    assert "/s over the last" in port
    engine.close()


CHURNED = """
import socket, subprocess, sys, threading
from socktop.demo.builders import listen, port_of
from test_churn import churning, serve_and_close
listener, stop = listen(socket.AF_INET, backlog=512), threading.Event()
threading.Thread(target=serve_and_close, args=(listener, stop), daemon=True).start()
print(port_of(listener), flush=True)
with churning(port_of(listener)):
    subprocess.run([sys.executable, "-m", "socktop", *sys.argv[1:]], timeout=60)
stop.set()
"""


def churned_in_own_netns(*args: str) -> tuple[int, str] | None:
    """socktop ``args`` run while a port churns, both in a network namespace of their own (where the
    port's churn is all there is), with the port; None where ``unshare -n`` is not allowed."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode != 0:
        return None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(Path(__file__).parent),
                                                                      os.environ.get("PYTHONPATH"))))}
    result = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "churned",
                             sys.executable, "-c", CHURNED, *args], capture_output=True, text=True, timeout=120,
                            env=env, check=True)
    port, _, output = result.stdout.partition("\n")
    return int(port), output


def test_once_says_the_churn(server: int) -> None:
    # the line names the 3 busiest ports: on a busy host other processes' may outrank this test's
    args = ("--once", "--sample", "1", "--interval", "0.5")
    churned = churned_in_own_netns(*args)
    if churned is None:
        with churning(server):
            churned = server, subprocess.run([sys.executable, "-m", "socktop", *args], capture_output=True, text=True,
                                             timeout=60).stdout
    port, sampled = churned
    assert re.search(rf"churn: [\d.]+ closes/s, [\d.]+ opens/s over \d+ s: .*(in|out):{port} [\d.]+/s", sampled)
    once = subprocess.run([sys.executable, "-m", "socktop", "--once"], capture_output=True, text=True, timeout=60)
    assert "churn: closes and opens need two refreshes (--sample SECONDS)" in once.stdout


def test_ports_and_processes_rows_carry_the_close_rate() -> None:
    from dataclasses import replace as with_fields

    from frozen import frozen_snapshot

    from socktop.ui.view import ViewSpec, build_view

    snapshot = frozen_snapshot()
    view = build_view(snapshot, ViewSpec())
    ports = {row.key: row.closes for row in view.ports}
    processes = {row.key: row.closes for row in view.processes}
    assert (ports["out:443"], ports["in:80"], ports["in:5432"]) == (25.0, 15.0, 0.0)
    assert (processes["pid:5151"], processes["pid:7171"]) == (25.0, 0.0)
    uncounted = build_view(with_fields(snapshot, churn=None), ViewSpec())
    assert {row.closes for row in uncounted.ports} == {row.closes for row in uncounted.processes} == {None}


def test_an_aborted_connection_counts_but_joins_no_port_group(server: int) -> None:
    """close() with SO_LINGER 0 sends an RST through tcp_disconnect(), which clears the remote port
    before the socket is freed: its close event has remote port 0."""
    engine = Engine()
    engine.refresh()
    client = socket.create_connection(("127.0.0.1", server))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
    client.close()
    counted = count_closes(engine, {f"in:{server}": 0}, 1)
    assert counted == {f"in:{server}": 1}
    churn = engine.refresh().churn
    assert churn is not None and "out:0" not in churn.by_port and "in:0" not in churn.by_port
    engine.close()


def destroy_message(family: int, src: str, sport: int, dst: str, dport: int, cookie: int,
                    info: tuple[int, int, int] | None) -> bytes:
    """One SOCK_DIAG_BY_FAMILY message as the kernel broadcasts it, with a tcp_info attribute when
    ``info`` (retransmits, acked, received) is given, after an attribute of another kind."""
    def raw(address: str) -> bytes:
        return socket.inet_pton(family, address).ljust(16, b"\0")

    body = struct.pack("=BBBB", family, 7, 0, 0) + struct.pack(">HH", sport, dport) + raw(src) + raw(dst)
    body += struct.pack("=III", 0, cookie & 0xFFFFFFFF, cookie >> 32) + bytes(20)
    attributes = struct.pack("=HH", 8, 1) + bytes(4)  # INET_DIAG_MEMINFO-like: skipped
    if info is not None:
        tcp_info = bytearray(160)
        struct.pack_into("=I", tcp_info, 100, info[0])
        struct.pack_into("=QQ", tcp_info, 120, info[1], info[2])
        attributes += struct.pack("=HH", 4 + len(tcp_info), 2) + tcp_info
    length = 16 + len(body) + len(attributes)
    return struct.pack("=IHHII", length, 20, 0, 0, 0) + body + attributes


def test_raw_events_parse_every_message_of_a_batch() -> None:
    """Datagrams as `DestroyFeed.receive` lays them out: one of two messages (walked), an IPv6 one
    without tcp_info, and a message of another type (skipped)."""
    first = destroy_message(socket.AF_INET, "127.0.0.1", 40000, "10.1.2.3", 443, 1 << 40 | 7, (2, 102, 5))
    second = destroy_message(socket.AF_INET, "127.0.0.2", 80, "10.1.2.4", 50000, 8, (0, 1, 1))
    third = destroy_message(socket.AF_INET6, "::1", 8080, "2001:db8::1", 51000, 9, None)
    other = struct.pack("=IHHII", 20, 3, 0, 0, 0) + bytes(4)
    raw = RawEvents(size=1 << 17)
    for datagram in (first + second, third, other):
        raw.view[raw.used:raw.used + len(datagram)] = datagram
        raw.starts.append(raw.used)
        raw.used += (len(datagram) + 3) & ~3
    assert closed_sockets(raw.parse()) == [
        ClosedSocket(socket.AF_INET, "127.0.0.1", 40000, "10.1.2.3", 443, 1 << 40 | 7, 102, 5, 2),
        ClosedSocket(socket.AF_INET, "127.0.0.2", 80, "10.1.2.4", 50000, 8, 1, 1, 0),
        ClosedSocket(socket.AF_INET6, "::1", 8080, "2001:db8::1", 51000, 9, -1, -1, -1),
    ]
    assert len(raw) == 0 and closed_sockets(raw.parse()) == []


def test_refreshes_with_closes_never_import_numpy_ma(server: int) -> None:
    """Closes and opens are matched against the dumps' cookies without the plain np.unique that
    np.isin calls (it imports numpy.ma since numpy 2.3: --json is ~10 ms slower with it)."""
    probe = ("import sys, socket, time\n"
             "from socktop.model.engine import Engine\n"
             f"held = [socket.create_connection(('127.0.0.1', {server})) for _ in range(5)]\n"
             "engine = Engine()\n"
             "engine.refresh()\n"
             "for sock in held: sock.close()\n"
             f"fresh = [socket.create_connection(('127.0.0.1', {server})) for _ in range(5)]\n"
             "churn = engine.refresh().churn\n"
             "opens, closes = churn.opens, churn.closes\n"
             "for _ in range(300):  # the server ends close when the fixture's thread gets to them\n"
             "    closes += engine.refresh().churn.closes\n"
             "    if closes >= 10: break\n"
             "    time.sleep(0.1)\n"
             "print(opens >= 5, closes >= 10, 'numpy.ma' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=90, check=True)
    assert result.stdout.split() == ["True", "True", "False"]
