"""Fold a socket table into the panes' groups: by state, service port, process, remote host, user.

Runs once per refresh over up to 200,000 sockets, so every per-socket step
is a numpy operation over the table's columns (`SocketColumns`): group-bys
are `np.unique` over packed integer keys, owners are joined by inode and
by connection with `searchsorted`. Python loops walk only the distinct
groups, which are few.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from enum import Enum
from operator import itemgetter
from typing import TypeVar

import numpy as np

from ..collect.columns import (ADDRESS, ADDRESSES, SocketColumns, connection_hashes, distinct, found_in,
                               sorted_slots, table_of)
from ..collect.records import STATE_BY_CODE, ProcessInfo, SocketRecord, TcpState

STATE = itemgetter(1)
LOCAL_PORT = itemgetter(3)
REMOTE_PORT = itemgetter(5)
CONNECTION = itemgetter(2, 3, 4, 5)

Pids = tuple[int, ...]
K = TypeVar("K")
V = TypeVar("V")
StateCounts = dict[TcpState, int]
_STATES: list[TcpState | None] = [STATE_BY_CODE.get(code) for code in range(256)]  # codes as stored


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
    connection_owners: ConnectionOwners | None = field(default=None, compare=False)  # ``last_owners`` as arrays
    rows: RowOwners | None = field(default=None, compare=False)  # per socket of the table: who it is counted for
    netns_listener_pids: Mapping[int, Pids] = field(default_factory=dict)  # netns_port_key → listeners, when
    # the table spans namespaces (each has its own ports: every replica of a pod listens on the same one)

    def listeners_of(self, netns: int, port: int) -> Pids:
        """The processes listening on ``port`` in the namespace ``netns`` (`SocketRecord.netns`)."""
        if self.netns_listener_pids:
            return self.netns_listener_pids.get(netns_port_key(netns, port), ())
        return self.listener_pids.get(port, ())

    def direction(self, local_port: int, remote_port: int) -> Direction:
        """The rule the port groups were made by, for one socket: the view's drill-down
        and the findings must not keep copies of it that could disagree."""
        low, high = self.ephemeral_ports
        serves = local_port in self.listening_ports or (
            not low <= local_port <= high and low <= remote_port <= high)
        return Direction.IN if serves else Direction.OUT

    def inbound_flags(self, records: Sequence[SocketRecord]) -> bytes:
        """`direction` for many sockets at once: 1 for "in", 0 for "out"."""
        columns = table_of(records).columns
        return inbound_flags(columns.local_port, columns.remote_port, self.listening_ports,
                            self.ephemeral_ports).tobytes()

    def port_key(self, record: SocketRecord) -> str:
        """The ``by_port`` key of the group this socket is counted in."""
        if self.direction(record.local_port, record.remote_port) is Direction.IN:
            return f"{Direction.IN.value}:{record.local_port}"
        return f"{Direction.OUT.value}:{record.remote_port}"

    @property
    def coverage(self) -> float:
        """Share of sockets with an inode whose owner is known (1.0 when none has one)."""
        return self.owned / self.with_inode if self.with_inode else 1.0


def process_key(pid: int) -> str:
    return f"pid:{pid}"


def uid_key(uid: int) -> str:
    return f"uid:{uid}"


def inbound_flags(local_ports: np.ndarray | Sequence[int], remote_ports: np.ndarray | Sequence[int],
                  listening_ports: frozenset[int] | Sequence[int], ephemeral_ports: tuple[int, int]) -> np.ndarray:
    """Per socket True ("in") or False ("out"): a listening local port serves; an ephemeral
    local port calls out; a fixed one serves when the remote port is ephemeral."""
    local_ports, remote_ports = np.asarray(local_ports, np.int64), np.asarray(remote_ports, np.int64)
    low, high = ephemeral_ports
    listening = np.zeros(65536, bool)
    listening[list(listening_ports)] = True
    local_fixed = (local_ports < low) | (local_ports > high)
    remote_ephemeral = (remote_ports >= low) & (remote_ports <= high)
    return listening[local_ports] | (local_fixed & remote_ephemeral)


@dataclass(frozen=True, slots=True, eq=False)
class OwnerIndex:
    """``pids_by_inode`` as arrays, for a join by inode: sorted inodes and, per inode,
    its holders as an index into ``pid_sets`` (``pid_sets[0]`` is the empty set)."""

    inodes: np.ndarray
    codes: np.ndarray
    pid_sets: tuple[Pids, ...]

    @classmethod
    def of(cls, pids_by_inode: Mapping[int, Pids]) -> OwnerIndex:
        """The index of a map, remembered for the next call: the owner scanner replaces its map
        only when owners change, so most refreshes reuse the last index."""
        cached = _OWNER_INDEX[0]
        if cached is not None and cached[0] is pids_by_inode:
            return cached[1]
        distinct = [pids for pids in set(pids_by_inode.values()) if pids]
        number = {pids: index for index, pids in enumerate(distinct, 1)}
        number[()] = 0
        size = len(pids_by_inode)
        inodes = np.fromiter(pids_by_inode.keys(), np.uint64, size)
        codes = np.fromiter(map(number.__getitem__, pids_by_inode.values()), np.int64, size)
        order = np.argsort(inodes)
        index = cls(inodes[order], codes[order], ((), *distinct))
        _OWNER_INDEX[0] = (pids_by_inode, index)
        return index

    def lookup(self, inodes: np.ndarray) -> np.ndarray:
        """Per socket its holders' code: -1 for an inode 0 no process can hold (unless the map
        names one), 0 for an inode the scan could not place."""
        codes = np.where(inodes == 0, -1, 0)
        if len(self.inodes):
            rows = np.flatnonzero(inodes) if self.inodes[0] else np.arange(len(inodes))  # 0: only a map that names it
            wanted = inodes[rows]
            slot = sorted_slots(self.inodes, wanted)
            found = self.inodes[slot] == wanted
            codes[rows[found]] = self.codes[slot[found]]
        return codes


_OWNER_INDEX: list[tuple[Mapping[int, Pids], OwnerIndex] | None] = [None]


@dataclass(frozen=True, slots=True, eq=False)
class ConnectionOwners:
    """Outgoing connection → holders, as arrays: the connections' 4-tuples (held ones first, in
    table order, then inferred ones) and each one's holders as an index into ``pid_sets``."""

    local_addr: np.ndarray
    local_port: np.ndarray
    remote_addr: np.ndarray
    remote_port: np.ndarray
    codes: np.ndarray
    pid_sets: tuple[Pids, ...]
    _index: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def of_rows(cls, columns: SocketColumns, rows: np.ndarray, codes: np.ndarray,
                pid_sets: tuple[Pids, ...]) -> ConnectionOwners:
        """The connections of ``rows``, held by ``pid_sets[codes]``; only the pid sets used are kept
        (so that they do not grow refresh after refresh)."""
        used, renumbered = np.unique(codes, return_inverse=True)
        return cls(columns.local_addr[rows], columns.local_port[rows], columns.remote_addr[rows],
                   columns.remote_port[rows], renumbered.reshape(-1).astype(np.int64) + 1,
                   ((), *(pid_sets[code] for code in used.tolist())))

    @classmethod
    def of_mapping(cls, table: Mapping[Connection, Pids]) -> ConnectionOwners:
        """From a text-keyed map (a caller's own, or a snapshot's ``last_owners``)."""
        kept = [(connection, pids) for connection, pids in table.items() if pids]
        distinct_sets = list(dict.fromkeys(pids for _, pids in kept))
        number = {pids: index for index, pids in enumerate(distinct_sets, 1)}
        local, local_ports, remote, remote_ports = zip(*(connection for connection, _ in kept)) if kept else ((),) * 4
        return cls(np.array(ADDRESSES.raws(local), ADDRESS), np.array(local_ports, np.uint16),
                   np.array(ADDRESSES.raws(remote), ADDRESS), np.array(remote_ports, np.uint16),
                   np.array([number[pids] for _, pids in kept], np.int64), ((), *distinct_sets))

    def lookup(self, columns: SocketColumns, rows: np.ndarray) -> np.ndarray:
        """Per row its holders' code, 0 when unknown; a connection listed twice takes its later entry."""
        if not len(self.codes) or not len(rows):
            return np.zeros(len(rows), np.int64)
        if not self._index:
            self._index.append(_hash_index(connection_hashes(self.local_addr, self.local_port, self.remote_addr,
                                                             self.remote_port)))
        hashes, entries = self._index[0]
        local_addr, local_port = columns.local_addr[rows], columns.local_port[rows]
        remote_addr, remote_port = columns.remote_addr[rows], columns.remote_port[rows]
        entry = entries[sorted_slots(hashes, connection_hashes(local_addr, local_port, remote_addr, remote_port))]
        found = ((self.local_port[entry] == local_port) & (self.remote_port[entry] == remote_port)
                 & (self.local_addr[entry] == local_addr) & (self.remote_addr[entry] == remote_addr))
        return np.where(found, self.codes[entry], 0)  # a hash collision is not a match

    def table(self) -> dict[Connection, Pids]:
        """The text-keyed map (`Aggregates.last_owners`)."""
        local, remote = ADDRESSES.texts(self.local_addr.tolist()), ADDRESSES.texts(self.remote_addr.tolist())
        return dict(zip(zip(local, self.local_port.tolist(), remote, self.remote_port.tolist()),
                        map(self.pid_sets.__getitem__, self.codes.tolist())))


def _hash_index(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct hashes, sorted, and for each the last entry that has it."""
    order = np.argsort(hashes)
    ordered = hashes[order]
    if len(ordered) > 1:
        starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
        if len(starts) < len(ordered):
            return ordered[starts], np.maximum.reduceat(order, starts)
    return ordered, order


class RowKind:
    """`RowOwners.kinds` values: how each socket is tied to ``pid_sets[codes[i]]`` (see `OwnerKind`)."""

    NONE, DIRECT, INFERRED, UNKNOWN, COOKIE = 0, 1, 2, 3, 4
    OWNER_KINDS = (OwnerKind.NONE, OwnerKind.DIRECT, OwnerKind.INFERRED, OwnerKind.UNKNOWN, OwnerKind.COOKIE)


@dataclass(frozen=True, slots=True, eq=False)
class RowOwners:
    """Per socket of a grouped table, the attribution `Snapshot.owners_of` gives it, as arrays."""

    kinds: np.ndarray  # RowKind values
    codes: np.ndarray  # index into pid_sets; 0 (no pid) unless DIRECT or INFERRED
    pid_sets: tuple[Pids, ...]

    def holding(self, pid: int) -> np.ndarray:
        """True for the sockets held by ``pid`` or tied to it by inference."""
        return self.holding_any({pid})

    def holding_any(self, pids: Set[int]) -> np.ndarray:
        """True for the sockets held by one of ``pids`` or tied to one by inference."""
        return np.array([not pids.isdisjoint(held) for held in self.pid_sets], bool)[self.codes]


def aggregate(
    records: Sequence[SocketRecord],
    ownership: Ownership,
    user_of: Callable[[int], str],
    last_owners: Mapping[Connection, Pids] | ConnectionOwners,
    listeners: Mapping[int, Pids] | None = None,
    ephemeral_ports: tuple[int, int] = DEFAULT_EPHEMERAL_PORTS,
    netns_listeners: Mapping[int, Pids] | None = None,
) -> Aggregates:
    """All the panes' groups of a table (a `SocketTable`, or records, turned into columns).

    ``user_of`` names a uid, for the rows of owners we may not see.
    ``last_owners`` is the previous snapshot's (its ``connection_owners``
    joins fastest): a client socket that closed first turns into an
    inode-0 TIME_WAIT, and this is how it stays tied (as inferred) to the
    process that held it. ``listeners`` (port → pids) replaces the
    listeners found in ``records`` when those are a filtered subset, and
    ``netns_listeners`` (`netns_port_key` → pids) those of a table that
    spans network namespaces: there an inode-0 socket is inferred to the
    listener of its own namespace only.

    A socket is "in" under its local port when that port listens, or when
    it is a fixed port talking to an ephemeral one (``ephemeral_ports``,
    the kernel's ip_local_port_range): the server-side TIME_WAIT of a
    service that has just been restarted must not scatter into one "out"
    row per client port.
    """
    columns = table_of(records).columns
    size = len(columns)
    states, local_ports, remote_ports = columns.state, columns.local_port, columns.remote_port
    inodes = columns.inode
    if ownership.closed:  # they are the orphans or TIME_WAIT (inode 0) they became: never "unknown owner"
        inodes = np.where(found_in(np.sort(np.fromiter(ownership.closed, np.uint64, len(ownership.closed))), inodes),
                          0, inodes)
    owners = OwnerIndex.of(ownership.pids_by_inode)
    held = owners.lookup(inodes)  # -1 inode 0 (nobody can hold it), 0 unplaced, else owners.pid_sets
    if listeners is None:
        listeners = _listener_pids(local_ports, states, held, owners.pid_sets)
    listening_ports = frozenset(listeners)
    inbound = inbound_flags(local_ports, remote_ports, listening_ports, ephemeral_ports)

    # one code space for every set of pids a socket can be counted for: held, a listener's, a last owner's
    previous = last_owners if isinstance(last_owners, ConnectionOwners) else ConnectionOwners.of_mapping(last_owners)
    listener_sets = tuple(listeners.values())
    listener_base, previous_base = len(owners.pid_sets), len(owners.pid_sets) + len(listener_sets)
    processes = ownership.processes
    pid_sets = (owners.pid_sets + tuple(credited(pids, processes) for pids in listener_sets)
                + tuple(credited(pids, processes) for pids in previous.pid_sets))
    codes = np.maximum(held, 0)
    kinds = np.where(held > 0, RowKind.DIRECT, np.where(held == 0, RowKind.UNKNOWN, RowKind.NONE)).astype(np.uint8)
    kinds[(held == 0) & (inodes == 0)] = RowKind.NONE  # an inode 0 the map names with no pid

    unheld = held == -1
    # inode-0 sockets of a listening port (queued, closing): its listeners
    port_listener = np.zeros(65536, np.int64)
    port_listener[list(listeners)] = np.arange(listener_base, previous_base)
    queued = np.flatnonzero(unheld & inbound & (states != TcpState.LISTEN))
    if len(queued):
        codes[queued] = port_listener[local_ports[queued]]
    if netns_listeners is None and np.any(columns.netns):
        netns_keys = columns.netns.astype(np.int64) << 16 | local_ports
        netns_listeners = _listener_pids(netns_keys, states, held, owners.pid_sets)
    if netns_listeners:
        pid_sets, codes[queued] = _in_own_namespace(columns, queued, netns_listeners, pid_sets, processes)
    # inode-0 outgoing sockets: the connection's holder, now or when last held
    outbound = ~inbound
    closed = np.flatnonzero(unheld & outbound)
    found = previous.lookup(columns, closed)
    codes[closed] = np.where(found > 0, found + previous_base, 0)
    kinds[unheld & np.array(list(map(bool, pid_sets)), bool)[codes]] = RowKind.INFERRED
    codes[kinds == RowKind.NONE] = 0

    held_out = np.flatnonzero(outbound & (held > 0))
    inferred_out = closed[kinds[closed] == RowKind.INFERRED]  # a last owner that exited is forgotten
    owned_out = np.concatenate([held_out, inferred_out])
    connection_owners = ConnectionOwners.of_rows(columns, owned_out, codes[owned_out], pid_sets)

    by_state = _state_counts(states)
    by_port = _port_groups(inbound, local_ports, remote_ports, states, kinds, codes, pid_sets)
    return Aggregates(
        total=size,
        by_state=by_state,
        by_port=by_port,
        by_process=_process_groups(kinds, codes, states, columns.uid, pid_sets, ownership.processes, user_of),
        by_remote=Deferred(lambda: _remote_groups(columns)),
        listening_ports=listening_ports,
        listener_pids=listeners,
        ephemeral_ports=ephemeral_ports,
        last_owners=Deferred(connection_owners.table),
        with_inode=int(np.count_nonzero(inodes)),
        owned=int(np.count_nonzero(kinds == RowKind.DIRECT)),
        connection_owners=connection_owners,
        rows=RowOwners(kinds, codes, pid_sets),
        netns_listener_pids=netns_listeners or {},
    )


def credited(pids: Pids, processes: Mapping[int, ProcessInfo]) -> Pids:
    """The one process an inferred socket counts for: the lowest visible pid of those it is tied to.

    Workers that inherited one listener all hold it, but each TIME_WAIT or
    queued connection on it is one socket: crediting every worker would
    count it once per worker, beyond the table. The lowest pid is, as a
    rule, the parent that opened the listener (a prefork server's master).
    A process that has exited is credited nothing.
    """
    visible = [pid for pid in pids if pid in processes]
    return (min(visible),) if visible else ()


def netns_port_key(netns: int, port: int) -> int:
    """One key for a port in a network namespace (`SocketRecord.netns`, 0 for socktop's own)."""
    return netns << 16 | port


def _in_own_namespace(columns: SocketColumns, rows: np.ndarray, listeners: Mapping[int, Pids],
                      pid_sets: tuple[Pids, ...], processes: Mapping[int, ProcessInfo]
                      ) -> tuple[tuple[Pids, ...], np.ndarray]:
    """``pid_sets`` with the namespaces' listener sets added (each `credited`), and the code of each
    of ``rows``: the listeners of its local port in its own namespace (0: none there)."""
    keys = np.fromiter(listeners, np.int64, len(listeners))
    order = np.argsort(keys)
    keys = keys[order]
    sets = tuple(credited(pids, processes) for pids in listeners.values())
    base = len(pid_sets)
    wanted = columns.netns[rows].astype(np.int64) << 16 | columns.local_port[rows]
    slot = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    codes = np.where(keys[slot] == wanted, base + order[slot], 0)
    return pid_sets + sets, codes


def _listener_pids(local_ports: np.ndarray, states: np.ndarray, held: np.ndarray,
                   pid_sets: tuple[Pids, ...]) -> dict[int, Pids]:
    """Listening port (or `netns_port_key`) → the processes holding a listener on it (empty when none is visible)."""
    rows = np.flatnonzero(states == TcpState.LISTEN)
    found: dict[int, set[int]] = {}
    for key, code in set(zip(local_ports[rows].tolist(), np.maximum(held[rows], 0).tolist())):  # listeners: few
        found.setdefault(key, set()).update(pid_sets[code])
    return {port: tuple(sorted(pids)) for port, pids in found.items()}


def _state_counts(states: np.ndarray) -> StateCounts:
    """Sockets per state, in order of first appearance."""
    present, first, counts = np.unique(states, return_index=True, return_counts=True)
    order = np.argsort(first)
    return {_STATES[state]: count for state, count in zip(present[order].tolist(), counts[order].tolist())}


def _port_groups(inbound: np.ndarray, local_ports: np.ndarray, remote_ports: np.ndarray, states: np.ndarray,
                 kinds: np.ndarray, codes: np.ndarray, pid_sets: tuple[Pids, ...]
                 ) -> dict[str, PortGroup]:
    """Service port groups: "in" under the local port, "out" under the remote one."""
    group = np.where(inbound, local_ports, remote_ports).astype(np.int64) | inbound.astype(np.int64) << 16
    keys, counts = np.unique(group << 8 | states, return_counts=True)
    first = np.full(1 << 17, len(group))  # per port group (17 bits: direction, port), its first socket
    np.minimum.at(first, group, np.arange(len(group)))
    counted = kinds == RowKind.DIRECT
    counted |= kinds == RowKind.INFERRED
    holders = distinct(group[counted] << 32 | codes[counted])
    pids: dict[int, set[int]] = {}
    for pair in holders.tolist():
        pids.setdefault(pair >> 32, set()).update(pid_sets[pair & 0xFFFFFFFF])
    present = distinct(keys >> 8)
    groups: dict[int, dict[TcpState, int]] = {key: {} for key in present[np.argsort(first[present])].tolist()}
    for key, count in zip(keys.tolist(), counts.tolist()):
        groups[key >> 8][_STATES[key & 0xFF]] = count
    by_port: dict[str, PortGroup] = {}
    for key, state_counts in groups.items():
        port, direction = key & 0xFFFF, Direction.IN if key >> 16 else Direction.OUT
        port_group = PortGroup(port, direction, state_counts, sum(state_counts.values()),
                               tuple(sorted(pids.get(key, ()))))
        by_port[port_group.key] = port_group
    return by_port


def _process_groups(kinds: np.ndarray, codes: np.ndarray, states: np.ndarray, uids: np.ndarray,
                    pid_sets: tuple[Pids, ...], processes: Mapping[int, ProcessInfo],
                    user_of: Callable[[int], str]) -> dict[str, ProcessGroup]:
    """A group per process with sockets held or inferred, then one per uid of sockets nobody we see holds."""
    counted = (kinds == RowKind.DIRECT) | (kinds == RowKind.INFERRED)
    keys, counts = np.unique((kinds[counted].astype(np.int64) << 40) | (codes[counted] << 8) | states[counted],
                             return_counts=True)
    tallies: dict[int, tuple[Counter[TcpState], Counter[TcpState]]] = {}
    for key, count in zip(keys.tolist(), counts.tolist()):
        state, inferred = _STATES[key & 0xFF], key >> 40 == RowKind.INFERRED
        for pid in pid_sets[(key >> 8) & 0xFFFFFFFF]:
            tally = tallies.get(pid)
            if tally is None:
                tally = tallies[pid] = (Counter(), Counter())
            tally[inferred][state] += count
    groups: dict[str, ProcessGroup] = {}
    for pid, (held, inferred) in tallies.items():
        key, process = process_key(pid), processes.get(pid)
        if process is None:  # a process that has exited since: no row with nothing known about it
            continue
        groups[key] = ProcessGroup(
            key=key, process=process, uid=process.uid, user=process.user, counts=dict(held),
            inferred=dict(inferred), total=held.total() + inferred.total(),
        )
    unknown = kinds == RowKind.UNKNOWN
    per_uid: dict[int, dict[TcpState, int]] = {}
    keys, counts = np.unique(uids[unknown].astype(np.int64) << 8 | states[unknown], return_counts=True)
    for key, count in zip(keys.tolist(), counts.tolist()):
        per_uid.setdefault(key >> 8, {})[_STATES[key & 0xFF]] = count
    for uid, state_counts in per_uid.items():
        key = uid_key(uid)
        groups[key] = ProcessGroup(key=key, process=None, uid=uid, user=user_of(uid), counts=state_counts,
                                   inferred={}, total=sum(state_counts.values()))
    return groups


def _remote_groups(columns: SocketColumns) -> dict[str, RemoteGroup]:
    """Connected sockets (a remote port, not 0) by peer address, in order of first appearance."""
    connected = np.flatnonzero(columns.remote_port)
    addresses, first, inverse = np.unique(columns.remote_addr[connected], return_index=True, return_inverse=True)
    keys, counts = np.unique(inverse.reshape(-1).astype(np.int64) << 8 | columns.state[connected], return_counts=True)
    texts = ADDRESSES.texts(addresses.tolist())
    counts_by_address: dict[int, dict[TcpState, int]] = {index: {} for index in np.argsort(first).tolist()}
    for key, count in zip(keys.tolist(), counts.tolist()):
        counts_by_address[key >> 8][_STATES[key & 0xFF]] = count
    return {
        texts[index]: RemoteGroup(texts[index], counts, sum(counts.values()))
        for index, counts in counts_by_address.items()
    }
