"""Fold a socket table into the panes' groups: by state, service port, process, remote host.

Runs once per refresh over up to 50,000 records, so the per-socket work is
done by C iterators (``map``, ``zip``, ``compress``, ``Counter``) and the
Python loops only walk the distinct groups, which are few.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache, partial
from itertools import compress, repeat
from operator import and_, getitem, is_, itemgetter, not_
from typing import TypeVar

from ..collect.records import ProcessInfo, SocketRecord, TcpState

STATE = itemgetter(1)
LOCAL_PORT = itemgetter(3)
REMOTE_ADDR = itemgetter(4)
REMOTE_PORT = itemgetter(5)
INODE = itemgetter(12)
CONNECTION = itemgetter(2, 3, 4, 5)
REMOTE_PORT_OF_CONNECTION = itemgetter(3)
UID_AND_STATE = itemgetter(11, 1)

Pids = tuple[int, ...]
K = TypeVar("K")
V = TypeVar("V")
StateCounts = dict[TcpState, int]


class Direction(str, Enum):
    """A socket on a port we listen on serves ("in"); any other one calls out ("out")."""

    IN = "in"
    OUT = "out"


class OwnerKind(str, Enum):
    """How a group of sockets was tied to its processes."""

    DIRECT = "direct"  # the process holds the socket's descriptor
    COOKIE = "cookie"  # an inode-0 socket a dump saw held (the kernel's cookie matches): that process, exactly
    INFERRED = "inferred"  # an inode-0 socket: the port's listener, or the connection's last owner
    UNKNOWN = "unknown"  # a socket with an inode we could not place (another user's, without root)
    NONE = "none"  # an inode-0 socket nobody can be named for


Connection = tuple[str, int, str, int]


@dataclass(frozen=True, slots=True)
class Ownership:
    """Who holds which socket, as the owner scan found it for one snapshot."""

    pids_by_inode: Mapping[int, Pids]
    processes: Mapping[int, ProcessInfo]
    closed: frozenset[int] = frozenset()  # inodes that closed before their owner was read: inode 0 by now


@dataclass(frozen=True, slots=True)
class PortGroup:
    """The sockets of one service port in one direction."""

    port: int
    direction: Direction
    counts: StateCounts
    total: int
    pids: Pids  # every process tied to these sockets, held or inferred

    @property
    def key(self) -> str:
        return f"{self.direction.value}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProcessGroup:
    """The sockets of one process, or of one uid whose processes we may not see.

    ``counts`` are sockets the process holds; ``inferred`` are inode-0
    sockets (no owner in the kernel) tied to it by inference, as
    `Snapshot.owners_of` ties them: TIME_WAIT and orphans of connections
    it held, and connections queued on or closing at its listening ports.
    ``total`` counts both, so a row agrees with a drill-down into it.
    """

    key: str  # "pid:4242", or "uid:1000" for sockets of that user whose process we may not see
    process: ProcessInfo | None
    uid: int | None
    user: str
    counts: StateCounts
    inferred: StateCounts
    total: int

    @property
    def inferred_time_wait(self) -> int:
        return self.inferred.get(TcpState.TIME_WAIT, 0)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def name(self) -> str:
        return self.process.name if self.process else "?"


@dataclass(frozen=True, slots=True)
class RemoteGroup:
    """The sockets connected to one remote address."""

    address: str
    counts: StateCounts
    total: int


class Deferred(Mapping[K, V]):
    """A mapping made by ``make`` on first read, which then drops ``make`` and what it holds.

    For tables the UI reads only on demand (`last_owners`) or never
    (`by_remote`, read by the one-shot reports): at 50k sockets making them
    every refresh costs about 12 and 10 ms. Concurrent first reads each
    make the same table; either one is kept.
    """

    __slots__ = ("_make", "_table")

    def __init__(self, make: Callable[[], dict[K, V]]) -> None:
        self._make: Callable[[], dict[K, V]] | None = make
        self._table: dict[K, V] | None = None

    def _contents(self) -> dict[K, V]:
        table = self._table
        if table is None:
            make = self._make
            if make is None:  # another thread has just made it
                return self._contents()
            table = make()
            self._table, self._make = table, None
        return table

    def __getitem__(self, key: K) -> V:
        return self._contents()[key]

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        return self._contents().get(key, default)

    def __iter__(self) -> Iterator[K]:
        return iter(self._contents())

    def __len__(self) -> int:
        return len(self._contents())

    def __repr__(self) -> str:
        return f"Deferred({self._contents()!r})"


DEFAULT_EPHEMERAL_PORTS = (32768, 60999)  # Linux's default net.ipv4.ip_local_port_range


@dataclass(frozen=True, slots=True)
class Aggregates:
    """Every pane's groups for one snapshot."""

    total: int
    by_state: StateCounts
    by_port: Mapping[str, PortGroup]
    by_process: Mapping[str, ProcessGroup]
    by_remote: Mapping[str, RemoteGroup]
    listening_ports: frozenset[int]
    listener_pids: Mapping[int, Pids]  # listening port → processes holding a listener on it
    last_owners: Mapping[Connection, Pids]  # outgoing connection → its holder, now or when last held
    with_inode: int
    owned: int
    ephemeral_ports: tuple[int, int] = DEFAULT_EPHEMERAL_PORTS  # the ip_local_port_range these were grouped by

    def direction(self, local_port: int, remote_port: int) -> Direction:
        """The rule the port groups were made by, for one socket: the view's drill-down
        and the findings must not keep copies of it that could disagree."""
        if local_port in self.listening_ports:
            return Direction.IN
        return Direction.IN if _direction_rows(self.ephemeral_ports)[local_port][remote_port] else Direction.OUT

    def inbound_flags(self, records: Sequence[SocketRecord]) -> bytes:
        """`direction` for many sockets at once, in C: 1 for "in", 0 for "out"."""
        return inbound_flags(list(map(LOCAL_PORT, records)), list(map(REMOTE_PORT, records)),
                             self.listening_ports, self.ephemeral_ports)

    def port_key(self, record: SocketRecord) -> str:
        """The ``by_port`` key of the group this socket is counted in."""
        if self.direction(record.local_port, record.remote_port) is Direction.IN:
            return f"{Direction.IN.value}:{record.local_port}"
        return f"{Direction.OUT.value}:{record.remote_port}"

    @property
    def coverage(self) -> float:
        """Share of sockets with an inode whose owner is known (1.0 when none has one)."""
        return self.owned / self.with_inode if self.with_inode else 1.0


@dataclass(slots=True)
class _ProcessTally:
    counts: Counter[TcpState] = field(default_factory=Counter)
    inferred: Counter[TcpState] = field(default_factory=Counter)


def process_key(pid: int) -> str:
    return f"pid:{pid}"


def uid_key(uid: int) -> str:
    return f"uid:{uid}"


_ALWAYS_IN = b"\x01" * 65536  # a direction row: 1 ("in") whatever the remote port
_ALWAYS_OUT = bytes(65536)
_FLIP = b"\x01" + bytes(255)  # bytes.translate table: 0 ↔ 1, in C


_NO_HOLDER: tuple[None, Pids] = (None, ())  # by bool(inode): what owner_pids holds for a socket nobody holds


@lru_cache(maxsize=4)
def _direction_rows(ephemeral: tuple[int, int]) -> tuple[bytes, ...]:
    """Per local port, the row that tells the direction by remote port, listeners aside.

    An ephemeral local port calls out; a fixed one serves ("in") when the
    remote port is ephemeral. Built with slices: a Python loop would cost
    28k steps. Cached: the range rarely changes.
    """
    low, high = ephemeral
    remote_ephemeral = bytes(low) + b"\x01" * (high + 1 - low) + bytes(65535 - high)
    rows = [remote_ephemeral] * 65536
    rows[low:high + 1] = [_ALWAYS_OUT] * (high + 1 - low)
    return tuple(rows)


def inbound_flags(local_ports: Sequence[int], remote_ports: Sequence[int], listening_ports: Iterable[int],
                  ephemeral_ports: tuple[int, int]) -> bytes:
    """Per socket 1 ("in") or 0 ("out"): a listening local port serves; otherwise the
    local port's row says, by the remote port (see `_direction_rows`). Two lookups each, in C."""
    rows = list(_direction_rows(ephemeral_ports))
    for port in listening_ports:
        rows[port] = _ALWAYS_IN
    return bytes(map(getitem, map(rows.__getitem__, local_ports), remote_ports))


def aggregate(
    records: Sequence[SocketRecord],
    ownership: Ownership,
    user_of: Callable[[int], str],
    last_owners: Mapping[Connection, Pids],
    listeners: Mapping[int, Pids] | None = None,
    ephemeral_ports: tuple[int, int] = DEFAULT_EPHEMERAL_PORTS,
    inodes: list[int] | None = None,
) -> Aggregates:
    """All the panes' groups in one sweep of C-level passes over ``records``.

    ``user_of`` names a uid, for the rows of owners we may not see.
    ``last_owners`` is the previous snapshot's ``last_owners``: a client
    socket that closed first turns into an inode-0 TIME_WAIT, and this is
    how it stays tied (as inferred) to the process that held it.
    ``listeners`` (port → pids) replaces the listeners found in ``records``
    when those are a filtered subset of the table.

    A socket is "in" under its local port when that port listens, or when
    it is a fixed port talking to an ephemeral one (``ephemeral_ports``,
    the kernel's ip_local_port_range): the server-side TIME_WAIT of a
    service that has just been restarted must not scatter into one "out"
    row per client port. ``inodes`` is the records' inode column when the
    caller has it already (the engine does, for the owner scan).
    """
    states = list(map(STATE, records))
    by_state: StateCounts = dict.fromkeys(states, 0)  # in order of first appearance, counted from the groups
    local_ports = list(map(LOCAL_PORT, records))
    remote_ports = list(map(REMOTE_PORT, records))
    if inodes is None:
        inodes = list(map(INODE, records))
    if ownership.closed:  # they are the orphans or TIME_WAIT (inode 0) they became: never "unknown owner"
        inodes = [0 if inode in ownership.closed else inode for inode in inodes]
    zero_inodes = inodes.count(0)
    # pids, None for an inode-0 socket (no process can hold it), () for an inode the scan could not place
    owner_pids = list(map(ownership.pids_by_inode.get, inodes, map(_NO_HOLDER.__getitem__, map(bool, inodes))))
    listener_pids = _listener_pids(local_ports, states, owner_pids) if listeners is None else listeners
    listening_ports = frozenset(listener_pids)

    inbound = inbound_flags(local_ports, remote_ports, listening_ports, ephemeral_ports)
    outbound = inbound.translate(_FLIP)

    # outgoing sockets: who holds each connection now, or held it before it turned inode-0
    out_pids = list(compress(owner_pids, outbound))
    out_records = list(compress(records, outbound))
    unheld = list(map(CONNECTION, compress(out_records, map(is_, out_pids, repeat(None)))))
    found = list(map(last_owners.get, unheld))
    owners_now = Deferred(partial(_connection_table, out_records, out_pids, dict(compress(zip(unheld, found), found))))

    # (port, state, pids or None) per direction: a few thousand distinct keys at most
    inbound_keys = Counter(zip(compress(local_ports, inbound), compress(states, inbound), compress(owner_pids, inbound)))
    outbound_keys = Counter(zip(compress(remote_ports, outbound), compress(states, outbound), out_pids))
    unheld_states = compress(compress(states, outbound), map(is_, out_pids, repeat(None)))
    inferred_out = Counter(compress(zip(map(REMOTE_PORT_OF_CONNECTION, unheld), unheld_states, found), found))

    tallies: dict[str, _ProcessTally] = {}
    port_counts: dict[tuple[int, Direction], Counter[TcpState]] = {}
    port_pids: dict[tuple[int, Direction], set[int]] = {}
    owned = unplaced = 0  # sockets with a pids entry; those without one or with an empty one
    for direction, keys in ((Direction.IN, inbound_keys), (Direction.OUT, outbound_keys)):
        for (port, state, pids), count in keys.items():
            by_state[state] += count
            group = (port, direction)
            port_counts.setdefault(group, Counter())[state] += count
            if not pids:
                unplaced += count
            if pids is None:
                if direction is Direction.IN and state is not TcpState.LISTEN:
                    listeners = listener_pids.get(port, ())
                    port_pids.setdefault(group, set()).update(listeners)
                    for pid in listeners:
                        _tally(tallies, pid).inferred[state] += count
                continue
            if not pids:  # an inode nobody we can see holds: counted under its uid, never inferred
                continue
            owned += count
            port_pids.setdefault(group, set()).update(pids)
            for pid in pids:
                _tally(tallies, pid).counts[state] += count
    for (port, state, pids), count in inferred_out.items():
        port_pids.setdefault((port, Direction.OUT), set()).update(pids)
        for pid in pids:
            _tally(tallies, pid).inferred[state] += count

    by_port = {
        group.key: group
        for group in (
            PortGroup(port, direction, dict(counts), sum(counts.values()),
                      tuple(sorted(port_pids.get((port, direction), ()))))
            for (port, direction), counts in port_counts.items()
        )
    }
    return Aggregates(
        total=len(records),
        by_state=by_state,
        by_port=by_port,
        by_process=_process_groups(
            tallies, ownership.processes,
            _unknown_uid_counts(records, owner_pids, inodes, unplaced == zero_inodes, ownership.pids_by_inode),
            user_of),
        by_remote=Deferred(partial(_remote_groups, records)),
        listening_ports=listening_ports,
        listener_pids=listener_pids,
        ephemeral_ports=ephemeral_ports,
        last_owners=owners_now,
        with_inode=len(records) - zero_inodes,
        owned=owned,
    )


def _listener_pids(local_ports: list[int], states: list[TcpState], owner_pids: list[Pids | None]) -> dict[int, Pids]:
    is_listener = list(map(is_, states, repeat(TcpState.LISTEN)))
    found: dict[int, set[int]] = {}
    for port, pids in zip(compress(local_ports, is_listener), compress(owner_pids, is_listener)):
        found.setdefault(port, set()).update(pids or ())
    return {port: tuple(sorted(pids)) for port, pids in found.items()}


def _tally(tallies: dict[str, _ProcessTally], pid: int) -> _ProcessTally:
    key = process_key(pid)
    tally = tallies.get(key)
    if tally is None:
        tally = tallies[key] = _ProcessTally()
    return tally


def _unknown_uid_counts(records: Sequence[SocketRecord], owner_pids: list[Pids | None], inodes: list[int],
                        only_zero_unplaced: bool, pids_by_inode: Mapping[int, Pids]) -> Counter[tuple[int, TcpState]]:
    """(uid, state) counts of sockets that have an inode but no owner we could find.

    ``only_zero_unplaced``: as many sockets lack an owner as have inode 0.
    """
    if only_zero_unplaced and 0 not in pids_by_inode:
        return Counter()  # only inode-0 sockets lack an owner: no pass over the records
    unplaced = map(and_, map(not_, owner_pids), map(bool, inodes))
    return Counter(map(UID_AND_STATE, compress(records, unplaced)))


def _process_groups(
    tallies: dict[str, _ProcessTally],
    processes: Mapping[int, ProcessInfo],
    unknown_uids: Counter[tuple[int, TcpState]],
    user_of: Callable[[int], str],
) -> dict[str, ProcessGroup]:
    groups: dict[str, ProcessGroup] = {}
    for key, tally in tallies.items():
        pid = int(key.partition(":")[2])
        process = processes.get(pid)
        if process is None:  # inferred for a process that has exited since: no row with nothing known about it
            continue
        groups[key] = ProcessGroup(
            key=key, process=process, uid=process.uid, user=process.user, counts=dict(tally.counts),
            inferred=dict(tally.inferred),
            total=tally.counts.total() + tally.inferred.total(),
        )
    per_uid: dict[int, Counter[TcpState]] = {}
    for (uid, state), count in unknown_uids.items():
        per_uid.setdefault(uid, Counter())[state] += count
    for uid, counts in per_uid.items():
        key = uid_key(uid)
        groups[key] = ProcessGroup(
            key=key, process=None, uid=uid, user=user_of(uid), counts=dict(counts),
            inferred={}, total=sum(counts.values()),
        )
    return groups


def _connection_table(outgoing: list[SocketRecord], pids: list[Pids | None], inferred: dict[Connection, Pids]
                      ) -> dict[Connection, Pids]:
    """Connection → holder for the ``outgoing`` sockets held now, then those ``inferred`` from before."""
    table = dict(zip(map(CONNECTION, compress(outgoing, pids)), compress(pids, pids)))
    table.update(inferred)
    return table


def _remote_groups(records: Sequence[SocketRecord]) -> dict[str, RemoteGroup]:
    """Connected sockets (a remote port, not 0) by peer address."""
    connected = list(map(REMOTE_PORT, records))
    pairs = Counter(zip(map(REMOTE_ADDR, compress(records, connected)), map(STATE, compress(records, connected))))
    counts_by_address: dict[str, dict[TcpState, int]] = {}
    for (address, state), count in pairs.items():
        counts_by_address.setdefault(address, {})[state] = count
    return {
        address: RemoteGroup(address, counts, sum(counts.values()))
        for address, counts in counts_by_address.items()
    }
