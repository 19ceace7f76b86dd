"""The engine on real loopback sockets: states, ports, queues, owners, timers, agreement with `ss`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections import Counter

import pytest
from loopback_sockets import alone
from nobody import run_cli_as_nobody

from socktop.collect.records import TcpState, TimerKind
from socktop.demo.builders import Built, SocketFarm, await_state
from socktop.model.aggregate import OwnerKind
from socktop.model.engine import Engine
from socktop.model.snapshot import Snapshot

FAMILIES = [pytest.param(socket.AF_INET, id="ipv4"), pytest.param(socket.AF_INET6, id="ipv6")]
LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


def built_records(snapshot: Snapshot, built: Built) -> list:
    return [record for record in snapshot.sockets if built.covers(record)]


@pytest.fixture
def farm():
    with SocketFarm() as sockets:
        yield sockets


@pytest.mark.parametrize("family", FAMILIES)
def test_every_state_is_counted_with_its_ports_and_owner(farm: SocketFarm, family: int) -> None:
    builds = [
        farm.established(5, family), farm.close_wait(3, family), farm.fin_wait2(2, family),
        farm.time_wait(4, family), farm.full_accept_queue(family, backlog=3),
    ]
    snapshot = Engine().refresh()
    for built in builds:
        assert built.states(snapshot.sockets) == Counter(built.expected), built
    for record in built_records(snapshot, builds[0]):
        assert record.local_addr == LOOPBACK[family]
        assert record.inode and record.uid == os.geteuid()
        attribution = snapshot.owners_of(record)
        assert attribution.kind is OwnerKind.DIRECT
        assert [process.pid for process in attribution.processes] == [os.getpid()]
    assert snapshot.aggregates.by_process[f"pid:{os.getpid()}"].counts[TcpState.CLOSE_WAIT] >= 3 + 2


@pytest.mark.parametrize("family", FAMILIES)
def test_listen_queues_show_the_full_accept_queue(farm: SocketFarm, family: int) -> None:
    built = farm.full_accept_queue(family, backlog=3)
    (listener,) = [r for r in built_records(Engine().refresh(), built) if r.state is TcpState.LISTEN]
    assert (listener.recv_q, listener.send_q) == (4, 3)  # queued (backlog + 1) and the backlog


def test_service_port_groups_in_and_out(farm: SocketFarm) -> None:
    built = farm.close_wait(3)
    groups = Engine().refresh().aggregates.by_port
    inbound, outbound = groups[f"in:{built.port}"], groups[f"out:{built.port}"]
    assert inbound.counts == {TcpState.LISTEN: 1, TcpState.CLOSE_WAIT: 3}
    assert outbound.counts.get(TcpState.FIN_WAIT2) == 3
    assert os.getpid() in inbound.pids


def test_time_wait_timer_counts_down(farm: SocketFarm) -> None:
    built = farm.time_wait(3)
    engine = Engine()
    first = {r.local_port: r for r in built_records(engine.refresh(), built) if r.state is TcpState.TIME_WAIT}
    time.sleep(1.1)
    second = {r.local_port: r for r in built_records(engine.refresh(), built) if r.state is TcpState.TIME_WAIT}
    assert first.keys() == second.keys() and len(first) == 3
    for port, record in first.items():
        assert record.timer is TimerKind.TIME_WAIT and record.inode == 0
        assert 0 < record.timer_ms <= 60_000
        assert second[port].timer_ms <= record.timer_ms - 900


def connected_pair(family: int) -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = socket.socket(family)
    listener.bind((LOOPBACK[family], 0))
    listener.listen(4)
    client = socket.create_connection(listener.getsockname()[:2])
    server, _ = listener.accept()
    return listener, client, server


def wait_for(engine: Engine, predicate, timeout: float = 30.0) -> Snapshot:
    deadline = time.monotonic() + timeout
    while True:
        snapshot = engine.refresh()
        if predicate(snapshot) or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.02)


@pytest.mark.parametrize("closer", ["client", "server"])
def test_time_wait_is_attributed_to_its_last_owner(closer: str) -> None:
    """A TIME_WAIT whose socket a refresh saw held goes to that process exactly, by the cookie the
    kernel keeps into TIME_WAIT (the Processes pane still counts it among the inferred)."""
    listener, client, server = connected_pair(socket.AF_INET)
    ends = {client.getsockname()[1], listener.getsockname()[1]}
    engine = Engine()
    engine.refresh()  # sees the connection while it is still held
    first, second = (client, server) if closer == "client" else (server, client)
    first.close()
    await_state([second], TcpState.CLOSE_WAIT)  # the FIN is in: no simultaneous close
    second.close()

    def ours(snapshot: Snapshot) -> list:
        return [r for r in snapshot.sockets
                if r.state is TcpState.TIME_WAIT and {r.local_port, r.remote_port} == ends]

    snapshot = wait_for(engine, ours)
    listener_port = listener.getsockname()[1]
    (record,) = ours(snapshot)
    assert (record.local_port == listener_port) == (closer == "server")
    attribution = snapshot.owners_of(record)
    listener.close()
    assert attribution.kind is OwnerKind.COOKIE
    assert [p.pid for p in attribution.processes] == [os.getpid()]
    assert snapshot.aggregates.by_process[f"pid:{os.getpid()}"].inferred_time_wait >= 1


SS_LABELS = {state.label: state for state in TcpState if state is not TcpState.NEW_SYN_RECV}


def ss_state_totals() -> Counter[TcpState]:
    output = subprocess.run(["ss", "-tanH"], capture_output=True, text=True, check=True, timeout=60).stdout
    return Counter(SS_LABELS[line.split()[0]] for line in output.splitlines() if line.strip())


@pytest.mark.skipif(shutil.which("ss") is None, reason="iproute2's ss is not installed")
def test_per_state_totals_agree_with_ss(farm: SocketFarm) -> None:
    """Taken between two `ss` runs, each of our totals lies within what ss saw before and after."""
    farm.established(20)
    farm.close_wait(5)
    farm.time_wait(10, socket.AF_INET6)
    engine = Engine()
    engine.refresh()
    before = ss_state_totals()
    ours = engine.refresh().aggregates.by_state
    after = ss_state_totals()
    for state in set(before) | set(after) | set(ours):
        low, high = sorted((before.get(state, 0), after.get(state, 0)))
        assert low - 2 <= ours.get(state, 0) <= high + 2, (state, before, ours, after)
    assert sum(ours.values()) >= 20 * 2 + 5 * 2 + 10


def test_backends_fall_back_visibly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without sock_diag: auto takes /proc and says why."""
    from socktop.collect.records import BackendUnavailable
    from socktop.model import engine as engine_module

    def refused():
        raise BackendUnavailable("netlink sock_diag unavailable: Protocol not supported")

    monkeypatch.setitem(engine_module._FACTORIES, "netlink", refused)
    engine = Engine("auto")
    assert engine.backend.name == "proc"
    assert "sock_diag" in engine.backend_note
    assert engine.refresh().source.backend_note == engine.backend_note
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        Engine("carrier-pigeon")


def run_as_nobody(args: list[str]) -> subprocess.CompletedProcess[str] | None:
    """Run socktop's CLI as user nobody, or None where this machine does not allow it."""
    result = run_cli_as_nobody(args)
    return result if result is not None and result.returncode == 0 else None


def test_without_root_every_socket_is_counted_and_coverage_reported(farm: SocketFarm) -> None:
    built = alone(lambda: farm.close_wait(4), lambda built: built.port, Built.covers)  # --port counts exactly
    result = run_as_nobody(["--json", "--port", str(built.port)])
    if result is None:
        pytest.skip("no interpreter here that user nobody may run")
    document = json.loads(result.stdout)
    assert document["root"] is False
    assert document["totals"]["by_state"] == {"FIN_WAIT2": 4, "CLOSE_WAIT": 4, "LISTEN": 1}
    assert document["coverage"]["ratio"] < 1
    assert "run as root" in document["coverage"]["note"]
    (unknown,) = [p for p in document["processes"] if p["key"] == "uid:0"]
    assert unknown["user"] == "root" and unknown["pid"] is None


def test_a_process_row_agrees_with_a_drill_down_into_it(farm: SocketFarm) -> None:
    """Held and inferred alike: the row total is what filtering by the pid lists (queued connections
    on our listener and our client-side TIME_WAIT included)."""
    farm.established(3)
    farm.full_accept_queue(backlog=2)
    listener, client, server = connected_pair(socket.AF_INET)
    engine = Engine()
    engine.refresh()
    client.close()
    await_state([server], TcpState.CLOSE_WAIT)
    server.close()
    snapshot = wait_for(engine, lambda s: s.aggregates.by_process.get(f"pid:{os.getpid()}").inferred_time_wait)
    listener.close()
    me = snapshot.aggregates.by_process[f"pid:{os.getpid()}"]
    assert me.inferred.get(TcpState.ESTABLISHED, 0) >= 3  # the accept queue: no descriptor yet
    assert me.inferred_time_wait >= 1
    assert me.total == len(snapshot.filtered(pid=os.getpid()).sockets)


def test_refreshes_from_two_threads_never_mix_their_dumps() -> None:
    """A quit leaves the TUI's poller in a daemon thread: a refresh that overlaps it must still read
    whole dumps (interleaved netlink chunks once gave 'message ... claims 0 bytes')."""
    from concurrent.futures import ThreadPoolExecutor

    from socktop.demo.builders import build_population

    with build_population(3000) as population:
        ports = set(population.ports)

        def held(snapshot: Snapshot) -> int:  # the population's sockets: the host's others come and go
            return sum(1 for r in snapshot.sockets if r.state in (TcpState.ESTABLISHED, TcpState.LISTEN)
                       and r.local_addr == "127.0.0.1" and ports & {r.local_port, r.remote_port})

        engine = Engine()
        assert held(engine.refresh()) == population.sockets
        with ThreadPoolExecutor(2) as pool:
            sizes = list(pool.map(lambda _: held(engine.refresh()), range(8)))
    assert sizes == [population.sockets] * 8
