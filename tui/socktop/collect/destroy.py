"""The sock_diag destroy feed: every TCP socket the kernel frees, as it goes.

A NETLINK_SOCK_DIAG socket that joins the multicast groups
SKNLGRP_INET_TCP_DESTROY and SKNLGRP_INET6_TCP_DESTROY (include/uapi/linux/
sock_diag.h) receives one inet_diag_msg, with the final tcp_info, each time
a full TCP socket of its network namespace is freed (sock_diag_broadcast_destroy,
net/core/sock_diag.c). No privilege is needed. The side that closes first
is freed as it enters TIME_WAIT (the timewait socket keeps its cookie); the
expiry of a TIME_WAIT sends nothing. Each event carries the 4-tuple and the
socket cookie, but inode 0 and no pid: the cookie is how `model.churn` ties
it to the process a dump saw holding it.

The feed never blocks: `drain` reads what has queued, at most a bounded
number of events, and counts the times the queue overflowed (ENOBUFS),
which means events were lost.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
from collections import deque
from itertools import repeat
from typing import NamedTuple

import numpy as np

from .columns import ADDRESS, ADDRESSES, v4_mapped
from .netlink import INET_DIAG_INFO, MAX_ATTRIBUTES, NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3
SO_RCVBUFFORCE = 33  # CAP_NET_ADMIN: past net.core.rmem_max
RECEIVE_BUFFER = 8 << 20  # asked for; without CAP_NET_ADMIN the kernel caps it at 2 * net.core.rmem_max
MAX_DRAIN = 50_000  # events read by one drain: a flood costs one refresh a bounded time, the rest waits
READER_CAPACITY = 200_000  # events a reader holds between takes (as EVENT rows: at most 14 MB)
QUEUED_EVENT_BYTES = 1280  # what one event takes of the socket's receive buffer (its skb's truesize, measured)
ABSORB_RATE = 10_000.0  # closes a second a reader lets fill at most a quarter of the queue between its drains
PAUSES = (0.05, 0.25)  # the reader's shortest and longest pause between drains, in seconds
BATCH_BYTES = 1 << 20  # raw datagrams parsed together: some 2,700 events of 380 bytes
DRAIN_BYTES = 256 << 10  # the same for a `drain` (a buffer made each time: other namespaces' feeds, each refresh)
_CHUNK = 65536  # room kept for the next datagram
_HEADER = struct.Struct("=I")  # nlmsg_len
_ATTRIBUTE = struct.Struct("=HH")
_ATTRIBUTE_DTYPE = np.dtype([("len", "=u2"), ("type", "=u2")])
# nlmsghdr + inet_diag_msg (include/uapi/linux/inet_diag.h): ports big-endian, addresses as 16 bytes
# (IPv4 in the first 4), the cookie as two u32 (low word first: sock_diag_save_cookie)
_HEAD = np.dtype([
    ("len", "=u4"), ("type", "=u2"), ("flags", "=u2"), ("seq", "=u4"), ("pid", "=u4"),
    ("family", "u1"), ("state", "u1"), ("timer", "u1"), ("retrans", "u1"), ("sport", ">u2"), ("dport", ">u2"),
    ("src", ADDRESS), ("dst", ADDRESS), ("if", "=u4"), ("cookie", "=u4", (2,)),
    ("expires", "=u4"), ("rqueue", "=u4"), ("wqueue", "=u4"), ("uid", "=u4"), ("inode", "=u4"),
])
# struct tcp_info (include/uapi/linux/tcp.h): tcpi_total_retrans at byte 100,
# tcpi_bytes_acked and tcpi_bytes_received at 120 and 128
_TCP_INFO = np.dtype({"names": ["retransmits", "acked", "received"], "formats": ["=u4", "=u8", "=u8"],
                      "offsets": [100, 120, 128], "itemsize": 136})
#: One closed socket as the reader keeps it until `take` (69 bytes; a `ClosedSocket` costs about 300)
EVENT = np.dtype([("family", "u1"), ("local", ADDRESS), ("local_port", "=u2"), ("remote", ADDRESS),
                  ("remote_port", "=u2"), ("cookie", "=u8"), ("acked", "=i8"), ("received", "=i8"),
                  ("retransmits", "=i8")])


class ClosedSocket(NamedTuple):
    """One TCP socket the kernel freed. Bytes and retransmits are -1 when the event had no tcp_info."""

    family: int
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    cookie: int
    bytes_acked: int  # tcp_info: bytes the peer acknowledged (SYN and FIN count one each)
    bytes_received: int  # tcp_info: bytes received in order
    retransmits: int  # tcp_info: segments retransmitted over the connection's life

    @property
    def connection(self) -> tuple[str, int, str, int]:
        return (self.local_addr, self.local_port, self.remote_addr, self.remote_port)


class RawEvents:
    """Destroy datagrams as received, back to back in one buffer, parsed together by `parse`.

    Receiving costs a system call per event (netlink hands out one datagram
    per recvmsg); parsing them one by one in Python cost three times that.
    Kept raw, a batch is parsed field by field for all its events at once.
    """

    __slots__ = ("buffer", "view", "starts", "used")

    def __init__(self, size: int = BATCH_BYTES) -> None:
        self.buffer = bytearray(size)
        self.view = memoryview(self.buffer)
        self.starts: list[int] = []  # where each datagram begins, 4-byte aligned
        self.used = 0

    @property
    def full(self) -> bool:
        """No room left for a datagram of the largest size read."""
        return len(self.buffer) - self.used < _CHUNK

    def __len__(self) -> int:
        return len(self.starts)

    def parse(self) -> np.ndarray:
        """The socket messages held, oldest first, as `EVENT` rows (`closed_sockets` makes them
        `ClosedSocket`s); the batch is emptied."""
        if not self.starts:
            return np.zeros(0, EVENT)
        starts = np.array(self.starts, np.int64)
        ends = np.append(starts[1:], self.used)  # each datagram's aligned end
        words = np.frombuffer(self.buffer, np.uint32, count=self.used // 4)
        lengths = words[starts // 4].astype(np.int64)
        if not np.array_equal((lengths + 3) & ~3, ends - starts):  # a datagram of several messages: walk them
            starts, ends = _walk(self.buffer, starts, ends)
            lengths = words[starts // 4].astype(np.int64)
        kinds = words[starts // 4 + 1] & 0xFFFF
        keep = (kinds == SOCK_DIAG_BY_FAMILY) & (lengths >= _HEAD.itemsize) & (starts + lengths <= ends)
        starts, lengths = starts[keep], lengths[keep]
        octets = np.frombuffer(self.buffer, np.uint8, count=self.used)
        heads = octets[starts[:, None] + np.arange(_HEAD.itemsize)].view(_HEAD).reshape(-1)
        events = np.zeros(len(starts), EVENT)
        events["family"], events["local_port"], events["remote_port"] = heads["family"], heads["sport"], heads["dport"]
        events["local"], events["remote"] = heads["src"], heads["dst"]
        v4 = heads["family"] == socket.AF_INET
        if v4.any():
            for side, raw in (("local", heads["src"]), ("remote", heads["dst"])):
                events[side][v4] = v4_mapped(raw[v4].view(np.uint32).reshape(-1, 4)[:, 0])
        events["cookie"] = heads["cookie"][:, 0].astype(np.uint64) | heads["cookie"][:, 1].astype(np.uint64) << 32
        _tcp_info(octets, starts + _HEAD.itemsize, starts + lengths, events)
        self.starts, self.used = [], 0
        return events


def closed_sockets(events: np.ndarray) -> list[ClosedSocket]:
    """`EVENT` rows as `ClosedSocket`s, made in C (tuple.__new__ is what a NamedTuple's constructor calls)."""
    fields = (events["family"].tolist(), ADDRESSES.texts(events["local"].tolist()), events["local_port"].tolist(),
              ADDRESSES.texts(events["remote"].tolist()), events["remote_port"].tolist(), events["cookie"].tolist(),
              events["acked"].tolist(), events["received"].tolist(), events["retransmits"].tolist())
    return list(map(tuple.__new__, repeat(ClosedSocket), zip(*fields)))


def _walk(buffer: bytearray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every message of the datagrams at ``starts``, and its datagram's end, found one by one."""
    found: list[tuple[int, int]] = []
    for offset, end in zip(starts.tolist(), ends.tolist()):
        while offset + _HEADER.size <= end:
            length = _HEADER.unpack_from(buffer, offset)[0]
            if length < _HEADER.size:
                break
            found.append((offset, end))
            offset += (length + 3) & ~3
    pairs = np.array(found, np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def _tcp_info(octets: np.ndarray, start: np.ndarray, end: np.ndarray, events: np.ndarray) -> None:
    """Fill acked, received and retransmits from each message's INET_DIAG_INFO attribute (-1 where it
    has none): the attribute walk taken one step at a time for every message at once."""
    for name in _TCP_INFO.names:
        events[name] = -1
    rows, position = np.arange(len(start)), start.copy()
    for _step in range(MAX_ATTRIBUTES):
        room = position + _ATTRIBUTE.size <= end[rows]
        rows, position = rows[room], position[room]
        if not len(rows):
            break
        header = octets[position[:, None] + np.arange(_ATTRIBUTE.size)].view(_ATTRIBUTE_DTYPE).reshape(-1)
        length = header["len"].astype(np.int64)
        hit = (header["type"] == INET_DIAG_INFO) & (length - _ATTRIBUTE.size >= _TCP_INFO.itemsize)
        if hit.any():
            info = octets[(position[hit] + _ATTRIBUTE.size)[:, None] + np.arange(_TCP_INFO.itemsize)]
            values = info.view(_TCP_INFO).reshape(-1)
            for name in _TCP_INFO.names:
                events[name][rows[hit]] = values[name]
        more = ~hit & (length >= _ATTRIBUTE.size)
        rows, position = rows[more], position[more] + ((length[more] + 3) & ~3)


class DestroyFeed:
    """A netlink socket joined to the TCP destroy groups, drained without blocking.

    Opens its own socket in the caller's network namespace, or takes ``sock``
    (a NETLINK_SOCK_DIAG socket opened elsewhere, e.g. by a thread inside
    another namespace: a netlink socket stays in the namespace it was made
    in). Raises OSError where the kernel refuses the groups.
    """

    __slots__ = ("_sock", "overruns", "received")

    def __init__(self, sock: socket.socket | None = None, receive_buffer: int = RECEIVE_BUFFER) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        try:
            sock.setblocking(False)
            if sock.getsockname()[0] == 0:
                sock.bind((0, 0))  # the kernel delivers multicast to bound sockets only: let it pick the port id
            _set_receive_buffer(sock, receive_buffer)
            for group in (SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY):
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.overruns = 0  # times the kernel dropped events because the queue was full (ENOBUFS)
        self.received = 0  # datagrams read in all

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def queue_events(self) -> int:
        """About how many events the socket's queue holds before the kernel drops some (its receive
        buffer, as granted, over what one event takes of it)."""
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // QUEUED_EVENT_BYTES

    def drain(self, limit: int = MAX_DRAIN) -> list[ClosedSocket]:
        """The sockets freed since the last drain, oldest first; at most about ``limit``, never waiting."""
        closed: list[ClosedSocket] = []
        if not select.select([self], [], [], 0)[0]:  # an idle namespace's feed, drained each refresh: no buffer
            return closed
        raw = RawEvents(DRAIN_BYTES)
        while len(closed) < limit:
            emptied = self.receive(raw, limit - len(closed))
            parsed = closed_sockets(raw.parse())
            closed += parsed
            if emptied or not parsed:
                return closed
        return closed

    def receive(self, raw: RawEvents, limit: int = MAX_DRAIN) -> bool:
        """Move queued datagrams into ``raw``, unparsed, until it is full or holds ``limit`` more;
        True when the queue was emptied."""
        receive, view, starts = self._sock.recv_into, raw.view, raw.starts
        goal = len(starts) + limit
        for _read in range(2 * limit):  # each read is an event or an overflow report: bounded either way
            if len(starts) >= goal or raw.full:
                break
            used = raw.used
            try:
                size = receive(view[used:], _CHUNK)
            except BlockingIOError:
                return True
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1  # reported once per overflow; what was queued is still there
                continue
            starts.append(used)
            raw.used = used + ((size + 3) & ~3)
            self.received += 1
        return False

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> DestroyFeed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    """Room for thousands of events between drains (QUEUED_EVENT_BYTES each): forced past
    net.core.rmem_max where allowed, else as much as it allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class FeedReader:
    """Drains a feed from a thread of its own, so that events wait in a bounded buffer of
    ours rather than in the socket's queue, which an ordinary user cannot make larger than
    2 * net.core.rmem_max (about 330 events on a stock system: a fraction of a second of a busy host).

    The thread wakes when events are queued, at most once per ``pause`` seconds (by default
    the time a quarter of the socket's queue takes to fill at ABSORB_RATE, within PAUSES: a
    wake-up costs about 100 µs), and only moves them out of the socket (`RawEvents`); they
    are parsed a batch at a time, when one fills or at `take`, and kept as compact `EVENT`
    rows, so that ``capacity`` covers a long interval (the exporter's 15 s of a busy host:
    up to 55,000 closes in the incident mix). Beyond it the oldest are dropped and counted.
    """

    __slots__ = ("feed", "pause", "capacity", "dropped", "_raw", "_batches", "_held", "_lock", "_stop", "_thread")

    def __init__(self, feed: DestroyFeed, pause: float | None = None, capacity: int = READER_CAPACITY) -> None:
        self.feed = feed
        if pause is None:
            pause = min(max(feed.queue_events / 4 / ABSORB_RATE, PAUSES[0]), PAUSES[1])
        self.pause = pause
        self.capacity = capacity
        self.dropped = 0
        self._raw = RawEvents()
        self._batches: deque[np.ndarray] = deque()  # parsed EVENT rows, oldest first
        self._held = 0  # rows in _batches
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="socktop-destroy-feed", daemon=True)
        self._thread.start()

    def take(self) -> list[ClosedSocket]:
        """Every event gathered since the last take, oldest first (and what the socket holds now)."""
        with self._lock:
            self._gather()
            self._keep(self._raw.parse())
            batches = list(self._batches)
            self._batches.clear()
            self._held = 0
        return closed_sockets(np.concatenate(batches)) if batches else []

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, wait: bool = True) -> None:
        """End the thread (``wait``: and wait for it, at most one select timeout)."""
        self._stop.set()
        if wait:
            self._thread.join()

    def _gather(self) -> None:
        """Empty the socket's queue into the raw batch, parsing the batch each time it fills
        (at most ``capacity`` datagrams a call: a flood does not hold the lock for good)."""
        moved = 0
        while moved < self.capacity:
            before = len(self._raw)
            emptied = self.feed.receive(self._raw, self.capacity - moved)
            moved += len(self._raw) - before
            if emptied or not self._raw.full:
                break
            self._keep(self._raw.parse())

    def _keep(self, events: np.ndarray) -> None:
        """Hold parsed rows, dropping (and counting) the oldest beyond ``capacity``."""
        if not len(events):
            return
        self._batches.append(events)
        self._held += len(events)
        while self._held > self.capacity:
            oldest, excess = self._batches[0], self._held - self.capacity
            if len(oldest) <= excess:
                self._batches.popleft()
                excess = len(oldest)
            else:
                self._batches[0] = oldest[excess:]
            self._held -= excess
            self.dropped += excess

    def _run(self) -> None:
        """Until stopped, or until the feed fails (`take` then raises the error)."""
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([self.feed], [], [], self.pause * 5)
                if readable:
                    with self._lock:
                        self._gather()
                    self._stop.wait(self.pause)
        except (OSError, ValueError):  # ValueError: the feed was closed under us
            return
