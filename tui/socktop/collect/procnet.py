"""/proc/net/tcp and /proc/net/tcp6: the socket table as text, for kernels without sock_diag.

Slower than netlink (the kernel formats every socket and hands out at most
a page per read) but always there on Linux. The records match the netlink
backend's, with what procfs cannot say:

* LISTEN: ``recv_q`` is the accept queue (``sk_ack_backlog``) in both, but
  /proc prints ``tx_queue`` 0 where netlink puts the backlog limit
  (``sk_max_ack_backlog``) in ``send_q``, and no other column holds it
  (the last one is the TCP Fast Open queue): ``unavailable`` says so, and
  the accept-queue finding says what it can without it.
* ``timer_ms`` comes in clock ticks (USER_HZ, 10 ms at 100 Hz) instead of ms.
* ``cookie`` is 0: procfs has no socket cookie.
* ``retransmits`` follows inet_diag: the retransmit count under the
  retransmit timer, the probe count (the ``timeout`` column) under the
  keepalive and zero-window-probe timers, else 0. A request socket's count
  is its SYN-ACK timeouts here and its retransmits there; they differ only
  when a SYN-ACK was resent without a timeout.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable

from .columns import AddressText, SocketColumns, SocketTable, address_text
from .netlink import drop_duplicates
from .records import CANONICAL_STATE, BackendUnavailable, CollectError, SocketRecord, TimerKind

PROC_NET = "/proc/net"
USER_HZ = os.sysconf("SC_CLK_TCK")
READ_SIZE = 1 << 16  # more than one read ever returns (a page), yet below malloc's mmap threshold
MIN_FIELDS = 10  # sl, local, remote, st, tx:rx, tr:when, retrnsmt, uid, timeout, inode

_HEX_DIGITS = {socket.AF_INET: 8, socket.AF_INET6: 32}
_TIMER_BY_CODE = {int(kind): kind for kind in TimerKind}
_PROBE_TIMERS = frozenset({TimerKind.KEEPALIVE, TimerKind.PROBE})


def address_bytes(hex_address: str, family: int) -> bytes:
    """The address in network order from procfs's hex.

    The kernel prints each 32-bit word of the address as a native-endian
    integer (``%08X``), so 127.0.0.1 reads ``0100007F`` on x86.
    """
    if len(hex_address) != _HEX_DIGITS[family]:
        raise ValueError(f"{hex_address!r} is not a {_HEX_DIGITS[family]}-digit address")
    words = [int(hex_address[start:start + 8], 16) for start in range(0, len(hex_address), 8)]
    return struct.pack(f"={len(words)}I", *words)


def _v4_text(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, raw)


class AddressCache:
    """Address text keyed by however a source spells the address, each converted once.

    The conversion itself (IPv4-mapped IPv6 shown as IPv4) is the columns'
    `address_text`, so every backend prints an address the same way.
    """

    __slots__ = ("known", "_to_bytes", "_to_text")

    def __init__(self, to_bytes: Callable[[str], bytes], to_text: Callable[[bytes], str]) -> None:
        self.known: dict[str, str] = {}
        self._to_bytes = to_bytes
        self._to_text = to_text

    @classmethod
    def for_family(cls, family: int, to_bytes: Callable[[str, int], bytes]) -> AddressCache:
        to_text = _v4_text if family == socket.AF_INET else address_text
        return cls(lambda spelled: to_bytes(spelled, family), to_text)

    def convert(self, spelled: str) -> str:
        """Text for an address not seen yet; ValueError if ``spelled`` is not an address."""
        text = self._to_text(self._to_bytes(spelled))
        self.known[spelled] = text
        return text

    def trim(self) -> None:
        """Forget everything once past AddressText's bound; called between snapshots."""
        if len(self.known) >= AddressText.MAX_ENTRIES:
            self.known.clear()


def parse_proc_net_tcp(text: str, family: int, addresses: AddressCache | None = None,
                       ticks_per_second: int = USER_HZ) -> tuple[list[SocketRecord], int]:
    """Records from the text of /proc/net/tcp (AF_INET) or tcp6 (AF_INET6), and how many lines were malformed.

    Fields are split on white space, not cut at columns: the padding differs
    between kernels and newer ones append fields. A line that does not parse
    (bad hex, too few fields, an unknown state) is skipped and counted,
    never fatal. Runs once per socket: locals only, no regexes.
    """
    if family not in _HEX_DIGITS:
        raise ValueError(f"/proc/net/tcp lists AF_INET or AF_INET6 sockets, not family {family}")
    if addresses is None:
        addresses = AddressCache.for_family(family, address_bytes)
    cached = addresses.known.get
    convert = addresses.convert
    states = CANONICAL_STATE
    timers = _TIMER_BY_CODE
    no_timer = TimerKind.NONE
    retransmit_timer = TimerKind.RETRANSMIT
    probe_timers = _PROBE_TIMERS
    new_record = tuple.__new__
    records: list[SocketRecord] = []
    append = records.append
    malformed = 0
    lines = text.split("\n")
    if lines and lines[0].lstrip().startswith("sl"):
        del lines[0]
    for line in lines:
        fields = line.split(None, MIN_FIELDS)  # the trailing fields stay one unsplit string
        if not fields:
            continue
        try:
            local_hex, _, local_port_hex = fields[1].partition(":")
            remote_hex, _, remote_port_hex = fields[2].partition(":")
            state = states[int(fields[3], 16)]
            tx_hex, _, rx_hex = fields[4].partition(":")
            timer_hex, _, ticks_hex = fields[5].partition(":")
            local_port = int(local_port_hex, 16)
            remote_port = int(remote_port_hex, 16)
            if not (0 <= local_port <= 0xFFFF and 0 <= remote_port <= 0xFFFF):
                raise ValueError("port out of range")
            timer = timers.get(int(timer_hex, 16), no_timer)
            ticks = int(ticks_hex, 16)
            retransmits = int(fields[6], 16)
            probes = int(fields[8])
            append(new_record(SocketRecord, (
                family, state,
                cached(local_hex) or convert(local_hex), local_port,
                cached(remote_hex) or convert(remote_hex), remote_port,
                int(rx_hex, 16), int(tx_hex, 16),
                timer, ticks * 1000 // ticks_per_second if timer else 0,
                retransmits if timer is retransmit_timer else probes if timer in probe_timers else 0,
                int(fields[7]), int(fields[9]), 0, -1, 0, 0,  # no cookie, lastack, cgroup in procfs; own netns
            )))
        except (ValueError, IndexError, KeyError):
            malformed += 1
    return records, malformed


def read_proc_file(path: str) -> str:
    """The whole file in one string: procfs hands out a page per read, so loop until EOF."""
    chunks: list[bytes] = []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, READ_SIZE):
            chunks.append(chunk)
    finally:
        os.close(fd)
    # ASCII from the kernel; a stray byte spoils one line (counted), not the snapshot.
    return b"".join(chunks).decode("ascii", "replace")


class ProcNetBackend:
    """Reads /proc/net/tcp and tcp6 on each snapshot.

    ``proc_net`` is the directory holding them (another network namespace's,
    or a test's). A missing tcp6 means IPv6 is off: no IPv6 sockets, no error.
    ``malformed_lines`` counts the lines skipped since construction;
    ``duplicates_dropped`` the connections listed twice because a socket
    moved while the file was read (procfs is no more atomic than a dump).
    """

    name = "proc"
    unavailable = frozenset({"listen_backlog", "cookie", "lastack_ms", "cgroup_id"})

    def __init__(self, proc_net: str = PROC_NET) -> None:
        self.paths = {socket.AF_INET: os.path.join(proc_net, "tcp"), socket.AF_INET6: os.path.join(proc_net, "tcp6")}
        self.malformed_lines = 0
        self.duplicates_dropped = 0
        self._caches = {family: AddressCache.for_family(family, address_bytes) for family in self.paths}
        try:
            read_proc_file(self.paths[socket.AF_INET])
        except OSError as exc:
            raise BackendUnavailable(f"cannot read {self.paths[socket.AF_INET]}: {exc.strerror or exc}") from exc

    def sockets(self) -> SocketTable:
        parts: list[SocketColumns] = []
        for family, path in self.paths.items():
            try:
                text = read_proc_file(path)
            except FileNotFoundError:
                if family == socket.AF_INET6:
                    continue
                raise CollectError(f"{path} has gone") from None
            except OSError as exc:
                raise CollectError(f"cannot read {path}: {exc.strerror or exc}") from exc
            cache = self._caches[family]
            cache.trim()
            parsed, malformed = parse_proc_net_tcp(text, family, cache)
            self.malformed_lines += malformed
            kept, dropped = drop_duplicates(SocketColumns.from_records(parsed))
            self.duplicates_dropped += dropped
            parts.append(kept)
        return SocketTable(SocketColumns.concat(parts))
