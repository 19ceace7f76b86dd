"""One demo or population child: ``python -m socktop.demo.worker ROLE JOB-JSON``.

A worker renames itself (/proc/self/comm) so that `ss -p`, ps and socktop
show the part it plays, and stops by itself once its time is up or its
parent is gone: a demo must never outlive the program that started it.
It polls getppid() rather than using PR_SET_PDEATHSIG, which fires when
the parent *thread* that spawned it ends, and the TUI spawns from threads.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .builders import LINGER_ABORT, LOOPBACK, TIME_WAIT_LEN, Job, SocketFarm

POLL = 0.25  # the longest a worker goes without checking its deadline and parent
CONNECT_TIMEOUT = 2.0
MAX_REPLY = 4096
COMM_LENGTH = 15  # TASK_COMM_LEN - 1
RENEW_MARGIN = 10.0  # seconds before the orphans' timeout that a CLOSE_WAIT leak is renewed


@dataclass(slots=True)
class Lifetime:
    """When a worker must stop: its deadline has passed or its parent has died."""

    deadline: float
    parent: int

    @classmethod
    def of(cls, job: Job) -> Lifetime:
        return cls(time.monotonic() + job.seconds, job.parent)

    def alive(self) -> bool:
        return time.monotonic() < self.deadline and os.getppid() == self.parent

    def nap(self, seconds: float = POLL) -> None:
        time.sleep(max(0.0, min(seconds, POLL, self.deadline - time.monotonic())))

    def wait_out(self) -> None:
        while self.alive():
            self.nap()


def paced(rate: float, lifetime: Lifetime) -> Iterator[None]:
    """Yield `rate` times a second while alive; after a stall, catch up by one second at most."""
    interval = 1.0 / rate
    due = time.monotonic()
    while lifetime.alive():
        now = time.monotonic()
        if now < due:
            lifetime.nap(due - now)
            continue
        due = max(due + interval, now - 1.0)
        yield


def adopt_listener(job: Job) -> socket.socket:
    """The listener the parent bound on a free port and passed down."""
    return socket.socket(fileno=job.listen_fd)


def connect(job: Job) -> socket.socket:
    return socket.create_connection((LOOPBACK[job.family], job.port), CONNECT_TIMEOUT)


def serve(job: Job, lifetime: Lifetime, reply: bytes, closes: bool) -> None:
    """Answer every request with `reply`; when a client hangs up, close, or (the bug) forget it.

    A forgotten socket stays in CLOSE_WAIT: no timer ends it, only close()
    or exit. A forgetful server stops accepting after `limit` of them.
    """
    listener = adopt_listener(job)
    listener.setblocking(False)
    forgotten: list[socket.socket] = []
    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        while lifetime.alive():
            for key, _events in selector.select(POLL):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is listener:
                    _accept(listener, selector)
                    continue
                try:
                    request = sock.recv(MAX_REPLY)
                    if request and reply:
                        sock.sendall(reply)
                except OSError:
                    request = b""
                if request:
                    continue
                selector.unregister(sock)
                if closes:
                    sock.close()
                    continue
                forgotten.append(sock)
                if len(forgotten) == job.limit:
                    selector.unregister(listener)


def _accept(listener: socket.socket, selector: selectors.BaseSelector) -> None:
    try:
        conn, _peer = listener.accept()
    except BlockingIOError:
        return
    conn.setblocking(False)
    selector.register(conn, selectors.EVENT_READ)


def churn(job: Job, lifetime: Lifetime, request: bytes, abort: bool = False) -> None:
    """`rate` short connections a second, `limit` in all: ask, read the answer, close first.

    The side that closes first keeps the connection: in TIME_WAIT for 60 s
    when the server closes in turn, in FIN_WAIT2 when it never does. With
    ``abort`` the close is an RST instead: nothing is left behind.
    """
    for _ in zip(range(job.limit), paced(job.rate, lifetime)):
        try:
            with connect(job) as sock:
                sock.sendall(request)
                _read_line(sock)
                if abort:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
        except OSError:
            pass  # server gone or saturated: a demo client just tries again at its next turn
    lifetime.wait_out()


def _read_line(sock: socket.socket) -> None:
    """Read the whole answer before closing: closing on unread data sends RST, not FIN."""
    received = b""
    while not received.endswith(b"\n") and len(received) < MAX_REPLY:
        chunk = sock.recv(MAX_REPLY)
        if not chunk:
            return
        received += chunk


def hold(job: Job, lifetime: Lifetime, prepare: Callable[[socket.socket], None]) -> None:
    """Open `count` connections, `prepare` each, and keep them until the end."""
    connections = [connect(job) for _ in range(job.count)]
    for sock in connections:
        prepare(sock)
    lifetime.wait_out()


def keep_alive(sock: socket.socket) -> None:
    """Idle pooled connections with TCP keepalive: `ss -o` shows timer:(keepalive,...)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)


def upload_then_half_close(sock: socket.socket) -> None:
    """Send a body and shutdown(SHUT_WR) to await an answer that never comes: FIN_WAIT2, no timeout."""
    sock.sendall(b"PUT /upload\n" + b"x" * 1024)
    sock.shutdown(socket.SHUT_WR)


def knock(job: Job, lifetime: Lifetime) -> None:
    """Keep `count` connection attempts on a listener that never accepts.

    The first backlog + 1 complete into its accept queue and sit there
    ESTABLISHED; the kernel drops the other SYNs, so those attempts stay in
    SYN_SENT until they time out (~2 min) and are started again.
    """
    attempts: list[socket.socket] = []
    while lifetime.alive():
        failed = [sock for sock in attempts if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)]
        for sock in failed:
            attempts.remove(sock)
            sock.close()
        while len(attempts) < job.count:
            sock = socket.socket(job.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex((LOOPBACK[job.family], job.port))
            attempts.append(sock)
        lifetime.nap()


def never_accept(job: Job, lifetime: Lifetime) -> None:
    """Listen and never call accept(): the queue fills, Recv-Q passes Send-Q."""
    with adopt_listener(job):
        lifetime.wait_out()


def farm(job: Job, lifetime: Lifetime) -> None:
    """Hold `count` ESTABLISHED pairs for a population; say "ready PORT" once built.

    SIGTERM unwinds through the farm's close(), which resets the pairs:
    a closed population leaves no TIME_WAIT behind to skew the next one.
    """
    signal.signal(signal.SIGTERM, _leave)
    with SocketFarm() as sockets:
        built = sockets.established(job.count, job.family)
        print(f"ready {built.port}", flush=True)
        lifetime.wait_out()


def keep_time_wait(job: Job, lifetime: Lifetime) -> None:
    """`count` TIME_WAIT toward one port and `limit` more spread over `spread` others, kept so:
    each batch is made again once the kernel has freed it; says "ready PORT..." once built."""
    signal.signal(signal.SIGTERM, _leave)
    spread = [job.limit // job.spread + (index < job.limit % job.spread) for index in range(job.spread)]
    with SocketFarm() as sockets:
        batches = [sockets.time_wait(n, job.family) for n in (job.count, *spread) if n]
        made = [time.monotonic()] * len(batches)
        print("ready", *(built.port for built in batches), flush=True)
        while lifetime.alive():
            for index, built in enumerate(batches):
                if time.monotonic() - made[index] > TIME_WAIT_LEN and lifetime.alive():
                    sockets.time_wait_again(built)
                    made[index] = time.monotonic()
            lifetime.nap()


def leak_close_wait(job: Job, lifetime: Lifetime) -> None:
    """Hold `count` CLOSE_WAIT whose clients closed (orphaned FIN_WAIT2), renewed before
    tcp_fin_timeout frees the orphans: a new set is built, then the old one reset."""
    signal.signal(signal.SIGTERM, _leave)
    renew_after = max(1.0, int(Path("/proc/sys/net/ipv4/tcp_fin_timeout").read_text()) - RENEW_MARGIN)
    held = SocketFarm()
    try:
        print("ready", held.close_wait(job.count, job.family).port, flush=True)
        while lifetime.alive():
            built_at = time.monotonic()
            while lifetime.alive() and time.monotonic() - built_at < renew_after:
                lifetime.nap()
            if lifetime.alive():
                fresh = SocketFarm()
                fresh.close_wait(job.count, job.family)
                held.close()
                held = fresh
    finally:
        held.close()


def _leave(signum: int, frame: object) -> None:
    raise SystemExit(0)


ROLES: dict[str, Callable[[Job, Lifetime], None]] = {
    "leaky-api": partial(serve, reply=b"200 OK\n", closes=False),
    "api-client": partial(churn, request=b"GET /orders\n"),
    "cache-srv": partial(serve, reply=b"HIT\n", closes=True),
    "crawler": partial(churn, request=b"GET /page\n"),
    "pg-fake": partial(serve, reply=b"1\n", closes=True),
    "db-pool": partial(hold, prepare=keep_alive),
    "upload-srv": partial(serve, reply=b"", closes=False),
    "half-closer": partial(hold, prepare=upload_then_half_close),
    "slow-acceptor": never_accept,
    "stuck-client": knock,
    "sock-farm": farm,
    "tw-keeper": keep_time_wait,
    "cw-leak": leak_close_wait,
    "churner": partial(churn, request=b"GET /\n", abort=True),
}


def main(args: list[str]) -> int:
    job = Job.parse(args)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us by PID
    Path("/proc/self/comm").write_text(job.role[:COMM_LENGTH])
    ROLES[job.role](job, Lifetime.of(job))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
