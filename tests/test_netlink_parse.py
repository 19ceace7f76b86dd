"""The sock_diag parser on hand-built buffers: good, truncated, corrupt, interrupted, duplicated."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import time

import pytest

from socktop.collect import netlink
from socktop.collect.columns import SocketColumns, SocketTable
from socktop.collect.netlink import (
    NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, SOCK_DIAG_BY_FAMILY, Dump, drop_duplicates, parse_dump_chunk,
)
from socktop.collect.records import CollectError, SocketRecord, TcpState, TimerKind
from socktop.demo.builders import SocketFarm

ATTRIBUTE_PADDING = b"\x08\x00\x01\x00\x00\x00\x00\x00"  # one 8-byte route attribute, as the kernel adds


def diag_message(state: int, src: bytes, sport: int, dst: bytes, dport: int, *, family: int = socket.AF_INET,
                 timer: int = 0, expires: int = 0, rqueue: int = 0, wqueue: int = 0, uid: int = 1000,
                 inode: int = 4242, cookie: int = 1, flags: int = 0, attributes: bytes = b"") -> bytes:
    body = struct.pack("=BBBB", family, state, timer, 0) + struct.pack(">HH", sport, dport)
    body += src.ljust(16, b"\0") + dst.ljust(16, b"\0") + struct.pack("=IQ", 0, cookie)
    body += struct.pack("=IIIII", expires, rqueue, wqueue, uid, inode) + attributes
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, flags, 1, 0) + body


def done_message() -> bytes:
    return struct.pack("=IHHIIi", 20, NLMSG_DONE, 0, 1, 0, 0)


class Parsed:
    """A dump after one chunk: its records, built from its columns, and whether DONE was seen."""

    def __init__(self, dump: Dump) -> None:
        self.columns = dump.columns()
        self.records: list[SocketRecord] = list(SocketTable(self.columns))
        self.interrupted = dump.interrupted


def parse(chunk: bytes, family: int = socket.AF_INET) -> tuple[Parsed, bool]:
    dump = Dump(family)
    done = parse_dump_chunk(chunk, len(chunk), dump)
    return Parsed(dump), done


def deduplicated(records: list[SocketRecord]) -> tuple[list[SocketRecord], int]:
    kept, dropped = drop_duplicates(SocketColumns.from_records(records))
    return list(SocketTable(kept)), dropped


LOOPBACK = socket.inet_pton(socket.AF_INET, "127.0.0.1")
OTHER = socket.inet_pton(socket.AF_INET, "10.1.2.3")


def test_parses_sockets_of_varying_sizes_until_done() -> None:
    chunk = (
        diag_message(10, LOOPBACK, 8080, b"", 0, rqueue=3, wqueue=128, attributes=ATTRIBUTE_PADDING * 3)
        + diag_message(6, LOOPBACK, 40000, OTHER, 6379, timer=3, expires=59000, inode=0, uid=0, cookie=2)
        + diag_message(12, LOOPBACK, 8080, OTHER, 51000, inode=0, cookie=3)
        + done_message()
    )
    dump, done = parse(chunk)
    assert done
    listener, time_wait, request = dump.records
    assert (listener.state, listener.local_addr, listener.local_port, listener.recv_q, listener.send_q) == (
        TcpState.LISTEN, "127.0.0.1", 8080, 3, 128)
    assert (time_wait.state, time_wait.remote_addr, time_wait.remote_port) == (TcpState.TIME_WAIT, "10.1.2.3", 6379)
    assert (time_wait.timer, time_wait.timer_ms, time_wait.inode) == (TimerKind.TIME_WAIT, 59000, 0)
    assert request.state is TcpState.SYN_RECV  # NEW_SYN_RECV is shown as ss shows it
    assert listener.uid == 1000 and listener.inode == 4242


def test_ipv4_mapped_ipv6_is_shown_as_ipv4() -> None:
    mapped = b"\0" * 10 + b"\xff\xff" + LOOPBACK
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    dump, _ = parse(diag_message(1, mapped, 443, v6, 50000, family=socket.AF_INET6) + done_message(), socket.AF_INET6)
    (record,) = dump.records
    assert (record.local_addr, record.remote_addr, record.family) == ("127.0.0.1", "2001:db8::1", socket.AF_INET6)


def test_chunk_without_done_asks_for_more() -> None:
    dump, done = parse(diag_message(1, LOOPBACK, 1, OTHER, 2))
    assert not done and len(dump.records) == 1


@pytest.mark.parametrize("cut", [1, 10, 40, 87])
def test_truncated_message_is_a_clear_error(cut: int) -> None:
    chunk = diag_message(1, LOOPBACK, 1, OTHER, 2) + diag_message(1, LOOPBACK, 3, OTHER, 4)
    truncated = chunk[: len(chunk) - cut]
    with pytest.raises(CollectError, match="sock_diag"):
        parse(truncated)


def test_corrupt_length_is_a_clear_error() -> None:
    message = bytearray(diag_message(1, LOOPBACK, 1, OTHER, 2))
    struct.pack_into("=I", message, 0, 4)  # shorter than a header: stepping by it would loop forever
    with pytest.raises(CollectError, match="claims 4 bytes"):
        parse(bytes(message))


def test_unknown_state_and_message_type_are_errors() -> None:
    with pytest.raises(CollectError, match="unknown TCP state 99"):
        parse(diag_message(99, LOOPBACK, 1, OTHER, 2))
    foreign = bytearray(diag_message(1, LOOPBACK, 1, OTHER, 2))
    struct.pack_into("=H", foreign, 4, 77)
    with pytest.raises(CollectError, match="unexpected message type 77"):
        parse(bytes(foreign))


def test_nlmsg_error_carries_the_errno() -> None:
    error = struct.pack("=IHHIIi", 36, NLMSG_ERROR, 0, 1, 0, -errno.EACCES) + b"\0" * 16
    with pytest.raises(OSError) as raised:
        parse(error)
    assert raised.value.errno == errno.EACCES


def test_dump_intr_marks_the_dump_for_a_retry() -> None:
    dump, _ = parse(diag_message(1, LOOPBACK, 1, OTHER, 2, flags=NLM_F_DUMP_INTR) + done_message())
    assert dump.interrupted


def test_a_connection_seen_twice_keeps_its_later_state() -> None:
    chunk = (
        diag_message(1, LOOPBACK, 40000, OTHER, 80, cookie=7)
        + diag_message(1, LOOPBACK, 40001, OTHER, 80, cookie=8)
        + diag_message(6, LOOPBACK, 40000, OTHER, 80, cookie=7, inode=0)
        + done_message()
    )
    dump, _ = parse(chunk)
    kept, dropped = deduplicated(dump.records)
    assert dropped == 1
    assert [(r.local_port, r.state) for r in kept] == [(40000, TcpState.TIME_WAIT), (40001, TcpState.ESTABLISHED)]


def test_reuseport_listeners_sharing_a_tuple_are_both_kept() -> None:
    chunk = diag_message(10, LOOPBACK, 8080, b"", 0, cookie=0) + diag_message(10, LOOPBACK, 8080, b"", 0, cookie=0)
    dump, _ = parse(chunk + done_message())
    kept, dropped = deduplicated(dump.records)
    assert len(kept) == 2 and dropped == 0


# --- the vectorised message finder against the one-message-at-a-time walk ----------------------------------

V6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7")
MAPPED = b"\0" * 10 + b"\xff\xff" + OTHER


def outcome(chunk: bytes, family: int, walk: bool, monkeypatch: pytest.MonkeyPatch) -> object:
    """The records, DONE and interrupted flags of a parse, or the error it raised (type, message, errno);
    with ``walk``, messages are found one at a time instead of in one vectorised pass."""
    with monkeypatch.context() as patch:
        if walk:
            patch.setattr(netlink, "_message_starts", netlink._walk)
        try:
            dump, done = parse(chunk, family)
        except (CollectError, OSError) as exc:
            return type(exc), str(exc), getattr(exc, "errno", None)
    return [tuple(map(type, record)) for record in dump.records], dump.records, done, dump.interrupted


def assert_paths_agree(chunk: bytes, monkeypatch: pytest.MonkeyPatch, family: int = socket.AF_INET) -> object:
    """The vectorised pass gives what the walk gives alone."""
    walked = outcome(chunk, family, True, monkeypatch)
    assert outcome(chunk, family, False, monkeypatch) == walked
    return walked


def socket_run(n: int, family: int = socket.AF_INET, **overrides: object) -> bytes:
    """n messages of one size: varied ports, addresses, queues, timers, uids, inodes and cookies."""
    src, dst = (LOOPBACK, OTHER) if family == socket.AF_INET else (V6, MAPPED)
    return b"".join(
        diag_message(
            (1, 6, 8, 10, 12, 5)[i % 6], (src, dst)[i % 2], (i * 7919) % 65536, (dst, src, b"")[i % 3], 65535 - i,
            **{"family": family, "attributes": ATTRIBUTE_PADDING * 4, "timer": i % 6, "expires": (i * 1000) % 60000,
               "rqueue": i, "wqueue": 2 * i, "uid": (0, 1000, 2**31)[i % 3], "inode": (0, 4242 + i)[i % 2],
               "cookie": (i + 1) << (0, 8, 33)[i % 3], **overrides})
        for i in range(n)
    )


def test_a_uniform_run_parses_as_the_walk_does(monkeypatch: pytest.MonkeyPatch) -> None:
    records, _, done, _ = assert_paths_agree(socket_run(40) + done_message(), monkeypatch)
    assert done and len(records) == 40


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_runs_of_mixed_sizes_parse_alike(family: int, monkeypatch: pytest.MonkeyPatch) -> None:
    chunk = (socket_run(5, family) + socket_run(1, family, attributes=b"") + socket_run(9, family)
             + socket_run(3, family, attributes=ATTRIBUTE_PADDING) + socket_run(4, family))
    _, records, done, _ = assert_paths_agree(chunk, monkeypatch, family)
    assert not done and len(records) == 22


def test_ipv6_run_shows_mapped_addresses_as_ipv4(monkeypatch: pytest.MonkeyPatch) -> None:
    _, records, _, _ = assert_paths_agree(socket_run(6, socket.AF_INET6) + done_message(), monkeypatch,
                                          socket.AF_INET6)
    assert {record.local_addr for record in records} == {"2001:db8::7", "10.1.2.3"}


def test_no_timer_means_no_time_left_in_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    chunk = socket_run(4, timer=0, expires=500) + socket_run(4, timer=2, expires=500)
    _, records, _, _ = assert_paths_agree(chunk, monkeypatch)
    assert [record.timer_ms for record in records] == [0] * 4 + [500] * 4


@pytest.mark.parametrize("cut", [1, 4, 60, 100])
def test_truncation_inside_a_run_is_the_same_error(cut: int, monkeypatch: pytest.MonkeyPatch) -> None:
    chunk = socket_run(12)
    error_type, message, _ = assert_paths_agree(chunk[:len(chunk) - cut], monkeypatch)
    assert error_type is CollectError and "sock_diag" in message


def test_unknown_state_inside_a_run_is_the_same_error(monkeypatch: pytest.MonkeyPatch) -> None:
    message = diag_message(99, LOOPBACK, 1, OTHER, 2, attributes=ATTRIBUTE_PADDING * 4)
    assert assert_paths_agree(socket_run(5) + message + socket_run(5), monkeypatch)[:2] == (
        CollectError, f"sock_diag: unknown TCP state 99 at offset {5 * len(message)}")


def test_errors_and_foreign_messages_after_a_run_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    error = struct.pack("=IHHIIi", 36, NLMSG_ERROR, 0, 1, 0, -errno.EPERM) + b"\0" * 16
    error_type, _, code = assert_paths_agree(socket_run(6) + error, monkeypatch)
    assert issubclass(error_type, OSError) and code == errno.EPERM
    foreign = bytearray(socket_run(1))
    struct.pack_into("=H", foreign, 4, 77)
    assert assert_paths_agree(socket_run(6) + bytes(foreign) + socket_run(2), monkeypatch)[0] is CollectError


def test_dump_intr_inside_a_run_marks_the_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    chunk = socket_run(4) + socket_run(4, flags=NLM_F_DUMP_INTR) + socket_run(4) + done_message()
    _, records, done, interrupted = assert_paths_agree(chunk, monkeypatch)
    assert done and interrupted and len(records) == 12


def test_bytes_that_look_like_a_header_fall_back_to_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """An IPv6 peer address whose words spell the dump's sequence number and port id (a remote
    party picks its address) must not be taken for a message."""
    look_alike = struct.pack("=IHHII", 88, SOCK_DIAG_BY_FAMILY, 0, 1, 0)[:16]
    chunk = socket_run(3, socket.AF_INET6).replace(MAPPED, look_alike) + done_message()
    _, records, done, _ = assert_paths_agree(chunk, monkeypatch, socket.AF_INET6)
    assert done and len(records) == 3


def test_a_run_parses_from_a_larger_receive_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    chunk = socket_run(10) + done_message()
    buffer = bytearray(chunk + b"\xee" * 300)  # stale bytes past the chunk must not be read
    dump = Dump(socket.AF_INET)
    assert parse_dump_chunk(buffer, len(chunk), dump)
    buffer[:] = b"\xdd" * len(buffer)  # the next chunk lands in the same buffer
    assert Parsed(dump).records == parse(chunk)[0].records


def test_chunks_of_one_dump_are_read_together() -> None:
    first, second = socket_run(7), socket_run(5, uid=7)
    dump = Dump(socket.AF_INET)
    assert not parse_dump_chunk(first, len(first), dump)
    assert parse_dump_chunk(second + done_message(), len(second) + 20, dump)
    assert Parsed(dump).records == parse(first)[0].records + parse(second)[0].records


CGROUP_ATTRIBUTE = struct.pack("=HHI", 8, 0, 0) + struct.pack("=HHQ", 12, 21, 987654321)  # INET_DIAG_PAD, then the u64


def tcp_info_attribute(last_ack_recv: int) -> bytes:
    info = bytearray(104)
    struct.pack_into("=I", info, 56, last_ack_recv)  # tcpi_last_ack_recv
    return struct.pack("=HH", 4 + len(info), 2) + bytes(info)


def test_cgroup_id_and_last_ack_come_from_the_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    chunk = (diag_message(8, LOOPBACK, 8080, OTHER, 50000, attributes=ATTRIBUTE_PADDING + CGROUP_ATTRIBUTE
                          + tcp_info_attribute(4321))
             + diag_message(6, LOOPBACK, 40000, OTHER, 80, inode=0, cookie=2)
             + diag_message(1, LOOPBACK, 8080, OTHER, 50001, cookie=3, attributes=CGROUP_ATTRIBUTE))
    _, records, _, _ = assert_paths_agree(chunk + done_message(), monkeypatch)
    assert [(record.cgroup_id, record.lastack_ms) for record in records] == [
        (987654321, 4321), (0, -1), (987654321, -1)]



def test_messages_of_one_size_with_other_attributes_are_read_each_by_its_own() -> None:
    """Attributes are read where the first message of a size has them, for every message of that size
    whose headers sit at the same places; the others (other attributes in as many bytes, a broken
    chain, a first message whose chain is broken) are walked one by one."""
    other = struct.pack("=HH", 12, 99) + bytes(8)  # 12 bytes, as a cgroup id's, of another type

    def broken(size: int) -> bytes:  # claims more than the message holds
        return struct.pack("=HH", 200, 21) + bytes(size - 4)

    messages = [CGROUP_ATTRIBUTE + other, other + CGROUP_ATTRIBUTE, CGROUP_ATTRIBUTE + other, broken(32),
                other + other + ATTRIBUTE_PADDING,  # 32 bytes of attributes each, then 40:
                broken(40), ATTRIBUTE_PADDING + other + CGROUP_ATTRIBUTE]
    chunk = b"".join(diag_message(1, LOOPBACK, 8080, OTHER, 50000 + index, cookie=index + 1, attributes=attributes)
                     for index, attributes in enumerate(messages))
    parsed, done = parse(chunk + done_message())
    assert done
    assert [record.cgroup_id for record in parsed.records] == [987654321, 987654321, 987654321, 0, 0, 0, 987654321]


# --- one dump of both families (TCPDIAG_GETSOCK) ---------------------------------------------------------

def as_compat(chunk: bytes) -> bytes:
    """A chunk of SOCK_DIAG_BY_FAMILY socket messages as the older request's answer (type TCPDIAG_GETSOCK)."""
    out = bytearray(chunk)
    offset = 0
    while offset < len(out):
        length, kind = struct.unpack_from("=IH", out, offset)
        if kind == SOCK_DIAG_BY_FAMILY:
            struct.pack_into("=H", out, offset + 4, netlink.TCPDIAG_GETSOCK)
        offset += (length + 3) & ~3
    return bytes(out)


def parse_both(chunk: bytes) -> tuple[Parsed, bool]:
    dump = Dump(socket.AF_UNSPEC)
    done = parse_dump_chunk(chunk, len(chunk), dump)
    return Parsed(dump), done


def test_a_dump_of_both_families_gives_each_socket_its_family(monkeypatch: pytest.MonkeyPatch) -> None:
    v4, v6 = socket_run(20), socket_run(20, socket.AF_INET6)
    interleaved = b"".join(v4[i:i + len(v4) // 20] + v6[i:i + len(v6) // 20] for i in range(0, len(v4), len(v4) // 20))
    chunk = as_compat(v4 + v6 + interleaved + done_message())
    expected = parse(v4)[0].records + parse(v6, socket.AF_INET6)[0].records
    expected += [record for pair in zip(expected[:20], expected[20:]) for record in pair]
    for walk in (False, True):
        with monkeypatch.context() as patch:
            if walk:
                patch.setattr(netlink, "_message_starts", netlink._walk)
            first, done = parse_both(chunk)
        assert done and first.records == expected
        assert {type(record.family) for record in first.records} == {socket.AddressFamily}


def test_an_ipv4_and_an_ipv6_address_with_the_same_first_bytes_stay_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    look_alike = LOOPBACK + b"\0" * 12  # 7f00:1::, whose first four bytes spell 127.0.0.1
    chunk = (socket_run(3, uid=1) + socket_run(3, socket.AF_INET6, uid=2)).replace(V6, look_alike)
    for walk in (False, True):
        with monkeypatch.context() as patch:
            if walk:
                patch.setattr(netlink, "_message_starts", netlink._walk)
            dump, _ = parse_both(as_compat(chunk))
        assert {(record.family, record.local_addr) for record in dump.records if record.local_port == 0} == {
            (socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "7f00:1::")}


def test_a_dump_of_both_families_takes_only_its_message_type() -> None:
    with pytest.raises(CollectError, match=f"unexpected message type {SOCK_DIAG_BY_FAMILY}"):
        parse_both(socket_run(3))


def test_the_backend_dumps_per_family_when_the_kernel_refuses_both_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert any(record.local_port == port for record in netlink.NetlinkBackend().sockets())
        monkeypatch.setattr(netlink, "TCPDIAG_GETSOCK", 99)  # a request type sock_diag does not know: EINVAL
        backend = netlink.NetlinkBackend()
        assert any(record.local_port == port for record in backend.sockets())


def test_rows_without_cookies_are_matched_by_connection() -> None:
    """/proc gives no cookie: a connection listed twice is found by its 4-tuple, the later state kept."""
    chunk = (
        diag_message(1, LOOPBACK, 40000, OTHER, 80, cookie=0)
        + diag_message(10, LOOPBACK, 8080, b"", 0, cookie=0)
        + diag_message(10, LOOPBACK, 8080, b"", 0, cookie=0)
        + diag_message(6, LOOPBACK, 40000, OTHER, 80, cookie=0, inode=0)
        + done_message()
    )
    dump, _ = parse(chunk)
    kept, dropped = deduplicated(dump.records)
    assert dropped == 1
    assert [(r.local_port, r.state) for r in kept] == [
        (40000, TcpState.TIME_WAIT), (8080, TcpState.LISTEN), (8080, TcpState.LISTEN)]


def own_cgroup_inode() -> int | None:
    """The inode of this process's cgroup v2 directory (what INET_DIAG_CGROUP_ID names), if cgroup v2 is here."""
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/self/cgroup") as lines:
            path = next(line for line in lines if line.startswith("0::")).strip()[3:]
        return os.stat(f"/sys/fs/cgroup{path}").st_ino
    return None


@pytest.mark.parametrize("by_socket", [True, False], ids=["by-socket", "by-dump"])
def test_close_wait_sockets_say_how_long_ago_the_peer_acked(by_socket: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """tcpi_last_ack_recv, as `ss -ti` shows lastack: at least the time waited since the peer's FIN; our own
    sockets carry our cgroup."""
    if not by_socket:
        monkeypatch.setattr(netlink, "EXACT_LOOKUPS_MIN", 0)
        monkeypatch.setattr(netlink, "LOOKUP_COST", 10**9)
    with SocketFarm() as farm:
        built = farm.close_wait(3)
        time.sleep(0.3)
        records = [record for record in netlink.NetlinkBackend().sockets() if built.covers(record)]
    close_wait = [record for record in records if record.state is TcpState.CLOSE_WAIT]
    assert len(close_wait) == 3 and all(record.lastack_ms >= 300 for record in close_wait)
    assert all(record.lastack_ms == -1 for record in records if record.state is not TcpState.CLOSE_WAIT)
    cgroup = own_cgroup_inode()
    if cgroup is not None:
        assert {record.cgroup_id for record in records if record.inode} == {cgroup}


def test_a_chunk_may_end_the_dump_only_with_done_or_a_control_message() -> None:
    sockets = socket_run(3)
    assert not netlink.may_end(sockets, 1, SOCK_DIAG_BY_FAMILY)
    assert netlink.may_end(sockets + done_message(), 1, SOCK_DIAG_BY_FAMILY)
    assert not netlink.may_end(sockets + done_message(), 2, SOCK_DIAG_BY_FAMILY)  # another request's
    error = struct.pack("=IHHIIi", 36, NLMSG_ERROR, 0, 1, 0, -errno.EPERM) + b"\0" * 16
    assert netlink.may_end(error, 1, SOCK_DIAG_BY_FAMILY)
