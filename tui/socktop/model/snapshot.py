"""The immutable picture of one refresh, and the bounded history behind its trends."""

from __future__ import annotations

import math

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import TYPE_CHECKING

import numpy as np

from ..collect.columns import SocketColumns, SocketTable, table_of
from ..collect.kernelstate import KernelState
from ..collect.nswatch import NamespaceInfo
from ..collect.records import ProcessInfo, SocketRecord, TcpState
from .aggregate import (CONNECTION, Aggregates, Ownership, OwnerKind, Pids, RowKind, RowOwners, StateCounts, aggregate,
                        credited)
from .churn import CookieOwners
from .places import Place, PlaceSlot, group_places, matching_codes

if TYPE_CHECKING:
    from .churn import Churn


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Where a snapshot came from, and what it could not see."""

    host: str
    kernel: str
    backend: str  # "netlink", "proc" or "psutil"
    backend_note: str  # why this backend, when it is not the one asked for or the best one
    is_root: bool
    owner_note: str  # why some owners are missing ("run as root for all"), or "" when every owner is visible
    churn_note: str = ""  # why closes and opens are not counted (no destroy feed), or ""
    unavailable: frozenset[str] = frozenset()  # what this backend cannot know, e.g. "listen_backlog" (proc)
    netns: str = "self"  # the network namespaces read (--netns) and how many, or why only socktop's own


def plural(count: int, noun: str) -> str:
    """"1 socket", "1,500 sockets": for every face (CLI, UI, JSON notes)."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def coverage_text(fraction: float) -> str:
    """A share that must not round up to a promise: 99.97% is "99%", never "100%"; 0.4% is "<1%"."""
    if fraction >= 1.0:
        return "100%"
    percent = math.floor(fraction * 100 + 1e-9)  # 0.29 * 100 is 28.999...
    return f"{percent}%" if percent or fraction <= 0 else "<1%"


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who a socket belongs to, and how sure we are."""

    processes: tuple[ProcessInfo, ...]
    kind: OwnerKind


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """Per-state totals and per-process counts at one refresh; the history keeps a ring of them."""

    seq: int
    taken_at: float  # wall clock, seconds
    monotonic: float
    by_state: StateCounts
    by_process: dict[str, StateCounts]  # process key → counts, held and inferred
    counters: dict[str, int] = field(default_factory=dict)  # kernel counters (nstat names), for rates
    netns_counters: Mapping[int, dict[str, int]] = field(default_factory=dict)  # other namespaces' own, by netns key


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one refresh saw. Shared between threads, so never mutated."""

    seq: int
    taken_at: float  # wall clock, seconds since the epoch
    monotonic: float
    collect_seconds: float  # how long the refresh took
    source: SourceInfo
    sockets: Sequence[SocketRecord]  # a SocketTable from the engine: records are built for the rows read
    ownership: Ownership
    aggregates: Aggregates
    history: tuple[HistoryPoint, ...] = ()
    warnings: tuple[str, ...] = ()
    user_of: Callable[[int], str] = field(default=str, repr=False, compare=False)
    kernel: KernelState | None = None  # sysctls and counters at this refresh; None when not read
    churn: Churn | None = None  # closes and opens since the previous refresh; None without the destroy feed
    namespaces: tuple[NamespaceInfo, ...] = ()  # the network namespaces read (socktop's own first)
    places: Mapping[str, Place] = field(default_factory=dict)  # the Containers grouping, by place key
    place_slots: tuple[PlaceSlot, ...] = ()  # every place a socket may be in, by code
    place_codes: np.ndarray | None = field(default=None, repr=False, compare=False)  # per socket: its place_slots index

    @property
    def columns(self) -> SocketColumns:
        """The sockets as arrays, for code that groups, filters or sorts all of them."""
        return table_of(self.sockets).columns

    def select(self, rows: np.ndarray) -> SocketTable:
        """The sockets picked by a boolean mask (or indices) over `columns`; records are built as they are read."""
        return table_of(self.sockets).take(rows)

    @property
    def coverage(self) -> float:
        return self.aggregates.coverage

    def process(self, pid: int) -> ProcessInfo | None:
        return self.ownership.processes.get(pid)

    def owners_of(self, record: SocketRecord) -> Attribution:
        """The processes behind one socket: held, inferred (inode 0), or unknown."""
        pids = self.ownership.pids_by_inode.get(record.inode)
        if pids:
            return Attribution(self._processes(pids), OwnerKind.DIRECT)
        if record.inode and record.inode not in self.ownership.closed:
            return Attribution((), OwnerKind.UNKNOWN)
        held = self.churn.owners(record) if self.churn is not None else ()
        if held:
            return Attribution(held, OwnerKind.COOKIE)
        if record.state is not TcpState.LISTEN and record.local_port in self.aggregates.listening_ports:
            inferred: Pids = self.aggregates.listeners_of(record.netns, record.local_port)
        else:
            inferred = self.aggregates.last_owners.get(CONNECTION(record), ())
        inferred = credited(inferred, self.ownership.processes)  # once, as the aggregates count it
        if inferred:
            return Attribution(self._processes(inferred), OwnerKind.INFERRED)
        return Attribution((), OwnerKind.NONE)

    def row_owners(self) -> RowOwners:
        """`owners_of` for every socket at once, as arrays: the aggregates' attribution, with the
        inode-0 sockets the churn ledger ties to a process by cookie."""
        rows = self.aggregates.rows
        if rows is None or len(rows.codes) != len(self.sockets):  # aggregates made elsewhere than `aggregate`
            rows = self.regroup(self.sockets).rows
            assert rows is not None
        by_cookie = self.churn.time_wait_owners if self.churn is not None else {}
        if not by_cookie:
            return rows
        candidates = np.flatnonzero((rows.kinds == RowKind.NONE) | (rows.kinds == RowKind.INFERRED))
        if isinstance(by_cookie, CookieOwners):
            owners = by_cookie.owners_of(self.columns.cookie[candidates]).tolist()
        else:
            owners = list(map(by_cookie.get, self.columns.cookie[candidates].tolist()))
        hits = np.fromiter(map(bool, owners), bool, len(owners))
        if not hits.any():
            return rows
        found = [tuple(process.pid for process in found) for found in compress(owners, hits)]
        distinct = list(dict.fromkeys(found))
        number = {pids: index for index, pids in enumerate(distinct, len(rows.pid_sets))}
        kinds, codes = rows.kinds.copy(), rows.codes.copy()
        kinds[candidates[hits]] = RowKind.COOKIE
        codes[candidates[hits]] = np.fromiter(map(number.__getitem__, found), np.int64, len(found))
        return RowOwners(kinds, codes, rows.pid_sets + tuple(distinct))

    def holding(self, pid: int) -> np.ndarray:
        """Per socket True when ``pid`` holds it or it is tied to ``pid`` (as `owners_of` says)."""
        rows = self.row_owners()
        if pid not in self.ownership.processes:
            return np.zeros(len(rows.codes), bool)
        return rows.holding(pid)

    def _processes(self, pids: Pids) -> tuple[ProcessInfo, ...]:
        found = self.ownership.processes
        return tuple(found[pid] for pid in pids if pid in found)

    def regroup(self, records: Sequence[SocketRecord]) -> Aggregates:
        """Aggregates of a subset of this snapshot's sockets, grouped by the same rules:
        the whole table's listeners, owners and port range, not the subset's."""
        aggregates = self.aggregates
        last_owners = aggregates.connection_owners if aggregates.connection_owners is not None else aggregates.last_owners
        return aggregate(records, self.ownership, self.user_of, last_owners,
                         listeners=aggregates.listener_pids, ephemeral_ports=aggregates.ephemeral_ports,
                         netns_listeners=aggregates.netns_listener_pids or None)

    def in_namespace(self, key: int) -> Snapshot:
        """Only the sockets of one namespace (`SocketRecord.netns`: 0 for socktop's own), regrouped."""
        table = table_of(self.sockets)
        keep = table.columns.netns == key
        codes = self.place_codes[keep] if self.place_codes is not None else np.full(int(keep.sum()), -1, np.int64)
        return self._narrowed(table.take(keep), codes, with_places=False)

    def filtered(self, state: TcpState | None = None, port: int | None = None, pid: int | None = None,
                 place: str | None = None) -> Snapshot:
        """The same snapshot narrowed to matching sockets, with its aggregates recomputed.

        ``port`` matches either end; ``pid`` matches held and inferred owners;
        ``place`` the containers, pods and namespaces `matching_codes` names.
        """
        if state is None and port is None and pid is None and place is None:
            return self
        table = table_of(self.sockets)
        columns = table.columns
        keep = np.ones(len(columns), bool)
        if state is not None:
            keep &= columns.state == state
        if port is not None:
            keep &= (columns.local_port == port) | (columns.remote_port == port)
        if pid is not None:
            keep &= self.holding(pid)
        codes = self.place_codes if self.place_codes is not None else np.full(len(columns), -1, np.int64)
        if place is not None:
            keep &= np.isin(codes, matching_codes(self.place_slots, place))
        return self._narrowed(table.take(keep), codes[keep])

    def _narrowed(self, kept: SocketTable, codes: np.ndarray, with_places: bool = True) -> Snapshot:
        """This snapshot with only the ``kept`` sockets (whose places are ``codes``), regrouped
        (the Containers grouping too, unless ``with_places`` is False: one namespace's findings need none)."""
        aggregates = self.regroup(kept)
        places = group_places(kept.columns, codes, self.place_slots, aggregates.rows, aggregates.listening_ports,
                              aggregates.ephemeral_ports) if with_places else {}
        return Snapshot(
            seq=self.seq, taken_at=self.taken_at, monotonic=self.monotonic, collect_seconds=self.collect_seconds,
            source=self.source, sockets=kept, ownership=self.ownership, aggregates=aggregates,
            history=self.history, warnings=self.warnings, user_of=self.user_of, kernel=self.kernel, churn=self.churn,
            namespaces=self.namespaces, places=places, place_slots=self.place_slots, place_codes=codes,
        )
