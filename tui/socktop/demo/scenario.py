"""The live demo: child processes that make a loopback socket table worth watching.

Each role is a separate process, started by exec (`worker`), so that
socktop, `ss -p` and ps show who holds what: a server leaking CLOSE_WAIT,
a crawler piling up TIME_WAIT, an idle keepalive pool, half-closed
uploads, a listener whose accept queue is full. The parent binds every
listener on a free loopback port and hands it to its server, so ports are
known as soon as start() returns and no client races its server.
"""

from __future__ import annotations

import math
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from .builders import Job, exit_report, listen, port_of, spawn_worker, stop_processes

DEFAULT_DURATION = 600.0
MAX_DURATION = 86_400.0
MIN_RATE = 0.1  # connections per second
MAX_LEAK_RATE = 100.0
MAX_LEAKS = 10_000  # the leaking server holds one descriptor per CLOSE_WAIT
MAX_CRAWL_RATE = 400.0  # 60 s of TIME_WAIT at this rate still fits ip_local_port_range towards one port
MAX_HELD = 1_000  # pooled, half-closed or queued connections of one role
SERVER_BACKLOG = 128
CHECK_INTERVAL = 0.5
TIME_WAIT_SECONDS = 60  # TCP_TIMEWAIT_LEN


class ScenarioError(RuntimeError):
    """A demo process ended before its time; the message says which and how."""


@dataclass(slots=True, eq=False)
class DemoScenario:
    """The demo's processes: start() returns at once, stop() ends them by PID.

    The knobs are fixed at construction; ``ports`` (server role -> loopback
    port), ``pids`` (role -> pid) and ``shows`` (role -> what it puts in
    the socket table) are filled by start().
    """

    duration: float = DEFAULT_DURATION
    _: KW_ONLY
    family: int = socket.AF_INET
    leak_rate: float = 3.0  # CLOSE_WAIT per second at leaky-api
    leak_limit: int = 400
    crawl_rate: float = 80.0  # crawler connections per second, each a TIME_WAIT for 60 s
    pool_size: int = 4
    half_closed: int = 6
    backlog: int = 8  # slow-acceptor's listen backlog
    syn_overflow: int = 2  # attempts beyond the full queue, left in SYN_SENT
    ports: dict[str, int] = field(default_factory=dict, init=False)
    pids: dict[str, int] = field(default_factory=dict, init=False)
    shows: dict[str, str] = field(default_factory=dict, init=False)
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False, repr=False)
    _deadline: float = field(default=0.0, init=False, repr=False)
    _stopped: bool = field(default=False, init=False, repr=False)
    # the TUI may stop the demo from another thread than the one that started it
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        _check("duration", self.duration, 1.0, MAX_DURATION)
        _check("leak_rate", self.leak_rate, MIN_RATE, MAX_LEAK_RATE)
        _check("leak_limit", self.leak_limit, 1, MAX_LEAKS)
        _check("crawl_rate", self.crawl_rate, MIN_RATE, MAX_CRAWL_RATE)
        for name in ("pool_size", "half_closed", "backlog"):
            _check(name, getattr(self, name), 1, MAX_HELD)
        _check("syn_overflow", self.syn_overflow, 0, MAX_HELD)

    def __enter__(self) -> DemoScenario:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> DemoScenario:
        """Bind the listeners, start every role; returns without waiting for them."""
        if self._deadline:
            raise RuntimeError("a demo scenario starts once")
        self._deadline = time.monotonic() + self.duration
        listeners = {role: listen(self.family, backlog) for role, backlog in self._servers().items()}
        self.ports = {role: port_of(listener) for role, listener in listeners.items()}
        try:
            for job, shows in self._plan():
                self._processes[job.role] = spawn_worker(job, listeners.pop(job.role, None))
                self.pids[job.role] = self._processes[job.role].pid
                self.shows[job.role] = shows
        except BaseException:
            self.stop()
            raise
        finally:
            for listener in listeners.values():
                listener.close()
        return self

    def stop(self) -> None:
        """Terminate every role by PID, kill stragglers, reap them. Safe to call twice."""
        with self._lock:
            stop_processes(self._processes.values())
            self._stopped = True

    def check(self) -> None:
        """Raise ScenarioError if a role has died before its time (or before stop())."""
        if self._stopped:
            return
        for role, process in self._processes.items():
            if process.poll() not in (None, 0):
                raise ScenarioError(f"{role} (pid {process.pid}) stopped: {exit_report(process)}")

    def wait(self) -> bool:
        """Block until the duration has elapsed, then stop; False when Ctrl-C stopped it first."""
        try:
            while (left := self._deadline - time.monotonic()) > 0:
                self.check()
                time.sleep(min(left, CHECK_INTERVAL))
        except KeyboardInterrupt:
            return False
        finally:
            self.stop()
        return True

    def describe(self) -> list[str]:
        """One line per role: name, pid, port and what it shows."""
        return [f"{role:<14} pid {pid:<8} {_port_text(self.ports.get(role)):<12} {self.shows[role]}"
                for role, pid in self.pids.items()]

    def _servers(self) -> dict[str, int]:
        """Server roles and their listen backlog."""
        return {"leaky-api": SERVER_BACKLOG, "cache-srv": SERVER_BACKLOG, "pg-fake": SERVER_BACKLOG,
                "upload-srv": SERVER_BACKLOG, "slow-acceptor": self.backlog}

    def _plan(self) -> list[tuple[Job, str]]:
        """Every role's job, servers before their clients, and what it shows."""
        seconds = round(max(0.0, self._deadline - time.monotonic()), 1)  # shown in ps: keep it short
        family, ports = self.family, self.ports
        crawls = math.ceil(self.crawl_rate * self.duration)
        queued = self.backlog + 1
        return [
            (Job("leaky-api", seconds, family, limit=self.leak_limit),
             f"never closes when a client hangs up: CLOSE_WAIT +{self.leak_rate:g}/s, up to {self.leak_limit}"),
            (Job("api-client", seconds, family, port=ports["leaky-api"], rate=self.leak_rate, limit=self.leak_limit),
             "calls leaky-api and hangs up first: unowned FIN_WAIT2, each for tcp_fin_timeout"),
            (Job("cache-srv", seconds, family),
             "well-behaved server: closes once its client has closed"),
            (Job("crawler", seconds, family, port=ports["cache-srv"], rate=self.crawl_rate, limit=crawls),
             f"{self.crawl_rate:g} short connections/s to cache-srv, closing first: TIME_WAIT climbs for "
             f"{TIME_WAIT_SECONDS} s toward {self.crawl_rate * TIME_WAIT_SECONDS:.0f} "
             "(loopback tw_reuse recycles some)"),
            (Job("pg-fake", seconds, family),
             "database stand-in: holds db-pool's connections"),
            (Job("db-pool", seconds, family, port=ports["pg-fake"], count=self.pool_size),
             f"{self.pool_size} idle pooled connections, ESTABLISHED with a keepalive timer"),
            (Job("upload-srv", seconds, family, limit=self.half_closed),
             f"reads uploads, never answers nor closes: {self.half_closed} CLOSE_WAIT"),
            (Job("half-closer", seconds, family, port=ports["upload-srv"], count=self.half_closed),
             f"uploads, shutdown(SHUT_WR), waits forever: {self.half_closed} FIN_WAIT2 with no timer"),
            (Job("slow-acceptor", seconds, family),
             f"never accepts: accept queue full, Recv-Q {queued} over Send-Q {self.backlog}"),
            (Job("stuck-client", seconds, family, port=ports["slow-acceptor"], count=queued + self.syn_overflow),
             f"{queued} connections queued at slow-acceptor, {self.syn_overflow} more stuck in SYN_SENT"),
        ]


def _check(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be within {low:g}..{high:g}, not {value}")


def _port_text(port: int | None) -> str:
    return f"port {port}" if port else ""


def run_demo(duration: float = DEFAULT_DURATION, echo: Callable[[str], None] = print) -> int:
    """`socktop demo`: start the scenario, say what runs where, wait; the exit code."""
    scenario = DemoScenario(duration)
    with scenario:
        echo(f"socktop demo on loopback for {duration:g} s (Ctrl-C stops it):")
        for line in scenario.describe():
            echo("  " + line)
        echo("Watch it with socktop in another terminal, or: ss -tanp state close-wait")
        try:
            finished = scenario.wait()
        except ScenarioError as error:
            echo(f"demo failed: {error}")
            return 1
    echo("demo finished" if finished else "demo stopped")
    return 0
