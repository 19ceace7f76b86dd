"""Linux NETLINK_SOCK_DIAG (inet_diag): the socket table straight from the kernel.

One dump of both address families (per family where the kernel refuses
that), all states, parsed from the receive buffer: runs of equal-size
messages column by column in C, the rest one message at a time with
``struct``; a socket whose bytes did not change since the last dump keeps
its record. This is the fast path: it needs no root (every socket of the
network namespace is listed, with its uid and inode).
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable
from itertools import compress, count, repeat
from operator import itemgetter, lshift, mul, ne, not_, or_

from .records import CANONICAL_STATE, BackendUnavailable, CollectError, SocketRecord, TcpState, TimerKind

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
RENEW_SLACK = 4096  # records of gone or changed sockets kept, beyond twice the table, before a renewal

def _swapped_ports() -> list[int]:
    """Port number (read big-endian bytes as native u16) → port, built in C: a Python
    loop over 65,536 values would add 8 ms to every `socktop --json` start."""
    table = array.array("H", range(65536))
    table.byteswap()
    return table.tolist() if sys.byteorder == "little" else list(range(65536))


_NLMSGHDR = struct.Struct("=IHHII")
# nlmsghdr (len type flags, seq and pid skipped) + inet_diag_msg: family state
# timer retrans | sport dport (be16, read native and swapped by table) | src dst
# (the IPv4 part, then the rest of an IPv6 address) | (if) cookie | expires
# rqueue wqueue uid inode
_DIAG_MSG = struct.Struct("=IHH8x" "BBBB" "HH" "4s12s4s12s" "4x" "Q" "IIIII")
_REQUEST = struct.Struct("=IHHII" "BBBxI" "HH16s16sI8s")  # inet_diag_req_v2
_COMPAT_REQUEST = struct.Struct("=IHHII" "BBBB" "HH16s16sI8s" "II")  # inet_diag_req
_ERRNO = struct.Struct("=i")
_MIN_MESSAGE = _DIAG_MSG.size

_BYTESWAP16 = _swapped_ports()
_WORD = struct.Struct("=I")
_FOUR_WORDS = struct.Struct("=4I")
MIN_RUN = 32  # equal-size messages worth the columnar path's fixed cost
_BODY_START = _NLMSGHDR.size  # inet_diag_msg follows the nlmsghdr
_BODY = struct.Struct("=72s")  # inet_diag_msg: every byte a record is made of
_FLAGS_HALF = 3  # nlmsg_flags, in 16-bit halves from the nlmsghdr
# Where the columnar path finds each field: in bytes, 16-bit halves or
# 32-bit words from the start of an inet_diag_msg (as in _DIAG_MSG).
_STATE_BYTE, _TIMER_BYTE, _RETRANS_BYTE = 1, 2, 3
_SPORT_HALF, _DPORT_HALF = 2, 3
_SRC_WORD, _DST_WORD, _COOKIE_WORD = 2, 6, 11
_EXPIRES_WORD, _RQUEUE_WORD, _WQUEUE_WORD, _UID_WORD, _INODE_WORD = 13, 14, 15, 16, 17
_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_NO_COOKIE = b"\xff" * 8  # INET_DIAG_NOCOOKIE

#: An address as a cache key: its raw bytes (per-message loop: 4 for IPv4, 16
#: for IPv6), or its native 32-bit words (columnar path: one for IPv4, a tuple
#: of four for IPv6). Keys of the two families never collide.
AddressKey = bytes | int | tuple[int, ...]


def build_request(family: int, seq: int, states: int = ALL_STATES) -> bytes:
    """A dump request for the TCP sockets in ``states`` (a bitmask, bit N for kernel
    state N) of one family, or of both with AF_UNSPEC.

    Each dump walks all of the kernel's socket hash tables (those of other
    network namespaces included), so one dump of both families costs about
    half of two: some 11 ms at 50k sockets here.
    """
    if family == socket.AF_UNSPEC:
        return _COMPAT_REQUEST.pack(
            _COMPAT_REQUEST.size, TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0,
            family, 0, 0, 0, 0, 0, b"", b"", 0, _NO_COOKIE, states, 0,
        )
    return _REQUEST.pack(
        _REQUEST.size, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0,
        family, socket.IPPROTO_TCP, 0, states,
        0, 0, b"", b"", 0, _NO_COOKIE,
    )


def _v4_text(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, raw[:4])


def _v6_text(raw: bytes) -> str:
    if raw[:12] == _V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


class AddressText:
    """Turns raw addresses (4 or 16 bytes) into text, caching each one.

    A busy host talks to a few thousand peers; converting each of 50,000
    addresses anew would cost more than the whole parse.
    """

    __slots__ = ("v4_cache", "v6_cache", "cache")

    MAX_ENTRIES = 200_000  # bounds memory on a host that talks to every address

    def __init__(self) -> None:
        self.v4_cache: dict[AddressKey, str] = {}
        self.v6_cache: dict[AddressKey, str] = {}
        self.cache: dict[AddressKey, str] = {}  # both families: raw keys differ in length, word keys in type

    def v4(self, raw: bytes) -> str:
        return self._remember(self.v4_cache, raw, _v4_text(raw))

    def v6(self, raw: bytes) -> str:
        return self._remember(self.v6_cache, raw, _v6_text(raw))

    def text(self, raw: bytes) -> str:
        """An IPv4 (4 raw bytes) or IPv6 (16) address, for a dump of both families."""
        return self._remember(self.cache, raw, _v4_text(raw) if len(raw) == 4 else _v6_text(raw))

    def _remember(self, cache: dict[AddressKey, str], raw: bytes, text: str) -> str:
        if len(cache) >= self.MAX_ENTRIES:
            cache.clear()
        cache[raw] = text
        return text


class Dump:
    """What one dump (of one family, or of both with AF_UNSPEC) has gathered so far, across its chunks.

    ``known`` holds records by the bytes of their inet_diag_msg, which is
    all a record is made of: a socket whose bytes did not change since an
    earlier dump (an idle connection, a listener) gets the same record back
    instead of a new one, and the records built are added for the next
    dump. A running timer changes ``expires`` at every dump, so messages
    and runs where every socket has one are not looked up. With ``renew``,
    ``seen`` gathers every record looked up, to replace a ``known`` grown
    stale. Without ``known``, every record is built.
    """

    __slots__ = ("family", "message_type", "records", "interrupted", "known", "seen")

    def __init__(self, family: int, known: dict[bytes, SocketRecord] | None = None, renew: bool = False) -> None:
        self.family = family
        self.message_type = TCPDIAG_GETSOCK if family == socket.AF_UNSPEC else SOCK_DIAG_BY_FAMILY
        self.records: list[SocketRecord] = []
        self.interrupted = False
        self.known = known
        self.seen: dict[bytes, SocketRecord] | None = {} if renew else None


def parse_dump_chunk(data: bytes | bytearray | memoryview, length: int, dump: Dump,
                     address_cache: dict[AddressKey, str], address_text: Callable[[bytes], str]) -> bool:
    """Parse one received chunk into ``dump``; True once NLMSG_DONE is seen.

    Sockets of one kind carry the same attributes, so a chunk is often one
    run of equal-size messages: runs of at least MIN_RUN are read column by
    column in C (`_append_run`). From the first short run, control message
    or anything odd on, the per-message loop (`_parse_messages`) takes the
    rest of the chunk and raises every error. Each record takes the family
    of its message. ``address_cache`` maps an `AddressKey` to its text;
    ``address_text`` converts raw bytes not seen yet and remembers them.
    Duplicates are left to `drop_duplicates`, once per dump.
    """
    view = memoryview(data)[:length]
    words = view[:length & ~3].cast("I")
    offset = 0
    while offset < length:
        run, size = _uniform_run(view, words, offset, dump.message_type)
        if run < MIN_RUN or not _append_run(view, offset, run, size, dump, address_cache, address_text):
            return _parse_messages(data, offset, length, dump, address_cache, address_text)
        offset += run * size
    return False


def _uniform_run(view: memoryview, words: memoryview, offset: int, message_type: int) -> tuple[int, int]:
    """How many socket messages of one size, header and family follow each other from ``offset``, and that size.

    Checks the length and type/flags words of each message in C: first of
    MIN_RUN messages, so that a chunk of mixed sizes pays little, then of
    the rest of the chunk.
    """
    first = offset >> 2
    if first + 2 > len(words):
        return 0, 0
    size, kind = words[first], words[first + 1]  # kind: type | flags << 16
    if size % 4 or size < _MIN_MESSAGE or kind & 0xFFFF != message_type:
        return 0, 0
    stride = size >> 2
    available = (len(words) - first) // stride
    run = 0
    for window in (min(MIN_RUN, available), available - min(MIN_RUN, available)):
        start = first + run * stride
        stop = start + window * stride
        same = min(_leading(words[start:stop:stride].tolist(), size), _leading(words[start + 1:stop:stride].tolist(), kind))
        run += same
        if same < window:
            break
    families = view[offset + _BODY_START:offset + run * size:size].tolist()
    return _leading(families, families[0]) if families else 0, size


def _leading(values: list[int], value: int) -> int:
    """How many items at the start of ``values`` equal ``value`` (in C)."""
    if values.count(value) == len(values):
        return len(values)
    return next(compress(count(), map(ne, values, repeat(value))))


def _append_run(view: memoryview, offset: int, run: int, size: int, dump: Dump,
                address_cache: dict[AddressKey, str], address_text: Callable[[bytes], str]) -> bool:
    """Append ``run`` messages of ``size`` bytes from ``offset``, all in C.

    False, with nothing appended, when a state is unknown: the per-message
    loop then raises the error. With ``dump.known``, records of unchanged
    sockets are reused and only the others are built, from their bodies
    joined into one buffer.
    """
    end = offset + run * size
    if view[offset + _BODY_START + _STATE_BYTE:end:size].tobytes().translate(None, _KNOWN_STATE_CODES):
        return False
    if view[offset:offset + _BODY_START].cast("H")[_FLAGS_HALF] & NLM_F_DUMP_INTR:  # the same all along a run
        dump.interrupted = True
    family = _FAMILY_BY_CODE[view[offset + _BODY_START]]
    timers = view[offset + _BODY_START + _TIMER_BYTE:end:size].tobytes()
    if dump.known is None or b"\0" not in timers:
        dump.records.extend(_build_records(view[offset + _BODY_START:end], size, family, address_cache, address_text))
        return True
    layout = f"={_BODY_START}x{_BODY.size}s{size - _BODY_START - _BODY.size}x"
    bodies = list(map(itemgetter(0), struct.iter_unpack(layout, view[offset:end])))
    found = list(map(dump.known.get, bodies))
    if None in found:
        missing = list(map(not_, found))
        built = list(zip(compress(bodies, missing), _build_records(
            memoryview(b"".join(compress(bodies, missing))), _BODY.size, family, address_cache, address_text)))
        found = list(map(dict(built).get, bodies, found))
        dump.known.update(compress(built, compress(map(not_, timers), missing)))
    if dump.seen is not None:
        dump.seen.update(compress(zip(bodies, found), map(not_, timers)))
    dump.records.extend(found)
    return True


def _build_records(bodies: memoryview, stride: int, family: int,
                   address_cache: dict[AddressKey, str], address_text: Callable[[bytes], str]) -> Iterable[SocketRecord]:
    """Records for the inet_diag_msg bodies ``stride`` bytes apart from the start of ``bodies``.

    Each field is a strided slice of the buffer; fields that need a lookup
    (states, timers, ports, addresses) are mapped through tables, and the
    records are made by `zip`.
    """
    words = bodies.cast("I")
    halves = bodies.cast("H")
    word_stride, half_stride = stride >> 2, stride >> 1
    timers = bodies[_TIMER_BYTE::stride].tobytes()
    local = _address_texts(words, _SRC_WORD, word_stride, family, address_cache, address_text)
    remote = _address_texts(words, _DST_WORD, word_stride, family, address_cache, address_text)
    expires = words[_EXPIRES_WORD::word_stride].tolist()
    if b"\0" in timers and any(expires):  # a record says 0 when there is no timer
        expires = list(map(mul, expires, map(bool, timers)))
    cookie_high = words[_COOKIE_WORD + 1::word_stride].tolist()
    cookies: Iterable[int] = words[_COOKIE_WORD::word_stride]
    if any(cookie_high):
        cookies = map(or_, cookies, map(lshift, cookie_high, repeat(32)))
    swap = _BYTESWAP16.__getitem__
    return map(tuple.__new__, repeat(SocketRecord), zip(
        repeat(family), map(_STATE_BY_CODE.__getitem__, bodies[_STATE_BYTE::stride]),
        local, map(swap, halves[_SPORT_HALF::half_stride]), remote, map(swap, halves[_DPORT_HALF::half_stride]),
        words[_RQUEUE_WORD::word_stride], words[_WQUEUE_WORD::word_stride], map(_TIMER_BY_CODE.__getitem__, timers),
        expires, bodies[_RETRANS_BYTE::stride], words[_UID_WORD::word_stride],
        words[_INODE_WORD::word_stride], cookies,
    ))


def _address_texts(words: memoryview, first: int, stride: int, family: int,
                   address_cache: dict[AddressKey, str], address_text: Callable[[bytes], str]) -> list[str]:
    """The text of one address column (from word ``first`` of each message), from the cache.

    Keys are the address's native words; only addresses not seen yet cost
    a Python step each.
    """
    keys: list[AddressKey]
    if family == socket.AF_INET:
        keys, to_raw = words[first::stride].tolist(), _WORD.pack
    else:
        keys, to_raw = list(zip(*(words[first + i::stride] for i in range(4)))), _v6_raw
    texts = list(map(address_cache.get, keys))
    if None in texts:
        for index, text in enumerate(texts):
            if text is None:
                key = keys[index]
                texts[index] = address_cache[key] = address_text(to_raw(key))
    return texts


def _v6_raw(words: tuple[int, int, int, int]) -> bytes:
    return _FOUR_WORDS.pack(*words)


def _parse_messages(data: bytes | bytearray | memoryview, offset: int, length: int, dump: Dump,
                    address_cache: dict[AddressKey, str], address_text: Callable[[bytes], str]) -> bool:
    """Parse the messages from ``offset`` to the end of the chunk; True once NLMSG_DONE is seen.

    Steps by the 4-byte-aligned ``nlmsg_len``: attribute sets differ by
    state, privilege and kernel, so message sizes are not fixed. Raises
    CollectError on a truncated or corrupt buffer and OSError when the
    kernel answers NLMSG_ERROR. Locals only, one ``unpack_from`` per
    message, list lookups instead of dict lookups.
    """
    unpack_from = _DIAG_MSG.unpack_from
    min_message = _MIN_MESSAGE
    swap = _BYTESWAP16
    states = _STATE_BY_CODE
    timers = _TIMER_BY_CODE
    cached = address_cache.get
    new_record = tuple.__new__
    socket_message = dump.message_type
    families = _FAMILY_BY_CODE
    ipv4 = socket.AF_INET
    append = dump.records.append
    reuse = dump.known is not None
    known: dict[bytes, SocketRecord] = dump.known if dump.known is not None else {}
    seen = dump.seen
    body_of = _BODY.unpack_from
    while offset < length:
        if length - offset >= min_message:
            (msg_len, msg_type, flags, family, state, timer, retrans, sport, dport, src, src_rest, dst, dst_rest,
             cookie, expires, rqueue, wqueue, uid, inode) = unpack_from(data, offset)
        elif length - offset >= _NLMSGHDR.size:
            msg_len, msg_type, flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        else:
            raise CollectError(f"sock_diag: {length - offset} stray bytes at offset {offset}")
        if msg_len < _NLMSGHDR.size or offset + msg_len > length:
            raise CollectError(
                f"sock_diag: message at offset {offset} claims {msg_len} bytes, {length - offset} left"
            )
        if flags & NLM_F_DUMP_INTR:
            dump.interrupted = True
        if msg_type != socket_message or msg_len < min_message:
            if _control_message(data, offset, msg_len, msg_type, socket_message):
                return True
        state_enum = states[state]
        if state_enum is None:
            raise CollectError(f"sock_diag: unknown TCP state {state} at offset {offset}")
        if reuse and not timer:
            body = body_of(data, offset + _BODY_START)[0]
            record = known.get(body)
        else:
            body = record = None
        if record is None:
            if family != ipv4:  # IPv4 addresses are keyed by their 4 bytes, IPv6 ones by all 16
                src, dst = src + src_rest, dst + dst_rest
            record = new_record(SocketRecord, (
                families[family], state_enum, cached(src) or address_text(src), swap[sport],
                cached(dst) or address_text(dst), swap[dport],
                rqueue, wqueue, timers[timer], expires if timer else 0,
                retrans, uid, inode, cookie,
            ))
            if body is not None:
                known[body] = record
        if body is not None and seen is not None:
            seen[body] = record
        append(record)
        offset += (msg_len + 3) & ~3
    return False


def _control_message(data: bytes | bytearray | memoryview, offset: int, msg_len: int, msg_type: int,
                     socket_message: int) -> bool:
    """Handle a message that is not a socket: True for NLMSG_DONE, raise otherwise."""
    if msg_type == NLMSG_DONE:
        return True
    if msg_type == NLMSG_ERROR:
        code = _ERRNO.unpack_from(data, offset + _NLMSGHDR.size)[0] if msg_len >= 20 else -errno.EIO
        raise OSError(-code, f"sock_diag refused the dump: {os.strerror(-code)}")
    if msg_type != socket_message:
        raise CollectError(f"sock_diag: unexpected message type {msg_type} at offset {offset}")
    raise CollectError(f"sock_diag: message at offset {offset} too short ({msg_len} bytes)")


_STATE_BY_CODE: list[TcpState | None] = [CANONICAL_STATE.get(code) for code in range(256)]
_FAMILY_BY_CODE: list[int] = [socket.AF_INET if code == socket.AF_INET else socket.AF_INET6 if code == socket.AF_INET6
                              else code for code in range(256)]  # records carry socket.AddressFamily members
_KNOWN_STATE_CODES = bytes(code for code, state in enumerate(_STATE_BY_CODE) if state is not None)
_TIMER_BY_CODE: list[TimerKind] = [TimerKind(code & 7) if code & 7 <= 4 else TimerKind.NONE for code in range(256)]


_COOKIE = itemgetter(13)
_CONNECTION = itemgetter(2, 3, 4, 5)


def drop_duplicates(records: list[SocketRecord]) -> tuple[list[SocketRecord], int]:
    """Keep one record per connected 4-tuple, the later one; return it and how many went.

    A dump is not atomic: a connection that turns from ESTABLISHED into
    TIME_WAIT between two chunks can be listed twice. The kernel keeps a
    socket's cookie into TIME_WAIT, so distinct cookies prove there is no
    duplicate; that check runs in C, and the per-record pass only runs
    when it fails. Listeners are never merged: SO_REUSEPORT sockets share
    a 4-tuple legitimately.
    """
    if len(set(map(_COOKIE, records))) == len(records):
        return records, 0
    index_by_connection: dict[tuple[str, int, str, int], int] = {}
    kept: list[SocketRecord] = []
    for record in records:
        if record.remote_port:
            slot = index_by_connection.setdefault(_CONNECTION(record), len(kept))
            if slot != len(kept):
                kept[slot] = record
                continue
        kept.append(record)
    return kept, len(records) - len(kept)


class NetlinkBackend:
    """Dumps the socket table over NETLINK_SOCK_DIAG, one netlink socket per dump.

    Both address families come in one dump (one walk of the kernel's hash
    tables) unless the kernel refuses that request; then one per family.
    """

    name = "netlink"

    def __init__(self) -> None:
        self._buffer = bytearray(RECV_BUFFER)
        self._addresses = AddressText()
        self._known: dict[int, dict[bytes, SocketRecord]] = {}  # per dump family: records by body, see Dump
        self._dumped: dict[int, int] = {}  # per dump family: records in the last dump
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
        with contextlib.suppress(OSError):
            self._dump_once(socket.AF_UNSPEC, states=0)
            return (socket.AF_UNSPEC,)
        try:
            self._dump_once(socket.AF_INET, states=0)
        except OSError as exc:
            raise BackendUnavailable(f"netlink sock_diag unavailable: {exc.strerror or exc}") from exc
        return (socket.AF_INET, socket.AF_INET6)

    def sockets(self) -> list[SocketRecord]:
        records: list[SocketRecord] = []
        for family in self._families:
            records.extend(self.dump_family(family))
        return records

    def dump_family(self, family: int) -> list[SocketRecord]:
        """Every TCP socket of one family (of both with AF_UNSPEC); retaken when the dump was interrupted."""
        for _attempt in range(MAX_DUMP_ATTEMPTS):
            dump = self._dump_once(family)
            if not dump.interrupted:
                break
            self.interrupted_dumps += 1
        records, dropped = drop_duplicates(dump.records)
        self.duplicates_dropped += dropped
        return records

    def _dump_once(self, family: int, states: int = ALL_STATES) -> Dump:
        if family == socket.AF_INET:
            cache, convert = self._addresses.v4_cache, self._addresses.v4
        elif family == socket.AF_INET6:
            cache, convert = self._addresses.v6_cache, self._addresses.v6
        else:
            cache, convert = self._addresses.cache, self._addresses.text
        known = self._known.setdefault(family, {})
        dump = Dump(family, known, renew=len(known) > 2 * self._dumped.get(family, 0) + RENEW_SLACK)
        self._seq += 1
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(5.0)
            sock.send(build_request(family, self._seq, states))
            done = False
            while not done:
                size = sock.recv_into(self._buffer, RECV_BUFFER, socket.MSG_TRUNC)
                if size > RECV_BUFFER:
                    raise CollectError(f"sock_diag: a {size}-byte chunk did not fit the {RECV_BUFFER}-byte buffer")
                if size == 0:
                    raise CollectError("sock_diag: the kernel closed the dump without NLMSG_DONE")
                done = parse_dump_chunk(self._buffer, size, dump, cache, convert)
        if states == ALL_STATES:
            if dump.seen is not None:
                self._known[family] = dump.seen
            self._dumped[family] = len(dump.records)
        return dump
