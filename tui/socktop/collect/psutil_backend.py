"""psutil: the socket table where neither netlink nor /proc exists (macOS, the BSDs).

psutil says less than the kernel interfaces: no queues, no timers, no
retransmit count, no inode, and no socket uid (``uid`` is the owning
process's real uid). What it does say is which processes hold a socket, so
each owned socket gets a synthetic inode, `PsutilBackend.owner_hint` maps
it to those pids and `PsutilBackend.processes` describes them, sparing the
owner scan a /proc it would not find.

A socket with no process in a state only a descriptor keeps alive
(`HELD_STATES`) is held by a process psutil did not show us (without root,
another user's): it gets a synthetic inode too, with no owner and the uid
`UNKNOWN_UID`, so that it counts against the owner coverage and stays
visible to the findings as the other backends' "uid:N" rows do, instead
of passing for an unowned socket. The exception is a connection on a
port whose listener we do see: that process's accepted sockets would be
visible too, so one without a process is waiting in its accept queue.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Collection
from itertools import count
from typing import NamedTuple, Protocol, TypeVar

import psutil

from .columns import SocketColumns, SocketTable
from .owners import UNKNOWN_UID, user_name
from .procnet import AddressCache
from .records import BackendUnavailable, CollectError, ProcessInfo, SocketRecord, TcpState, TimerKind

#: Synthetic inodes start here: the kernel's inode numbers are 32-bit, so they cannot collide.
SYNTHETIC_INODE_BASE = 1 << 40
#: States in which a socket exists only while a process holds its descriptor (or it waits in an accept queue).
HELD_STATES = frozenset({TcpState.LISTEN, TcpState.SYN_SENT, TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})

_STATE_BY_STATUS: dict[str, TcpState] = {
    psutil.CONN_ESTABLISHED: TcpState.ESTABLISHED,
    psutil.CONN_SYN_SENT: TcpState.SYN_SENT,
    psutil.CONN_SYN_RECV: TcpState.SYN_RECV,
    psutil.CONN_FIN_WAIT1: TcpState.FIN_WAIT1,
    psutil.CONN_FIN_WAIT2: TcpState.FIN_WAIT2,
    psutil.CONN_TIME_WAIT: TcpState.TIME_WAIT,
    psutil.CONN_CLOSE: TcpState.CLOSE,
    psutil.CONN_CLOSE_WAIT: TcpState.CLOSE_WAIT,
    psutil.CONN_LAST_ACK: TcpState.LAST_ACK,
    psutil.CONN_LISTEN: TcpState.LISTEN,
    psutil.CONN_CLOSING: TcpState.CLOSING,
}  # CONN_NONE is psutil's "a state I do not know": such entries are skipped and counted
_UNSPECIFIED = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
# What psutil raises when it cannot list: its own errors, OS errors, and RuntimeError
# (a /proc line it cannot parse; NotImplementedError on a platform it does not cover).
_LISTING_FAILURES = (psutil.Error, OSError, RuntimeError)


class Connection(Protocol):
    """The fields we use of psutil's ``sconn`` and ``pconn``."""

    @property
    def family(self) -> socket.AddressFamily: ...
    @property
    def laddr(self) -> tuple[str, int] | tuple[()]: ...
    @property
    def raddr(self) -> tuple[str, int] | tuple[()]: ...
    @property
    def status(self) -> str: ...


class SocketKey(NamedTuple):
    """A socket as psutil lets us tell it apart: the leading fields of its record."""

    family: int
    state: TcpState
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int


def address_bytes(text: str, family: int) -> bytes:
    """psutil's address text in network order; a scope (``fe80::1%lo0``) is dropped, as netlink has none."""
    try:
        return socket.inet_pton(family, text.partition("%")[0])
    except OSError as exc:  # inet_pton's way of saying "not an address"
        raise ValueError(f"{text!r} is not an address of family {family}") from exc


def readable_connections(process: psutil.Process) -> list[Connection]:
    """The TCP sockets of one process, or none if it is gone or not ours to inspect."""
    # psutil 6 renamed connections() to net_connections(); we still accept 5.9.
    list_connections = getattr(process, "net_connections", None) or process.connections
    try:
        return list_connections(kind="tcp")
    except psutil.Error:
        return []


class PsutilBackend:
    """Lists TCP sockets with ``psutil.net_connections``.

    Where that needs privileges we lack (macOS without root), it falls back
    to asking each process we may inspect for its own sockets, and sets
    ``system_wide`` to False: sockets of other users' processes, and those
    no process holds (TIME_WAIT), are then missing.

    Entries psutil lists more than once (a socket shared by several
    processes) become one record; so do SO_REUSEPORT listeners on one
    address, which psutil gives no way to tell apart. ``skipped_entries``
    counts the entries dropped for an unknown status or an address we
    cannot read.
    """

    name = "psutil"
    unavailable = frozenset({"listen_backlog", "listen_queue", "queues", "timers", "retransmits", "cookie",
                             "lastack_ms", "cgroup_id"})

    def __init__(self) -> None:
        self.system_wide = True
        self.skipped_entries = 0
        self._caches = {family: AddressCache.for_family(family, address_bytes) for family in _UNSPECIFIED}
        self._fresh_inodes = count(SYNTHETIC_INODE_BASE)
        self._inodes: dict[SocketKey, int] = {}
        self._owners: dict[int, tuple[int, ...]] = {}
        self._processes: dict[int, ProcessInfo] = {}
        try:
            self._entries()
        except _LISTING_FAILURES as exc:
            raise BackendUnavailable(f"psutil cannot list TCP sockets here: {exc}") from exc

    def owner_hint(self) -> dict[int, tuple[int, ...]]:
        """Synthetic inode -> pids holding that socket, for the last `sockets()` call.

        Every socket with a known owner has a synthetic inode (from
        SYNTHETIC_INODE_BASE up) that stays the same while the socket keeps
        its state and addresses; sockets with no known owner have inode 0
        and are not in the hint. Use it instead of scanning /proc/*/fd.
        """
        return self._owners

    def processes(self, pids: Collection[int]) -> dict[int, ProcessInfo]:
        """The processes among ``pids`` that held sockets in the last `sockets()` call.

        The engine asks for them with the owner hint, in place of the owner
        scan's /proc reads; a process that exited or hides from us is absent.
        """
        return {pid: self._processes[pid] for pid in pids if pid in self._processes}

    def sockets(self) -> SocketTable:
        try:
            entries = self._entries()
        except _LISTING_FAILURES as exc:
            raise CollectError(f"psutil could not list TCP sockets: {exc}") from exc
        for cache in self._caches.values():
            cache.trim()
        pids_by_socket: dict[SocketKey, list[int]] = {}
        for pid, connection in entries:
            key = self._key(connection)
            if key is None:
                self.skipped_entries += 1
                continue
            pids = pids_by_socket.setdefault(key, [])
            if pid is not None and pid not in pids:
                pids.append(pid)
        return SocketTable(SocketColumns.from_records(self._records(pids_by_socket)))

    def _entries(self) -> list[tuple[int | None, Connection]]:
        """(owning pid or None, connection) for every TCP socket psutil lets us see."""
        if self.system_wide:
            try:
                return [(connection.pid, connection) for connection in psutil.net_connections(kind="tcp")]
            except psutil.AccessDenied:
                self.system_wide = False
        return [(process.pid, connection) for process in psutil.process_iter()
                for connection in readable_connections(process)]

    def _key(self, connection: Connection) -> SocketKey | None:
        state = _STATE_BY_STATUS.get(connection.status)
        family = connection.family
        if state is None or family not in self._caches:
            return None
        local_addr, local_port = connection.laddr or (_UNSPECIFIED[family], 0)
        remote_addr, remote_port = connection.raddr or (_UNSPECIFIED[family], 0)
        cache = self._caches[family]
        try:
            return SocketKey(family, state,
                             cache.known.get(local_addr) or cache.convert(local_addr), local_port,
                             cache.known.get(remote_addr) or cache.convert(remote_addr), remote_port)
        except ValueError:
            return None

    def _records(self, pids_by_socket: dict[SocketKey, list[int]]) -> list[SocketRecord]:
        """One record per socket; owned ones get their synthetic inode, kept from the last call."""
        known = self._processes
        self._processes = {
            pid: info for pid in {pid for pids in pids_by_socket.values() for pid in pids}
            if (info := describe_process(pid, known.get(pid))) is not None
        }
        inodes: dict[SocketKey, int] = {}
        owners: dict[int, tuple[int, ...]] = {}
        records: list[SocketRecord] = []
        seen_listeners = {key.local_port for key, pids in pids_by_socket.items()
                          if pids and key.state is TcpState.LISTEN}
        for key, pids in pids_by_socket.items():
            uid = inode = 0
            if pids:
                inode = inodes[key] = self._inodes.get(key) or next(self._fresh_inodes)
                owners[inode] = tuple(pids)
                owner = self._processes.get(pids[0])
                uid = owner.uid if owner else UNKNOWN_UID
            elif key.state in HELD_STATES and (key.state is TcpState.LISTEN or key.local_port not in seen_listeners):
                inode = inodes[key] = self._inodes.get(key) or next(self._fresh_inodes)  # a process we do not see
                uid = UNKNOWN_UID
            records.append(SocketRecord(*key, 0, 0, TimerKind.NONE, 0, 0, uid, inode))
        self._inodes = inodes
        self._owners = owners
        return records


_T = TypeVar("_T")


def describe_process(pid: int, known: ProcessInfo | None) -> ProcessInfo | None:
    """One process as psutil sees it; None once it has exited or hides from us.

    ``known`` is last snapshot's entry for the pid: while the start time
    matches, only the descriptor count is read again. ``start_ticks`` is
    the start time in ms here (psutil has no kernel ticks everywhere); it
    only has to tell a reused pid apart.
    """
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            started = int(process.create_time() * 1000)
            fd_count = _unless_denied(process.num_fds, None)
            if known is not None and known.start_ticks == started:
                return known if known.fd_count == fd_count else dataclasses.replace(known, fd_count=fd_count)
            uid = process.uids().real
            # psutil reads limits on Linux and FreeBSD only, not on macOS.
            fd_limit = (_unless_denied(lambda: process.rlimit(psutil.RLIMIT_NOFILE)[0], None)
                        if hasattr(process, "rlimit") else None)
            return ProcessInfo(
                pid=pid, start_ticks=started, name=process.name(),
                cmdline=" ".join(_unless_denied(process.cmdline, [])), uid=uid, user=user_name(uid),
                fd_count=fd_count, fd_limit=fd_limit,
            )
    except psutil.Error:
        return None


def _unless_denied(read: Callable[[], _T], default: _T) -> _T:
    """What ``read`` returns, or ``default`` where the process hides that one fact from us."""
    try:
        return read()
    except psutil.AccessDenied:
        return default
