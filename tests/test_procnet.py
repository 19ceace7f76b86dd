"""The /proc/net/tcp{,6} parser on hand-written text, and the backend on files and on the real /proc."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from loopback_sockets import IPV4, Population

from socktop.collect.procnet import ProcNetBackend, address_bytes, parse_proc_net_tcp
from socktop.collect.records import BackendUnavailable, SocketRecord, TcpState, TimerKind

# /proc prints each 32-bit address word in native byte order; the lines below were taken on x86.
pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="the hand-written /proc text is little-endian")

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
          "                                                     ")
HEADER6 = ("  sl  local_address                         remote_address                        st tx_queue rx_queue"
           " tr tm->when retrnsmt   uid  timeout inode")

LISTEN_V4 = ("   1: 0100007F:E4D1 00000000:0000 0A 00000000:00000005 00:00000000 00000000     0        0 227998 1"
             " 00000000d6f14317 100 0 0 10 0                    ")
ESTABLISHED_V4 = ("   5: 0100007F:E4D1 0100007F:8740 01 0000000C:00000064 02:000AFC75 00000000  1000        3 228000 1"
                  " 00000000a771fb6a 20 4 30 10 -1                   ")
TIME_WAIT_V4 = ("   7: 0100007F:8742 0100007F:E4D1 06 00000000:00000000 03:0000176A 00000000     0        0 0 3"
                " 000000002ab3b9de                                      ")
LISTEN_V6 = ("   1: 00000000000000000000000001000000:BA45 00000000000000000000000000000000:0000 0A"
             " 00000000:00000000 00:00000000 00000000     0        0 228001 1 000000000cfd60c0 100 0 0 10 0")
MAPPED_V6 = ("   4: 0000000000000000FFFF00000100007F:CA45 0000000000000000FFFF00000100007F:C5EA 01"
             " 00000000:00000000 01:00000032 00000002     0        0 228006 1 00000000aaa9233e 20 0 0 10 -1")


def parse_v4(*lines: str, ticks_per_second: int = 100) -> tuple[list[SocketRecord], int]:
    return parse_proc_net_tcp("\n".join((HEADER, *lines, "")), socket.AF_INET, ticks_per_second=ticks_per_second)


def test_ipv4_lines_become_records() -> None:
    records, malformed = parse_v4(LISTEN_V4, ESTABLISHED_V4, TIME_WAIT_V4)
    assert malformed == 0
    assert records == [
        SocketRecord(socket.AF_INET, TcpState.LISTEN, "127.0.0.1", 0xE4D1, "0.0.0.0", 0,
                     recv_q=5, send_q=0, timer=TimerKind.NONE, timer_ms=0, retransmits=0, uid=0, inode=227998),
        SocketRecord(socket.AF_INET, TcpState.ESTABLISHED, "127.0.0.1", 0xE4D1, "127.0.0.1", 0x8740,
                     recv_q=0x64, send_q=0xC, timer=TimerKind.KEEPALIVE, timer_ms=0xAFC75 * 10, retransmits=3,
                     uid=1000, inode=228000),
        SocketRecord(socket.AF_INET, TcpState.TIME_WAIT, "127.0.0.1", 0x8742, "127.0.0.1", 0xE4D1,
                     recv_q=0, send_q=0, timer=TimerKind.TIME_WAIT, timer_ms=0x176A * 10, retransmits=0,
                     uid=0, inode=0),
    ]


def test_ipv6_lines_and_v4_mapped_addresses() -> None:
    records, malformed = parse_proc_net_tcp("\n".join((HEADER6, LISTEN_V6, MAPPED_V6)), socket.AF_INET6,
                                            ticks_per_second=100)
    assert malformed == 0
    listener, mapped = records
    assert (listener.family, listener.state, listener.local_addr, listener.local_port,
            listener.remote_addr, listener.remote_port) == (socket.AF_INET6, TcpState.LISTEN, "::1", 0xBA45, "::", 0)
    # Shown as IPv4, like netlink, but the socket's own family stays AF_INET6.
    assert (mapped.family, mapped.local_addr, mapped.local_port, mapped.remote_addr, mapped.remote_port) == (
        socket.AF_INET6, "127.0.0.1", 0xCA45, "127.0.0.1", 0xC5EA)
    assert (mapped.timer, mapped.timer_ms, mapped.retransmits) == (TimerKind.RETRANSMIT, 500, 2)


@pytest.mark.parametrize("line", [
    "1: 0100007F:E4D1 00000000:0000 0A 00000000:00000005 00:00000000 00000000 0 0 227998",
    "\t  1:   0100007F:E4D1\t00000000:0000  0A  00000000:00000005 00:00000000  00000000   0  0   227998   ",
    LISTEN_V4 + " 17 18 19 new-field another",
], ids=["tight", "wide-and-tabs", "extra-trailing-fields"])
def test_fields_are_found_by_white_space_not_by_column(line: str) -> None:
    (record,), malformed = parse_v4(line)
    assert malformed == 0
    assert record == parse_v4(LISTEN_V4)[0][0]


@pytest.mark.parametrize("line", [
    LISTEN_V4.replace("0100007F:E4D1", "0100007G:E4D1"),  # bad hex in an address
    LISTEN_V4.replace("0100007F:E4D1", "100007F:E4D1"),  # an address of the wrong width
    LISTEN_V4.replace("0100007F:E4D1", "0100007F:1E4D1"),  # a port past 65535
    LISTEN_V4.replace("0100007F:E4D1", "0100007F"),  # no port
    LISTEN_V4.replace(" 0A ", " 0F "),  # unknown state
    LISTEN_V4.replace("00:00000000", "00:0000zz00"),  # bad hex in the timer
    LISTEN_V4.replace(" 227998 ", " inode "),  # not a number
    "   1: 0100007F:E4D1 00000000:0000 0A 00000000:00000005 00:00000000 00000000     0        0",  # too few fields
    "   9: garbage",
], ids=["bad-hex", "short-address", "big-port", "no-port", "unknown-state", "bad-timer", "bad-inode",
        "too-few-fields", "garbage"])
def test_a_malformed_line_is_skipped_and_counted(line: str) -> None:
    records, malformed = parse_v4(ESTABLISHED_V4, line, TIME_WAIT_V4)
    assert malformed == 1
    assert [record.state for record in records] == [TcpState.ESTABLISHED, TcpState.TIME_WAIT]


def test_an_ipv4_address_in_tcp6_is_malformed() -> None:
    records, malformed = parse_proc_net_tcp(LISTEN_V4, socket.AF_INET6)
    assert (records, malformed) == ([], 1)


@pytest.mark.parametrize(("ticks_per_second", "expected_ms"), [(100, 59_940), (250, 23_976), (1000, 5_994)])
def test_timer_ticks_become_milliseconds(ticks_per_second: int, expected_ms: int) -> None:
    (record,), _ = parse_v4(TIME_WAIT_V4, ticks_per_second=ticks_per_second)
    assert record.timer_ms == expected_ms


@pytest.mark.parametrize(("timer", "retransmits"), [("00", 0), ("01", 7), ("02", 2), ("03", 0), ("04", 2)])
def test_retransmits_follow_inet_diag(timer: str, retransmits: int) -> None:
    """Retransmit count under the retransmit timer, probe count under keepalive and zero-window probe."""
    line = f"   5: 0100007F:E4D1 0100007F:8740 01 00000000:00000000 {timer}:00000010 00000007     0        2 228000"
    (record,), _ = parse_v4(line)
    assert record.retransmits == retransmits


def test_request_sockets_read_as_syn_recv() -> None:
    new_syn_recv = LISTEN_V4.replace(" 0A ", " 0C ")
    syn_recv = LISTEN_V4.replace(" 0A ", " 03 ")
    records, _ = parse_v4(new_syn_recv, syn_recv)
    assert [record.state for record in records] == [TcpState.SYN_RECV, TcpState.SYN_RECV]


@pytest.mark.parametrize("text", ["", HEADER, HEADER + "\n", "\n\n"])
def test_header_only_is_empty(text: str) -> None:
    assert parse_proc_net_tcp(text, socket.AF_INET) == ([], 0)


def test_address_bytes_undoes_the_word_order() -> None:
    assert address_bytes("0100007F", socket.AF_INET) == socket.inet_aton("127.0.0.1")
    assert address_bytes("00000000000000000000000001000000", socket.AF_INET6) == socket.inet_pton(
        socket.AF_INET6, "::1")


def write_proc_net(directory: Path, tcp: list[str] | None, tcp6: list[str] | None = None) -> Path:
    for name, lines, header in (("tcp", tcp, HEADER), ("tcp6", tcp6, HEADER6)):
        if lines is not None:
            (directory / name).write_text("\n".join((header, *lines, "")))
    return directory


def test_backend_without_tcp6_lists_ipv4(tmp_path: Path) -> None:
    backend = ProcNetBackend(str(write_proc_net(tmp_path, [LISTEN_V4, "nonsense line"])))
    assert [record.inode for record in backend.sockets()] == [227998]
    assert backend.malformed_lines == 1
    backend.sockets()
    assert backend.malformed_lines == 2


def test_backend_reads_both_files(tmp_path: Path) -> None:
    backend = ProcNetBackend(str(write_proc_net(tmp_path, [LISTEN_V4], [LISTEN_V6, MAPPED_V6])))
    assert [record.family for record in backend.sockets()] == [socket.AF_INET, socket.AF_INET6, socket.AF_INET6]


def test_backend_unavailable_without_tcp(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="cannot read .*tcp"):
        ProcNetBackend(str(write_proc_net(tmp_path, None, [LISTEN_V6])))


def test_backend_reads_every_page_of_the_real_file() -> None:
    """Sixty pairs make about 18 KiB of text: procfs hands it out a page per read."""
    population = Population.listen(IPV4)
    try:
        population.established(60)
        listed = {(record.state, *record.four_tuple) for record in population.ours(ProcNetBackend().sockets())}
        assert listed == {(state, *rest) for _family, state, *rest in population.expected}
    finally:
        population.close()
