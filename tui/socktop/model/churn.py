"""Churn between refreshes: the connections that closed (and opened), how fast, and who made them.

The destroy feed (`collect.destroy`) reports every TCP socket the kernel
frees, with its cookie but no pid. The `CookieLedger` remembers, for every
socket a dump saw held, cookie → the processes that held it, so that a
close, or a TIME_WAIT (the kernel copies the cookie into the timewait
socket), is tied to its process exactly. A connection born and freed
between two dumps was never seen held: its close is counted toward its
port and remote host, and tied to the processes of its port group (the
listener, or those holding connections toward that port), marked inferred.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter, not_

from typing import TYPE_CHECKING

import numpy as np

from ..collect.columns import SocketColumns, SocketTable, distinct, found_in, sorted_slots, table_of
from ..collect.records import ProcessInfo, SocketRecord, TcpState
from .aggregate import (CONNECTION, Aggregates, Connection, Direction, Ownership, Pids, RowKind, aggregate,
                        inbound_flags, process_key)

CLOSED_LOCAL_PORT, CLOSED_REMOTE_ADDR, CLOSED_REMOTE_PORT, CLOSED_COOKIE = (itemgetter(i) for i in (2, 3, 4, 5))
CLOSED_CONNECTION = itemgetter(1, 2, 3, 4)
Owners = tuple[ProcessInfo, ...]

if TYPE_CHECKING:
    from ..collect.destroy import ClosedSocket
    from .snapshot import Snapshot

LEDGER_MAX = 262_144  # cookies remembered after their socket left the table (about 100 bytes each)
LEDGER_AGE = 130.0  # seconds: a cookie matters while its TIME_WAIT (60 s) or orphan (tcp_fin_timeout) lives
WINDOW_SECONDS = 10.0  # rates are over the refreshes of about this long
MAX_GROUPS = 2_000  # per kind of group in one interval: a scan of every port must not grow without bound
_NOT_NEW_CODES = np.array([TcpState.LISTEN, TcpState.SYN_RECV], np.uint8)  # a request socket's cookie is not its
# connection's


class CookieOwners(Mapping[int, "Owners"]):
    """Cookie → the processes that held that socket, as sorted arrays: a refresh asks about tens
    of thousands of TIME_WAIT cookies at once (`lookup`), which a dict would answer one by one."""

    __slots__ = ("cookies", "owners")

    def __init__(self, cookies: np.ndarray, owners: np.ndarray) -> None:
        self.cookies = cookies  # sorted, distinct
        self.owners = owners  # an object array: the `Owners` of each cookie

    @classmethod
    def of(cls, cookies: np.ndarray, owners: np.ndarray) -> CookieOwners:
        """From cookies in any order; a cookie given twice keeps one of its entries."""
        order = np.argsort(cookies)
        cookies, owners = cookies[order], owners[order]
        if len(cookies) > 1:
            distinct = np.concatenate([[True], cookies[1:] != cookies[:-1]])
            if not distinct.all():
                cookies, owners = cookies[distinct], owners[distinct]
        return cls(cookies, owners)

    @classmethod
    def empty(cls) -> CookieOwners:
        return cls(np.zeros(0, np.uint64), np.empty(0, object))

    def lookup(self, cookies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per cookie whether it is here, and its entry's index (where it is)."""
        if not len(self.cookies) or not len(cookies):
            return np.zeros(len(cookies), bool), np.zeros(len(cookies), np.int64)
        slot = sorted_slots(self.cookies, cookies)
        return self.cookies[slot] == cookies, slot

    def owners_of(self, cookies: np.ndarray) -> np.ndarray:
        """Per cookie its `Owners`, () where unknown (an object array)."""
        found, slot = self.lookup(cookies)
        result = np.empty(len(cookies), object)
        result[:] = [()] * len(cookies)
        result[found] = self.owners[slot[found]]
        return result

    def __getitem__(self, cookie: int) -> Owners:
        found, slot = self.lookup(np.array([cookie], np.uint64))
        if not found[0]:
            raise KeyError(cookie)
        return self.owners[slot[0]]

    def __iter__(self) -> Iterator[int]:
        return iter(self.cookies.tolist())

    def __len__(self) -> int:
        return len(self.cookies)

    def values(self) -> list[Owners]:  # type: ignore[override]  # one list, not a lookup per key
        return self.owners.tolist()

    def __repr__(self) -> str:
        return f"CookieOwners({len(self)} cookies)"


class CookieLedger:
    """Cookie → the processes that held that socket, for held sockets now and those gone lately.

    ``update`` takes each refresh's held sockets; a cookie that leaves the
    held set is kept ``max_age`` seconds, ``max_entries`` at most (oldest
    dropped first), which bounds memory however fast connections churn.
    Both sets are sorted arrays: a refresh costs a few passes in C over
    them, not a Python step per socket.
    """

    __slots__ = ("_held", "_gone", "_left", "max_entries", "max_age")

    def __init__(self, max_entries: int = LEDGER_MAX, max_age: float = LEDGER_AGE) -> None:
        self._held = CookieOwners.empty()
        self._gone = CookieOwners.empty()
        self._left = np.zeros(0, np.float64)  # per gone cookie (same order): when it left the held set
        self.max_entries = max_entries
        self.max_age = max_age

    def update(self, cookies: Sequence[int], pids: Sequence[Pids | None], processes: Mapping[int, ProcessInfo],
               now: float) -> None:
        """Remember the held sockets of one dump: ``pids`` per cookie (empty or None: not held)."""
        owners_of = {group: tuple(processes[pid] for pid in group if pid in processes) for group in set(pids) if group}
        owners = [owners_of[group] if group else () for group in pids]
        named = np.fromiter(map(bool, owners), bool, len(owners))
        held = np.empty(int(named.sum()), object)
        held[:] = [found for found in owners if found]
        self.update_held(np.fromiter(cookies, np.uint64, len(cookies))[named], held, now)

    def update_held(self, cookies: np.ndarray, owners: np.ndarray, now: float) -> None:
        """`update` with arrays: the cookies of one dump's held sockets, and each one's `Owners`
        (an object array, none empty)."""
        held = CookieOwners.of(cookies, owners)
        previous = self._held
        left = ~np.isin(previous.cookies, held.cookies, assume_unique=True)
        if left.any():
            self._add_gone(previous.cookies[left], previous.owners[left], now)
        self._held = held
        self._expire(now)

    def _add_gone(self, cookies: np.ndarray, owners: np.ndarray, now: float) -> None:
        """Insert sorted ``cookies`` into the sorted gone set (replacing entries of the same cookies)."""
        gone, left = self._gone, self._left
        again = np.isin(gone.cookies, cookies, assume_unique=True)
        if again.any():
            gone, left = CookieOwners(gone.cookies[~again], gone.owners[~again]), left[~again]
        at = np.searchsorted(gone.cookies, cookies)
        self._gone = CookieOwners(np.insert(gone.cookies, at, cookies), np.insert(gone.owners, at, owners))
        self._left = np.insert(left, at, now)

    def _expire(self, now: float) -> None:
        keep = self._left >= now - self.max_age
        excess = int(keep.sum()) - self.max_entries
        if excess > 0:  # the oldest go first
            keep[np.flatnonzero(keep)[np.argsort(self._left[keep], kind="stable")[:excess]]] = False
        if not keep.all():
            self._gone = CookieOwners(self._gone.cookies[keep], self._gone.owners[keep])
            self._left = self._left[keep]

    def owners(self, cookie: int) -> Owners:
        """The processes that hold, or held, the socket with this cookie; () when no dump saw it held."""
        return self.owners_of(np.array([cookie], np.uint64))[0]

    def owners_of(self, cookies: np.ndarray) -> np.ndarray:
        """`owners` of many cookies (an object array)."""
        found = self._held.owners_of(cookies)
        unknown = np.flatnonzero(np.fromiter(map(not_, found), bool, len(found)))
        if len(unknown):
            found[unknown] = self._gone.owners_of(cookies[unknown])
        return found

    def gone_owners(self, cookies: np.ndarray) -> CookieOwners:
        """The entries of the given cookies among sockets no longer held (TIME_WAIT, orphans)."""
        found, slot = self._gone.lookup(cookies)
        slot = distinct(slot[found])
        return CookieOwners(self._gone.cookies[slot], self._gone.owners[slot])

    def __len__(self) -> int:
        return len(self._held) + len(self._gone)


@dataclass(frozen=True, slots=True)
class ChurnGroup:
    """Closes in one group (a port and direction, a remote host, a process) over the rate window."""

    key: str
    closes: int
    per_second: float
    exact: int  # of those, tied to the process by cookie (process groups only)

    @property
    def inferred(self) -> int:
        return self.closes - self.exact


@dataclass(frozen=True, slots=True)
class _Tally:
    """What one refresh interval saw."""

    seconds: float
    closes: int
    opens: int
    unseen: int
    by_port: Counter[str]
    by_remote: Counter[str]
    by_process: Counter[str]
    exact_by_process: Counter[str]
    by_destination: Counter[str]


@dataclass(frozen=True, slots=True)
class Churn:
    """Closes and opens since the previous refresh, and rates over the last refreshes (`WINDOW_SECONDS`).

    ``unseen`` closes are of sockets no dump saw: born and freed between
    two refreshes, they cannot be tied to a pid (their process groups are
    inferred from the port). ``overruns`` counts the times the kernel's
    queue of destroy events overflowed since the feed opened: when it grows,
    events were lost and the rates are lower bounds.
    """

    closes: int  # since the previous refresh
    opens: int
    unseen: int
    seconds: float  # the rate window
    closes_per_second: float | None  # None until two refreshes have been made
    opens_per_second: float | None
    by_port: Mapping[str, ChurnGroup]  # keys as Aggregates.by_port: "in:80", "out:443"
    by_remote: Mapping[str, ChurnGroup]
    by_process: Mapping[str, ChurnGroup]  # "pid:N"
    by_destination: Mapping[str, ChurnGroup]  # outgoing closes by remote address and port (`destination_key`)
    overruns: int
    lost: bool  # the queue overflowed since the previous refresh
    time_wait_owners: Mapping[int, Owners]  # cookie → processes, for inode-0 sockets a dump saw held
    closed_by_port: Mapping[str, int]  # since the previous refresh
    closed_by_process: Mapping[str, int] = field(default_factory=dict)  # since the previous refresh, exact or inferred

    def closes_on(self, port_key: str) -> int:
        """Closes since the previous refresh in one port group ("in:80", "out:443")."""
        return self.closed_by_port.get(port_key, 0)

    def toward(self, address: str, port: int) -> ChurnGroup | None:
        """Outgoing closes toward one destination (the client side: its port is free again, or in TIME_WAIT)."""
        return self.by_destination.get(destination_key(address, port))

    def owners(self, record: SocketRecord) -> Owners:
        """The processes that held this (now descriptor-less) socket, by its cookie; () if none was seen."""
        return self.time_wait_owners.get(record.cookie, ()) if record.cookie else ()


class ChurnTracker:
    """Turns each refresh's dump and destroy events into a `Churn`, keeping the ledger and the window."""

    __slots__ = ("ledger", "_previous", "_closed_before", "_window", "_last")

    def __init__(self, ledger: CookieLedger | None = None) -> None:
        self.ledger = ledger or CookieLedger()
        self._previous = np.zeros(0, np.uint64)  # cookies of the previous dump, sorted
        # closed in the previous interval: cookies (sorted) and connections
        self._closed_before: tuple[np.ndarray, set[Connection]] = (np.zeros(0, np.uint64), set())
        self._window: deque[_Tally] = deque()
        self._last: float | None = None

    def update(self, records: Sequence[SocketRecord], ownership: Ownership, aggregates: Aggregates,
               closed: Sequence[ClosedSocket], now: float, overruns: int = 0, lost: bool = False) -> Churn:
        """One refresh: ``closed`` are the destroy events drained since the previous one.

        The ledger takes this dump's held sockets first, so that a socket
        held at this dump and closed just after is still tied exactly. A cookie new to this dump is
        an opened connection, unless its socket closed lately (a TIME_WAIT of
        a connection no dump saw alive: its close already counted it).
        """
        seconds = 0.0 if self._last is None else max(now - self._last, 1e-6)
        columns = table_of(records).columns
        self.ledger.update_held(*_held(columns, ownership, aggregates), now)
        order = np.argsort(columns.cookie)
        current = columns.cookie[order]  # sorted: every join below asks about sorted cookies
        closed_cookies = np.sort(np.fromiter(map(CLOSED_COOKIE, closed), np.uint64, len(closed)))
        by_port, by_remote, by_process, exact, by_destination, unseen = self._closes(
            closed, aggregates, (self._previous, current))
        closed_connections = set(map(CLOSED_CONNECTION, closed))
        opens = unseen
        if self._last is not None:
            opens += self._opened(columns, order, closed_cookies, closed_connections)
        tally = _Tally(seconds, len(closed), opens, unseen, by_port, by_remote, by_process, exact, by_destination)
        time_wait_owners = self.ledger.gone_owners(current[columns.inode[order] == 0])
        self._previous = current
        self._closed_before = (closed_cookies, closed_connections)
        if self._last is not None:
            self._window.append(tally)
        self._last = now
        return self._churn(tally, overruns, lost, time_wait_owners)

    def _opened(self, columns: SocketColumns, order: np.ndarray, closed_cookies: np.ndarray,
                closed_connections: set[Connection]) -> int:
        """Connections new to this dump (``order`` sorts its cookies). Not new: request sockets (the
        connection gets another cookie), and the TIME_WAIT or orphan of a socket whose close was
        counted lately: by cookie when a dump saw it alive (the timewait socket keeps it), else by
        its 4-tuple (a socket no dump asked for has no cookie yet when its timewait socket is made)."""
        cookies_before, connections_before = self._closed_before
        current = columns.cookie[order]
        new = ~found_in(self._previous, current) & ~found_in(closed_cookies, current) & ~found_in(cookies_before, current)
        rows = np.sort(order[new])
        rows = rows[~np.isin(columns.state[rows], _NOT_NEW_CODES)]
        closed_lately = closed_connections | connections_before
        descriptorless = rows[columns.inode[rows] == 0]
        if not len(descriptorless) or not closed_lately:
            return len(rows)
        return len(rows) - sum(1 for record in columns.records(descriptorless) if CONNECTION(record) in closed_lately)

    def _closes(self, closed: Sequence[ClosedSocket], aggregates: Aggregates, seen: tuple[np.ndarray, np.ndarray]
                ) -> tuple[Counter[str], Counter[str], Counter[str], Counter[str], Counter[str], int]:
        """Closes by port, remote host and process (exact where the ledger knows the cookie, and
        of those), and how many closed sockets no dump saw (``seen``: sorted cookies of the last two dumps)."""
        local_ports = list(map(CLOSED_LOCAL_PORT, closed))
        remote_ports = list(map(CLOSED_REMOTE_PORT, closed))
        inbound = inbound_flags(local_ports, remote_ports, aggregates.listening_ports, aggregates.ephemeral_ports)
        # a socket this host aborts (RST: SO_LINGER 0, ss -K) is reported after tcp_disconnect() has
        # cleared its remote port: no port group (key None), only its totals, remote host and cookie
        port_keys = [f"{Direction.IN.value}:{local}" if flag else f"{Direction.OUT.value}:{remote}" if remote else None
                     for flag, local, remote in zip(inbound, local_ports, remote_ports)]
        cookies = np.fromiter(map(CLOSED_COOKIE, closed), np.uint64, len(closed))
        owners = self.ledger.owners_of(cookies)
        unseen_flags = ~found_in(seen[0], cookies) & ~found_in(seen[1], cookies)
        by_process: Counter[str] = Counter()
        exact: Counter[str] = Counter()
        unseen = 0
        for found, key, never_seen in zip(owners.tolist(), port_keys, unseen_flags.tolist()):
            if found:
                for process in found:
                    exact[process_key(process.pid)] += 1
                continue
            unseen += never_seen
            group = aggregates.by_port.get(key) if key else None
            for pid in group.pids if group else ():
                by_process[process_key(pid)] += 1
        by_process.update(exact)
        outbound = [bool(key) and not flag for key, flag in zip(port_keys, inbound)]
        destinations = Counter(map(destination_key, map(CLOSED_REMOTE_ADDR, compress(closed, outbound)),
                                   compress(remote_ports, outbound)))
        return (_bounded(Counter(filter(None, port_keys))), _bounded(Counter(map(CLOSED_REMOTE_ADDR, closed))),
                _bounded(by_process), exact, _bounded(destinations), unseen)

    def _churn(self, tally: _Tally, overruns: int, lost: bool, time_wait_owners: dict[int, Owners]) -> Churn:
        window = self._window
        while len(window) > 1 and sum(t.seconds for t in window) - window[0].seconds >= WINDOW_SECONDS:
            window.popleft()
        seconds = sum(t.seconds for t in window)
        ports, remotes, processes, exact, destinations = Counter(), Counter(), Counter(), Counter(), Counter()
        for past in window:
            ports.update(past.by_port)
            remotes.update(past.by_remote)
            processes.update(past.by_process)
            exact.update(past.exact_by_process)
            destinations.update(past.by_destination)

        def groups(counts: Counter[str], exact_counts: Mapping[str, int]) -> dict[str, ChurnGroup]:
            return {key: ChurnGroup(key, count, count / seconds if seconds else 0.0, exact_counts.get(key, 0))
                    for key, count in counts.items()}

        return Churn(
            closes=tally.closes, opens=tally.opens, unseen=tally.unseen, seconds=seconds,
            closes_per_second=sum(t.closes for t in window) / seconds if seconds else None,
            opens_per_second=sum(t.opens for t in window) / seconds if seconds else None,
            by_port=groups(ports, {}), by_remote=groups(remotes, {}), by_process=groups(processes, exact),
            by_destination=groups(destinations, {}),
            overruns=overruns, lost=lost, time_wait_owners=time_wait_owners, closed_by_port=tally.by_port,
            closed_by_process=tally.by_process,
        )


def _held(columns: SocketColumns, ownership: Ownership, aggregates: Aggregates) -> tuple[np.ndarray, np.ndarray]:
    """The cookies of the sockets a process holds, and each one's holders as `Owners` (an object array):
    from the aggregates' attribution, one tuple of processes per distinct set of pids."""
    rows = aggregates.rows
    if rows is None or len(rows.kinds) != len(columns):  # aggregates made elsewhere: join by inode here
        rows = aggregate(SocketTable(columns), ownership, str, {}).rows
        assert rows is not None
    processes = ownership.processes
    owners = np.empty(len(rows.pid_sets), object)
    owners[:] = [tuple(processes[pid] for pid in pids if pid in processes) for pids in rows.pid_sets]
    named = np.fromiter(map(bool, owners), bool, len(owners))  # a holder that has exited names nobody
    held = np.flatnonzero((rows.kinds == RowKind.DIRECT) & named[rows.codes])
    return columns.cookie[held], owners[rows.codes[held]]


@dataclass(frozen=True, slots=True)
class TimeWaitMakers:
    """Who made a set of descriptor-less sockets (TIME_WAIT, orphans), and how sure that is."""

    exact: tuple[tuple[ProcessInfo, int], ...]  # by cookie: a refresh saw the socket held; most first
    inferred: tuple[tuple[ProcessInfo, int], ...]  # the port's listener, or the connection's last holder
    unattributed: int  # opened and closed between refreshes: no pid can be known without eBPF
    total: int


def time_wait_makers(snapshot: Snapshot, rows: np.ndarray) -> TimeWaitMakers:
    """`Snapshot.owners_of` for the descriptor-less sockets among ``rows`` (a mask over the
    snapshot's sockets), counted per process and per kind of tie: from `Snapshot.row_owners`,
    in array passes, so that a drawer over 30,000 TIME_WAIT stays cheap."""
    owners = snapshot.row_owners()
    zero = rows & (snapshot.columns.inode == 0)
    kinds, codes = owners.kinds[zero], owners.codes[zero]
    churn = snapshot.churn
    gone = {process.pid: process for found in set(churn.time_wait_owners.values()) for process in found} if churn else {}
    known = {**gone, **snapshot.ownership.processes}  # a process that held a TIME_WAIT may have exited since

    def tally(kind: int) -> tuple[tuple[tuple[ProcessInfo, int], ...], int]:
        """Processes and counts for one kind of tie, and how many of its sockets name no visible process."""
        counted: Counter[ProcessInfo] = Counter()
        nameless = 0
        values, counts = np.unique(codes[kinds == kind], return_counts=True)
        for code, count in zip(values.tolist(), counts.tolist()):
            found = [known[pid] for pid in owners.pid_sets[code] if pid in known]
            nameless += 0 if found else count
            for process in found:
                counted[process] += count
        return tuple(counted.most_common()), nameless

    exact, _ = tally(RowKind.COOKIE)
    inferred, nameless = tally(RowKind.INFERRED)
    unattributed = int(np.count_nonzero(kinds == RowKind.NONE)) + nameless
    return TimeWaitMakers(exact, inferred, unattributed, int(np.count_nonzero(zero)))


def destination_key(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _bounded(counts: Counter[str]) -> Counter[str]:
    """The MAX_GROUPS largest groups: one interval of a port scan must not make 60,000 rows."""
    return counts if len(counts) <= MAX_GROUPS else Counter(dict(counts.most_common(MAX_GROUPS)))
