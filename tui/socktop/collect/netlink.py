"""Linux NETLINK_SOCK_DIAG (inet_diag): the socket table straight from the kernel, as columns.

One dump of both address families (per family where the kernel refuses
that), all states, read with numpy: the message offsets are found in one
vectorised pass (and checked against the chain of lengths), then every
field is gathered for all messages at once, with the ports' byte swap
done by a big-endian dtype. CLOSE_WAIT sockets are then asked for their
tcp_info (how long ago the peer last acknowledged). No Python object is made
per socket; `SocketTable` builds records only for the rows shown. This
needs no root (every socket of the network namespace is listed, with its
uid and inode).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import sys

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .columns import ADDRESS, SocketColumns, SocketTable, connection_keys, v4_mapped
from .records import CANONICAL_STATE, BackendUnavailable, CollectError, TcpState

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
TCPDIAG_GETSOCK = 18  # the older request: both address families in one walk of the kernel's tables
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR = 2
NLMSG_DONE = 3
ALL_STATES = 0xFFFFFFFF
RECV_BUFFER = 65536
MAX_DUMP_ATTEMPTS = 3
# Route attributes after an inet_diag_msg (include/uapi/linux/inet_diag.h)
INET_DIAG_INFO = 2  # struct tcp_info, sent when the request's ext asks for it
INET_DIAG_CGROUP_ID = 21  # u64, on full sockets
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
TCPI_LAST_ACK_RECV = 56  # offset of tcpi_last_ack_recv (u32, ms) in struct tcp_info (include/uapi/linux/tcp.h)
MAX_ATTRIBUTES = 32  # per message: bounds the attribute walk on a corrupt buffer
# CLOSE_WAIT sockets are asked for one by one while there are at most this many, or a quarter of
# the table (a lookup costs about as much as a dump's walk over 4 sockets: 5.5 µs against 1.35 µs
# a socket, measured at 20k); beyond, one dump of that state
EXACT_LOOKUPS_MIN = 2048
LOOKUP_COST = 4  # in sockets walked
LOOKUP_BATCH = 32  # requests per send: their answers (with tcp_info) fit the default receive buffer

_REQUEST = struct.Struct("=IHHII" "BBBxI" "HH16s16sI8s")  # inet_diag_req_v2
_COMPAT_REQUEST = struct.Struct("=IHHII" "BBBB" "HH16s16sI8s" "II")  # inet_diag_req
_HEADER = struct.Struct("=IH")  # nlmsg_len, nlmsg_type
_ERRNO = struct.Struct("=i")
HEADER_SIZE = 16  # struct nlmsghdr
_DONE = struct.Struct("=IHHI")  # the start of NLMSG_DONE's nlmsghdr: len type flags seq
DONE_SIZE = HEADER_SIZE + 4  # nlmsghdr and the dump's final errno
MIN_MESSAGE = HEADER_SIZE + 72  # + struct inet_diag_msg
_NO_COOKIE = b"\xff" * 8  # INET_DIAG_NOCOOKIE

_CANONICAL = np.array([int(CANONICAL_STATE.get(code, 0)) for code in range(256)], np.uint8)
_KNOWN_STATE = np.array([code in CANONICAL_STATE for code in range(256)])
_TIMER_CODE = np.array([code & 7 if code & 7 <= 4 else 0 for code in range(256)], np.uint8)
# The fixed part of every socket message (nlmsghdr, then inet_diag_msg), offsets from the message's start;
# the addresses also as their first word, which is the whole address of an IPv4 socket
_MESSAGE = np.dtype({
    "names": ["family", "state", "timer", "retrans", "sport", "dport", "src4", "dst4",
              "cookie_low", "cookie_high", "expires", "rqueue", "wqueue", "uid", "inode"],
    "formats": ["u1", "u1", "u1", "u1", ">u2", ">u2", "=u4", "=u4", "=u4", "=u4", "=u4", "=u4", "=u4", "=u4", "=u4"],
    "offsets": [16, 17, 18, 19, 20, 22, 24, 40, 60, 64, 68, 72, 76, 80, 84],
    "itemsize": MIN_MESSAGE,
})
_MESSAGE_WORDS = MIN_MESSAGE // 4
_SRC_WORD, _DST_WORD = 6, 10  # the addresses' first words, counted from the message's start
_MAPPED_WORD = np.frombuffer(b"\x00\x00\xff\xff", np.uint32)[0]  # word 2 of an IPv4-mapped address
_ATTRIBUTE = struct.Struct("=HH")  # struct nlattr: nla_len, nla_type


def build_request(family: int, seq: int, states: int = ALL_STATES, ext: int = 0) -> bytes:
    """A dump request for the TCP sockets in ``states`` (a bitmask, bit N for kernel
    state N) of one family, or of both with AF_UNSPEC; ``ext`` asks for attributes
    (bit N-1 for attribute N, e.g. INET_DIAG_INFO).

    Each dump walks all of the kernel's socket hash tables (those of other
    network namespaces included), so one dump of both families costs about
    half of two: some 11 ms at 50k sockets here.
    """
    if family == socket.AF_UNSPEC:
        return _COMPAT_REQUEST.pack(
            _COMPAT_REQUEST.size, TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0,
            family, 0, 0, ext, 0, 0, b"", b"", 0, _NO_COOKIE, states, 0,
        )
    return _REQUEST.pack(
        _REQUEST.size, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0,
        family, socket.IPPROTO_TCP, ext, states,
        0, 0, b"", b"", 0, _NO_COOKIE,
    )


_EXACT_REQUEST = np.dtype([
    ("len", "=u4"), ("type", "=u2"), ("flags", "=u2"), ("seq", "=u4"), ("pid", "=u4"),
    ("family", "u1"), ("protocol", "u1"), ("ext", "u1"), ("pad", "u1"), ("states", "=u4"),
    ("sport", ">u2"), ("dport", ">u2"), ("src", "V16"), ("dst", "V16"), ("if", "=u4"), ("cookie", "=u4", (2,)),
])  # inet_diag_req_v2 without NLM_F_DUMP, one per socket
assert _EXACT_REQUEST.itemsize == _REQUEST.size


def exact_requests(columns: SocketColumns, rows: np.ndarray, ext: int) -> np.ndarray:
    """One lookup request per row (its family, 4-tuple and cookie), built column by column.

    IPv4 sockets name their addresses in the first 4 of the 16 bytes; the
    columns keep them IPv4-mapped, in the last 4.
    """
    requests = np.zeros(len(rows), _EXACT_REQUEST)
    requests["len"], requests["type"], requests["flags"] = _EXACT_REQUEST.itemsize, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST
    requests["seq"] = np.arange(1, len(rows) + 1)
    family = columns.family[rows]
    requests["family"], requests["protocol"], requests["ext"] = family, socket.IPPROTO_TCP, ext
    requests["states"] = ALL_STATES
    requests["sport"], requests["dport"] = columns.local_port[rows], columns.remote_port[rows]
    v4 = family == socket.AF_INET
    for name, column in (("src", columns.local_addr), ("dst", columns.remote_addr)):
        raw = column[rows].view(np.uint8).reshape(-1, 16).copy()
        raw[v4, :4] = raw[v4, 12:]
        raw[v4, 4:] = 0
        requests[name] = raw.view(ADDRESS).reshape(-1)
    cookies = columns.cookie[rows]
    requests["cookie"][:, 0], requests["cookie"][:, 1] = cookies & 0xFFFFFFFF, cookies >> 32
    return requests


class Dump:
    """What one dump (of one family, or of both with AF_UNSPEC) has gathered so far, across its chunks.

    The chunks received until one may end the dump (`may_end`) are parsed
    together and kept with where their socket messages start; the columns
    are gathered once, over all of them joined: numpy's cost per call is
    then paid per dump, not per 32 KiB chunk.
    """

    __slots__ = ("family", "message_type", "chunks", "starts", "sizes", "received", "interrupted")

    def __init__(self, family: int) -> None:
        self.family = family
        self.message_type = TCPDIAG_GETSOCK if family == socket.AF_UNSPEC else SOCK_DIAG_BY_FAMILY
        self.chunks: list[bytes] = []
        self.starts: list[np.ndarray] = []  # socket messages, as offsets into the chunks joined
        self.sizes: list[np.ndarray] = []
        self.received = 0
        self.interrupted = False

    def columns(self) -> SocketColumns:
        if not self.chunks:
            return SocketColumns.empty()
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        return _columns(data, len(data), np.concatenate(self.starts), np.concatenate(self.sizes))


def parse_dump_chunk(data: bytes | bytearray | memoryview, length: int, dump: Dump, copy: bool = True) -> bool:
    """Parse the first ``length`` bytes of a received chunk into ``dump``; True once NLMSG_DONE is seen.

    Message sizes vary (attributes differ by state, privilege and kernel),
    so messages are found by their ``nlmsg_len``. Raises CollectError on a
    truncated or corrupt buffer and OSError when the kernel answers
    NLMSG_ERROR. The bytes are kept, copied unless given as ``bytes`` (a
    receive buffer can be reused) or ``copy`` is False (the caller leaves
    them as they are until it has taken the dump's columns).
    """
    starts = _message_starts(data, length)
    words = np.frombuffer(data, np.uint32, count=length // 4)
    heads = starts // 4
    sizes, kinds = words[heads].astype(np.int64), words[heads + 1]
    types = kinds & 0xFFFF
    is_socket = (types == dump.message_type) & (sizes >= MIN_MESSAGE)
    codes = np.zeros(len(starts), np.uint8)
    codes[is_socket] = np.frombuffer(data, np.uint8, count=length)[starts[is_socket] + HEADER_SIZE + 1]
    bad = ~is_socket | ~_KNOWN_STATE[codes]
    good = int(bad.argmax()) if bad.any() else len(starts)
    if (kinds[:good + 1] >> 16 & NLM_F_DUMP_INTR).any():
        dump.interrupted = True
    if good:
        whole = len(data) == length and (isinstance(data, bytes) or not copy)
        dump.chunks.append(data if whole else bytes(memoryview(data)[:length]))
        dump.starts.append(starts[:good] + dump.received)
        dump.sizes.append(sizes[:good])
        dump.received += length
    if good == len(starts):
        return False
    offset = int(starts[good])
    if not is_socket[good]:
        return _control_message(data, offset, int(sizes[good]), int(types[good]), dump.message_type)
    raise CollectError(f"sock_diag: unknown TCP state {codes[good]} at offset {offset}")


def may_end(chunk: bytes, seq: int, message_type: int) -> bool:
    """Whether a received chunk may end the dump, checked without parsing it: it starts with a
    control message (an error), or its last 20 bytes read as the NLMSG_DONE of request ``seq``.

    The kernel puts NLMSG_DONE after the last socket, in the last chunk
    (net/netlink/af_netlink.c, netlink_dump). Chunks are parsed together
    when one may end the dump: numpy's cost per call is then paid per
    dump, not per 32 KiB; a chunk that only looked like the end is parsed
    and the dump read on.
    """
    if len(chunk) >= HEADER_SIZE and _HEADER.unpack_from(chunk)[1] != message_type:
        return True
    if len(chunk) < DONE_SIZE:
        return True
    length, kind, _flags, done_seq = _DONE.unpack_from(chunk, len(chunk) - DONE_SIZE)
    return length == DONE_SIZE and kind == NLMSG_DONE and done_seq == seq


def _message_starts(data: bytes | bytearray | memoryview, length: int) -> np.ndarray:
    """Byte offsets of the messages of a chunk, up to and including the first control message.

    Every message of a dump carries the request's sequence number and
    port id, so the words that repeat the first message's pair mark the
    candidates; they are the messages when each one's aligned length leads
    to the next and the last ends the chunk. Anything else (a corrupt
    length, bytes that happen to look like a header, an error) is walked
    one message at a time, which says what is wrong.
    """
    if length >= HEADER_SIZE and not length % 4:
        words = np.frombuffer(data, np.uint32, count=length // 4)
        candidates = np.flatnonzero(words[2:-1] == words[2])  # the sequence number, then the port id
        candidates = candidates[words[candidates + 3] == words[3]]
        starts = candidates.astype(np.int64) * 4
        sizes = words[candidates].astype(np.int64)
        steps = (sizes + 3) & ~3
        if (sizes.min() >= HEADER_SIZE and starts[-1] + sizes[-1] <= length <= starts[-1] + steps[-1]
                and np.array_equal(starts[1:], starts[:-1] + steps[:-1])):
            return starts
    return _walk(data, length)


def _walk(data: bytes | bytearray | memoryview, length: int) -> np.ndarray:
    """`_message_starts` one message at a time, raising CollectError where the chain breaks."""
    socket_types = (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK)
    starts: list[int] = []
    offset = 0
    while offset < length:
        if length - offset < HEADER_SIZE:
            raise CollectError(f"sock_diag: {length - offset} stray bytes at offset {offset}")
        msg_len, msg_type = _HEADER.unpack_from(data, offset)
        if msg_len < HEADER_SIZE or offset + msg_len > length:
            raise CollectError(f"sock_diag: message at offset {offset} claims {msg_len} bytes, {length - offset} left")
        starts.append(offset)
        if msg_type not in socket_types:
            break
        offset += (msg_len + 3) & ~3
    return np.array(starts, np.int64)


def _columns(data: bytes | bytearray | memoryview, length: int, starts: np.ndarray, sizes: np.ndarray) -> SocketColumns:
    """Every field of the socket messages at ``starts``: the fixed part of each message is
    gathered as one row (a strided view of the words, rows starting at every word), then
    read field by field through a structured dtype."""
    words = np.frombuffer(data, np.uint32, count=length // 4)
    windows = as_strided(words, shape=(max(len(words) - _MESSAGE_WORDS + 1, 0), _MESSAGE_WORDS), strides=(4, 4),
                         writeable=False)
    block = windows[starts // 4]
    fields = block.view(_MESSAGE).reshape(-1)
    family, timer_code = fields["family"], fields["timer"]
    v4 = family == socket.AF_INET
    size = len(starts)
    columns = SocketColumns(
        family=family.copy(), state=_CANONICAL[fields["state"]],
        local_addr=_addresses(block, _SRC_WORD, v4), local_port=fields["sport"].astype(np.uint16),
        remote_addr=_addresses(block, _DST_WORD, v4), remote_port=fields["dport"].astype(np.uint16),
        recv_q=fields["rqueue"].copy(), send_q=fields["wqueue"].copy(), timer=_TIMER_CODE[timer_code],
        timer_ms=np.where(timer_code != 0, fields["expires"], np.uint32(0)),  # 0 when there is no timer
        retransmits=fields["retrans"].copy(), uid=fields["uid"].astype(np.int64), inode=fields["inode"].astype(np.uint64),
        cookie=fields["cookie_low"] | fields["cookie_high"].astype(np.uint64) << np.uint64(32),
        lastack_ms=np.full(size, -1, np.int64), cgroup_id=np.zeros(size, np.uint64), netns=np.zeros(size, np.uint64),
    )
    if (sizes > MIN_MESSAGE).any():
        _read_attributes(data, words, starts, sizes, columns)
    return columns


def _addresses(block: np.ndarray, first: int, v4: np.ndarray) -> np.ndarray:
    """The 16-byte addresses in words ``first`` to ``first + 3`` of each row; IPv4 ones (their
    first word) made IPv4-mapped, as the columns keep them."""
    out = np.empty((len(block), 4), np.uint32)
    out[:, 0] = np.where(v4, np.uint32(0), block[:, first])
    out[:, 1] = np.where(v4, np.uint32(0), block[:, first + 1])
    out[:, 2] = np.where(v4, _MAPPED_WORD, block[:, first + 2])
    out[:, 3] = np.where(v4, block[:, first], block[:, first + 3])
    return out.view(ADDRESS).reshape(-1)


def _native_u64(words: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The native u64 at each 4-byte-aligned word index (attributes are only 4-byte aligned)."""
    low, high = (words[at], words[at + 1]) if sys.byteorder == "little" else (words[at + 1], words[at])
    return low | high.astype(np.uint64) << 32


def _read_attributes(data: bytes | bytearray | memoryview, words: np.ndarray, starts: np.ndarray,
                     sizes: np.ndarray, columns: SocketColumns) -> None:
    """The cgroup id and, when the dump asked for tcp_info, tcpi_last_ack_recv.

    Messages of one size nearly always carry the same attributes: the
    first one's chain is walked here, and every other message of that size
    whose attribute headers sit at the same places with the same lengths
    and types (so its chain is the same) is read at those places; the rest
    take `_walk_attributes`.
    """
    rows = np.flatnonzero(sizes > MIN_MESSAGE)
    row_sizes = sizes[rows]
    sizes_present = np.unique(row_sizes, return_counts=True)[0].tolist()
    unlike: list[np.ndarray] = []
    for size in sizes_present:
        group = rows[row_sizes == size] if len(sizes_present) > 1 else rows
        first = int(starts[group[0]])
        chain = _attribute_chain(data, first, size)
        at = starts[group] // 4
        alike = np.ones(len(group), bool)
        for position, _kind, _length in chain:
            alike &= words[at + position // 4] == words[(first + position) // 4]
        if not alike.all():
            unlike.append(group[~alike])
            group, at = group[alike], at[alike]
        for position, kind, attr_len in chain:
            if kind == INET_DIAG_CGROUP_ID and attr_len >= 12:
                columns.cgroup_id[group] = _native_u64(words, at + (position + 4) // 4)
            elif kind == INET_DIAG_INFO and attr_len >= 4 + TCPI_LAST_ACK_RECV + 4:
                columns.lastack_ms[group] = words[at + (position + 4 + TCPI_LAST_ACK_RECV) // 4]
    if unlike:
        _walk_attributes(words, starts, sizes, np.concatenate(unlike), columns)


def _attribute_chain(data: bytes | bytearray | memoryview, start: int, size: int) -> list[tuple[int, int, int]]:
    """(offset from the message's start, type, length) of each attribute header the walk of one
    message reads; the last one has length 0 when it is not whole (the walk stops there)."""
    chain = []
    position = MIN_MESSAGE
    for _step in range(MAX_ATTRIBUTES):
        if position + 4 > size:
            break
        attr_len, kind = _ATTRIBUTE.unpack_from(data, start + position)
        if attr_len < 4 or position + attr_len > size:
            chain.append((position, kind & NLA_TYPE_MASK, 0))
            break
        chain.append((position, kind & NLA_TYPE_MASK, attr_len))
        position += (attr_len + 3) & ~3
    return chain


def _walk_attributes(words: np.ndarray, starts: np.ndarray, sizes: np.ndarray, rows: np.ndarray,
                     columns: SocketColumns) -> None:
    """`_read_attributes` for the messages ``rows``, whatever their attributes: one step of the
    attribute walk for all of them at once (attributes are 4-byte aligned)."""
    position, end = starts[rows] + MIN_MESSAGE, starts[rows] + sizes[rows]
    halves = words.view(np.uint16)
    for _step in range(MAX_ATTRIBUTES):
        room = position + 4 <= end
        if not room.all():
            rows, position, end = rows[room], position[room], end[room]
        attr_len = halves[position // 2].astype(np.int64)
        whole = (attr_len >= 4) & (position + attr_len <= end)
        if not whole.all():
            rows, position, end, attr_len = rows[whole], position[whole], end[whole], attr_len[whole]
        if not len(rows):
            break
        kind = halves[position // 2 + 1] & NLA_TYPE_MASK
        cgroup = (kind == INET_DIAG_CGROUP_ID) & (attr_len >= 12)
        if cgroup.any():
            columns.cgroup_id[rows[cgroup]] = _native_u64(words, (position[cgroup] + 4) // 4)
        info = (kind == INET_DIAG_INFO) & (attr_len >= 4 + TCPI_LAST_ACK_RECV + 4)
        if info.any():
            columns.lastack_ms[rows[info]] = words[(position[info] + 4 + TCPI_LAST_ACK_RECV) // 4]
        position = position + ((attr_len + 3) & ~3)


def _control_message(data: bytes | bytearray | memoryview, offset: int, msg_len: int, msg_type: int,
                     socket_message: int) -> bool:
    """Handle a message that is not a socket: True for NLMSG_DONE, raise otherwise."""
    if msg_type == NLMSG_DONE:
        return True
    if msg_type == NLMSG_ERROR:
        code = _ERRNO.unpack_from(data, offset + HEADER_SIZE)[0] if msg_len >= 20 else -errno.EIO
        raise OSError(-code, f"sock_diag refused the dump: {os.strerror(-code)}")
    if msg_type != socket_message:
        raise CollectError(f"sock_diag: unexpected message type {msg_type} at offset {offset}")
    raise CollectError(f"sock_diag: message at offset {offset} too short ({msg_len} bytes)")


def drop_duplicates(columns: SocketColumns) -> tuple[SocketColumns, int]:
    """Keep one row per socket, the later one in the earlier one's place; return it and how many went.

    A dump is not atomic: a connection that turns from ESTABLISHED into
    TIME_WAIT between two chunks can be listed twice. The kernel keeps a
    socket's cookie into TIME_WAIT, so a cookie seen twice is one socket;
    rows without a cookie (/proc has none) are matched by connected
    4-tuple. Listeners are never merged: SO_REUSEPORT sockets share a
    4-tuple legitimately.
    """
    size = len(columns)
    source = np.arange(size)
    keep = np.ones(size, bool)
    cookies = columns.cookie
    with_cookie = np.flatnonzero(cookies)
    _merge_repeats(with_cookie, cookies[with_cookie], source, keep)
    unnamed = np.flatnonzero((cookies == 0) & (columns.remote_port != 0))
    if len(unnamed) > 1:
        _merge_repeats(unnamed, connection_keys(columns, unnamed), source, keep)
    if keep.all():
        return columns, 0
    rows = source[keep]
    return columns.take(rows), size - len(rows)


def _merge_repeats(rows: np.ndarray, keys: np.ndarray, source: np.ndarray, keep: np.ndarray) -> None:
    """Where a key repeats among ``rows``: the first row takes the last one's values, the others go."""
    if len(rows) < 2:
        return
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    repeat = ordered[1:] == ordered[:-1]
    if not repeat.any():
        return
    first = np.flatnonzero(np.concatenate([[True], ~repeat]))
    last = np.concatenate([first[1:] - 1, [len(order) - 1]])
    repeated = np.flatnonzero(last > first)
    source[rows[order[first[repeated]]]] = rows[order[last[repeated]]]
    later = np.ones(len(order), bool)
    later[first] = False
    keep[rows[order[later]]] = False


class NetlinkBackend:
    """Dumps the socket table over NETLINK_SOCK_DIAG, one netlink socket per dump.

    Both address families come in one dump (one walk of the kernel's hash
    tables) unless the kernel refuses that request; then one per family.
    CLOSE_WAIT sockets get a second, small dump that asks for tcp_info,
    for how long ago the peer last acknowledged (``lastack_ms``).
    """

    name = "netlink"

    def __init__(self) -> None:
        self._buffer = bytearray(RECV_BUFFER)  # the answers to lookups, one after the other
        self._dump_buffer = bytearray(16 * RECV_BUFFER)  # a whole dump; grows to the largest seen
        self._seq = 0
        self.interrupted_dumps = 0
        self.duplicates_dropped = 0
        self._families = self._probe()

    def _probe(self) -> tuple[int, ...]:
        """The dumps that read the table here: both families at once if the kernel takes that request.

        The probes ask for no state at all: the kernel still checks the
        request (and refuses it where it would), but sends no socket, so a
        one-shot `socktop --json` does not pay for a full dump twice.
        """
        try:
            self._dump_once(socket.AF_UNSPEC, states=0)
            return (socket.AF_UNSPEC,)
        except OSError:
            pass
        try:
            self._dump_once(socket.AF_INET, states=0)
        except OSError as exc:
            raise BackendUnavailable(f"netlink sock_diag unavailable: {exc.strerror or exc}") from exc
        return (socket.AF_INET, socket.AF_INET6)

    def sockets(self) -> SocketTable:
        return SocketTable(self.columns())

    def columns(self, sock: socket.socket | None = None) -> SocketColumns:
        """Every TCP socket, as columns; CLOSE_WAIT ones with ``lastack_ms``.

        ``sock``: a sock_diag socket to ask through, kept open by the caller
        (one per network namespace: the kernel answers about the namespace
        the socket was made in); by default a new one per request, here.
        """
        columns = SocketColumns.concat([self.dump_family(family, sock=sock) for family in self._families])
        close_wait = np.flatnonzero(columns.state == TcpState.CLOSE_WAIT)
        if len(close_wait):
            self._fill_lastack(columns, close_wait, sock)
        return columns

    def _fill_lastack(self, columns: SocketColumns, rows: np.ndarray, sock: socket.socket | None = None) -> None:
        """tcpi_last_ack_recv for the CLOSE_WAIT ``rows``, joined by cookie.

        Each dump walks every socket of the kernel's tables, so a few
        hundred CLOSE_WAIT are asked for one by one (a hash lookup each, in
        batches of requests per send); a larger leak takes one dump of that
        state instead.
        """
        ext = 1 << (INET_DIAG_INFO - 1)
        if len(rows) <= max(EXACT_LOOKUPS_MIN, len(columns) // LOOKUP_COST):
            info = self._look_up(columns, rows, ext, sock)
        else:
            info = SocketColumns.concat([self.dump_family(family, states=1 << TcpState.CLOSE_WAIT, ext=ext, sock=sock)
                                         for family in self._families])
        known = info.lastack_ms >= 0
        cookies, lastack = info.cookie[known], info.lastack_ms[known]
        if not len(cookies):
            return
        order = np.argsort(cookies)
        cookies, lastack = cookies[order], lastack[order]
        wanted = columns.cookie[rows]
        slot = np.minimum(np.searchsorted(cookies, wanted), len(cookies) - 1)
        found = cookies[slot] == wanted
        columns.lastack_ms[rows[found]] = lastack[slot[found]]

    def still_listed(self, columns: SocketColumns, rows: np.ndarray, sock: socket.socket | None = None) -> set[int]:
        """The inodes of ``rows`` that the kernel lists now, each asked for by 4-tuple and cookie (a hash
        lookup, not a second dump): a socket closed since answers ENOENT, or comes back with inode 0 as
        the TIME_WAIT or orphan it became (the kernel keeps the cookie into TIME_WAIT). ``sock``: as in
        `columns`, for the rows of another namespace."""
        if len(rows) > max(EXACT_LOOKUPS_MIN, len(columns) // LOOKUP_COST):
            return set(self.columns(sock).inode.tolist())
        return set(self._look_up(columns, rows, 0, sock).inode.tolist())

    def _look_up(self, columns: SocketColumns, rows: np.ndarray, ext: int,
                 reused: socket.socket | None = None) -> SocketColumns:
        """The sockets of ``rows`` asked for by 4-tuple and cookie (not dumped), with the attributes of ``ext``.

        The kernel answers each request with the socket or, when it has
        gone since the dump, an NLMSG_ERROR (ENOENT), which is skipped.
        """
        requests = exact_requests(columns, rows, ext)
        starts: list[int] = []  # of the answers kept, one after the other in the lookup buffer
        used = 0
        with _opened(reused) as sock:
            sock.settimeout(5.0)
            for first in range(0, len(requests), LOOKUP_BATCH):
                batch = requests[first:first + LOOKUP_BATCH]
                sock.send(batch.tobytes())
                for _reply in range(len(batch)):
                    if len(self._buffer) - used < RECV_BUFFER:
                        self._buffer = _grown(self._buffer, used)
                    size = sock.recv_into(memoryview(self._buffer)[used:], RECV_BUFFER, socket.MSG_TRUNC)
                    if size < HEADER_SIZE or size > RECV_BUFFER:
                        raise CollectError(f"sock_diag: a {size}-byte answer to a socket lookup")
                    msg_len, msg_type = _HEADER.unpack_from(self._buffer, used)
                    if msg_type == SOCK_DIAG_BY_FAMILY and MIN_MESSAGE <= msg_len <= size:
                        starts.append(used)
                        used += (msg_len + 3) & ~3
                    elif msg_type != NLMSG_ERROR:
                        raise CollectError(f"sock_diag: unexpected message type {msg_type} answering a lookup")
        if not starts:
            return SocketColumns.empty()
        at = np.array(starts, np.int64)
        sizes = np.frombuffer(self._buffer, np.uint32, count=used // 4)[at // 4].astype(np.int64)
        return _columns(self._buffer, used, at, sizes)

    def dump_family(self, family: int, states: int = ALL_STATES, ext: int = 0,
                    sock: socket.socket | None = None) -> SocketColumns:
        """Every TCP socket of one family (of both with AF_UNSPEC) in ``states``; retaken when the dump was interrupted."""
        for _attempt in range(MAX_DUMP_ATTEMPTS):
            dump = self._dump_once(family, states, ext, sock)
            if not dump.interrupted:
                break
            self.interrupted_dumps += 1
        columns, dropped = drop_duplicates(dump.columns())
        self.duplicates_dropped += dropped
        return columns

    def _dump_once(self, family: int, states: int = ALL_STATES, ext: int = 0,
                   reused: socket.socket | None = None) -> Dump:
        """One dump, received chunk after chunk into one buffer (no copy per chunk, no join): the
        `Dump` reads that buffer, so take its columns before the next dump."""
        dump = Dump(family)
        self._seq += 1
        with _opened(reused) as sock:
            sock.settimeout(5.0)
            sock.send(build_request(family, self._seq, states, ext))
            received = parsed = 0  # bytes in the buffer, and of those the bytes parsed
            done = False
            while not done:
                if len(self._dump_buffer) - received < RECV_BUFFER:
                    self._dump_buffer = _grown(self._dump_buffer, received)
                view = memoryview(self._dump_buffer)
                size = sock.recv_into(view[received:], RECV_BUFFER, socket.MSG_TRUNC)
                if size > RECV_BUFFER:
                    raise CollectError(f"sock_diag: a {size}-byte chunk did not fit the {RECV_BUFFER}-byte buffer")
                if size == 0:
                    raise CollectError("sock_diag: the kernel closed the dump without NLMSG_DONE")
                received += size
                if may_end(view[received - size:received], self._seq, dump.message_type):
                    done = parse_dump_chunk(view[parsed:received], received - parsed, dump, copy=False)
                    parsed = received
        return dump


def _grown(buffer: bytearray, used: int) -> bytearray:
    """A larger buffer with the first ``used`` bytes of ``buffer``: a new one, since a dump may
    still read the old (a bytearray cannot be resized while a view of it lives)."""
    grown = bytearray(max(2 * len(buffer), used + RECV_BUFFER))
    grown[:used] = memoryview(buffer)[:used]
    return grown


def _opened(reused: socket.socket | None) -> contextlib.AbstractContextManager[socket.socket]:
    """``reused`` as it is (its owner closes it), else a new sock_diag socket closed after use."""
    if reused is not None:
        return contextlib.nullcontext(reused)
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
