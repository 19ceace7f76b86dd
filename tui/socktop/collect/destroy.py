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
from typing import NamedTuple

from .columns import ADDRESSES, V4_MAPPED_PREFIX
from .netlink import NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3
SO_RCVBUFFORCE = 33  # CAP_NET_ADMIN: past net.core.rmem_max
INET_DIAG_INFO = 2  # the attribute that holds struct tcp_info
RECEIVE_BUFFER = 8 << 20  # asked for; without CAP_NET_ADMIN the kernel caps it at 2 * net.core.rmem_max
MAX_DRAIN = 50_000  # events read by one drain: a flood costs one refresh a bounded time, the rest waits
_CHUNK = 65536
_ATTRIBUTE = struct.Struct("=HH")
# nlmsghdr (len type flags) + inet_diag_msg: family state timer retrans | sport dport (big-endian, swapped
# with ntohs) | src dst (the IPv4 part, then the rest of an IPv6 address) | (if) cookie | expires rqueue
# wqueue uid inode
_DIAG_MSG = struct.Struct("=IHH8x" "BBBB" "HH" "4s12s4s12s" "4x" "Q" "IIIII")
# struct tcp_info (include/uapi/linux/tcp.h): tcpi_total_retrans at byte 100,
# tcpi_bytes_acked and tcpi_bytes_received at 120 and 128
_TCP_INFO_TAIL = struct.Struct("=100xI16xQQ")


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


class DestroyFeed:
    """A netlink socket joined to the TCP destroy groups, drained without blocking.

    Opens its own socket in the caller's network namespace, or takes ``sock``
    (a NETLINK_SOCK_DIAG socket opened elsewhere, e.g. by a thread inside
    another namespace: a netlink socket stays in the namespace it was made
    in). Raises OSError where the kernel refuses the groups.
    """

    __slots__ = ("_sock", "_buffer", "overruns", "received")

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
        self._buffer = bytearray(_CHUNK)
        self.overruns = 0  # times the kernel dropped events because the queue was full (ENOBUFS)
        self.received = 0  # events read in all

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self, limit: int = MAX_DRAIN) -> list[ClosedSocket]:
        """The sockets freed since the last drain, oldest first; at most ``limit``, never waiting."""
        closed: list[ClosedSocket] = []
        receive, buffer = self._sock.recv_into, self._buffer
        for _read in range(2 * limit):  # each read is an event or an overflow report: bounded either way
            if len(closed) >= limit:
                break
            try:
                size = receive(buffer, _CHUNK)
            except BlockingIOError:
                break
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1  # reported once per overflow; what was queued is still there
                continue
            self._parse(size, closed)
        self.received += len(closed)
        return closed

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> DestroyFeed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _parse(self, size: int, closed: list[ClosedSocket]) -> None:
        """Append the socket messages of one datagram (one message each, in practice)."""
        buffer, text = self._buffer, ADDRESSES.text
        offset = 0
        while offset + _DIAG_MSG.size <= size:
            (length, kind, _flags, family, _state, _timer, _retrans, sport, dport, src, src_rest, dst, dst_rest,
             cookie, *_rest) = _DIAG_MSG.unpack_from(buffer, offset)
            if length < _DIAG_MSG.size or offset + length > size:
                break
            if kind == SOCK_DIAG_BY_FAMILY:
                if family == socket.AF_INET:
                    src, dst = V4_MAPPED_PREFIX + src, V4_MAPPED_PREFIX + dst
                else:
                    src, dst = src + src_rest, dst + dst_rest
                acked, received, retransmits = _tcp_info(buffer, offset + _DIAG_MSG.size, offset + length)
                closed.append(ClosedSocket(
                    family, text(src), socket.ntohs(sport), text(dst), socket.ntohs(dport), cookie, acked, received,
                    retransmits))
            offset += (length + 3) & ~3


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    """Room for thousands of events between drains (about 700 bytes each): forced past
    net.core.rmem_max where allowed, else as much as it allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _tcp_info(buffer: bytearray, start: int, end: int) -> tuple[int, int, int]:
    """(bytes_acked, bytes_received, total_retrans) from the INET_DIAG_INFO attribute, or -1s."""
    while start + _ATTRIBUTE.size <= end:
        length, kind = _ATTRIBUTE.unpack_from(buffer, start)
        if length < _ATTRIBUTE.size:
            break
        if kind == INET_DIAG_INFO and length - _ATTRIBUTE.size >= _TCP_INFO_TAIL.size:
            retransmits, acked, received = _TCP_INFO_TAIL.unpack_from(buffer, start + _ATTRIBUTE.size)
            return acked, received, retransmits
        start += (length + 3) & ~3
    return -1, -1, -1


class FeedReader:
    """Drains a feed from a thread of its own, so that events wait in a bounded buffer of
    ours rather than in the socket's queue, which an ordinary user cannot make larger than
    2 * net.core.rmem_max (about 600 events on a stock system: a few seconds of a busy host).

    The thread wakes when events are queued, at most once per ``pause`` seconds; `take`
    returns what it gathered. Beyond ``capacity`` the oldest events are dropped and counted.
    """

    __slots__ = ("feed", "pause", "dropped", "_events", "_lock", "_stop", "_thread")

    def __init__(self, feed: DestroyFeed, pause: float = 0.05, capacity: int = 4 * MAX_DRAIN) -> None:
        self.feed = feed
        self.pause = pause
        self.dropped = 0
        self._events: deque[ClosedSocket] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="socktop-destroy-feed", daemon=True)
        self._thread.start()

    def take(self) -> list[ClosedSocket]:
        """Every event gathered since the last take, oldest first (and what the socket holds now)."""
        with self._lock:
            self._gather()
            events = list(self._events)
            self._events.clear()
        return events

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _gather(self) -> None:
        closed = self.feed.drain()
        events = self._events
        self.dropped += max(0, len(events) + len(closed) - (events.maxlen or 0))
        events.extend(closed)

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.feed], [], [], self.pause * 5)
            if readable:
                with self._lock:
                    self._gather()
                self._stop.wait(self.pause)
