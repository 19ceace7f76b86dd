"""The three backends read the same real loopback sockets back and agree on them.

Each case builds its population, waits (bounded) until netlink lists it,
then takes the three snapshots back to back: nothing in the population
changes by itself for 60 s (the TIME_WAIT length).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
from loopback_sockets import IPV4, IPV6, V4_MAPPED, Layout, Population, SocketKey, ipv6_loopback_works, socket_key

from socktop.collect.netlink import NetlinkBackend
from socktop.collect.procnet import ProcNetBackend
from socktop.collect.psutil_backend import SYNTHETIC_INODE_BASE, PsutilBackend
from socktop.collect.records import BackendUnavailable, SocketRecord, TcpState, TimerKind

UNREAD_BYTES = 100
TIMER_SLACK_MS = 1000  # the reads are moments apart (plus however long they took), and /proc counts in 10 ms ticks

Snapshots = dict[str, dict[SocketKey, SocketRecord]]

needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback here")


@pytest.fixture(scope="module")
def netlink() -> NetlinkBackend:
    try:
        return NetlinkBackend()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def procnet() -> ProcNetBackend:
    return ProcNetBackend()


@pytest.fixture(scope="module")
def psutil_backend() -> PsutilBackend:
    return PsutilBackend()


@pytest.fixture(scope="module", params=[IPV4, pytest.param(IPV6, marks=needs_ipv6), pytest.param(V4_MAPPED, marks=needs_ipv6)],
                ids=lambda layout: layout.name)
def population(request: pytest.FixtureRequest, netlink: NetlinkBackend) -> Iterator[Population]:
    """Every state we can make on demand: ESTABLISHED (one with a keepalive timer, one with
    unread data), FIN_WAIT2 / CLOSE_WAIT, TIME_WAIT, and connections waiting in the accept queue."""
    layout: Layout = request.param
    population = Population.listen(layout)
    try:
        pairs = population.established(4)
        pairs[0][0].setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        pairs[1][0].sendall(b"x" * UNREAD_BYTES)
        population.half_closed(2)
        population.time_wait(3)
        population.unaccepted(2)
        population.settle(netlink.sockets)
        yield population
    finally:
        population.close()


@pytest.fixture(scope="module")
def timed_reads(population: Population, netlink: NetlinkBackend, procnet: ProcNetBackend,
                psutil_backend: PsutilBackend) -> tuple[Snapshots, float]:
    """The three reads, back to back, keyed by backend and then by socket; and the milliseconds from
    the start of the netlink read to the end of the /proc one (a loaded machine stretches them)."""
    started = time.monotonic()
    reads = {backend.name: backend.sockets() for backend in (netlink, procnet)}
    apart_ms = (time.monotonic() - started) * 1000
    reads[psutil_backend.name] = psutil_backend.sockets()
    return {name: {socket_key(record): record for record in population.ours(records)}
            for name, records in reads.items()}, apart_ms


@pytest.fixture(scope="module")
def snapshots(timed_reads: tuple[Snapshots, float]) -> Snapshots:
    return timed_reads[0]


def test_netlink_lists_the_population(population: Population, snapshots: Snapshots) -> None:
    assert set(snapshots["netlink"]) == population.expected


@pytest.mark.parametrize("backend", ["proc", "psutil"])
def test_same_sockets_as_netlink(snapshots: Snapshots, backend: str) -> None:
    assert set(snapshots[backend]) == set(snapshots["netlink"])


def test_proc_matches_netlink_field_by_field(timed_reads: tuple[Snapshots, float],
                                             procnet: ProcNetBackend) -> None:
    snapshots, apart_ms = timed_reads
    assert procnet.malformed_lines == 0
    for key, proc in snapshots["proc"].items():
        netlink = snapshots["netlink"][key]
        assert (proc.uid, proc.inode, proc.recv_q, proc.timer, proc.retransmits) == (
            netlink.uid, netlink.inode, netlink.recv_q, netlink.timer, netlink.retransmits), key
        # /proc has no backlog limit for a listener (tx_queue is 0 there), netlink puts it in send_q.
        assert proc.send_q == (0 if proc.state == TcpState.LISTEN else netlink.send_q), key
        assert abs(proc.timer_ms - netlink.timer_ms) <= TIMER_SLACK_MS + apart_ms, key


def test_proc_reads_queues_and_timers(snapshots: Snapshots,
                                      population: Population) -> None:
    """The population's queue and timer are visible, so the field comparison is not 0 == 0."""
    proc = list(snapshots["proc"].values())
    listener = next(record for record in proc if record.state == TcpState.LISTEN)
    assert listener.recv_q == 2  # the two unaccepted connections
    assert UNREAD_BYTES in {record.recv_q for record in proc}
    assert {TimerKind.KEEPALIVE, TimerKind.TIME_WAIT} <= {record.timer for record in proc}
    time_wait = [record for record in proc if record.state == TcpState.TIME_WAIT]
    assert all(0 < record.timer_ms <= 60_000 and record.inode == 0 for record in time_wait)


def test_psutil_owner_hint_names_this_process(snapshots: Snapshots,
                                              psutil_backend: PsutilBackend) -> None:
    hint = psutil_backend.owner_hint()
    for key, record in snapshots["psutil"].items():
        held = snapshots["netlink"][key].inode != 0
        if held:
            assert record.inode >= SYNTHETIC_INODE_BASE, key
            assert hint[record.inode] == (os.getpid(),), key
            assert record.uid == os.getuid(), key
        else:
            assert record.inode == 0, key
            assert record.inode not in hint
