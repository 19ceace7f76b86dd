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
from dataclasses import asdict, dataclass, field, replace
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
MAX_POPULATION = 210_000  # sockets; each pair also takes an ephemeral port for its lifetime
POPULATION_LIFETIME = 1_800.0  # seconds a population outlives a caller that forgot to close it
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 3.0
WORKER_MODULE = "socktop.demo.worker"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds `socktop`

_TCP_INFO = struct.Struct("=B23xI")  # tcp_info: tcpi_state ... tcpi_unacked (a listener's accept queue)
LINGER_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and skips TIME_WAIT


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


def sockstat_time_wait() -> int:
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
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
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
        if sockstat_time_wait() + n > max_buckets:
            raise BuildError(f"{n} more TIME_WAIT would pass tcp_max_tw_buckets ({max_buckets}): "
                             "the kernel would drop them")
        listener = self._listen(family, backlog=TIME_WAIT_CHUNK, sockets=1 + 2 * min(n, TIME_WAIT_CHUNK))
        return self._built(listener, _time_wait_toward(listener, n), {TcpState.LISTEN: 1, TcpState.TIME_WAIT: n})

    def time_wait_again(self, built: Built) -> Built:
        """The TIME_WAIT of an earlier `time_wait` made anew toward the same listener, once
        the kernel has freed them (TCP_TIMEWAIT_LEN after they were made)."""
        (listener,) = [sock for sock in self._held if sock.family == built.family and port_of(sock) == built.port]
        n = built.expected[TcpState.TIME_WAIT]
        return self._built(listener, _time_wait_toward(listener, n), {TcpState.LISTEN: 1, TcpState.TIME_WAIT: n})

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


def _time_wait_toward(listener: socket.socket, n: int) -> list[int]:
    """Make n client-side TIME_WAIT toward ``listener``, TIME_WAIT_CHUNK pairs at a time; their client ports."""
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
    return client_ports


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
    spread: int = 0  # destinations (listeners) beside the main one
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
    """Sockets held or made by child processes: ESTABLISHED pairs of `sock-farm` children
    (`build_population`), or the incident mix (`build_incident`)."""

    processes: list[subprocess.Popen[bytes]]
    ports: tuple[int, ...]  # the children's listeners: every socket has one of them on a side
    sockets: int
    family: int = socket.AF_INET
    expected: Mapping[TcpState, int] = field(default_factory=dict)  # per state, about (the incident mix churns)

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
    children = _farm_children(total)
    pairs = (total - children) // 2
    processes = [spawn_worker(job, stdout=subprocess.PIPE) for job in _farm_jobs(pairs, family, lifetime)]
    ports = _await_all(processes)
    return Population(processes, ports, 2 * pairs + children, family,
                      {TcpState.ESTABLISHED: 2 * pairs, TcpState.LISTEN: children})


def _await_all(processes: list[subprocess.Popen[bytes]]) -> tuple[int, ...]:
    """The listener ports every child prints once built; stops them all when one fails."""
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        return tuple(port for process in processes for port in _await_ready(process, deadline))
    except BaseException:
        stop_processes(processes)
        raise


def _await_ready(process: subprocess.Popen[bytes], deadline: float) -> tuple[int, ...]:
    """The listener ports a child prints ("ready PORT...") once its sockets are built."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise BuildError(f"worker {process.pid} not ready after {READY_TIMEOUT:g} s")
    line = process.stdout.readline().decode()
    if not line.startswith("ready "):
        process.wait(STOP_TIMEOUT)
        raise BuildError(f"worker {process.pid} failed: {exit_report(process)}")
    return tuple(map(int, line.split()[1:]))


# --- the incident mix ----------------------------------------------------------

TIME_WAIT_LEN = 60.0  # TCP_TIMEWAIT_LEN (include/net/tcp.h): how long the kernel keeps a TIME_WAIT
HOT_TIME_WAIT_MAX = 12_000  # toward one destination: under the half of ip_local_port_range (one parity) that
# connect() tries first (Linux 4.6+); past it, loopback tcp_tw_reuse recycles TIME_WAIT older than 1 s instead
MIN_INCIDENT = 1_000
DEFAULT_CHURN_RATE = 200.0  # connect/close a second, each closed with RST (it adds no TIME_WAIT)


@dataclass(frozen=True, slots=True)
class IncidentPlan:
    """How an incident of about ``total`` sockets splits, as measured on boxes filling up with
    TIME_WAIT: 55% TIME_WAIT (most toward one hot destination, the rest spread over many),
    40% ESTABLISHED, 2% CLOSE_WAIT leaked by a server, as many orphaned FIN_WAIT2 (their
    clients, gone), and connections opened and closed all the time."""

    hot_time_wait: int
    other_time_wait: int
    destinations: int  # listeners the other TIME_WAIT are spread over
    established_pairs: int
    close_wait: int
    churn_rate: float

    @classmethod
    def of(cls, total: int, churn_rate: float = DEFAULT_CHURN_RATE) -> IncidentPlan:
        if not MIN_INCIDENT <= total <= MAX_POPULATION:
            raise ValueError(f"an incident holds between {MIN_INCIDENT} and {MAX_POPULATION} sockets, not {total}")
        time_wait = total * 55 // 100
        hot = min(HOT_TIME_WAIT_MAX, time_wait * 6 // 10)
        destinations = min(200, max(10, (time_wait - hot) // 50))
        close_wait = total // 50
        children = _farm_children(total)
        listeners = children + 1 + destinations + 1 + 1  # farms, hot, others, the leak, the churn
        pairs = (total - time_wait - 2 * close_wait - listeners) // 2
        return cls(hot, time_wait - hot, destinations, pairs, close_wait, churn_rate)

    @property
    def expected(self) -> dict[TcpState, int]:
        """Counts per state, churn in flight aside."""
        return {
            TcpState.TIME_WAIT: self.hot_time_wait + self.other_time_wait,
            TcpState.ESTABLISHED: 2 * self.established_pairs,
            TcpState.CLOSE_WAIT: self.close_wait,
            TcpState.FIN_WAIT2: self.close_wait,
            TcpState.LISTEN: _farm_children(2 * self.established_pairs) + self.destinations + 3,
        }


def _farm_children(sockets: int) -> int:
    return -(-sockets // (2 * PAIRS_PER_CHILD + 1))


def _farm_jobs(pairs: int, family: int, seconds: float) -> list[Job]:
    """`sock-farm` jobs sharing ``pairs`` ESTABLISHED pairs, each child under its descriptor limit."""
    children = _farm_children(2 * pairs + 1)
    return [Job("sock-farm", seconds, family, count=pairs // children + (index < pairs % children))
            for index in range(children)]


def build_incident(total: int, churn_rate: float = DEFAULT_CHURN_RATE, family: int = socket.AF_INET,
                   lifetime: float = POPULATION_LIFETIME) -> Population:
    """An incident of about `total` sockets (`IncidentPlan`), kept so while it lives.

    `tw-keeper` makes every TIME_WAIT again once the kernel has freed it,
    `cw-leak` renews its CLOSE_WAIT before their orphaned FIN_WAIT2 peers
    time out (tcp_fin_timeout), `sock-farm` children hold the ESTABLISHED
    pairs, and `churner` connects to `cache-srv` `churn_rate` times a
    second, closing with RST so the table keeps its size. Children stop
    by themselves after `lifetime` seconds or when this process dies.
    """
    plan = IncidentPlan.of(total, churn_rate)
    seconds = round(lifetime, 1)
    jobs = _farm_jobs(plan.established_pairs, family, seconds)
    jobs.append(Job("tw-keeper", seconds, family, count=plan.hot_time_wait, limit=plan.other_time_wait,
                    spread=plan.destinations))
    jobs.append(Job("cw-leak", seconds, family, count=plan.close_wait))
    processes = [spawn_worker(job, stdout=subprocess.PIPE) for job in jobs]
    ports = _await_all(processes)
    server = listen(family, backlog=1024)
    churn_port = port_of(server)
    try:
        processes.append(spawn_worker(Job("cache-srv", seconds, family), server))
        churn = Job("churner", seconds, family, port=churn_port, rate=churn_rate, limit=int(churn_rate * seconds))
        processes.append(spawn_worker(churn))
    except BaseException:
        server.close()
        stop_processes(processes)
        raise
    expected = plan.expected
    return Population(processes, (*ports, churn_port), sum(expected.values()), family, expected)
