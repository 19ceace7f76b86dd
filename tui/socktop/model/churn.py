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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter, not_

from typing import TYPE_CHECKING

import numpy as np

from ..collect.columns import SocketTable, table_of
from ..collect.records import ProcessInfo, SocketRecord, TcpState
from .aggregate import CONNECTION, Aggregates, Connection, Direction, Ownership, Pids, inbound_flags, process_key

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
_NOT_NEW = frozenset({TcpState.LISTEN, TcpState.SYN_RECV})  # a request socket's cookie is not its connection's


class CookieLedger:
    """Cookie → the processes that held that socket, for held sockets now and those gone lately.

    ``update`` takes each refresh's held sockets; a cookie that leaves the
    held set is kept ``max_age`` seconds, ``max_entries`` at most (oldest
    dropped first), which bounds memory however fast connections churn.
    """

    __slots__ = ("_held", "_gone", "max_entries", "max_age")

    def __init__(self, max_entries: int = LEDGER_MAX, max_age: float = LEDGER_AGE) -> None:
        self._held: dict[int, Owners] = {}
        self._gone: dict[int, tuple[Owners, float]] = {}  # in order of leaving: oldest first
        self.max_entries = max_entries
        self.max_age = max_age

    def update(self, cookies: Sequence[int], pids: Sequence[Pids | None], processes: Mapping[int, ProcessInfo],
               now: float) -> None:
        """Remember the held sockets of one dump: ``pids`` per cookie (empty or None: not held)."""
        held_flags = list(map(bool, pids))
        held_pids = list(compress(pids, held_flags))
        owners_of = {group: tuple(processes[pid] for pid in group if pid in processes) for group in set(held_pids)}
        held = dict(zip(compress(cookies, held_flags), map(owners_of.__getitem__, held_pids)))
        previous, gone = self._held, self._gone
        for cookie in previous.keys() - held.keys():
            gone[cookie] = (previous[cookie], now)
        self._held = held
        self._expire(now)

    def _expire(self, now: float) -> None:
        gone = self._gone
        while gone:
            cookie = next(iter(gone))
            if len(gone) <= self.max_entries and now - gone[cookie][1] <= self.max_age:
                break
            del gone[cookie]

    def owners(self, cookie: int) -> Owners:
        """The processes that hold, or held, the socket with this cookie; () when no dump saw it held."""
        found = self._held.get(cookie)
        if found is not None:
            return found
        gone = self._gone.get(cookie)
        return gone[0] if gone is not None else ()

    def gone_owners(self, cookies: Iterable[int]) -> dict[int, Owners]:
        """Owners of the given cookies among sockets no longer held (TIME_WAIT, orphans), in C."""
        cookies = list(cookies)
        found = list(map(self._gone.get, cookies))
        return {cookie: entry[0] for cookie, entry in compress(zip(cookies, found), found) if entry[0]}

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
        self._previous: set[int] = set()  # cookies of the previous dump
        self._closed_before: tuple[set[int], set[Connection]] = (set(), set())  # closed in the previous interval
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
        table = table_of(records)
        cookies, inodes = table.columns.cookie.tolist(), table.columns.inode.tolist()
        current = set(cookies)
        self.ledger.update(cookies, list(map(ownership.pids_by_inode.get, inodes)), ownership.processes, now)
        closed_cookies = set(map(CLOSED_COOKIE, closed))
        by_port, by_remote, by_process, exact, by_destination, unseen = self._closes(
            closed, aggregates, (self._previous, current))
        closed_connections = set(map(CLOSED_CONNECTION, closed))
        opens = unseen
        if self._last is not None:
            opens += self._opened(table, cookies, current, closed_cookies, closed_connections)
        tally = _Tally(seconds, len(closed), opens, unseen, by_port, by_remote, by_process, exact, by_destination)
        time_wait_owners = self.ledger.gone_owners(compress(cookies, map(not_, inodes)))
        self._previous = current
        self._closed_before = (closed_cookies, closed_connections)
        if self._last is not None:
            self._window.append(tally)
        self._last = now
        return self._churn(tally, overruns, lost, time_wait_owners)

    def _opened(self, table: SocketTable, cookies: list[int], current: set[int],
                closed_cookies: set[int], closed_connections: set[Connection]) -> int:
        """Connections new to this dump. Not new: request sockets (the connection gets another
        cookie), and the TIME_WAIT or orphan of a socket whose close was counted lately: by
        cookie when a dump saw it alive (the timewait socket keeps it), else by its 4-tuple
        (a socket no dump asked for has no cookie yet when its timewait socket is made)."""
        cookies_before, connections_before = self._closed_before
        new = current - self._previous - closed_cookies - cookies_before
        if not new:
            return 0
        closed_lately = closed_connections | connections_before
        rows = np.fromiter(map(new.__contains__, cookies), bool, len(cookies))
        return sum(1 for record in table.take(rows)
                   if record.state not in _NOT_NEW
                   and not (record.inode == 0 and CONNECTION(record) in closed_lately))

    def _closes(self, closed: Sequence[ClosedSocket], aggregates: Aggregates, seen: tuple[set[int], set[int]]
                ) -> tuple[Counter[str], Counter[str], Counter[str], Counter[str], Counter[str], int]:
        """Closes by port, remote host and process (exact where the ledger knows the cookie, and
        of those), and how many closed sockets no dump saw (``seen``: cookies of the last two)."""
        seen_before, seen_now = seen
        local_ports = list(map(CLOSED_LOCAL_PORT, closed))
        remote_ports = list(map(CLOSED_REMOTE_PORT, closed))
        inbound = inbound_flags(local_ports, remote_ports, aggregates.listening_ports, aggregates.ephemeral_ports)
        port_keys = [f"{Direction.IN.value}:{local}" if flag else f"{Direction.OUT.value}:{remote}"
                     for flag, local, remote in zip(inbound, local_ports, remote_ports)]
        by_process: Counter[str] = Counter()
        exact: Counter[str] = Counter()
        unseen = 0
        owners = self.ledger.owners
        for event, key in zip(closed, port_keys):
            found = owners(event.cookie)
            if found:
                for process in found:
                    exact[process_key(process.pid)] += 1
                continue
            if event.cookie not in seen_before and event.cookie not in seen_now:
                unseen += 1
            group = aggregates.by_port.get(key)
            for pid in group.pids if group else ():
                by_process[process_key(pid)] += 1
        by_process.update(exact)
        destinations = Counter(map(destination_key, map(CLOSED_REMOTE_ADDR, compress(closed, map(not_, inbound))),
                                   compress(remote_ports, map(not_, inbound))))
        return (_bounded(Counter(port_keys)), _bounded(Counter(map(CLOSED_REMOTE_ADDR, closed))),
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


@dataclass(frozen=True, slots=True)
class TimeWaitMakers:
    """Who made a set of descriptor-less sockets (TIME_WAIT, orphans), and how sure that is."""

    exact: tuple[tuple[ProcessInfo, int], ...]  # by cookie: a refresh saw the socket held; most first
    inferred: tuple[tuple[ProcessInfo, int], ...]  # the port's listener, or the connection's last holder
    unattributed: int  # opened and closed between refreshes: no pid can be known without eBPF
    total: int


def time_wait_makers(snapshot: Snapshot, records: Sequence[SocketRecord]) -> TimeWaitMakers:
    """`Snapshot.owners_of` for many sockets at once, counted per process and per kind of tie.

    The cookie lookups run in C; only sockets the cookies do not place
    take the per-socket inference.
    """
    zero = [record for record in records if not record.inode]
    churn = snapshot.churn
    held = list(map((churn.time_wait_owners if churn else {}).get, map(COOKIE, zero)))
    exact: Counter[ProcessInfo] = Counter()
    inferred: Counter[ProcessInfo] = Counter()
    unattributed = 0
    for owners in filter(None, held):
        exact.update(owners)
    for record in compress(zero, map(not_, held)):
        owners = snapshot.owners_of(record).processes
        if owners:
            inferred.update(owners)
        else:
            unattributed += 1
    return TimeWaitMakers(tuple(exact.most_common()), tuple(inferred.most_common()), unattributed, len(zero))


def destination_key(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _bounded(counts: Counter[str]) -> Counter[str]:
    """The MAX_GROUPS largest groups: one interval of a port scan must not make 60,000 rows."""
    return counts if len(counts) <= MAX_GROUPS else Counter(dict(counts.most_common(MAX_GROUPS)))
