"""Which process holds each socket: inode → pids from /proc/*/fd, kept incrementally.

A full scan of every process's descriptors costs about 100 ms at 20k fds,
too much for every refresh. So the scanner only looks when the socket
table shows inodes it cannot place, and then in widening circles: first
the processes that are new since the last look or already hold sockets
(a new socket is nearly always theirs: an accept, a connect, a fork), then,
for what is still unplaced and still in the table, every other process.
It re-reads only descriptors that are new or whose socket has gone,
remembers inodes known to be unowned (other users' sockets without root,
or a container's PID 1), and rescans everything at a bounded rate (every
FULL_RESCAN_EVERY seconds, and at most once in SPREAD_UPDATES updates) to
catch descriptor numbers reused in place. Under fork churn the cost follows
the new processes, not the whole of /proc.

A socket in the dump that no process holds by the time its descriptors
are read has usually just closed: the caller's ``still_present`` re-reads
the table, and such inodes go to ``closed`` (the snapshot counts them as
the inode-0 sockets they now are), never to ``unowned``.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import pwd
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .records import ProcessInfo

PROC = "/proc"
SOCKET_LINK_PREFIX = "socket:["
FULL_RESCAN_EVERY = 30.0
RETRY_UNKNOWN_AFTER = 5.0
SPREAD_UPDATES = 4  # and each at most once in this many updates: at `socktop serve`'s 15 s a whole scan
# (about 150 ms at the 50k incident) then falls on one collection a minute, not on every other one
NOT_A_SOCKET = 0


UNKNOWN_UID = -1  # a socket whose uid the backend cannot tell (psutil names no uid for a hidden owner)


def user_name(uid: int, _cache: dict[int, str] = {}) -> str:  # noqa: B006 - deliberate process-wide cache
    """The login name for a uid, or the number when the passwd database lacks it ("unknown" for UNKNOWN_UID)."""
    if uid == UNKNOWN_UID:
        return "unknown"
    name = _cache.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError):
            name = str(uid)
        _cache[uid] = name
    return name


def read_text(path: str, limit: int = 65536) -> str | None:
    """A small /proc file as text, or None when it vanished or may not be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, limit).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def start_ticks(stat_text: str) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), read after the last ')'.

    The command name in field 2 may itself hold spaces and parentheses.
    """
    fields = stat_text.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def soft_fd_limit(limits_text: str | None) -> int | None:
    """The soft RLIMIT_NOFILE from /proc/PID/limits; None when unlimited or unreadable."""
    for line in (limits_text or "").splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files"):].split()[0]
            return int(soft) if soft.isdigit() else None
    return None


def read_process(pid: int, fd_count: int | None, known: ProcessInfo | None = None,
                 tcp_fds: int | None = None) -> ProcessInfo | None:
    """Facts about one process; None when it exited or its /proc entry is closed to us.

    ``known`` is the cached entry for this pid: when its start time still
    matches, only the name (a process may rename itself after start, as
    the demo's workers do, and /proc/PID/comm costs ~15 µs) and the
    descriptor count are refreshed; the command line and limit are kept.
    """
    base = f"{PROC}/{pid}"
    stat_text = read_text(f"{base}/stat")
    if stat_text is None:
        return None
    started = start_ticks(stat_text)
    if started is None:
        return None
    name = (read_text(f"{base}/comm") or stat_text.partition("(")[2].rpartition(")")[0]).rstrip("\n")
    if known is not None and known.start_ticks == started:
        if known.fd_count == fd_count and known.name == name and known.tcp_fds == tcp_fds:
            return known
        return replace(known, name=name, fd_count=fd_count, tcp_fds=tcp_fds)
    cmdline = (read_text(f"{base}/cmdline", 8192) or "").replace("\x00", " ").strip()
    try:
        uid = os.stat(base).st_uid
    except OSError:
        return None
    return ProcessInfo(
        pid=pid, start_ticks=started, name=name, cmdline=cmdline, uid=uid, user=user_name(uid),
        fd_count=fd_count, fd_limit=soft_fd_limit(read_text(f"{base}/limits")), tcp_fds=tcp_fds,
    )


def owner_note_for(unplaced: int, closed: int, is_root: bool, denied_pids: int) -> str:
    """Why some owners are missing, from what was checked only ('' when none is).

    ``unplaced``: sockets with an inode no process visible here holds
    (after the re-check); ``closed``: those that left the table before their
    owner was read; ``denied_pids``: processes whose descriptors we may not
    read. Without root, other users' processes hide their descriptors; as
    root nothing is hidden by permission, so the only checked statement is
    that no process visible here holds the rest.
    """
    reasons = []
    if unplaced and denied_pids and not is_root:
        reasons.append("run as root for all")
    elif unplaced and denied_pids:
        reasons.append(f"{denied_pids} process{'es' if denied_pids != 1 else ''} refused reading "
                       f"{'their' if denied_pids != 1 else 'its'} descriptors")
    elif unplaced:
        reasons.append(f"{unplaced} socket{'s' if unplaced != 1 else ''} held by no process visible here")
    if closed:
        reasons.append(f"{closed} socket{'s' if closed != 1 else ''} closed before {'their' if closed != 1 else 'its'}"
                       " owner was read")
    return "; ".join(reasons)


@dataclass(slots=True)
class _ProcessFds:
    """The descriptors of one process as last read: fd name → socket inode (0: not a socket)."""

    start_ticks: int
    inode_by_fd: dict[str, int] = field(default_factory=dict)
    tcp_fds: int = 0  # descriptors that are TCP sockets, in the table or not (set by the last scan)


@dataclass(slots=True)
class ScanStats:
    """What the last update did, for the benchmark and the status line."""

    scans: int = 0
    full_scans: int = 0
    fd_dirs_read: int = 0  # /proc/PID/fd listings: what an owner scan costs per process it looks at
    links_read: int = 0
    denied_pids: int = 0
    vanished_pids: int = 0


def _holders_by_inode(fds_by_pid: dict[int, _ProcessFds], present: set[int]) -> dict[int, tuple[int, ...]]:
    """inode → the pids whose descriptors hold it, for the inodes in ``present``; sets each table's
    ``tcp_fds`` to its descriptors among them.

    One tuple per distinct set of holders, shared: the aggregates hash and
    compare these once per socket, which is cheaper when equal ones are one.
    Built a process at a time with list, dict and set operations, so that a
    socket held by one process (nearly every one) costs no Python step.
    """
    result: dict[int, tuple[int, ...]] = {}
    shared: dict[tuple[int, ...], tuple[int, ...]] = {}
    for pid, fds in fds_by_pid.items():
        held = [inode for inode in fds.inode_by_fd.values() if inode in present]
        fds.tcp_fds = len(held)
        if not held:
            continue
        alone = (pid,)
        mine = dict.fromkeys(held, shared.setdefault(alone, alone))
        for inode in mine.keys() & result.keys():  # also held by a process seen before (a forked listener)
            earlier = result[inode]
            joined = earlier if pid in earlier else earlier + alone
            mine[inode] = shared.setdefault(joined, joined)
        result.update(mine)
    return result


class OwnerScanner:
    """Keeps inode → owning pids current with as little /proc reading as it can.

    ``pids_by_inode`` and ``processes`` are replaced on change, never
    mutated, so a snapshot can hold them while the next scan runs.
    """

    def __init__(self, proc: str = PROC, clock: Callable[[], float] = time.monotonic) -> None:
        self._proc = proc
        self._clock = clock
        self._fds_by_pid: dict[int, _ProcessFds] = {}
        self._processes: dict[int, ProcessInfo] = {}
        self.pids_by_inode: dict[int, tuple[int, ...]] = {}
        self.unowned: set[int] = set()
        self.closed: frozenset[int] = frozenset()  # inodes of this update that closed before their owner was read
        self.denied_pids: set[int] = set()
        self._known_pids: set[int] = set()  # /proc as last listed
        self._present: set[int] = set()  # the TCP inodes of the previous update
        self._present_array: Any = None  # the same, sorted, when given as a numpy column
        self._unlisted_tcp: dict[int, bool] = {}  # socket inode in no TCP table → is it TCP (sockprotoname)
        self._last_full_scan = float("-inf")
        self._last_unknown_retry = float("-inf")
        self._updates = SPREAD_UPDATES  # updates made, and at which ones the last full scan and retry were
        self._full_update = self._retry_update = 0
        self._prefetch: tuple[int, int] | None = None  # the child reading every table: its pid, its pipe
        self.stats = ScanStats()

    def prefetch(self) -> None:
        """Start reading every process's descriptors now, in a child process, before the table is known.

        A one-shot run (`--json`, `--once`) calls this before it imports
        numpy and dumps the table: the first scan, mostly readlinks waiting
        in the kernel, then runs on the other core (a thread would share the
        GIL with the imports and slow both). The next `update` places the
        sockets from these tables and reads again only for sockets opened
        after their holder's table was read. Nothing is started while other
        threads run (a fork copies none of them); `update` then scans itself.
        """
        if threading.active_count() > 1:
            return
        reader, writer = os.pipe()
        try:
            child = os.fork()
        except OSError:
            os.close(reader)
            os.close(writer)
            return
        if child == 0:  # the child: read, send, and never return into the caller's code
            try:
                os.close(reader)
                self._scan(set(), full=True)
                tables = {pid: (fds.start_ticks, fds.inode_by_fd) for pid, fds in self._fds_by_pid.items()}
                stats = (self.stats.fd_dirs_read, self.stats.links_read, self.stats.vanished_pids)
                payload = memoryview(marshal.dumps((tables, list(self._known_pids), list(self.denied_pids), stats)))
                while payload:
                    payload = payload[os.write(writer, payload):]
            finally:
                os._exit(0)
        os.close(writer)
        self._prefetch = (child, reader)

    def cancel_prefetch(self) -> None:
        """End a `prefetch` child whose tables will not be used (the run failed or was interrupted), and
        reap it, so that no child outlives the run holding its stdout."""
        if self._prefetch is None:
            return
        child, reader = self._prefetch
        self._prefetch = None
        os.close(reader)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)

    def _take_prefetched(self) -> bool:
        """The tables the `prefetch` child read, installed as a full scan's; False when it sent none."""
        assert self._prefetch is not None
        child, reader = self._prefetch
        self._prefetch = None
        chunks = []
        try:
            while chunk := os.read(reader, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(reader)
            with contextlib.suppress(ChildProcessError):  # reaped already (SIGCHLD ignored)
                os.waitpid(child, 0)
        try:
            tables, known_pids, denied, (dirs, links, vanished) = marshal.loads(b"".join(chunks))
        except (EOFError, ValueError, TypeError):  # the child died before it sent everything
            return False
        self._fds_by_pid = {pid: _ProcessFds(started, fds) for pid, (started, fds) in tables.items()}
        self._known_pids, self.denied_pids = set(known_pids), set(denied)
        self.stats.scans += 1
        self.stats.full_scans += 1
        self.stats.fd_dirs_read += dirs
        self.stats.links_read += links
        self.stats.vanished_pids += vanished
        self.stats.denied_pids = len(denied)
        self._last_full_scan, self._full_update = self._clock(), self._updates
        return True

    @property
    def processes(self) -> dict[int, ProcessInfo]:
        """pid → facts for every process that holds at least one socket (replaced, never mutated)."""
        return self._processes

    def update(self, inodes: Collection[int],
               still_present: Callable[[set[int]], Collection[int]] | None = None) -> None:
        """Bring the map up to date for the sockets present now (inode 0 excluded).

        Every inode present last time ended up owned or in ``unowned``, so
        only new ones can be unknown: the per-update set work is sized by
        what opened and closed, not by the whole table. ``still_present``
        (given the inodes no process was found for, returns those of them
        still in the socket table) tells a socket that closed from one no
        visible process holds.
        """
        present, gone, opened = self._changes(inodes)
        if self._prefetch is not None and self._take_prefetched():
            self._place_prefetched(present, still_present)
            return
        now = self._clock()
        self.unowned -= gone
        self.closed = frozenset()
        unknown = opened - self.pids_by_inode.keys() - self.unowned
        self._updates += 1
        if now - self._last_full_scan >= FULL_RESCAN_EVERY and self._spread(self._full_update):
            self._scan(present, full=True)
            self._find_closed(present - self.pids_by_inode.keys() - self.unowned, still_present)
        elif unknown:
            pids = self._list_pids()
            likely = (pids - self._known_pids) | self._processes.keys()
            self._scan(present, full=False, pids=likely & pids, all_pids=pids)
            # what the likely holders did not place, or a holder that exited left unplaced
            unplaced = present - self.pids_by_inode.keys() - self.unowned
            self._find_closed(unplaced, still_present)
            unplaced -= self.closed
            if unplaced:  # every other process, listed again: one born since the first listing counts too
                pids = self._list_pids()
                self._scan(present - self.closed, full=False, pids=pids - likely, all_pids=pids)
                unplaced -= self.pids_by_inode.keys()
            if unplaced and now - self._last_unknown_retry >= RETRY_UNKNOWN_AFTER and self._spread(self._retry_update):
                self._last_unknown_retry, self._retry_update = now, self._updates
                self._scan(present - self.closed, full=True)
        else:
            self._forget_closed(gone)
            return
        self.unowned |= present - self.pids_by_inode.keys() - self.closed

    def _changes(self, inodes: Collection[int]) -> tuple[set[int], set[int], set[int]]:
        """The inodes present now (0 left out), those gone and those opened since the last update;
        ``_present`` becomes the first. A table's column (numpy) is sorted and compared in C:
        sets are made only of what changed."""
        previous = self._present
        if not hasattr(inodes, "dtype"):
            present = inodes if isinstance(inodes, (set, frozenset)) else set(inodes)
            present.discard(0)
            gone, self._present, self._present_array = previous - present, present, None
            return present, gone, present - previous if len(present) != len(previous) - len(gone) else set()
        import numpy as np  # here: a one-shot run imports this module before it needs numpy

        from .columns import distinct
        before = self._present_array
        if before is None:
            before = distinct(np.fromiter(previous, np.uint64, len(previous)))
        now = self._present_array = distinct(inodes[inodes != 0].astype(np.uint64))
        gone = set(before[~np.isin(before, now, assume_unique=True)].tolist())
        opened = set(now[~np.isin(now, before, assume_unique=True)].tolist())
        self._present = (previous - gone) | opened if gone or opened else previous
        return self._present, gone, opened

    def _place_prefetched(self, present: set[int],
                          still_present: Callable[[set[int]], Collection[int]] | None) -> None:
        """The first update after `prefetch`: owners from the tables read, then, for the sockets still
        listed that no table placed (opened after their holder was read, as a busy server's accepts
        are), the likely holders read again, then every other process."""
        self._present = present
        self._scan(present, full=False, pids=(), all_pids=self._known_pids)  # reads nothing: places
        unplaced = present - self.pids_by_inode.keys()
        self._find_closed(unplaced, still_present)
        unplaced -= self.closed
        if unplaced:
            pids = self._list_pids()
            likely = (pids - self._known_pids) | self._processes.keys()
            for group in (likely & pids, pids - likely - self.denied_pids):  # denied stays denied
                self._scan(present - self.closed, full=False, pids=group, all_pids=pids)
                unplaced -= self.pids_by_inode.keys()
                if not unplaced:
                    break
        self.unowned |= present - self.pids_by_inode.keys() - self.closed

    def _find_closed(self, unplaced: set[int],
                     still_present: Callable[[set[int]], Collection[int]] | None) -> None:
        """Record as ``closed`` the unplaced inodes the socket table no longer lists."""
        if unplaced and still_present is not None:
            self.closed = frozenset(unplaced.difference(still_present(unplaced)))
            self._present = self._present - self.closed
            self._present_array = None

    def _spread(self, last: int) -> bool:
        """Whether SPREAD_UPDATES updates have been made since update ``last``."""
        return self._updates - last >= SPREAD_UPDATES

    def _forget_closed(self, closed: set[int]) -> None:
        """Drop closed sockets from a copy of the map: snapshots share the old one."""
        if not self.pids_by_inode.keys().isdisjoint(closed):
            kept = dict(self.pids_by_inode)
            for inode in closed:
                kept.pop(inode, None)
            self.pids_by_inode = kept

    def _scan(self, present: set[int], full: bool, pids: Iterable[int] | None = None,
              all_pids: set[int] | None = None) -> None:
        """Read the fd tables of ``pids`` (default: every process); with ``full`` re-read every link.

        Otherwise a descriptor is re-read unless it names a TCP socket that
        is still present: fd numbers are reused lowest first, so a number
        that held a file, a pipe, a UNIX socket or a TCP socket closed at
        any earlier refresh may name the new socket now. The links kept
        unread are the TCP sockets themselves, most of a busy server's fds.
        Processes not read this time keep the table read last time;
        ``all_pids`` (what /proc lists now) drops those that have gone.
        """
        self.stats.scans += 1
        if full:
            self.stats.full_scans += 1
            self._last_full_scan, self._full_update = self._clock(), self._updates
        if all_pids is None:
            all_pids = self._list_pids()
        partial_scan = pids is not None
        denied = set(self.denied_pids & all_pids) if partial_scan else set()
        for pid in all_pids if pids is None else pids:
            denied.discard(pid)
            if self._read_fds(pid, present, full, denied) is None:
                self._fds_by_pid.pop(pid, None)
        for gone in self._fds_by_pid.keys() - all_pids:
            del self._fds_by_pid[gone]
        self._known_pids = all_pids
        self.denied_pids = denied
        self.stats.denied_pids = len(denied)
        pids_by_inode = _holders_by_inode(self._fds_by_pid, present)
        # Only a holder's descriptor counts are shown: the others' sockets (UNIX, other namespaces'),
        # thousands on a busy host, are not asked their protocol.
        unlisted: dict[int, bool] = {}
        holder_pids = set()
        for pid, fds in self._fds_by_pid.items():
            if fds.tcp_fds:
                holder_pids.add(pid)
                for name, inode in fds.inode_by_fd.items():
                    if inode != NOT_A_SOCKET and inode not in present:
                        fds.tcp_fds += self._is_unlisted_tcp(pid, name, inode, unlisted)
        self._unlisted_tcp = unlisted
        self._refresh_processes(holder_pids)
        # a holder whose /proc entry is gone by now exited: its descriptors are closed, and a
        # process entry with no name, user or start time would be a half-null record
        exited = holder_pids - self._processes.keys()
        if exited:
            for inode, holders in list(pids_by_inode.items()):
                if not exited.isdisjoint(holders):
                    kept = tuple(pid for pid in holders if pid not in exited)
                    if kept:
                        pids_by_inode[inode] = kept
                    else:
                        del pids_by_inode[inode]
        self.pids_by_inode = pids_by_inode

    def _is_unlisted_tcp(self, pid: int, fd: str, inode: int, seen: dict[int, bool]) -> bool:
        """Whether a socket no TCP table lists is TCP all the same (bound only, or closed by the kernel
        under the descriptor): its protocol name, from the socket's xattr, once per inode."""
        known = seen.get(inode, self._unlisted_tcp.get(inode))
        if known is None:
            try:
                known = os.getxattr(f"{self._proc}/{pid}/fd/{fd}", "system.sockprotoname").startswith(b"TCP")
            except (OSError, AttributeError):  # closed meanwhile, or no xattr support
                known = False
        seen[inode] = known
        return known

    def _list_pids(self) -> set[int]:
        try:
            names = os.listdir(self._proc)
        except OSError:
            return set()
        return {int(name) for name in names if name.isdigit()}

    def _read_fds(self, pid: int, present: set[int], full: bool, denied: set[int]) -> _ProcessFds | None:
        """This pid's fd → inode table, re-reading only what may have changed."""
        self.stats.fd_dirs_read += 1
        try:  # links read relative to the directory: the kernel walks /proc/PID/fd once, not once a link
            fd_dir = os.open(f"{self._proc}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except PermissionError:
            denied.add(pid)
            return None
        except OSError:  # exited mid-scan, or a kernel thread
            self.stats.vanished_pids += 1
            return None
        try:
            return self._read_fd_dir(pid, fd_dir, present, full)
        finally:
            os.close(fd_dir)

    def _read_fd_dir(self, pid: int, fd_dir: int, present: set[int], full: bool) -> _ProcessFds | None:
        try:
            names = os.listdir(fd_dir)
        except OSError:  # exited between open and listing
            self.stats.vanished_pids += 1
            return None
        known = self._fds_by_pid.get(pid)
        started = self._start_ticks(pid)
        if started is None:
            self.stats.vanished_pids += 1
            return None
        if known is None or known.start_ticks != started:
            known = self._fds_by_pid[pid] = _ProcessFds(started)
        previous = known.inode_by_fd
        current: dict[str, int] = {}
        for name in names:
            inode = previous.get(name)
            if inode is None or full or inode not in present:
                inode = self._read_link(fd_dir, name)
                if inode is None:
                    continue
            current[name] = inode
        known.inode_by_fd = current
        return known

    def _start_ticks(self, pid: int) -> int | None:
        stat_text = read_text(f"{self._proc}/{pid}/stat")
        if stat_text is None:
            return None
        started = start_ticks(stat_text)
        return started

    def _read_link(self, fd_dir: int, name: str) -> int | None:
        self.stats.links_read += 1
        try:
            target = os.readlink(name, dir_fd=fd_dir)
        except OSError:  # closed between listdir and readlink, or the process exited
            return None
        if target.startswith(SOCKET_LINK_PREFIX):
            try:
                return int(target[len(SOCKET_LINK_PREFIX):-1])
            except ValueError:
                return NOT_A_SOCKET
        return NOT_A_SOCKET

    def _refresh_processes(self, owner_pids: set[int]) -> None:
        processes: dict[int, ProcessInfo] = {}
        for pid in owner_pids:
            fds = self._fds_by_pid.get(pid)
            info = read_process(pid, len(fds.inode_by_fd) if fds else None, self._processes.get(pid),
                                fds.tcp_fds if fds else None)
            if info is not None:
                processes[pid] = info
        self._processes = processes
