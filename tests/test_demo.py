"""The demo's builders and scenario, checked against the kernel's own socket table.

Every count is filtered by the ports the code under test reports: TIME_WAIT
of earlier runs lingers 60 s, and other tests share the loopback.
"""

from __future__ import annotations

import _thread
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from socktop.collect.netlink import NetlinkBackend
from socktop.collect.records import SocketRecord, TcpState, TimerKind
from socktop.demo import BuildError, Built, DemoScenario, SocketFarm, build_population, run_demo
from socktop.demo.builders import MAX_BUILD, IncidentPlan, build_incident, open_fds

FAMILIES = [pytest.param(socket.AF_INET, id="v4"), pytest.param(socket.AF_INET6, id="v6")]


@pytest.fixture(scope="module")
def backend() -> NetlinkBackend:
    return NetlinkBackend()


def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Children start in ~0.1 s (seconds on a loaded machine) and act at their own pace: poll rather
    than sleep blindly."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def owned_by(pid: int, records: list[SocketRecord]) -> list[SocketRecord]:
    inodes = socket_inodes(pid)
    return [record for record in records if record.inode in inodes]


def covered(built: Built, records: list[SocketRecord]) -> list[SocketRecord]:
    return [record for record in records if built.covers(record)]


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie its new parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --- builders -----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_builders_leave_exact_counts_per_state(family: int, backend: NetlinkBackend) -> None:
    with SocketFarm() as farm:
        builds = [farm.listener(family), farm.established(5, family), farm.close_wait(4, family),
                  farm.fin_wait2(3, family), farm.time_wait(20, family), farm.full_accept_queue(family, backlog=3)]
        records = backend.sockets()
        for built in builds:
            assert built.states(records) == built.expected
    assert [dict(built.expected) for built in builds] == [
        {TcpState.LISTEN: 1},
        {TcpState.LISTEN: 1, TcpState.ESTABLISHED: 10},
        {TcpState.LISTEN: 1, TcpState.CLOSE_WAIT: 4, TcpState.FIN_WAIT2: 4},
        {TcpState.LISTEN: 1, TcpState.FIN_WAIT2: 3, TcpState.CLOSE_WAIT: 3},
        {TcpState.LISTEN: 1, TcpState.TIME_WAIT: 20},
        {TcpState.LISTEN: 1, TcpState.ESTABLISHED: 8},
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_builders_hold_what_they_promise(family: int, backend: NetlinkBackend) -> None:
    with SocketFarm() as farm:
        established, close_wait = farm.established(2, family), farm.close_wait(2, family)
        fin_wait2, queue = farm.fin_wait2(2, family), farm.full_accept_queue(family, backlog=2)
        time_wait = farm.time_wait(3, family)
        records = backend.sockets()
        # close(): the client ends are the kernel's alone; shutdown(): both still held
        assert {(r.state, r.inode != 0) for r in covered(close_wait, records) if r.state != TcpState.LISTEN} == {
            (TcpState.CLOSE_WAIT, True), (TcpState.FIN_WAIT2, False)}
        assert all(record.inode for record in covered(fin_wait2, records))
        waiting = [record for record in covered(time_wait, records) if record.state == TcpState.TIME_WAIT]
        assert {(record.timer, record.inode) for record in waiting} == {(TimerKind.TIME_WAIT, 0)}
        (listener,) = [record for record in covered(queue, records) if record.state == TcpState.LISTEN]
        assert (listener.recv_q, listener.send_q) == (3, 2)
    # closing resets: nothing is left but the TIME_WAIT that was asked for
    reset = (established, close_wait, fin_wait2, queue)
    eventually(lambda: not any(covered(built, backend.sockets()) for built in reset))
    assert time_wait.states(backend.sockets()) == {TcpState.TIME_WAIT: 3}


def test_builders_refuse_what_cannot_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    with SocketFarm() as farm:
        with pytest.raises(ValueError):
            farm.established(0)
        with pytest.raises(ValueError):
            farm.time_wait(MAX_BUILD + 1)
        monkeypatch.setattr(farm, "fd_limit", open_fds() + 100)
        with pytest.raises(BuildError, match="RLIMIT_NOFILE"):
            farm.established(50)


def test_population_spreads_pairs_over_children(backend: NetlinkBackend) -> None:
    with build_population(301) as population:
        records = backend.sockets()
        ports = set(population.ports)
        mine = [record for record in records
                if record.family == socket.AF_INET and ports & {record.local_port, record.remote_port}]
        assert Counter(record.state for record in mine) == {TcpState.ESTABLISHED: 300, TcpState.LISTEN: 1}
        assert population.sockets == 301
        assert [comm(pid) for pid in population.pids] == ["sock-farm"]
    assert all(map(gone, population.pids))
    # the children reset their pairs on SIGTERM: no TIME_WAIT lingers to skew the next population
    eventually(lambda: not [r for r in backend.sockets() if ports & {r.local_port, r.remote_port}])


def test_incident_mix_has_the_states_and_processes_it_plans(backend: NetlinkBackend) -> None:
    plan = IncidentPlan.of(1_000)
    with build_incident(1_000, lifetime=30) as incident:
        ports = set(incident.ports)
        churn_port = incident.ports[-1]

        def mine() -> Counter[TcpState]:
            return Counter(r.state for r in backend.sockets()
                           if r.family == socket.AF_INET and ports & {r.local_port, r.remote_port}
                           and (r.state is TcpState.LISTEN or churn_port not in (r.local_port, r.remote_port)))

        eventually(lambda: mine() == incident.expected)
        roles = ["cache-srv", "churner", "cw-leak", "sock-farm", "tw-keeper"]
        eventually(lambda: sorted(map(comm, incident.pids)) == roles)
        assert incident.expected[TcpState.TIME_WAIT] == plan.hot_time_wait + plan.other_time_wait == 550
        assert incident.sockets == sum(incident.expected.values()) <= 1_000
        hot = Counter(r.remote_port for r in backend.sockets() if r.state is TcpState.TIME_WAIT and r.remote_port in ports)
        assert hot.most_common(1)[0][1] == plan.hot_time_wait and len(hot) == 1 + plan.destinations
    assert all(map(gone, incident.pids))


def test_incident_plan_scales_within_the_kernel_limits() -> None:
    for total in (20_000, 50_000, 200_000):
        plan = IncidentPlan.of(total)
        assert plan.hot_time_wait <= 12_000 and plan.destinations <= 200
        assert sum(plan.expected.values()) <= total
        assert plan.expected[TcpState.TIME_WAIT] > total // 2
    with pytest.raises(ValueError):
        IncidentPlan.of(500)


# --- scenario -------------------------------------------------------------------

LEAK_RATE = 25.0
CRAWL_RATE = 100.0
BACKLOG = 4
HALF_CLOSED = 3
POOL_SIZE = 3


@pytest.fixture(scope="module")
def scenario() -> Iterator[DemoScenario]:
    demo = DemoScenario(duration=90, leak_rate=LEAK_RATE, crawl_rate=CRAWL_RATE, backlog=BACKLOG,
                        half_closed=HALF_CLOSED, pool_size=POOL_SIZE)
    with demo:
        eventually(lambda: all(comm(pid) == role for role, pid in demo.pids.items()))
        time.sleep(1.0)  # a second of traffic
        yield demo
        demo.check()


def test_scenario_names_every_process(scenario: DemoScenario) -> None:
    assert set(scenario.pids) == {"leaky-api", "api-client", "cache-srv", "crawler", "pg-fake", "db-pool",
                                  "upload-srv", "half-closer", "slow-acceptor", "stuck-client"}
    assert {role: comm(pid) for role, pid in scenario.pids.items()} == {role: role for role in scenario.pids}
    assert set(scenario.ports) == {"leaky-api", "cache-srv", "pg-fake", "upload-srv", "slow-acceptor"}


def test_leaky_api_close_wait_grows(scenario: DemoScenario, backend: NetlinkBackend) -> None:
    def leaked() -> int:
        return sum(record.state == TcpState.CLOSE_WAIT and record.local_port == scenario.ports["leaky-api"]
                   for record in owned_by(scenario.pids["leaky-api"], backend.sockets()))

    eventually(lambda: leaked() >= 5)
    first = leaked()
    eventually(lambda: leaked() >= first + LEAK_RATE / 2)  # paced at LEAK_RATE: about half a second


def test_crawler_leaves_time_wait_toward_cache(scenario: DemoScenario, backend: NetlinkBackend) -> None:
    def toward_cache() -> list[SocketRecord]:
        return [record for record in backend.sockets()
                if record.state == TcpState.TIME_WAIT and record.remote_port == scenario.ports["cache-srv"]]

    eventually(lambda: len(toward_cache()) >= CRAWL_RATE / 2)  # paced at CRAWL_RATE: about half a second
    assert {record.inode for record in toward_cache()} == {0}


def test_half_closed_pairs(scenario: DemoScenario, backend: NetlinkBackend) -> None:
    port = scenario.ports["upload-srv"]

    def states() -> tuple[Counter[TcpState], Counter[TcpState]]:
        records = backend.sockets()
        return (Counter(r.state for r in owned_by(scenario.pids["half-closer"], records) if r.remote_port == port),
                Counter(r.state for r in owned_by(scenario.pids["upload-srv"], records) if r.local_port == port))

    eventually(lambda: sum(states()[0].values()) >= HALF_CLOSED)  # the half-closer's first moments
    client_states, server_states = states()
    assert client_states == {TcpState.FIN_WAIT2: HALF_CLOSED}
    assert server_states == {TcpState.LISTEN: 1, TcpState.CLOSE_WAIT: HALF_CLOSED}


def test_slow_acceptor_queue_is_full(scenario: DemoScenario, backend: NetlinkBackend) -> None:
    def stuck() -> int:
        return Counter(record.state for record in owned_by(scenario.pids["stuck-client"], backend.sockets()))[
            TcpState.SYN_SENT]

    eventually(lambda: stuck() >= 1)  # the stuck client fills the queue at its own pace
    records = backend.sockets()
    (listener,) = owned_by(scenario.pids["slow-acceptor"], records)
    assert listener.state == TcpState.LISTEN
    assert listener.recv_q > listener.send_q == BACKLOG
    attempts = Counter(record.state for record in owned_by(scenario.pids["stuck-client"], records))
    assert attempts[TcpState.SYN_SENT] >= 1


def test_db_pool_idles_with_keepalive(scenario: DemoScenario, backend: NetlinkBackend) -> None:
    eventually(lambda: len(owned_by(scenario.pids["db-pool"], backend.sockets())) >= POOL_SIZE)  # its first moments
    pool = owned_by(scenario.pids["db-pool"], backend.sockets())
    assert [(record.state, record.timer, record.remote_port) for record in pool] == [
        (TcpState.ESTABLISHED, TimerKind.KEEPALIVE, scenario.ports["pg-fake"])] * POOL_SIZE


def test_stop_ends_every_child_and_is_idempotent() -> None:
    demo = DemoScenario(duration=30).start()
    eventually(lambda: comm(demo.pids["leaky-api"]) == "leaky-api")
    demo.stop()
    assert all(map(gone, demo.pids.values()))
    demo.stop()


def test_children_stop_by_themselves_at_the_deadline() -> None:
    with DemoScenario(duration=1.0) as demo:
        eventually(lambda: all(map(gone, demo.pids.values())))
        demo.check()  # every child ended on its own, with exit code 0


def test_children_stop_when_the_parent_dies() -> None:
    starter = "from socktop.demo import DemoScenario; import os; " \
              "print(*DemoScenario(duration=60).start().pids.values(), flush=True); os._exit(0)"
    output = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, timeout=60, check=True)
    pids = [int(pid) for pid in output.stdout.split()]
    assert len(pids) == 10
    eventually(lambda: all(map(gone, pids)))  # a loaded host is slow to reap


def test_wait_stops_cleanly_on_ctrl_c() -> None:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # not a handler an earlier test left
    demo = DemoScenario(duration=30).start()
    returned = threading.Event()

    def press_ctrl_c() -> None:  # what Ctrl-C does to the main thread; again each second, should one be lost
        while not returned.wait(1.0):
            _thread.interrupt_main()

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    try:
        stopped_by_its_duration = demo.wait()
    finally:
        returned.set()
        signal.signal(signal.SIGINT, previous)
    assert stopped_by_its_duration is False
    assert all(map(gone, demo.pids.values()))


def test_run_demo_says_what_runs_where_and_ends_by_itself() -> None:
    lines: list[str] = []
    assert run_demo(duration=1.0, echo=lines.append) == 0
    text = "\n".join(lines)
    for role in ("leaky-api", "crawler", "db-pool", "half-closer", "slow-acceptor", "stuck-client"):
        assert role in text
    assert "CLOSE_WAIT" in text and "TIME_WAIT" in text and lines[-1] == "demo finished"


def test_scenario_refuses_absurd_knobs() -> None:
    with pytest.raises(ValueError, match="crawl_rate"):
        DemoScenario(crawl_rate=10_000)
    with pytest.raises(ValueError, match="duration"):
        DemoScenario(duration=0)
