"""The Containers grouping: sockets by where they live.

A socket in another network namespace belongs to that namespace, named
after its pod or container when one is known (every container of a pod
shares the pod's namespace). A socket in socktop's own namespace belongs
to the container, pod or service its cgroup names (host-network
containers, systemd services), else to the namespace itself ("host").
Timewait and request sockets carry no cgroup id (kernel-facts), so in
socktop's own namespace they count under "host".
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..collect.columns import SocketColumns, distinct, table_of
from ..collect.containers import Container, ContainerResolver
from ..collect.kernelstate import KernelState
from ..collect.netns import Selection, activity
from ..collect.nswatch import NamespaceInfo, NamespaceWatch
from ..collect.records import STATE_BY_CODE, CollectError, SocketRecord, TcpState
from .aggregate import Direction, RowKind, RowOwners, StateCounts, inbound_flags, process_key

if TYPE_CHECKING:
    from ..collect.netlink import NetlinkBackend

TOP = 5  # ports and processes kept per place


@dataclass(frozen=True, slots=True)
class Place:
    """One row of the Containers grouping.

    ``key`` is ``netns:INODE`` for a whole namespace, else the container's
    key (``pod:UID``, ``docker:ID``, ``service:NAME``); ``label`` is for
    people (untrusted text: names come from the containers' own files).
    """

    key: str
    label: str
    kind: str  # "host" (socktop's own namespace), "netns", "pod", "container" or "service"
    namespace: NamespaceInfo
    container: Container | None
    counts: StateCounts
    total: int
    ports: tuple[tuple[str, int], ...] = ()  # ("in:8080", sockets), most first
    processes: tuple[tuple[str, int], ...] = ()  # ("pid:42", sockets), most first
    closes: int | None = None  # connections its namespace's destroy feed saw close since the previous refresh
    # (a whole namespace's; None for a container inside socktop's own: close events carry no cgroup)

    @property
    def netns(self) -> int:
        return self.namespace.inode


@dataclass(frozen=True, slots=True)
class PlaceSlot:
    """A place before counting: what `assign_places` gives each code, and which sockets it takes."""

    key: str
    label: str
    kind: str
    namespace: NamespaceInfo
    container: Container | None
    cgroup_ids: frozenset[int] = frozenset()  # in socktop's own namespace: the cgroups that name this container
    claimed: frozenset[int] = frozenset()  # for socktop's own namespace itself: the cgroups containers claim

    def holds(self, record: SocketRecord) -> bool:
        """Whether ``record`` is counted here (as `assign_places` placed it)."""
        if record.netns != self.namespace.key:
            return False
        if not self.namespace.own:
            return True
        if self.kind == "host":
            return record.cgroup_id not in self.claimed
        return record.cgroup_id in self.cgroup_ids


def assign_places(columns: SocketColumns, namespaces: Sequence[NamespaceInfo],
                  container_of: Callable[[int], Container | None]) -> tuple[np.ndarray, list[PlaceSlot]]:
    """Per socket, the index of its place in the returned list (-1: a namespace not in ``namespaces``)."""
    codes = np.full(len(columns), -1, np.int64)
    slots: list[PlaceSlot] = []
    for info in namespaces:
        rows = np.flatnonzero(columns.netns == info.key)
        if not len(rows):
            continue
        if not info.own:
            codes[rows] = len(slots)
            slots.append(PlaceSlot(f"netns:{info.inode}", info.label,
                                   info.container.kind if info.container else "netns", info, info.container))
            continue
        ids, inverse = np.unique(columns.cgroup_id[rows], return_inverse=True)
        by_container: dict[Container, list[int]] = {}
        for cgroup_id in ids.tolist():
            container = container_of(cgroup_id) if cgroup_id else None
            if container is not None:
                by_container.setdefault(container, []).append(cgroup_id)
        claimed = frozenset(cgroup_id for found in by_container.values() for cgroup_id in found)
        host = len(slots)
        slots.append(PlaceSlot(f"netns:{info.inode}", info.label, "host", info, None, claimed=claimed))
        codes[rows] = host
        row_ids = columns.cgroup_id[rows]
        for container, cgroup_ids in by_container.items():
            codes[rows[np.isin(row_ids, cgroup_ids)]] = len(slots)
            slots.append(PlaceSlot(container.key, container.title, container.kind, info, container,
                                   frozenset(cgroup_ids)))
    return codes, slots


def group_places(columns: SocketColumns, codes: np.ndarray, slots: Sequence[PlaceSlot], rows: RowOwners | None,
                 listening_ports: frozenset[int], ephemeral_ports: tuple[int, int]) -> dict[str, Place]:
    """Counts by state, top ports (by the Ports pane's direction rule) and top processes of each place."""
    placed = codes >= 0
    states = columns.state.astype(np.int64)
    state_counts: list[dict[TcpState, int]] = [{} for _ in slots]
    keys, counts = np.unique(codes[placed] << 8 | states[placed], return_counts=True)
    for key, count in zip(keys.tolist(), counts.tolist()):
        state = STATE_BY_CODE[key & 0xFF]
        tally = state_counts[key >> 8]
        tally[state] = tally.get(state, 0) + count
    inbound = inbound_flags(columns.local_port, columns.remote_port, listening_ports, ephemeral_ports)
    group = np.where(inbound, columns.local_port, columns.remote_port).astype(np.int64) | inbound.astype(np.int64) << 16
    ports: list[Counter[str]] = [Counter() for _ in slots]
    keys, counts = np.unique(codes[placed] << 17 | group[placed], return_counts=True)
    for key, count in zip(keys.tolist(), counts.tolist()):
        direction = Direction.IN if key >> 16 & 1 else Direction.OUT
        ports[key >> 17][f"{direction.value}:{key & 0xFFFF}"] = count
    processes: list[Counter[str]] = [Counter() for _ in slots]
    if rows is not None and len(rows.codes) == len(codes):
        counted = placed & ((rows.kinds == RowKind.DIRECT) | (rows.kinds == RowKind.INFERRED))
        keys, counts = np.unique(codes[counted] << 32 | rows.codes[counted], return_counts=True)
        for key, count in zip(keys.tolist(), counts.tolist()):
            for pid in rows.pid_sets[key & 0xFFFFFFFF]:
                processes[key >> 32][process_key(pid)] += count
    return {
        slot.key: Place(slot.key, slot.label, slot.kind, slot.namespace, slot.container, state_counts[index],
                        sum(state_counts[index].values()), tuple(ports[index].most_common(TOP)),
                        tuple(processes[index].most_common(TOP)))
        for index, slot in enumerate(slots) if state_counts[index]
    }


def with_closes(places: Mapping[str, Place], closes_by_netns: Mapping[int, int]) -> dict[str, Place]:
    """``places`` with the closes of each whole namespace (`SocketRecord.netns` keys) where they were counted."""
    return {key: replace(place, closes=closes_by_netns.get(place.namespace.key))
            if place.kind == "host" or not place.namespace.own else place for key, place in places.items()}


def matching_codes(slots: Sequence[PlaceSlot], text: str) -> list[int]:
    """The codes of the places a ``container:TEXT`` term names: by key (``netns:INODE``, ``pod:UID``,
    ``docker:ID``: a place's own or its container's), else every place whose label holds TEXT, case-blind."""
    exact = [code for code, slot in enumerate(slots)
             if text in (slot.key, slot.container.key if slot.container else None)]
    if exact:
        return exact
    wanted = text.casefold()
    return [code for code, slot in enumerate(slots) if wanted in slot.label.casefold()]


REDUMP_EVERY = 10.0  # seconds an idle namespace's table may be kept without a dump


class NamespaceReader:
    """The socket table of every watched namespace, each dumped through its own socket.

    Only the netlink backend can do this (a dump lists the namespace its
    socket lives in); the others read socktop's own namespace alone. Each
    dump walks the kernel's whole socket hash table, which every namespace
    shares unless it was made with ``net.ipv4.tcp_child_ehash_entries``
    set: N namespaces cost N walks. So a namespace other than socktop's
    own whose activity counters (`netns.activity`: segments in and out,
    opens, resets, sockets in use and in TIME_WAIT) have not moved since
    its last dump keeps that dump, its timers aged, for up to REDUMP_EVERY
    seconds: no socket of it can have changed state meanwhile.
    """

    def __init__(self, selection: Selection, resolver: ContainerResolver,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.watch = NamespaceWatch(selection, resolver)
        self.clock = clock
        self.keep_for = REDUMP_EVERY  # 0: dump every namespace at every refresh
        self._kept: dict[int, tuple[tuple[int, ...], float, SocketColumns]] = {}
        self.dumps = 0
        self.kept = 0

    def read(self, backend: NetlinkBackend, host: KernelState) -> tuple[SocketColumns, tuple[NamespaceInfo, ...]]:
        """All sockets, each with its namespace (`SocketRecord.netns`, 0 for socktop's own), and the namespaces.

        Socktop's own namespace is read as without namespaces (``backend.sockets()``);
        the others through their sockets. A namespace whose dump fails is left
        out with the reason in its note (its socket is reopened next time);
        socktop's own failing raises, as it would without namespaces.
        """
        try:
            found = self.watch.refresh(host)
        except LookupError as exc:
            raise CollectError(str(exc)) from None
        now = self.clock()
        parts: list[SocketColumns] = []
        infos: list[NamespaceInfo] = []
        for info, sock in found:
            if sock is not None:
                try:
                    parts.append(self._columns(backend, info, sock, now))
                except (OSError, CollectError) as exc:
                    if info.own:
                        raise
                    self.watch.sockets.discard(info.inode)
                    self._kept.pop(info.inode, None)
                    info = replace(info, note=f"its sockets could not be read: {exc}")
            infos.append(info)
        for inode in self._kept.keys() - {info.inode for info in infos}:
            del self._kept[inode]
        return SocketColumns.concat(parts), tuple(infos)

    def _columns(self, backend: NetlinkBackend, info: NamespaceInfo, sock: socket.socket, now: float) -> SocketColumns:
        if info.own:
            return table_of(backend.sockets()).columns
        fingerprint = activity(info.kernel)
        kept = self._kept.get(info.inode)
        if fingerprint is not None and kept is not None and kept[0] == fingerprint and now - kept[1] < self.keep_for:
            self.kept += 1
            return aged(kept[2], now - kept[1])
        self.dumps += 1
        columns = backend.columns(sock)
        columns.netns[:] = info.key
        if fingerprint is not None:
            self._kept[info.inode] = (fingerprint, now, columns)
        return columns

    def still_listed(self, backend: NetlinkBackend, columns: SocketColumns, rows: np.ndarray) -> set[int]:
        """`NetlinkBackend.still_listed` for ``rows`` of several namespaces: each asked in its own."""
        opened = self.watch.sockets.sockets  # by inode, which is the netns key of every namespace but socktop's
        listed: set[int] = set()
        for key in distinct(columns.netns[rows]).tolist():
            mine = rows[columns.netns[rows] == key]
            if key == 0:
                listed |= backend.still_listed(columns, mine)
            elif key in opened:
                listed |= backend.still_listed(columns, mine, opened[key])
        return listed

    def close(self) -> None:
        self.watch.close()


def aged(columns: SocketColumns, seconds: float) -> SocketColumns:
    """A kept dump as a dump ``seconds`` later would show it: timers that much closer to expiry,
    the last ACK that much longer ago (the arrays are copied; the kept dump stays as it was)."""
    elapsed = int(seconds * 1000)
    running = columns.timer != 0
    timer_ms = np.where(running, np.maximum(columns.timer_ms.astype(np.int64) - elapsed, 0), 0)
    lastack_ms = np.where(columns.lastack_ms >= 0, columns.lastack_ms + elapsed, columns.lastack_ms)
    return replace(columns, timer_ms=timer_ms.astype(columns.timer_ms.dtype), lastack_ms=lastack_ms)


def place_predicate(slots: Sequence[PlaceSlot], text: str, by_namespace: bool = False) -> Callable[[SocketRecord], bool]:
    """The `/` filter's ``container:TEXT`` (or, with ``by_namespace``, ``netns:TEXT``: a namespace's inode,
    name or label) as a test on one socket."""
    if by_namespace:
        wanted = text.casefold()
        keys = {slot.namespace.key for slot in slots
                if text == str(slot.namespace.inode) or wanted in slot.namespace.label.casefold()}
        return lambda record: record.netns in keys
    chosen = [slots[code] for code in matching_codes(slots, text)]
    return lambda record: any(slot.holds(record) for slot in chosen)
