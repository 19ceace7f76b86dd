"""aggregate(): its C-level passes against plain per-socket loops, on random tables."""

from __future__ import annotations

import random
import socket
import threading
from collections import Counter
from itertools import compress
from typing import NamedTuple

import pytest

from socktop.collect.records import ProcessInfo, SocketRecord, TcpState, TimerKind
from socktop.model.aggregate import (
    CONNECTION, DEFAULT_EPHEMERAL_PORTS, Aggregates, Deferred, Ownership, Pids, RowKind, aggregate,
)

PID_SETS: tuple[Pids, ...] = ((1,), (2,), (1, 3), (4,), ())
EPHEMERAL_RANGES = (DEFAULT_EPHEMERAL_PORTS, (1024, 65535), (40000, 40010))


def random_table(rng: random.Random) -> tuple[list[SocketRecord], Ownership, dict[tuple[str, int, str, int], Pids]]:
    """Sockets in every state on a few service and ephemeral ports, partly owned, with last owners."""
    ports = [rng.choice((22, 80, 443, 8080, 5432)) for _ in range(5)] + [rng.randrange(32768, 61000) for _ in range(3)]
    addresses = [f"10.0.0.{i}" for i in range(rng.randrange(1, 6))] + ["0.0.0.0"]
    records: list[SocketRecord] = []
    pids_by_inode: dict[int, Pids] = {}
    for index in range(rng.randrange(400)):
        state = rng.choice(list(TcpState))
        remote_port = 0 if state is TcpState.LISTEN else rng.choice(
            (rng.randrange(1, 65536), 80, 443, rng.randrange(32768, 61000)))
        inode = 0 if rng.random() < 0.3 else 1000 + index
        if inode and rng.random() < 0.85:
            pids_by_inode[inode] = rng.choice(PID_SETS)
        records.append(SocketRecord(
            socket.AF_INET, state, "10.0.0.9", rng.choice(ports + [rng.randrange(1, 65536)]), rng.choice(addresses),
            remote_port, 0, 0, TimerKind.NONE, 0, 0, rng.choice((0, 1000, 998)), inode, index))
    processes = {pid: ProcessInfo(pid, pid, f"p{pid}", "", 1000, "u") for pid in (1, 2, 3, 4) if rng.random() < 0.9}
    last_owners = {CONNECTION(record): rng.choice(PID_SETS[:4]) for record in rng.sample(records, min(len(records), 40))}
    return records, Ownership(pids_by_inode, processes), last_owners


class Case(NamedTuple):
    records: list[SocketRecord]
    ownership: Ownership
    last_owners: dict[tuple[str, int, str, int], Pids]
    listeners: dict[int, Pids] | None
    ephemeral: tuple[int, int]

    def aggregate(self) -> Aggregates:
        return aggregate(self.records, self.ownership, str, self.last_owners, self.listeners, self.ephemeral)


def random_case(seed: int) -> Case:
    rng = random.Random(seed)
    return Case(*random_table(rng), None if rng.random() < 0.7 else {80: (1,), 9999: ()}, rng.choice(EPHEMERAL_RANGES))


def serves(record: SocketRecord, listening: frozenset[int], ephemeral: tuple[int, int]) -> bool:
    """The direction rule, one socket at a time."""
    low, high = ephemeral
    return record.local_port in listening or (
        not low <= record.local_port <= high and low <= record.remote_port <= high)


@pytest.mark.parametrize("seed", range(200))
def test_remote_groups_count_connected_sockets_by_peer(seed: int) -> None:
    records, aggregates = (case := random_case(seed)).records, case.aggregate()
    expected: dict[str, dict[TcpState, int]] = {}
    for record in records:
        if record.remote_port:
            counts = expected.setdefault(record.remote_addr, {})
            counts[record.state] = counts.get(record.state, 0) + 1
    assert {address: group.counts for address, group in aggregates.by_remote.items()} == expected
    assert list(aggregates.by_remote) == list(expected)  # in order of first appearance
    assert all(group.total == sum(group.counts.values()) for group in aggregates.by_remote.values())


@pytest.mark.parametrize("seed", range(200))
def test_last_owners_hold_outgoing_connections_then_inferred_ones(seed: int) -> None:
    records, ownership, last_owners, _, ephemeral = case = random_case(seed)
    aggregates = case.aggregate()
    held: dict[tuple[str, int, str, int], Pids] = {}
    inferred: dict[tuple[str, int, str, int], Pids] = {}
    for record in records:
        if serves(record, aggregates.listening_ports, ephemeral):
            continue
        pids = ownership.pids_by_inode.get(record.inode)
        if pids:
            held[CONNECTION(record)] = pids
        elif not record.inode and last_owners.get(CONNECTION(record)):  # an unplaced inode is never inferred
            inferred[CONNECTION(record)] = last_owners[CONNECTION(record)]
    assert list(aggregates.last_owners.items()) == list({**held, **inferred}.items())


def test_deferred_makes_its_table_on_first_read_only() -> None:
    calls: list[int] = []

    def make() -> dict[str, int]:
        calls.append(1)
        return {"a": 1}

    table = Deferred(make)
    assert calls == []
    assert table["a"] == 1 and table.get("b") is None and list(table) == ["a"] and len(table) == 1
    assert calls == [1] and table == {"a": 1}


def test_deferred_concurrent_first_reads_agree() -> None:
    table = Deferred(lambda: {n: n for n in range(10_000)})
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.append(len(table))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [10_000] * 8


def test_unplaced_inodes_are_never_inferred_and_rows_match_owners_of() -> None:
    """A socket with an inode the owner scan could not place (another user's, without root) is
    counted under its uid, never inferred to the listener or to a connection's last owner."""
    from socktop.model.snapshot import Snapshot, SourceInfo

    listener = SocketRecord(socket.AF_INET, TcpState.LISTEN, "10.0.0.1", 8080, "0.0.0.0", 0, 0, 128,
                            TimerKind.NONE, 0, 0, 0, 100)
    unplaced_in = SocketRecord(socket.AF_INET, TcpState.ESTABLISHED, "10.0.0.1", 8080, "10.0.0.2", 40000, 0, 0,
                               TimerKind.NONE, 0, 0, 1000, 200)
    unplaced_out = SocketRecord(socket.AF_INET, TcpState.ESTABLISHED, "10.0.0.1", 45000, "10.0.0.3", 443, 0, 0,
                                TimerKind.NONE, 0, 0, 1000, 300)
    records = [listener, unplaced_in, unplaced_out]
    ownership = Ownership({100: (42,)}, {42: ProcessInfo(42, 1, "api", "api", 0, "root")})
    last_owners = {("10.0.0.1", 45000, "10.0.0.3", 443): (42,)}
    aggregates = aggregate(records, ownership, str, last_owners)
    assert aggregates.by_process["pid:42"].total == 1  # its listener only
    assert aggregates.by_process["uid:1000"].total == 2
    snapshot = Snapshot(1, 0.0, 0.0, 0.0, SourceInfo("h", "k", "netlink", "", True, ""), records, ownership,
                        aggregates)
    assert len(snapshot.filtered(pid=42).sockets) == aggregates.by_process["pid:42"].total


def test_regrouping_a_subset_keeps_the_kernel_port_range() -> None:
    """With ip_local_port_range widened to 10000-65535, a TIME_WAIT toward :50000 is "out", in the
    whole table and in any drill-down of it (the default range would call it "in")."""
    from socktop.model.snapshot import Snapshot, SourceInfo

    record = SocketRecord(socket.AF_INET, TcpState.TIME_WAIT, "10.0.0.1", 20000, "10.0.0.9", 50000, 0, 0,
                          TimerKind.TIME_WAIT, 1000, 0, 0, 0)
    ownership = Ownership({}, {})
    aggregates = aggregate([record], ownership, str, {}, ephemeral_ports=(10000, 65535))
    assert list(aggregates.by_port) == ["out:50000"] and aggregates.port_key(record) == "out:50000"
    snapshot = Snapshot(1, 0.0, 0.0, 0.0, SourceInfo("h", "k", "netlink", "", True, ""), [record], ownership,
                        aggregates)
    assert list(snapshot.filtered(state=TcpState.TIME_WAIT).aggregates.by_port) == ["out:50000"]


@pytest.mark.parametrize("seed", range(50))
def test_port_key_names_the_group_each_socket_is_counted_in(seed: int) -> None:
    """`Aggregates.port_key` (used by the drill-down and the findings) is the grouping rule itself."""
    case = random_case(seed)
    aggregates = case.aggregate()
    counted: dict[str, int] = {}
    for record in case.records:
        key = aggregates.port_key(record)
        counted[key] = counted.get(key, 0) + 1
    assert counted == {key: group.total for key, group in aggregates.by_port.items()}


def reference_groups(case: Case, aggregates: Aggregates) -> tuple[dict, dict, int]:
    """Ports (counts, pids), processes (held, inferred) and per-uid counts, one socket at a time,
    by the rules `Snapshot.owners_of` states; and how many sockets are owned."""
    listening = aggregates.listening_ports
    listeners = aggregates.listener_pids
    ports: dict[str, tuple[dict, set]] = {}
    processes: dict[str, tuple[dict, dict]] = {}
    owned = 0
    for record in case.records:
        serving = serves(record, listening, case.ephemeral)
        key = f"in:{record.local_port}" if serving else f"out:{record.remote_port}"
        counts, pids = ports.setdefault(key, ({}, set()))
        counts[record.state] = counts.get(record.state, 0) + 1
        held = case.ownership.pids_by_inode.get(record.inode, None if not record.inode else ())
        if held:
            owners, column = held, 0
            owned += 1
        elif held is not None:
            owners, column = (), 0
            if record.inode:
                group = processes.setdefault(f"uid:{record.uid}", ({}, {}))[0]
                group[record.state] = group.get(record.state, 0) + 1
        elif serving:
            owners = listeners.get(record.local_port, ()) if record.state is not TcpState.LISTEN else ()
            column = 1
        else:
            owners, column = case.last_owners.get(CONNECTION(record), ()), 1
        pids.update(owners)
        for pid in set(owners) & case.ownership.processes.keys():  # no row for a process that exited
            tally = processes.setdefault(f"pid:{pid}", ({}, {}))[column]
            tally[record.state] = tally.get(record.state, 0) + 1
    return ports, processes, owned


@pytest.mark.parametrize("seed", range(200))
def test_groups_match_a_loop_over_the_sockets(seed: int) -> None:
    case = random_case(seed)
    aggregates = case.aggregate()
    ports, processes, owned = reference_groups(case, aggregates)
    assert {key: (group.counts, set(group.pids)) for key, group in aggregates.by_port.items()} == ports
    assert {key: (group.counts, group.inferred) for key, group in aggregates.by_process.items()} == processes
    assert all(group.total == sum(group.counts.values()) + sum(group.inferred.values())
               for group in aggregates.by_process.values())
    assert aggregates.owned == owned and aggregates.total == len(case.records)
    assert aggregates.with_inode == sum(1 for record in case.records if record.inode)
    by_state: dict[TcpState, int] = {}
    for record in case.records:
        by_state[record.state] = by_state.get(record.state, 0) + 1
    assert list(aggregates.by_state.items()) == list(by_state.items())  # in order of first appearance


@pytest.mark.parametrize("seed", range(100))
def test_row_owners_say_what_owners_of_says(seed: int) -> None:
    """The per-socket arrays (`RowOwners`, used by `--json --sockets` and the pid filter) and
    `Snapshot.owners_of` (one record at a time) attribute every socket alike."""
    from socktop.model.snapshot import Snapshot, SourceInfo

    case = random_case(seed)
    aggregates = case.aggregate()
    snapshot = Snapshot(1, 0.0, 0.0, 0.0, SourceInfo("h", "k", "netlink", "", True, ""), case.records,
                        case.ownership, aggregates)
    rows = aggregates.rows
    assert rows is not None
    repeated = {connection for connection, count in Counter(map(CONNECTION, case.records)).items() if count > 1}
    for index, record in enumerate(case.records):
        if CONNECTION(record) in repeated:  # owners_of looks a 4-tuple up in this table, held twins included
            continue
        attribution = snapshot.owners_of(record)
        pids = rows.pid_sets[rows.codes[index]]
        assert RowKind.OWNER_KINDS[rows.kinds[index]] is attribution.kind, record
        assert tuple(p.pid for p in attribution.processes) == tuple(p for p in pids if p in case.ownership.processes)
    for pid in (1, 2, 3, 4):
        expected = [any(p.pid == pid for p in snapshot.owners_of(record).processes) for record in case.records]
        unique = [CONNECTION(record) not in repeated for record in case.records]
        assert list(compress(snapshot.holding(pid).tolist(), unique)) == list(compress(expected, unique))
