"""What the panes show for one snapshot and one drill-down: plain data, built off the UI thread.

No Textual and no Rich here: the poller thread (after each refresh) and the
view thread (after each selection change) call `build_view`, and the widgets
only turn the rows it returns into cells and lines. At 50,000 sockets the
filtering, re-aggregation and socket sort cost tens of milliseconds, which
must not be spent on the thread that answers keys.

The drill-down is a stack of `Level`s, one per pane kind (state, port,
process), in the order the user picked them; each pane is filtered by the
levels of the *other* kinds, so picking CLOSE_WAIT narrows Ports and
Processes while States keeps every state. The free-text `Query` narrows all.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter

import numpy as np

from ..collect.columns import (ADDRESS, ADDRESSES, CONNECTION_KEY, ConnectionSet, SocketColumns, SocketTable,
                               address_order, address_raw, connection_key, connection_keys, distinct, table_of)
from ..collect.records import DISPLAY_STATES, STATE_BY_CODE, SocketRecord, TcpState
from ..model.aggregate import Aggregates, Direction, ProcessGroup, RowKind, RowOwners, inbound_flags
from ..model.places import place_predicate
from ..model.snapshot import HistoryPoint, Snapshot

CONNECTION = itemgetter(2, 3, 4, 5)
TREND_CELLS = 8  # the States and Processes panes' mini trends: one cell per group of refreshes

STATE, PORT, PROCESS = "state", "port", "process"
LEVEL_KINDS = (STATE, PORT, PROCESS)


# --- the drill-down and the free-text filter ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Level:
    """One drill-down level: a pane kind and the key of the row picked in it.

    Keys are the panes' row keys: a state's name (``CLOSE_WAIT``), a port
    group's key (``in:8080``), a process group's key (``pid:42``, ``uid:1000``).
    """

    kind: str
    key: str

    @property
    def label(self) -> str:
        if self.kind == STATE:
            return TcpState[self.key].label
        if self.kind == PORT:
            direction, _, port = self.key.partition(":")
            return f":{port} {direction}"
        return self.key.replace(":", " ")


def with_level(levels: tuple[Level, ...], level: Level) -> tuple[Level, ...]:
    """``levels`` with ``level`` set: in place when its kind is already there, else appended."""
    for index, existing in enumerate(levels):
        if existing.kind == level.kind:
            return levels[:index] + (level,) + levels[index + 1:]
    return levels + (level,)


QUERY_PREFIXES = ("state", "port", "pid", "proc", "user", "addr", "container", "netns")


def suggest_state(text: str) -> str | None:
    """The state a mistyped name most likely means: its initials (``tw`` → time-wait, ``fw2`` →
    fin-wait-2), the start of its name (``est``), else the closest spelling; None when nothing is close."""
    text = text.lower()
    slugs = [state.slug for state in DISPLAY_STATES]
    for slug in slugs:
        parts = slug.split("-")
        if text == "".join(part[0] if part.isalpha() else part for part in parts):
            return slug
    starts = [slug for slug in slugs if slug.startswith(text)]
    if len(starts) == 1:
        return starts[0]
    close = difflib.get_close_matches(text, slugs, n=1, cutoff=0.6)
    return close[0] if close else None


@dataclass(frozen=True, slots=True)
class Query:
    """The `/` filter: ``state:close-wait port:8080 pid:42 proc:java user:app addr:10.0`` and free words.

    Every term must match (AND). A free word matches a socket when it is in
    its state's name, equals one of its ports or its owner's pid (digits
    only), is part of its owner's name or user, or part of an address (words
    with a dot or a colon).
    """

    text: str = ""
    terms: tuple[tuple[str, str], ...] = ()  # (prefix or "", lower-case value)
    error: str = ""

    @classmethod
    def parse(cls, text: str) -> Query:
        terms: list[tuple[str, str]] = []
        errors: list[str] = []
        for word in text.split():
            prefix, colon, value = word.partition(":")
            prefix = prefix.lower()
            if colon and prefix in QUERY_PREFIXES and value:
                if prefix == "state":
                    try:
                        TcpState.parse(value)
                    except ValueError:
                        guess = suggest_state(value)
                        errors.append(f"unknown state {value!r}" + (f": did you mean {guess}?" if guess else ""))
                        continue
                elif prefix in ("port", "pid") and not value.isdigit():
                    errors.append(f"{prefix}: wants a number, not {value!r}")
                    continue
                terms.append((prefix, value.lower()))
            else:
                terms.append(("", word.lower()))
        return cls(text.strip(), tuple(terms), "; ".join(errors))

    def __bool__(self) -> bool:
        return bool(self.terms)


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """What the user asked to see: drill-down, text filter, socket sort. Immutable, so the
    UI thread can swap it while a worker reads the previous one."""

    levels: tuple[Level, ...] = ()
    query: Query = Query()
    socket_sort: str = "state"
    socket_reverse: bool = False

    def scope(self, without: str | None = None) -> tuple[tuple[Level, ...], Query]:
        return tuple(level for level in self.levels if level.kind != without), self.query


# --- rows ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StateRow:
    key: str
    state: TcpState
    count: int
    delta: int | None  # since the previous refresh; None when unknown
    share: float
    trend: tuple[int, ...]  # the largest count in each group of refreshes (trend_groups), oldest first


@dataclass(frozen=True, slots=True)
class PortRow:
    key: str
    port: int
    direction: Direction
    counts: dict[TcpState, int]
    total: int
    owners: tuple[str, ...]  # process names (untrusted), most sockets first
    pids: tuple[int, ...]
    closes: float | None = None  # connections closed per second in this group (host-wide); None: not counted

    def count(self, state: TcpState) -> int:
        return self.counts.get(state, 0)

    @property
    def other(self) -> int:
        return self.total - sum(self.counts.get(s, 0) for s in PORT_STATE_COLUMNS)


PORT_STATE_COLUMNS = (TcpState.ESTABLISHED, TcpState.TIME_WAIT, TcpState.CLOSE_WAIT, TcpState.LISTEN)


@dataclass(frozen=True, slots=True)
class ProcessRow:
    key: str
    group: ProcessGroup
    total: int  # held + inferred (ProcessGroup.total)
    established: int  # each state: held + inferred, as in total (`inferred` says how many are inferred)
    close_wait: int
    time_wait: int
    trend: tuple[int, ...]  # the largest count in each group of refreshes (trend_groups), oldest first
    closes: float | None = None  # its connections closed per second (exact or inferred); None: not counted

    @property
    def pid(self) -> int | None:
        return self.group.pid

    def inferred(self, state: TcpState) -> int:
        return self.group.inferred.get(state, 0)


@dataclass(frozen=True, slots=True)
class View:
    """Everything the panes show for one snapshot under one `ViewSpec`."""

    spec: ViewSpec
    seq: int
    states: tuple[StateRow, ...]
    ports: tuple[PortRow, ...]
    processes: tuple[ProcessRow, ...]
    sockets: Sequence[SocketRecord]  # in view, sorted by spec.socket_sort
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # pane → key → count, for deltas
    build_seconds: float = 0.0
    inferred: int = 0  # when a pid narrows the view: its sockets without a descriptor (owner inferred)
    cursor_hint: tuple[tuple, int] | None = None  # (a socket's 4-tuple, its index in ``sockets``): see `with_cursor`
    new: np.ndarray | None = field(default=None, compare=False)  # per socket, new since the refresh before: `with_new`


def with_cursor(view: View, connection: tuple | None) -> View:
    """``view`` knowing where the socket under the Sockets cursor now is, searched off the UI thread
    (50,000 comparisons); the UI uses it when its cursor is still on that socket."""
    if connection is None:
        return view
    index = index_of(view.sockets, connection)
    return replace(view, cursor_hint=(connection, index)) if index is not None else view


def with_new(view: View, before: ConnectionSet | None) -> View:
    """``view`` knowing which of its sockets are new: not among the 4-tuples of the refresh ``before`` it
    (none marked on the first refresh). Found for every socket at once off the UI thread: a lookup per
    line drawn released the interpreter lock each time, and the UI thread waited to take it back."""
    if not before:
        return view
    return replace(view, new=~before.holds(table_of(view.sockets).columns))


# --- socket selection ------------------------------------------------------------------------------

PLACE_TERMS = ("container", "netns")  # tested per socket (`place_predicate`): the rest over the columns


class Masks:
    """What each drill-down level and filter term keeps of a snapshot's sockets: one bool per row of its
    table, computed over the columns and kept for the view's other scopes. A Python test per socket cost
    50 to 150 ms a view at 50,000 sockets, all of it holding the interpreter lock that the UI thread
    needs to answer a key."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.table = table_of(snapshot.sockets)
        self.columns = self.table.columns
        self._owners: RowOwners | None = None
        self._kept: dict[tuple[str, str], np.ndarray] = {}

    @property
    def owners(self) -> RowOwners:
        if self._owners is None:
            self._owners = self.snapshot.row_owners()
        return self._owners

    def level(self, level: Level) -> np.ndarray:
        return self._cached((level.kind, level.key), lambda: self._level(level.kind, level.key))

    def term(self, prefix: str, value: str) -> np.ndarray:
        return self._cached(("/" + prefix, value), lambda: self._term(prefix, value))

    def _cached(self, key: tuple[str, str], make: Callable[[], np.ndarray]) -> np.ndarray:
        kept = self._kept.get(key)
        if kept is None:
            kept = self._kept[key] = make()
        return kept

    def _level(self, kind: str, key: str) -> np.ndarray:
        if kind == STATE:
            return self.columns.state == TcpState[key].value
        if kind == PORT:  # the model's own grouping rule (`Aggregates.port_key`): a drill-down lists what the row counted
            direction, _, port = key.partition(":")
            aggregates, columns = self.snapshot.aggregates, self.columns
            inbound = inbound_flags(columns.local_port, columns.remote_port, aggregates.listening_ports,
                                    aggregates.ephemeral_ports)
            if direction == Direction.IN.value:
                return inbound & (columns.local_port == int(port))
            return ~inbound & (columns.remote_port == int(port))
        owner, _, number = key.partition(":")
        if owner == "uid":  # sockets with an inode that no process we see holds, of one uid
            return (self.owners.kinds == RowKind.UNKNOWN) & (self.columns.uid == int(number))
        return self.owned_by({int(number)})

    def owned_by(self, pids: set[int]) -> np.ndarray:
        """The sockets held by one of ``pids`` or tied to it, as `Snapshot.owners_of` says."""
        return self.owners.holding_any(pids)

    def _term(self, prefix: str, value: str) -> np.ndarray:
        snapshot, columns = self.snapshot, self.columns
        if prefix == "state":
            return columns.state == TcpState.parse(value).value
        if prefix == "port":
            return self._port(int(value))
        if prefix == "pid":
            return self.owned_by({int(value)})
        if prefix == "proc":
            return self.owned_by(_owner_pids(snapshot, lambda name, user, pid: value in name))
        if prefix == "user":
            uids = [uid for uid in distinct(columns.uid).tolist() if value in snapshot.user_of(uid).lower()]
            unplaced = (self.owners.kinds == RowKind.UNKNOWN) & np.isin(columns.uid, uids)
            return self.owned_by(_owner_pids(snapshot, lambda name, user, pid: value in user)) | unplaced
        if prefix == "addr":
            address = full_address(value)
            if address is not None:  # a whole address matches itself only (10.0.0.5 is not in 10.0.0.50), as in ss
                raw = np.frombuffer(address_raw(address), ADDRESS)[0]
                return (columns.local_addr == raw) | (columns.remote_addr == raw)
            return self._address_text(value)
        return self._word(value)

    def _port(self, port: int) -> np.ndarray:
        return (self.columns.local_port == port) | (self.columns.remote_port == port)

    def _address_text(self, part: str) -> np.ndarray:
        """The sockets one of whose addresses' text holds ``part``: each distinct address asked once."""
        kept = []
        for column in (self.columns.local_addr, self.columns.remote_addr):
            addresses, inverse = np.unique(column, return_inverse=True)
            texts = ADDRESSES.texts(addresses.tolist())
            kept.append(np.fromiter((part in text for text in texts), bool, len(texts))[inverse.reshape(-1)])
        return kept[0] | kept[1]

    def _word(self, word: str) -> np.ndarray:
        """A free word: in a state's name, a port on either end or an owner's pid (digits), part of an
        address (with a dot or a colon), part of an owner's name or user."""
        states = [state.value for state in DISPLAY_STATES if word in state.slug or word in state.name.lower()]
        kept = np.isin(self.columns.state, states)
        number = int(word) if word.isdigit() else None
        if number is not None:
            kept |= self._port(number)
        if "." in word or ":" in word:
            kept |= self._address_text(word)
        pids = _owner_pids(self.snapshot, lambda name, user, pid: word in name or word in user or pid == number)
        return kept | self.owned_by(pids) if pids else kept


def full_address(text: str) -> str | None:
    """``text`` as the collectors write an address (IPv4-mapped IPv6 as IPv4), or None when it is not one."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def _owner_pids(snapshot: Snapshot, test: Callable[[str, str, int], bool]) -> set[int]:
    return {pid for pid, info in snapshot.ownership.processes.items() if test(info.name.lower(), info.user.lower(), pid)}


def select_records(snapshot: Snapshot, levels: Iterable[Level], query: Query,
                   masks: Masks | None = None) -> Sequence[SocketRecord]:
    """The sockets every level and every query term lets through (the snapshot's own list when none):
    a table of the rows kept, no record built (``masks``: those of the view's other scopes, to reuse)."""
    levels = tuple(levels)
    if not levels and not query:
        return snapshot.sockets
    masks = masks if masks is not None else Masks(snapshot)
    kept = np.ones(len(masks.table), bool)
    for level in levels:
        kept &= masks.level(level)
    for prefix, value in query.terms:
        if prefix not in PLACE_TERMS:
            kept &= masks.term(prefix, value)
    records = masks.table.take(kept)
    for prefix, value in query.terms:
        if prefix in PLACE_TERMS:
            test = place_predicate(snapshot.place_slots, value, by_namespace=prefix == "netns")
            records = records.take(np.fromiter(map(test, records), bool, len(records)))
    return records


class Scopes:
    """The sockets and aggregates of each scope one view needs, each computed once."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.masks = Masks(snapshot)
        self._records: dict[tuple, Sequence[SocketRecord]] = {}
        self._aggregates: dict[tuple, Aggregates] = {}

    def records(self, levels: tuple[Level, ...], query: Query) -> Sequence[SocketRecord]:
        key = (frozenset(levels), query.terms)
        if key not in self._records:
            self._records[key] = select_records(self.snapshot, levels, query, self.masks)
        return self._records[key]

    def aggregates(self, levels: tuple[Level, ...], query: Query) -> Aggregates:
        """The snapshot's aggregates, or those of the sockets in scope (recomputed as `Snapshot.filtered` does)."""
        if not levels and not query:
            return self.snapshot.aggregates
        key = (frozenset(levels), query.terms)
        if key not in self._aggregates:
            self._aggregates[key] = self.snapshot.regroup(self.records(levels, query))
        return self._aggregates[key]


# --- sorting sockets ------------------------------------------------------------------------------

#: the order of "State ▲", in the Sockets list and in the States pane alike: the troubled states first
STATE_RANK = {state: rank for rank, state in enumerate(
    (TcpState.SYN_RECV, TcpState.CLOSE_WAIT, TcpState.TIME_WAIT, TcpState.FIN_WAIT1, TcpState.FIN_WAIT2,
     TcpState.LAST_ACK, TcpState.CLOSING, TcpState.SYN_SENT, TcpState.ESTABLISHED, TcpState.LISTEN,
     TcpState.CLOSE, TcpState.NEW_SYN_RECV))}

SOCKET_SORTS: dict[str, Callable[[SocketRecord], object]] = {
    "local": itemgetter(2, 3),
    "remote": itemgetter(4, 5),
    "state": lambda r: (STATE_RANK[r[1]], r[3], r[4], r[5]),
    "recv_q": itemgetter(6),
    "send_q": itemgetter(7),
    "timer": itemgetter(9),
}
SOCKET_SORT_COLUMNS = ("local", "remote", "state", "recv_q", "send_q", "timer", "owner")
#: columns whose natural order is largest first
DESCENDING = frozenset({"recv_q", "send_q", "timer"})


def owner_name_key(snapshot: Snapshot) -> Callable[[SocketRecord], str]:
    """Sort key on the owner's name (held or inferred); unknown owners last."""
    names: dict[int, str] = {}
    for inode, pids in snapshot.ownership.pids_by_inode.items():
        info = snapshot.ownership.processes.get(pids[0]) if pids else None
        if info is not None:
            names[inode] = info.name.lower()
    cache: dict[tuple, str] = {}

    def key(record: SocketRecord) -> str:
        if record[12]:
            return names.get(record[12], "\uffff")
        conn = CONNECTION(record)
        name = cache.get(conn)
        if name is None:
            owners = snapshot.owners_of(record).processes
            name = cache[conn] = owners[0].name.lower() if owners else "\uffff"
        return name

    return key


def sort_sockets(snapshot: Snapshot, records: Sequence[SocketRecord], column: str, reverse: bool
                 ) -> Sequence[SocketRecord]:
    if isinstance(records, SocketTable) and column != "owner":  # an argsort over the columns, as SOCKET_SORTS sorts
        return records.sorted_by(_sort_columns(records.columns, column if column in SOCKET_SORTS else "state"),
                                 reverse)
    key = owner_name_key(snapshot) if column == "owner" else SOCKET_SORTS.get(column, SOCKET_SORTS["state"])
    if isinstance(records, SocketTable):  # stays a table (its new sockets are found over the columns)
        keys = list(map(key, records))
        return records.take(np.array(sorted(range(len(keys)), key=keys.__getitem__, reverse=reverse), np.int64))
    return sorted(records, key=key, reverse=reverse)


_STATE_RANK_BY_CODE = np.array([STATE_RANK.get(STATE_BY_CODE.get(code), 0) for code in range(256)], np.int64)


def _sort_columns(columns: SocketColumns, column: str) -> list[np.ndarray]:
    """The keys of SOCKET_SORTS[column], as columns."""
    if column == "local":
        return [address_order(columns.local_addr), columns.local_port]
    if column == "remote":
        return [address_order(columns.remote_addr), columns.remote_port]
    if column == "state":
        return [_STATE_RANK_BY_CODE[columns.state], columns.local_port, address_order(columns.remote_addr),
                columns.remote_port]
    return [{"recv_q": columns.recv_q, "send_q": columns.send_q, "timer": columns.timer_ms}[column]]


def index_of(records: Sequence[SocketRecord], connection: tuple, hint: int = 0) -> int | None:
    """Where the socket with this 4-tuple now is: checks ``hint`` first, then searches the columns."""
    if 0 <= hint < len(records) and CONNECTION(records[hint]) == connection:
        return hint
    key = np.frombuffer(connection_key(connection), CONNECTION_KEY)[0]
    found = np.flatnonzero(connection_keys(table_of(records).columns) == key)
    return int(found[0]) if len(found) else None


# --- trends ------------------------------------------------------------------------------------------

def trend_groups(points: Sequence[HistoryPoint], cells: int) -> list[Sequence[HistoryPoint]]:
    """The whole history in at most ``cells`` groups of consecutive refreshes, oldest first.

    Groups of ``n = ceil(len(points) / (cells - 1))`` refreshes, aligned on the refresh number
    (``seq // n``) rather than on the newest point: a finished group keeps its points as refreshes
    arrive, so a sparkline moves a cell at a time instead of shimmering, and the Processes pane can
    keep a finished group's maxima (`_GroupMaxima`). The oldest and newest groups may be partial;
    ``cells - 1`` in the divisor leaves room for that, so that no point is left out.
    """
    if not points or cells <= 0:
        return []
    if cells == 1:
        return [points]
    n = math.ceil(len(points) / (cells - 1))
    groups: list[list[HistoryPoint]] = []
    current = None
    for point in points:
        index = point.seq // n
        if index != current:
            groups.append([])
            current = index
        groups[-1].append(point)
    return groups[-cells:]  # a gap in the refresh numbers could leave one more


def trend_span(groups: Sequence[Sequence[HistoryPoint]]) -> float:
    """The seconds the groups cover, from the oldest point to the newest."""
    return groups[-1][-1].monotonic - groups[0][0].monotonic if groups else 0.0


def bucket_max(groups: Sequence[Sequence[HistoryPoint]], value: Callable[[HistoryPoint], int]) -> tuple[int, ...]:
    """Each group's largest ``value``: the max, not the last value, so that a burst between two
    cells (a spike of TIME_WAIT, a leak that a restart cleared) still shows in the trend."""
    return tuple(max(map(value, group)) for group in groups)


class _GroupMaxima:
    """Each process's largest total in a group of refreshes, kept between builds.

    A sum over every process of every point is ~100 ms at 1,200 points and 300 processes; a finished
    group never changes, and the newest one only grows, so each build adds the points it has not seen.
    Called from the poller and the view threads, hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[int, tuple[HistoryPoint, int, dict[str, int]]] = {}  # id of its first point →

    def of(self, group: Sequence[HistoryPoint]) -> dict[str, int]:
        """The maxima of ``group``, a run of consecutive points (a cached run that starts at the same
        point holds the same points, as far as it goes)."""
        with self._lock:
            entry = self._groups.get(id(group[0]))
        if entry is not None and entry[0] is group[0] and entry[1] == len(group):
            return entry[2]
        seen, maxima = (entry[1], dict(entry[2])) if entry is not None and entry[0] is group[0] \
            and entry[1] < len(group) else (0, {})
        for point in group[seen:]:
            for process, counts in point.by_process.items():
                total = sum(counts.values())
                if total > maxima.get(process, 0):
                    maxima[process] = total
        with self._lock:
            self._groups[id(group[0])] = (group[0], len(group), maxima)
            if len(self._groups) > 64:  # groups of older snapshots: keep the newest few
                for stale in list(self._groups)[:-32]:
                    del self._groups[stale]
        return maxima

    def trends(self, groups: Sequence[Sequence[HistoryPoint]], keys: Iterable[str]) -> dict[str, tuple[int, ...]]:
        per_group = [self.of(group) for group in groups]
        return {key: tuple(maxima.get(key, 0) for maxima in per_group) for key in keys}


_PROCESS_MAXIMA = _GroupMaxima()


# --- building a view -------------------------------------------------------------------------------

def _scope_value(levels: tuple[Level, ...], query: Query) -> Callable[[TcpState], Callable[[HistoryPoint], int]] | None:
    """A state's count at one history point, for the scope, when the history has it: whole machine or
    one process."""
    if query:
        return None
    if not levels:
        return lambda state: lambda point: point.by_state.get(state, 0)
    if len(levels) == 1 and levels[0].kind == PROCESS:
        key = levels[0].key
        return lambda state: lambda point: point.by_process.get(key, {}).get(state, 0)
    return None


def _delta(now: int, key: str, last_two: list[int] | None, prior: dict[str, int] | None) -> int | None:
    if last_two is not None and len(last_two) >= 2:
        return last_two[-1] - last_two[-2]
    if prior is not None:
        return now - prior.get(key, 0)
    return None


def state_rows(scopes: Scopes, spec: ViewSpec, prior: View | None) -> tuple[StateRow, ...]:
    snapshot = scopes.snapshot
    levels, query = spec.scope(without=STATE)
    aggregates = scopes.aggregates(levels, query)
    total = aggregates.total or 1
    value_of = _scope_value(levels, query)
    history = snapshot.history
    groups = trend_groups(history, TREND_CELLS) if value_of else []
    prior_counts = prior.counts.get(STATE) if prior is not None and _same_scope(prior.spec, spec, STATE) \
        and prior.seq < snapshot.seq else None
    rows = []
    for state in DISPLAY_STATES:
        count = aggregates.by_state.get(state, 0)
        if not count:
            continue
        value = value_of(state) if value_of else None
        key = state.name
        last_two = list(map(value, history[-2:])) if value else None
        rows.append(StateRow(key, state, count, _delta(count, key, last_two, prior_counts), count / total,
                             bucket_max(groups, value) if value else ()))
    return tuple(rows)


def port_rows(scopes: Scopes, spec: ViewSpec) -> tuple[PortRow, ...]:
    levels, query = spec.scope(without=PORT)
    aggregates = scopes.aggregates(levels, query)
    processes = scopes.snapshot.ownership.processes
    closes = closes_per_second(scopes.snapshot, "ports")
    rows = []
    for key, group in aggregates.by_port.items():
        names = tuple(dict.fromkeys(processes[pid].name for pid in group.pids if pid in processes))
        rows.append(PortRow(key, group.port, group.direction, dict(group.counts), group.total, names, group.pids,
                            closes(key)))
    return tuple(rows)


def closes_per_second(snapshot: Snapshot, pane: str) -> Callable[[str], float | None]:
    """A row key's connections closed per second (`Snapshot.churn`), 0 for a row that closed none;
    None for every row while churn is not counted (no destroy feed, or one refresh so far)."""
    churn = snapshot.churn
    if churn is None or not churn.seconds:
        return lambda key: None
    groups = churn.by_port if pane == "ports" else churn.by_process
    return lambda key: group.per_second if (group := groups.get(key)) else 0.0


def process_rows(scopes: Scopes, spec: ViewSpec) -> tuple[ProcessRow, ...]:
    levels, query = spec.scope(without=PROCESS)
    aggregates = scopes.aggregates(levels, query)
    groups = trend_groups(scopes.snapshot.history, TREND_CELLS)  # a process's own total, whatever the filter
    trends = _PROCESS_MAXIMA.trends(groups, aggregates.by_process)
    closes = closes_per_second(scopes.snapshot, "processes")
    rows = []
    for key, group in aggregates.by_process.items():
        counts, inferred = group.counts, group.inferred

        def both(state: TcpState) -> int:
            return counts.get(state, 0) + inferred.get(state, 0)

        rows.append(ProcessRow(key, group, group.total, both(TcpState.ESTABLISHED), both(TcpState.CLOSE_WAIT),
                               both(TcpState.TIME_WAIT), trends[key], closes(key)))
    return tuple(rows)


def _same_scope(a: ViewSpec, b: ViewSpec, without: str) -> bool:
    return a.scope(without) == b.scope(without)


def build_view(snapshot: Snapshot, spec: ViewSpec, prior: View | None = None) -> View:
    """Every pane's rows for ``spec``; ``prior`` (the last view shown) gives deltas the history cannot."""
    started = time.perf_counter()
    scopes = Scopes(snapshot)
    states = state_rows(scopes, spec, prior)
    ports = port_rows(scopes, spec)
    processes = process_rows(scopes, spec)
    sockets = sort_sockets(snapshot, scopes.records(spec.levels, spec.query), spec.socket_sort, spec.socket_reverse)
    by_pid = any(level.key.startswith("pid:") for level in spec.levels) or any(
        prefix == "pid" for prefix, _ in spec.query.terms)
    return View(spec, snapshot.seq, states, ports, processes, sockets,
                counts={STATE: {row.key: row.count for row in states}},
                build_seconds=time.perf_counter() - started,
                inferred=int(np.count_nonzero(table_of(sockets).columns.inode == 0)) if by_pid else 0)
