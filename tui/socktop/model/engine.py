"""One refresh: read the socket table, place owners, fold the aggregates, extend the history.

The TUI's poller thread and the CLI's one-shot modes both call
`Engine.refresh`; nothing here knows about Textual.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial

import numpy as np

from ..collect.columns import SocketColumns, SocketTable, found_in, table_of
from ..collect.containers import ContainerResolver
from ..collect.destroy import DestroyFeed, FeedReader
from ..collect.kernelstate import read_kernel_state
from ..collect.netns import NamespaceSockets, Selection, sock_diag_socket
from ..collect.nswatch import NamespaceInfo
from ..collect.owners import OwnerScanner, owner_note_for, user_name
from ..collect.records import BACKENDS, Backend, BackendUnavailable, OwnerAwareBackend
from .aggregate import DEFAULT_EPHEMERAL_PORTS, Aggregates, ConnectionOwners, Ownership, aggregate
from .churn import Churn, ChurnTracker
from .history import DEFAULT_WINDOW_SECONDS, History, history_capacity
from .places import NamespaceReader, assign_places, group_places, with_closes
from .snapshot import Snapshot, SourceInfo


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
                 history_seconds: float = DEFAULT_WINDOW_SECONDS, netns: Selection | None = None,
                 scanner: OwnerScanner | None = None) -> None:
        """``scanner``: an owner scanner already started (a one-shot run begins reading /proc/*/fd
        before it imports numpy, see `OwnerScanner.prefetch`)."""
        self.backend, self.backend_note = open_backend(backend)
        self.netns = netns if netns is not None else Selection("self")  # the CLI defaults to all as root
        self.containers = ContainerResolver()
        self.namespaces = NamespaceReader(self.netns, self.containers) if self.backend.name == "netlink" else None
        self._feeds: NamespaceSockets[DestroyFeed] = NamespaceSockets(lambda: DestroyFeed(sock_diag_socket()))
        self.scanner = scanner if scanner is not None else OwnerScanner()
        self.history_seconds = history_seconds
        self.history = History(history_capacity(history_seconds, interval))
        self._seq = 0
        self._last_owners: ConnectionOwners | dict = {}
        self._host = socket.gethostname()
        self._kernel = f"{os.uname().sysname} {os.uname().release}"
        self._is_root = os.geteuid() == 0
        self.churn = ChurnTracker()
        self.destroy_feed, self.churn_note = self._open_destroy_feed()
        self._reader: FeedReader | None = None
        self.closes_by_netns: dict[int, int] = {}  # connections closed since the previous refresh, by netns key
        # A dump reads its netlink socket chunk by chunk: two refreshes at once (a quit that leaves its
        # poller running while the caller refreshes again) would interleave chunks and misparse both.
        self._one_refresh = threading.Lock()

    def set_interval(self, interval: float) -> None:
        self.history.resize(history_capacity(self.history_seconds, interval))

    def refresh(self) -> Snapshot:
        """Take one snapshot. Raises CollectError/OSError when the table cannot be read.
        Callers in several threads are served one after the other."""
        with self._one_refresh:
            return self._refresh()

    def _refresh(self) -> Snapshot:
        started = time.perf_counter()
        with gc_paused():
            kernel = read_kernel_state()
            if self.namespaces is not None:
                columns, namespaces = self.namespaces.read(self.backend, kernel)
                table = SocketTable(columns)
            else:
                table, namespaces = table_of(self.backend.sockets()), ()
            ownership = self._ownership(table.columns)
            aggregates = aggregate(table, ownership, user_name, self._last_owners,
                                   ephemeral_ports=kernel.port_range() or DEFAULT_EPHEMERAL_PORTS)
            codes, slots = assign_places(table.columns, namespaces, self.containers.for_cgroup_id)
            places = group_places(table.columns, codes, slots, aggregates.rows, aggregates.listening_ports,
                                  aggregates.ephemeral_ports)
            taken_at, monotonic = time.time(), time.monotonic()
            churn = self._churn(table, ownership, aggregates, monotonic, namespaces)
            if churn is not None:
                places = with_closes(places, self.closes_by_netns)
        self._last_owners = aggregates.connection_owners or {}
        self._seq += 1
        history = self.history.record(self._seq, taken_at, monotonic, aggregates, kernel.counters,
                                      {info.key: info.kernel.counters for info in namespaces
                                       if not info.own and info.kernel is not None})
        return Snapshot(
            seq=self._seq, taken_at=taken_at, monotonic=monotonic,
            collect_seconds=time.perf_counter() - started,
            source=self._source(aggregates, namespaces), sockets=table, ownership=ownership,
            aggregates=aggregates, history=history, user_of=user_name, kernel=kernel, churn=churn,
            namespaces=namespaces, places=places, place_slots=tuple(slots), place_codes=codes,
        )

    def _open_destroy_feed(self) -> tuple[DestroyFeed | None, str]:
        """The destroy feed, where the records carry cookies to tie its events to (netlink only)."""
        if self.backend.name != "netlink":
            return None, f"no close events with the {self.backend.name} backend (they need sock_diag)"
        try:
            return DestroyFeed(), ""
        except OSError as exc:
            return None, f"no close events: the kernel refused the sock_diag destroy groups ({exc.strerror or exc})"

    def _churn(self, table: SocketTable, ownership: Ownership, aggregates: Aggregates,
               now: float, namespaces: tuple[NamespaceInfo, ...] = ()) -> Churn | None:
        """The churn since the previous refresh. From the second refresh on, a reader thread
        drains the feed between refreshes (a one-shot `--json` starts none)."""
        feed = self.destroy_feed
        if feed is None:
            return None
        others = dict(self._namespace_feeds(namespaces))  # the other namespaces': drained here, at each refresh
        lost_before = feed.overruns + (self._reader.dropped if self._reader else 0) + sum(
            f.overruns for f in others.values())
        try:
            closed = self._reader.take() if self._reader else feed.drain()
            if namespaces and not any(info.own for info in namespaces):
                closed = []  # drained, but socktop's own namespace is not read: its closes are not this view's
            self.closes_by_netns = {0: len(closed)}
            for inode, other in others.items():
                drained = other.drain()
                self.closes_by_netns[inode] = len(drained)
                closed += drained
        except OSError as exc:  # the table is still worth showing: churn stops, and says why
            self.close()
            self.churn_note = f"close events stopped: {exc.strerror or exc}"
            return None
        lost = feed.overruns + (self._reader.dropped if self._reader else 0) + sum(f.overruns for f in others.values())
        if self._reader is None:
            self._reader = FeedReader(feed)
            weakref.finalize(self, self._reader.stop, False)  # an engine dropped without close() stops it too
        return self.churn.update(table, ownership, aggregates, closed, now, lost, lost > lost_before)

    def _namespace_feeds(self, namespaces: tuple[NamespaceInfo, ...]) -> Iterable[tuple[int, DestroyFeed]]:
        """A destroy feed in each namespace read other than socktop's own (destroy events are per namespace),
        by inode."""
        wanted = {info.inode: info.namespace for info in namespaces if not info.own and not info.note}
        return self._feeds.sync(wanted).items() if wanted or self._feeds.sockets else ()

    def close(self) -> None:
        """Stop the destroy feed's reader, let go of its socket and of the sockets held in other
        namespaces (each keeps its namespace alive)."""
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        if self.destroy_feed is not None:
            self.destroy_feed.close()
            self.destroy_feed = None
        if self.namespaces is not None:
            self.namespaces.close()
        self._feeds.close()

    def _ownership(self, columns: SocketColumns) -> Ownership:
        if isinstance(self.backend, OwnerAwareBackend):
            pids_by_inode = self.backend.owner_hint()
            return Ownership(pids_by_inode, self.backend.processes(
                {pid for pids in pids_by_inode.values() for pid in pids}))
        self.scanner.update(columns.inode, partial(self._still_listed, columns))
        return Ownership(self.scanner.pids_by_inode, self.scanner.processes, self.scanner.closed)

    def _still_listed(self, columns: SocketColumns, inodes: set[int]) -> set[int]:
        """Those of ``inodes`` the socket table lists now, asked only when the owner scan could not place
        a socket (one that closed meanwhile is no longer listed): netlink looks each one up (in its own
        namespace), the other backends read the table again."""
        look_up = getattr(self.backend, "still_listed", None)
        if look_up is not None:
            rows = np.flatnonzero(found_in(np.sort(np.fromiter(inodes, np.uint64, len(inodes))), columns.inode))
            if self.namespaces is not None:
                return inodes.intersection(self.namespaces.still_listed(self.backend, columns, rows))
            return inodes.intersection(look_up(columns, rows))
        return inodes.intersection(table_of(self.backend.sockets()).columns.inode.tolist())

    def _source(self, aggregates: Aggregates, namespaces: tuple[NamespaceInfo, ...]) -> SourceInfo:
        if isinstance(self.backend, OwnerAwareBackend):  # psutil leaves out, unsaid, the processes it may not read
            closed, denied = 0, int(not self._is_root)
        else:
            closed, denied = len(self.scanner.closed), len(self.scanner.denied_pids)
        owner_note = owner_note_for(aggregates.with_inode - aggregates.owned, closed, self._is_root, denied)
        return SourceInfo(
            host=self._host, kernel=self._kernel, backend=self.backend.name, backend_note=self.backend_note,
            is_root=self._is_root, owner_note=owner_note, churn_note=self.churn_note,
            unavailable=getattr(self.backend, "unavailable", frozenset()),
            netns=netns_scope(self.netns, namespaces, self._is_root, self.namespaces is not None),
        )


def netns_scope(selection: Selection, namespaces: tuple[NamespaceInfo, ...], is_root: bool, can_enter: bool) -> str:
    """What the top bar and --json say about the namespaces read: ``all (4)``, ``all (4 of 5 read)``,
    ``self``, or why only socktop's own."""
    if not can_enter:
        return "self (only the netlink backend reads other namespaces)"
    text = selection.describe()
    if selection.mode == "self":
        return text if is_root else f"{text} (not root: other namespaces cannot be entered)"
    read = sum(1 for info in namespaces if not info.note)
    return f"{text} ({read} of {len(namespaces)} read)" if read < len(namespaces) else f"{text} ({read})"
