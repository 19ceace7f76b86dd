"""Sockets in known TCP states on loopback, for tests, screenshots and the benchmark.

`SocketFarm` builds them in this process and drives both ends of every
connection, waiting through TCP_INFO until the kernel has reached the
promised state: on loopback the ACK of a FIN is delayed (tens of ms), so
"close, then look" would catch FIN_WAIT1 rather than FIN_WAIT2.
`build_population` spreads a large table over child processes, since
one process cannot hold 50,000 file descriptors. Every listener binds
port 0 on loopback: parallel runs never collide and nothing leaves the host.
"""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TypeVar

from ..collect.records import SocketRecord, TcpState

LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}

MAX_BUILD = 20_000  # connections in one call: more is a mistake, not a test
FD_HEADROOM = 64  # descriptors left for Python, pipes and the caller
SETTLE_TIMEOUT = 5.0  # a state not reached by then on loopback is not coming
TIME_WAIT_CHUNK = 512  # pairs open at once while building TIME_WAIT: bounds the fds used

PAIRS_PER_CHILD = 8_500  # 17,000 descriptors: under the ~18k a child may hold
MAX_POPULATION = 60_000  # sockets; each pair also takes an ephemeral port for its lifetime
POPULATION_LIFETIME = 1_800.0  # seconds a population outlives a caller that forgot to close it
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 3.0
WORKER_MODULE = "socktop.demo.worker"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds `socktop`

_TCP_INFO = struct.Struct("=B23xI")  # tcp_info: tcpi_state ... tcpi_unacked (a listener's accept queue)
_LINGER_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and skips TIME_WAIT


class BuildError(RuntimeError):
    """The sockets asked for cannot be built here; the message says why."""


def raise_fd_limit() -> int:
    """Lift RLIMIT_NOFILE's soft limit to the hard one where allowed; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # an unlimited hard limit is capped by fs.nr_open: keep what we have
    return soft


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def listen(family: int, backlog: int) -> socket.socket:
    """A listener on an ephemeral loopback port."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK[family], 0))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def tcp_state(sock: socket.socket) -> TcpState:
    """The kernel's state of a socket we hold."""
    return TcpState(_TCP_INFO.unpack(_tcp_info(sock))[0])


def accept_queue(listener: socket.socket) -> int:
    """How many connections wait in a listener's accept queue (tcpi_unacked of a LISTEN socket)."""
    return _TCP_INFO.unpack(_tcp_info(listener))[1]


def _tcp_info(sock: socket.socket) -> bytes:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)


def await_state(sockets: Iterable[socket.socket], state: TcpState) -> None:
    """Return once every socket is in `state`."""
    for sock in sockets:
        _settle(partial(tcp_state, sock), state, "a socket's state")


def _settle(probe: Callable[[], object], expected: object, what: str) -> None:
    """Poll the kernel until `probe` returns `expected`; BuildError after SETTLE_TIMEOUT."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while (current := probe()) != expected:
        if time.monotonic() > deadline:
            raise BuildError(f"{what} stayed {current!r}, expected {expected!r}")
        time.sleep(0.001)


def _sysctl_range(name: str) -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4", name).read_text().split()
    return int(low), int(high)


def _sockstat_time_wait() -> int:
    fields = Path("/proc/net/sockstat").read_text().split("TCP:", 1)[1].split()
    return int(fields[fields.index("tw") + 1])


_Closable = TypeVar("_Closable", bound="ClosedOnExit")


class ClosedOnExit:
    """`with` support: what a builder made goes when the block ends, even on error."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Closable) -> _Closable:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Built:
    """What one builder call left on loopback, and the states it promises.

    Every socket of a build has the listener's port on one side and one of
    ``client_ports`` on the other (or no peer: the listener). Filtering on
    both keeps out older sockets, e.g. TIME_WAIT of an earlier run towards
    a port the kernel has since handed out again.
    """

    family: int
    port: int
    client_ports: frozenset[int]
    expected: Mapping[TcpState, int]

    def covers(self, record: SocketRecord) -> bool:
        if record.family != self.family:
            return False
        if record.local_port == self.port:
            return record.remote_port == 0 or record.remote_port in self.client_ports
        return record.remote_port == self.port and record.local_port in self.client_ports

    def states(self, records: Iterable[SocketRecord]) -> Counter[TcpState]:
        return Counter(record.state for record in records if self.covers(record))


class SocketFarm(ClosedOnExit):
    """Builds sockets in known states on loopback and closes all it holds on exit.

    Each builder makes its own listener (kept open, so its port is not
    handed out again while the farm lives) and returns a `Built`.
    """

    def __init__(self) -> None:
        self.fd_limit = raise_fd_limit()
        self._held: list[socket.socket] = []

    def close(self) -> None:
        """Reset rather than close: no TIME_WAIT of ours outlives the farm and skews the next count."""
        for sock in self._held:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        _close_all(self._held)
        self._held.clear()

    def listener(self, family: int = socket.AF_INET, backlog: int = 16) -> Built:
        listener = self._listen(family, backlog, sockets=1)
        return self._built(listener, (), {TcpState.LISTEN: 1})

    def established(self, n: int, family: int = socket.AF_INET) -> Built:
        """n connected pairs, both ends ESTABLISHED and held."""
        listener, clients, _servers = self._pairs(n, family)
        return self._built(listener, map(port_of, clients), {TcpState.LISTEN: 1, TcpState.ESTABLISHED: 2 * n})

    def fin_wait2(self, n: int, family: int = socket.AF_INET) -> Built:
        """n half-closed pairs, both ends held: the client shut down writing
        (FIN_WAIT2, no timeout while held), the server never closes (CLOSE_WAIT)."""
        listener, clients, servers = self._pairs(n, family)
        _half_close(clients, servers)
        return self._built(listener, map(port_of, clients),
                           {TcpState.LISTEN: 1, TcpState.FIN_WAIT2: n, TcpState.CLOSE_WAIT: n})

    def close_wait(self, n: int, family: int = socket.AF_INET) -> Built:
        """n server ends in CLOSE_WAIT, held; their clients closed and linger,
        unowned, in FIN_WAIT2 for net.ipv4.tcp_fin_timeout."""
        listener, clients, servers = self._pairs(n, family)
        _half_close(clients, servers)
        built = self._built(listener, map(port_of, clients),
                            {TcpState.LISTEN: 1, TcpState.CLOSE_WAIT: n, TcpState.FIN_WAIT2: n})
        self._release(clients)
        return built

    def time_wait(self, n: int, family: int = socket.AF_INET) -> Built:
        """n client-side TIME_WAIT (60 s, no descriptor): the client closes first,
        then the server; both ends are gone from this process afterwards."""
        _check_count(n)
        port_low, port_high = _sysctl_range("ip_local_port_range")
        if n > port_high - port_low + 1 - 1024:
            raise BuildError(f"{n} TIME_WAIT towards one port would exhaust "
                             f"ip_local_port_range {port_low}-{port_high}")
        max_buckets = int(Path("/proc/sys/net/ipv4/tcp_max_tw_buckets").read_text())
        if _sockstat_time_wait() + n > max_buckets:
            raise BuildError(f"{n} more TIME_WAIT would pass tcp_max_tw_buckets ({max_buckets}): "
                             "the kernel would drop them")
        listener = self._listen(family, backlog=TIME_WAIT_CHUNK, sockets=1 + 2 * min(n, TIME_WAIT_CHUNK))
        client_ports: list[int] = []
        for start in range(0, n, TIME_WAIT_CHUNK):
            clients, servers = _connect_pairs(listener, min(TIME_WAIT_CHUNK, n - start))
            try:
                client_ports.extend(map(port_of, clients))
                _half_close(clients, servers)
                for server in servers:
                    server.shutdown(socket.SHUT_WR)  # LAST_ACK; the client's ACK comes from TIME_WAIT
                await_state(servers, TcpState.CLOSE)
            finally:
                _close_all(clients + servers)
        return self._built(listener, client_ports, {TcpState.LISTEN: 1, TcpState.TIME_WAIT: n})

    def full_accept_queue(self, family: int = socket.AF_INET, backlog: int = 4) -> Built:
        """A listener that never accepts, with backlog + 1 connections queued:
        Linux queues one more than the backlog, then drops further SYNs."""
        _check_count(backlog)
        listener = self._listen(family, backlog, sockets=2 + backlog)
        clients = [self._keep(socket.create_connection((LOOPBACK[family], port_of(listener)), SETTLE_TIMEOUT))
                   for _ in range(backlog + 1)]
        _settle(partial(accept_queue, listener), backlog + 1, "the accept queue")  # an entry needs the last ACK
        return self._built(listener, map(port_of, clients),
                           {TcpState.LISTEN: 1, TcpState.ESTABLISHED: 2 * (backlog + 1)})

    def _pairs(self, n: int, family: int) -> tuple[socket.socket, list[socket.socket], list[socket.socket]]:
        _check_count(n)
        listener = self._listen(family, backlog=64, sockets=1 + 2 * n)
        clients, servers = _connect_pairs(listener, n)
        self._held.extend(clients + servers)
        return listener, clients, servers

    def _listen(self, family: int, backlog: int, sockets: int) -> socket.socket:
        """A held listener, after checking that `sockets` more descriptors fit."""
        needed = open_fds() + sockets + FD_HEADROOM
        if needed > self.fd_limit:
            raise BuildError(
                f"{sockets} more sockets need {needed} descriptors, over RLIMIT_NOFILE {self.fd_limit}: "
                "build_population() spreads them over child processes")
        return self._keep(listen(family, backlog))

    def _keep(self, sock: socket.socket) -> socket.socket:
        self._held.append(sock)
        return sock

    def _release(self, sockets: list[socket.socket]) -> None:
        closing = set(sockets)
        self._held = [sock for sock in self._held if sock not in closing]
        _close_all(sockets)

    @staticmethod
    def _built(listener: socket.socket, client_ports: Iterable[int], expected: dict[TcpState, int]) -> Built:
        return Built(listener.family, port_of(listener), frozenset(client_ports), expected)


def _check_count(n: int) -> None:
    if not 1 <= n <= MAX_BUILD:
        raise ValueError(f"between 1 and {MAX_BUILD} connections per build, not {n}")


def _connect_pairs(listener: socket.socket, n: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """n connections to `listener`, accepted one by one so that ends pair up in order."""
    address = (LOOPBACK[listener.family], port_of(listener))
    clients: list[socket.socket] = []
    servers: list[socket.socket] = []
    try:
        for _ in range(n):
            clients.append(socket.create_connection(address, SETTLE_TIMEOUT))
            servers.append(listener.accept()[0])
    except OSError:
        _close_all(clients + servers)
        raise
    return clients, servers


def _close_all(sockets: Iterable[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def _half_close(clients: list[socket.socket], servers: list[socket.socket]) -> None:
    """Clients send FIN and wait for its ACK: FIN_WAIT2 on their side, CLOSE_WAIT on the server's."""
    for client in clients:
        client.shutdown(socket.SHUT_WR)
    await_state(clients, TcpState.FIN_WAIT2)
    await_state(servers, TcpState.CLOSE_WAIT)


# --- child processes ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """What one worker process plays; travels to the child as JSON on its command line."""

    role: str
    seconds: float  # the child stops by itself after this long
    family: int = socket.AF_INET
    listen_fd: int = -1  # a listener the parent bound and handed over
    port: int = 0  # the server a client connects to
    rate: float = 0.0  # connections per second
    limit: int = 0  # most connections in all
    count: int = 0  # connections (or pairs) to open and hold
    parent: int = 0  # the spawner's pid: the child stops when it is gone, even before it started

    def argv(self) -> list[str]:
        options = asdict(self)
        del options["role"]
        return [sys.executable, "-m", WORKER_MODULE, self.role, json.dumps(options)]

    @classmethod
    def parse(cls, args: Sequence[str]) -> Job:
        role, options = args
        return cls(role, **json.loads(options))


def spawn_worker(job: Job, listener: socket.socket | None = None,
                 stdout: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start a worker by exec, never fork (the TUI runs threads).

    A listener moves to the child: the parent closes its copy so that
    `ss -p` and socktop name the child alone.
    """
    job = replace(job, parent=os.getpid())
    passed: tuple[int, ...] = ()
    if listener is not None:
        job = replace(job, listen_fd=listener.fileno())
        passed = (listener.fileno(),)
    search_path = os.pathsep.join(filter(None, (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH"))))
    process = subprocess.Popen(
        job.argv(), stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, pass_fds=passed,
        env={**os.environ, "PYTHONPATH": search_path},  # the children run this very copy of socktop
    )
    if listener is not None:
        listener.close()
    return process


def stop_processes(processes: Iterable[subprocess.Popen[bytes]], timeout: float = STOP_TIMEOUT) -> None:
    """Terminate each by PID, kill what still runs after `timeout`, reap all."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def exit_report(process: subprocess.Popen[bytes]) -> str:
    """How a dead child ended, with the last lines it wrote to stderr."""
    tail = process.stderr.read().decode(errors="replace").strip().splitlines()[-5:] if process.stderr else []
    return f"exit code {process.returncode}" + "".join(f"\n  {line}" for line in tail)


@dataclass(slots=True)
class Population(ClosedOnExit):
    """ESTABLISHED pairs held by `sock-farm` child processes, each with its listener."""

    processes: list[subprocess.Popen[bytes]]
    ports: tuple[int, ...]  # each child's listener: every socket has one of them on a side
    sockets: int
    family: int = socket.AF_INET

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(process.pid for process in self.processes)

    def close(self) -> None:
        stop_processes(self.processes)


def build_population(total: int, family: int = socket.AF_INET,
                     lifetime: float = POPULATION_LIFETIME) -> Population:
    """About `total` sockets (total - 1 when the split leaves an odd one) in child processes.

    Children stop by themselves after `lifetime` seconds or when this
    process dies; close() stops them at once.
    """
    if not 2 <= total <= MAX_POPULATION:
        raise ValueError(f"a population holds between 2 and {MAX_POPULATION} sockets, not {total}")
    children = -(-total // (2 * PAIRS_PER_CHILD + 1))
    pairs = (total - children) // 2
    shares = [pairs // children + (index < pairs % children) for index in range(children)]
    processes = [spawn_worker(Job("sock-farm", lifetime, family, count=share), stdout=subprocess.PIPE)
                 for share in shares]
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        ports = tuple(_await_ready(process, deadline) for process in processes)
    except BaseException:
        stop_processes(processes)
        raise
    return Population(processes, ports, 2 * pairs + children, family)


def _await_ready(process: subprocess.Popen[bytes], deadline: float) -> int:
    """The listener port a `sock-farm` child prints once its pairs are built."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise BuildError(f"sock-farm {process.pid} not ready after {READY_TIMEOUT:g} s")
    line = process.stdout.readline().decode()
    if not line.startswith("ready "):
        process.wait(STOP_TIMEOUT)
        raise BuildError(f"sock-farm {process.pid} failed: {exit_report(process)}")
    return int(line.split()[1])
