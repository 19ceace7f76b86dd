"""One refresh: read the socket table, place owners, fold the aggregates, extend the history.

The TUI's poller thread and the CLI's one-shot modes both call
`Engine.refresh`; nothing here knows about Textual.
"""

from __future__ import annotations

import gc
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from operator import itemgetter

import numpy as np

from ..collect.columns import SocketTable, table_of
from ..collect.containers import ContainerResolver
from ..collect.kernelstate import read_kernel_state
from ..collect.netlink import NetlinkBackend
from ..collect.netns import Selection
from ..collect.nswatch import NamespaceInfo
from ..collect.owners import OwnerScanner, user_name
from ..collect.records import Backend, BackendUnavailable, OwnerAwareBackend
from .aggregate import DEFAULT_EPHEMERAL_PORTS, ConnectionOwners, Ownership, aggregate
from .history import DEFAULT_WINDOW_SECONDS, History, history_capacity
from .places import NamespaceReader, assign_places, group_places
from .snapshot import Snapshot, SourceInfo

BACKENDS = ("auto", "netlink", "proc", "psutil")


def _netlink() -> Backend:
    from ..collect.netlink import NetlinkBackend

    return NetlinkBackend()


def _proc() -> Backend:
    from ..collect.procnet import ProcNetBackend

    return ProcNetBackend()


def _psutil() -> Backend:
    from ..collect.psutil_backend import PsutilBackend

    return PsutilBackend()


_FACTORIES = {"netlink": _netlink, "proc": _proc, "psutil": _psutil}


def open_backend(name: str = "auto") -> tuple[Backend, str]:
    """The backend asked for, or with "auto" the best that works here, and a note on why.

    Raises BackendUnavailable naming every reason when none works.
    """
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name != "auto":
        return _FACTORIES[name](), ""
    reasons: list[str] = []
    for candidate in ("netlink", "proc", "psutil"):
        try:
            backend = _FACTORIES[candidate]()
        except BackendUnavailable as exc:
            reasons.append(str(exc))
            continue
        return backend, "; ".join(reasons)
    raise BackendUnavailable("no way to read the socket table here: " + "; ".join(reasons))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold the cyclic GC while 50,000 tuples are built: they hold no cycles, and
    collections triggered every 700 allocations cost about 15% of the parse."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Engine:
    """Owns the backend, the owner scanner and the history; makes snapshots."""

    def __init__(self, backend: str = "auto", interval: float = 1.0,
                 history_seconds: float = DEFAULT_WINDOW_SECONDS, netns: Selection | None = None) -> None:
        self.backend, self.backend_note = open_backend(backend)
        self._is_root = os.geteuid() == 0
        self.netns = netns if netns is not None else Selection("self")  # the CLI defaults to all as root
        self.containers = ContainerResolver()
        self.namespaces = (NamespaceReader(self.backend, self.netns, self.containers)
                           if isinstance(self.backend, NetlinkBackend) else None)
        self.scanner = OwnerScanner()
        self.history_seconds = history_seconds
        self.history = History(history_capacity(history_seconds, interval))
        self._seq = 0
        self._last_owners: ConnectionOwners | dict = {}
        self._host = socket.gethostname()
        self._kernel = f"{os.uname().sysname} {os.uname().release}"

    def set_interval(self, interval: float) -> None:
        self.history.resize(history_capacity(self.history_seconds, interval))

    def refresh(self) -> Snapshot:
        """Take one snapshot. Raises CollectError/OSError when the table cannot be read."""
        started = time.perf_counter()
        with gc_paused():
            kernel = read_kernel_state()
            if self.namespaces is not None:
                columns, namespaces = self.namespaces.read(kernel)
                table = SocketTable(columns)
            else:
                table, namespaces = table_of(self.backend.sockets()), ()
            ownership = self._ownership(table.columns.inode)
            aggregates = aggregate(table, ownership, user_name, self._last_owners,
                                   ephemeral_ports=kernel.port_range() or DEFAULT_EPHEMERAL_PORTS)
            codes, slots = assign_places(table.columns, namespaces, self.containers.for_cgroup_id)
            places = group_places(table.columns, codes, slots, aggregates.rows, aggregates.listening_ports,
                                  aggregates.ephemeral_ports)
        self._last_owners = aggregates.connection_owners or {}
        self._seq += 1
        taken_at, monotonic = time.time(), time.monotonic()
        history = self.history.record(self._seq, taken_at, monotonic, aggregates, kernel.counters,
                                      {info.key: info.kernel.counters for info in namespaces
                                       if not info.own and info.kernel is not None})
        return Snapshot(
            seq=self._seq, taken_at=taken_at, monotonic=monotonic,
            collect_seconds=time.perf_counter() - started,
            source=self._source(aggregates.coverage, namespaces), sockets=table, ownership=ownership,
            aggregates=aggregates, history=history, user_of=user_name, kernel=kernel,
            namespaces=namespaces, places=places, place_slots=tuple(slots), place_codes=codes,
        )

    def close(self) -> None:
        """Close the sockets held in other namespaces (they keep those namespaces alive)."""
        if self.namespaces is not None:
            self.namespaces.close()

    def _ownership(self, inodes: np.ndarray) -> Ownership:
        if isinstance(self.backend, OwnerAwareBackend):
            pids_by_inode = self.backend.owner_hint()
            return Ownership(pids_by_inode, self.backend.processes(
                {pid for pids in pids_by_inode.values() for pid in pids}))
        self.scanner.update(set(inodes.tolist()))
        return Ownership(self.scanner.pids_by_inode, self.scanner.processes)

    def _source(self, coverage: float, namespaces: tuple[NamespaceInfo, ...]) -> SourceInfo:
        owner_note = ""
        if coverage < 1.0:
            owner_note = ("the rest belong to processes outside this PID namespace" if self._is_root
                          else "run as root for all")
        return SourceInfo(
            host=self._host, kernel=self._kernel, backend=self.backend.name, backend_note=self.backend_note,
            is_root=self._is_root, owner_note=owner_note, netns=netns_scope(self.netns, namespaces, self._is_root,
                                                                             self.namespaces is not None),
        )


def netns_scope(selection: Selection, namespaces: tuple[NamespaceInfo, ...], is_root: bool, can_enter: bool) -> str:
    """What the top bar and --json say about the namespaces read: ``all (4 of 5 read)``, ``self``, or why only self."""
    if not can_enter:
        return "self (only the netlink backend reads other namespaces)"
    read = sum(1 for info in namespaces if not info.note)
    text = selection.describe()
    if selection.mode == "self":
        return text if is_root else f"{text} (not root: other namespaces cannot be entered)"
    return f"{text} ({read} of {len(namespaces)} read)" if read < len(namespaces) else f"{text} ({read})"
