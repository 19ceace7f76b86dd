"""Every finding on constructed snapshots: under, at and over each threshold, with its evidence and advice.

Snapshots are built the way the engine builds them: SocketRecords folded by
`model.aggregate.aggregate`, a KernelState, and HistoryPoints for trends.
"""

from __future__ import annotations

import shlex
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import pytest

from socktop.analyze.config import DEFAULT_THRESHOLDS, Thresholds
from socktop.analyze.findings import Finding, Severity, Subject, analyze
from socktop.collect.kernelstate import KernelState
from socktop.collect.records import ProcessInfo, SocketRecord, TcpState, TimerKind
from socktop.demo.builders import await_state
from socktop.model.aggregate import Ownership, aggregate
from socktop.model.snapshot import HistoryPoint, Snapshot, SourceInfo

LEAKY_PID = 4242
SYSCTLS = {
    "net.ipv4.tcp_tw_reuse": "0",
    "net.ipv4.tcp_tw_reuse_delay": "1000",
    "net.ipv4.tcp_timestamps": "1",
    "net.ipv4.tcp_max_tw_buckets": "131072",
    "net.ipv4.ip_local_port_range": "32768 60999",
    "net.ipv4.tcp_fin_timeout": "60",
    "net.ipv4.tcp_keepalive_time": "7200",
    "net.ipv4.tcp_keepalive_intvl": "75",
    "net.ipv4.tcp_keepalive_probes": "9",
    "net.ipv4.tcp_max_orphans": "131072",
    "net.ipv4.tcp_orphan_retries": "0",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv4.tcp_max_syn_backlog": "2048",
    "net.core.somaxconn": "4096",
    "net.ipv4.tcp_mem": "90000 120000 180000",
    "net.ipv4.tcp_tw_recycle": None,
}


def kernel(sockstat: Mapping[str, int] | None = None, counters: Mapping[str, int] | None = None,
           **sysctls: str | None) -> KernelState:
    """This machine's defaults, with ``tcp_tw_reuse=..`` style overrides (dots become the key's last part)."""
    values = dict(SYSCTLS)
    for short, value in sysctls.items():
        (key,) = [k for k in values if k.rpartition(".")[2] == short]
        values[key] = value
    return KernelState(values, dict(counters or {}), dict(sockstat or {"inuse": 10, "orphan": 0, "tw": 0}))


def record(state: TcpState, local: tuple[str, int], remote: tuple[str, int], *, inode: int = 0,
           recv_q: int = 0, send_q: int = 0, timer_ms: int = 0, uid: int = 1000) -> SocketRecord:
    family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    timer = TimerKind.TIME_WAIT if state is TcpState.TIME_WAIT else TimerKind.NONE
    return SocketRecord(family, state, local[0], local[1], remote[0], remote[1], recv_q, send_q, timer, timer_ms,
                        0, uid, inode)


def process(pid: int = LEAKY_PID, name: str = "leaky-api", fds: int | None = 50, limit: int | None = 1024,
            cmdline: str = "/usr/bin/python3 /srv/leaky-api") -> ProcessInfo:
    return ProcessInfo(pid=pid, start_ticks=1, name=name, cmdline=cmdline, uid=1000, user="app",
                       fd_count=fds, fd_limit=limit)


class Table:
    """A socket table under construction, with its owners."""

    def __init__(self) -> None:
        self.records: list[SocketRecord] = []
        self.pids_by_inode: dict[int, tuple[int, ...]] = {}
        self.processes: dict[int, ProcessInfo] = {}
        self._inode = 1000

    def held(self, owner: ProcessInfo, state: TcpState, local: tuple[str, int], remote: tuple[str, int],
             **fields: int) -> None:
        self._inode += 1
        self.processes[owner.pid] = owner
        self.pids_by_inode[self._inode] = (owner.pid,)
        self.records.append(record(state, local, remote, inode=self._inode, **fields))

    def listener(self, port: int, owner: ProcessInfo | None = None, recv_q: int = 0, backlog: int = 128) -> None:
        self.held(owner or process(pid=7, name="server"), TcpState.LISTEN, ("0.0.0.0", port), ("0.0.0.0", 0),
                  recv_q=recv_q, send_q=backlog)

    def close_wait(self, owner: ProcessInfo, n: int, port: int = 8080, peers: Sequence[str] = ("10.0.0.7",),
                   recv_q: int = 0) -> None:
        for i in range(n):
            self.held(owner, TcpState.CLOSE_WAIT, ("10.0.0.1", port), (peers[i % len(peers)], 40000 + i),
                      recv_q=recv_q)

    def unowned(self, state: TcpState, n: int, local: str = "10.0.0.1", remote: tuple[str, int] = ("10.0.0.9", 8080),
                local_ports: Iterable[int] | None = None, ages_s: float = 30.0, orphan_inode: int = 0) -> None:
        """n inode-0 sockets (TIME_WAIT, orphans, requests): TIME_WAIT ages spread evenly over ``ages_s``."""
        ports = iter(local_ports if local_ports is not None else range(33000, 33000 + n))
        for i in range(n):
            age_ms = int(ages_s * 1000 * (i + 1) / n)
            timer = 60_000 - age_ms if state is TcpState.TIME_WAIT else 0
            self.records.append(record(state, (local, next(ports)), remote, inode=orphan_inode, timer_ms=timer))


def point(seq: int, at: float, by_process: Mapping[str, Mapping[TcpState, int]] | None = None,
          counters: Mapping[str, int] | None = None) -> HistoryPoint:
    return HistoryPoint(seq, 1_700_000_000 + at, at, {}, {k: dict(v) for k, v in (by_process or {}).items()},
                        dict(counters or {}))


def close_wait_history(counts: Sequence[int], step: float = 1.0, key: str = f"pid:{LEAKY_PID}") -> tuple[HistoryPoint, ...]:
    return tuple(point(i, i * step, {key: {TcpState.CLOSE_WAIT: n}}) for i, n in enumerate(counts))


def counter_history(name: str, values: Sequence[int], step: float = 1.0) -> tuple[HistoryPoint, ...]:
    return tuple(point(i, i * step, counters={name: v}) for i, v in enumerate(values))


def snapshot_of(table: Table, kernel_state: KernelState | None = None,
                history: tuple[HistoryPoint, ...] = ()) -> Snapshot:
    ownership = Ownership(table.pids_by_inode, table.processes)
    state = kernel_state or kernel()
    aggregates = aggregate(table.records, ownership, str, {}, ephemeral_ports=state.port_range() or (32768, 60999))
    source = SourceInfo("test", "Linux 6.18", "netlink", "", True, "")
    return Snapshot(seq=len(history) or 1, taken_at=1_700_000_000.0, monotonic=history[-1].monotonic if history else 0.0,
                    collect_seconds=0.01, source=source, sockets=table.records, ownership=ownership,
                    aggregates=aggregates, history=history, kernel=state)


def findings(snapshot: Snapshot, kind: str | None = None, **thresholds: float) -> list[Finding]:
    analysis = analyze(snapshot, replace(DEFAULT_THRESHOLDS, **thresholds))
    return [f for f in analysis.findings if kind is None or f.kind == kind]


def one(snapshot: Snapshot, kind: str, **thresholds: float) -> Finding:
    (found,) = findings(snapshot, kind, **thresholds)
    return found


def text_of(finding: Finding) -> str:
    return " ".join([finding.title, *finding.evidence])


# --- CLOSE_WAIT leak -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "severity"), [
    (DEFAULT_THRESHOLDS.close_wait_warning - 1, None),
    (DEFAULT_THRESHOLDS.close_wait_warning, Severity.WARNING),
    (DEFAULT_THRESHOLDS.close_wait_critical - 1, Severity.WARNING),
    (DEFAULT_THRESHOLDS.close_wait_critical, Severity.CRITICAL),
])
def test_close_wait_count_threshold(count: int, severity: Severity | None) -> None:
    table = Table()
    table.close_wait(process(fds=count + 20, limit=1_000_000), count, peers=("10.0.0.7", "10.0.0.8"))
    found = findings(snapshot_of(table), "close-wait-leak")
    if severity is None:
        assert found == []
        return
    (leak,) = found
    assert leak.severity is severity
    assert leak.title == f"{count:,} CLOSE_WAIT held by pid {LEAKY_PID} leaky-api"
    assert leak.subject == Subject("process", f"pid:{LEAKY_PID}") and leak.state is TcpState.CLOSE_WAIT
    assert leak.id == f"close-wait-leak:pid:{LEAKY_PID}"
    assert "10.0.0.7" in text_of(leak) and "10.0.0.8" in text_of(leak)
    assert leak.ss.line == f"ss -tanp state close-wait | grep -F pid={LEAKY_PID},"
    assert "peer closed" in leak.cause
    lines = [a.line for a in leak.actions]
    assert f"lsof -nP -a -p {LEAKY_PID} -iTCP -sTCP:CLOSE_WAIT" in lines
    assert f"py-spy dump --pid {LEAKY_PID}" in lines
    # guarded by the start time (commands.guarded_signal): a reused pid is never signalled
    assert any(f"then kill -TERM {LEAKY_PID}; else" in line and line.endswith("  # comm=leaky-api") for line in lines)
    assert any(f"then kill -KILL {LEAKY_PID}; else" in line for line in lines)
    assert not leak.suggestions  # no sysctl ends CLOSE_WAIT


def rising_leak(rate: float, seconds: float, *, start: int = 0, fds: int = 100, limit: int = 100_000) -> Snapshot:
    counts = [int(start + rate * t) for t in range(int(seconds) + 1)]
    table = Table()
    table.close_wait(process(fds=fds, limit=limit), counts[-1], recv_q=1)
    return snapshot_of(table, history=close_wait_history(counts))


def test_a_rising_close_wait_count_is_a_leak_before_the_count_threshold() -> None:
    leak = one(rising_leak(0.5, 90), "close-wait-leak")
    assert leak.severity is Severity.WARNING
    assert leak.title == f"45 CLOSE_WAIT leak +0.5/s in pid {LEAKY_PID} leaky-api: fds run out in ~2.3 days"
    assert "trend: last 8 s +0.5/s, last 30 s +0.5/s, last 90 s +0.5/s" in text_of(leak)
    assert "45 with Recv-Q 1 (only the FIN unread: never read to end-of-file" in text_of(leak)
    assert "did not even read" not in text_of(leak)
    assert leak.metrics["rate_per_s"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(("rate", "seconds", "start", "expected"), [
    (0.1, 100, 10, True),  # exactly the rise threshold
    (0.09, 100, 10, False),  # just under it
    (1.0, DEFAULT_THRESHOLDS.trend_min_seconds, 0, True),  # exactly the history needed
    (1.0, DEFAULT_THRESHOLDS.trend_min_seconds - 1, 0, True),  # the short window warns before it
    (1.0, DEFAULT_THRESHOLDS.trend_warn_seconds, 20, True),  # exactly the short window
    (1.0, DEFAULT_THRESHOLDS.trend_warn_seconds - 2, 20, False),  # not enough history yet
    (1.0, 8, 0, False),  # rising, but fewer than close_wait_rise_min sockets
])
def test_rise_thresholds(rate: float, seconds: float, start: int, expected: bool) -> None:
    counts = [start + round(rate * t) for t in range(int(seconds) + 1)]
    table = Table()
    table.close_wait(process(), counts[-1])
    snapshot = snapshot_of(table, history=tuple(
        point(i, float(i), {f"pid:{LEAKY_PID}": {TcpState.CLOSE_WAIT: n}}) for i, n in enumerate(counts)))
    assert bool(findings(snapshot, "close-wait-leak")) is expected


def test_rates_use_only_the_recent_window() -> None:
    """An old burst followed by a flat count is not a rise now."""
    counts = [0] * 10 + [60] * 200
    table = Table()
    table.close_wait(process(), 60)
    snapshot = snapshot_of(table, history=close_wait_history(counts))
    assert findings(snapshot, "close-wait-leak") == []


def test_leak_projects_too_many_open_files() -> None:
    leak = one(rising_leak(2.0, 60, fds=904, limit=1024), "close-wait-leak")
    assert leak.severity is Severity.CRITICAL  # 120 descriptors left at 2/s: 1 minute
    assert "descriptors: 904 of 1,024 (RLIMIT_NOFILE): \"Too many open files\" in about 60 s" in text_of(leak)
    assert leak.metrics["minutes_to_fd_limit"] == pytest.approx(1.0, abs=0.05)
    slow = one(rising_leak(0.2, 60, start=20, fds=100, limit=1024), "close-wait-leak")
    assert slow.severity is Severity.WARNING  # 924 left at 0.2/s: 77 minutes, beyond fd_exhaustion_minutes


def test_leak_of_an_unseen_process_is_reported_by_uid_without_kill_commands() -> None:
    table = Table()
    for i in range(DEFAULT_THRESHOLDS.close_wait_warning):
        table.records.append(record(TcpState.CLOSE_WAIT, ("10.0.0.1", 9000), ("10.0.0.7", 40000 + i), inode=50_000 + i))
    leak = one(snapshot_of(table), "close-wait-leak")
    assert leak.subject == Subject("process", "uid:1000")
    assert leak.title.startswith("100 CLOSE_WAIT held by uid 1000 (1000, process not visible)")
    assert leak.ss.line == "ss -tanp state close-wait '( sport = :9000 )'"
    assert leak.actions == ()


HOSTILE = "$(reboot)\n\x1b]52;c;ZWNobyBoaQ==\x07`id`"


def test_hostile_process_name_is_escaped_in_text_and_inert_in_commands() -> None:
    table = Table()
    table.close_wait(process(name=HOSTILE), DEFAULT_THRESHOLDS.close_wait_warning)
    leak = one(snapshot_of(table), "close-wait-leak")
    assert "\x1b" not in leak.title and "\n" not in leak.title and "\\e]52" in leak.title
    for action in leak.actions:
        assert "\n" not in action.line and "\x1b" not in action.line
        if action.line.startswith("kill"):
            assert shlex.split(action.line, comments=True)[:2] in (["kill", "-TERM"], ["kill", "-KILL"])
            assert len(shlex.split(action.line, comments=True)) == 3


# --- file descriptors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fds", "severity"), [
    (799, None), (800, Severity.WARNING), (949, Severity.WARNING), (950, Severity.CRITICAL), (1000, Severity.CRITICAL),
])
def test_fd_exhaustion_thresholds(fds: int, severity: Severity | None) -> None:
    table = Table()
    table.held(process(fds=fds, limit=1000), TcpState.ESTABLISHED, ("10.0.0.1", 40000), ("10.0.0.9", 5432))
    found = findings(snapshot_of(table), "fd-exhaustion")
    assert [f.severity for f in found] == ([severity] if severity else [])
    if found:
        assert found[0].title == f"{fds // 10}% of file descriptors used ({fds:,} of 1,000) by pid {LEAKY_PID} leaky-api"
        assert found[0].subject == Subject("process", f"pid:{LEAKY_PID}")


def test_no_fd_finding_without_a_limit() -> None:
    table = Table()
    table.held(process(fds=10**6, limit=None), TcpState.ESTABLISHED, ("10.0.0.1", 40000), ("10.0.0.9", 5432))
    assert findings(snapshot_of(table), "fd-exhaustion") == []


# --- TIME_WAIT toward one destination ----------------------------------------------------------------------


SMALL_RANGE = "40000 41999"  # 2000 ephemeral ports, so shares are easy to reach


def time_wait_toward(n: int, destination: tuple[str, int] = ("10.0.0.9", 8080), ages_s: float = 60.0,
                     **sysctls: str | None) -> Snapshot:
    table = Table()
    table.unowned(TcpState.TIME_WAIT, n, remote=destination, local_ports=range(40000, 40000 + n), ages_s=ages_s)
    sysctls.setdefault("ip_local_port_range", SMALL_RANGE)
    return snapshot_of(table, kernel(**sysctls))


@pytest.mark.parametrize(("n", "group", "severity"), [
    (999, 1000, None),  # under the group size worth a finding
    (1000, 1000, Severity.WARNING),  # 50% of 2000 ports: the warning share
    (980, 100, Severity.INFO),  # 49%: reported, not alarming
    (1599, 100, Severity.WARNING),
    (1600, 100, Severity.CRITICAL),  # 80%
])
def test_port_share_thresholds(n: int, group: int, severity: Severity | None) -> None:
    found = findings(time_wait_toward(n), "time-wait-ports", time_wait_group=group)
    assert [f.severity for f in found] == ([severity] if severity else [])


def test_time_wait_destination_finding_in_full() -> None:
    tw = one(time_wait_toward(1200, ages_s=60), "time-wait-ports")
    assert tw.title == "1,200 TIME_WAIT toward 10.0.0.9:8080, +20/s: 60% of ports in use, steady near 60%"
    assert tw.runs_out_s is None and "EADDRNOTAVAIL" in text_of(tw) and "IP_BIND_ADDRESS_NO_PORT" in text_of(tw)
    assert tw.subject == Subject("port", "out:8080")
    assert tw.ss.line == "ss -tanp state time-wait '( src 10.0.0.1 and dst 10.0.0.9 and dport = :8080 )'"
    assert "this host closes first (client side)" in text_of(tw)
    assert "ip_local_port_range 40000-41999: 2000 ports" in text_of(tw)
    suggested = {s.key: s for s in tw.suggestions}
    assert suggested["net.ipv4.tcp_tw_reuse"].current == "0" and suggested["net.ipv4.tcp_tw_reuse"].suggested == "1"
    assert suggested["net.ipv4.tcp_tw_reuse"].runtime.line == "sysctl -w net.ipv4.tcp_tw_reuse=1"
    port_range = suggested["net.ipv4.ip_local_port_range"]
    assert (port_range.current, port_range.suggested) == (SMALL_RANGE, "10000 65535")
    assert port_range.runtime.line == "sysctl -w 'net.ipv4.ip_local_port_range=10000 65535'"
    assert port_range.persistent.line == ("echo 'net.ipv4.ip_local_port_range = 10000 65535' | sudo tee -a "
                                          "/etc/sysctl.d/99-zz-socktop.conf && sudo sysctl -p "
                                          "/etc/sysctl.d/99-zz-socktop.conf")
    assert "tcp_tw_recycle" not in " ".join(s.key for s in tw.suggestions)


def test_exhaustion_projected_from_the_rate() -> None:
    """900 sockets all younger than 20 s: 45/s, steady state 2700 > 2000 ports, 1100 left: about 24 s."""
    tw = one(time_wait_toward(900, ages_s=20), "time-wait-ports", time_wait_group=100)
    assert tw.severity is Severity.CRITICAL
    assert tw.title.endswith("ports run out in ~24 s") and tw.runs_out_s == pytest.approx(24, abs=1)
    assert tw.metrics["seconds_to_exhaustion"] == 24
    slower = one(time_wait_toward(900, ages_s=40), "time-wait-ports", time_wait_group=100)
    assert slower.severity is Severity.INFO  # 22.5/s levels off at 1350 of 2000 ports
    assert slower.title.endswith("steady near 68%")


@pytest.mark.parametrize(("reuse", "destination", "applies"), [
    ("2", ("127.0.0.1", 8080), True),  # the default covers loopback
    ("2", ("::1", 8080), True),
    ("2", ("10.0.0.9", 8080), False),
    ("1", ("10.0.0.9", 8080), False),  # depends on that peer's timestamps: not assumed
    ("0", ("127.0.0.1", 8080), False),
])
def test_tw_reuse_already_frees_the_ports(reuse: str, destination: tuple[str, int], applies: bool) -> None:
    tw = one(time_wait_toward(1600, destination, tcp_tw_reuse=reuse), "time-wait-ports", time_wait_group=100)
    assert (tw.severity is Severity.INFO) is applies
    assert ("may take over TIME_WAIT ports" in text_of(tw)) is (reuse != "0" and (applies or reuse == "1"))
    assert "so they do not run out" not in text_of(tw)
    if applies:
        assert tw.suggestions == ()


def test_tw_reuse_does_not_hide_live_connections_filling_the_range() -> None:
    """Reuse frees TIME_WAIT ports, not ESTABLISHED ones: 1700 live of 2000 ports stay critical."""
    table = Table()
    destination = ("127.0.0.1", 8080)
    table.unowned(TcpState.TIME_WAIT, 200, local="127.0.0.1", remote=destination, local_ports=range(40000, 40200))
    table.unowned(TcpState.ESTABLISHED, 1700, local="127.0.0.1", remote=destination,
                  local_ports=range(40200, 41900))
    snapshot = snapshot_of(table, kernel(ip_local_port_range=SMALL_RANGE, tcp_tw_reuse="2"))
    assert one(snapshot, "time-wait-ports", time_wait_group=100).severity is Severity.CRITICAL


def test_tw_reuse_needs_timestamps_and_an_existing_key() -> None:
    no_timestamps = one(time_wait_toward(1600, tcp_timestamps="0"), "time-wait-ports")
    assert "tcp_timestamps, which is 0" in text_of(no_timestamps)
    assert "net.ipv4.tcp_tw_reuse" not in {s.key for s in no_timestamps.suggestions}
    absent = one(time_wait_toward(1600, tcp_tw_reuse=None), "time-wait-ports")
    assert "net.ipv4.tcp_tw_reuse is absent on this kernel" in text_of(absent)
    assert "net.ipv4.tcp_tw_reuse" not in {s.key for s in absent.suggestions}


def test_a_port_range_in_force_is_not_suggested_again_and_clashes_are_named() -> None:
    table = Table()
    table.unowned(TcpState.TIME_WAIT, 30_000, local_ports=range(10000, 40000))
    wide = one(snapshot_of(table, kernel(ip_local_port_range="10000 65535")), "time-wait-ports")
    assert "net.ipv4.ip_local_port_range is already 10000 65535" in text_of(wide)
    assert "net.ipv4.ip_local_port_range" not in {s.key for s in wide.suggestions}
    table = Table()
    table.unowned(TcpState.TIME_WAIT, 1600, local_ports=range(40000, 41600))
    table.listener(15672)
    clash = one(snapshot_of(table, kernel(ip_local_port_range=SMALL_RANGE)), "time-wait-ports")
    (port_range,) = [s for s in clash.suggestions if s.key == "net.ipv4.ip_local_port_range"]
    assert "listens on 15672 inside the new range" in port_range.risk


def test_ipv6_destination_is_bracketed_in_the_ss_filter() -> None:
    table = Table()
    table.unowned(TcpState.TIME_WAIT, 1000, local="2001:db8::1", remote=("2001:db8::9", 443),
                  local_ports=range(40000, 41000))
    tw = one(snapshot_of(table, kernel(ip_local_port_range=SMALL_RANGE)), "time-wait-ports")
    assert tw.ss.line == "ss -tanp state time-wait '( src [2001:db8::1] and dst [2001:db8::9] and dport = :443 )'"


# --- server-side TIME_WAIT ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "expected"), [(999, False), (1000, True)])
def test_server_side_time_wait(n: int, expected: bool) -> None:
    table = Table()
    table.listener(8080)
    for i in range(n):
        table.records.append(record(TcpState.TIME_WAIT, ("10.0.0.1", 8080), ("10.0.0.50", 40000 + i),
                                    timer_ms=30_000))
    found = findings(snapshot_of(table), "time-wait-server")
    assert bool(found) is expected
    assert findings(snapshot_of(table), "time-wait-ports") == []  # they use no ephemeral port here
    if expected:
        (server,) = found
        assert server.severity is Severity.INFO and server.subject == Subject("port", "in:8080")
        assert server.title == "1,000 server-side TIME_WAIT on port 8080, +33/s: the server closes first"
        assert "tcp_tw_reuse does nothing for accepted connections" in text_of(server)
        assert server.ss.line == "ss -tanp state time-wait '( sport = :8080 )'"


def test_server_side_time_wait_of_a_restarted_server_without_listener() -> None:
    """A fixed local port talking to ephemeral ports is the server side even when nothing listens."""
    table = Table()
    for i in range(1000):
        table.records.append(record(TcpState.TIME_WAIT, ("10.0.0.1", 8080), ("10.0.0.50", 40000 + i),
                                    timer_ms=30_000))
    (server,) = findings(snapshot_of(table), "time-wait-server")
    assert server.subject == Subject("port", "in:8080")
    assert "in:8080" in snapshot_of(table).aggregates.by_port


# --- TIME_WAIT table -----------------------------------------------------------------------------------------


def time_wait_table(n: int, buckets: str = "1000", overflow: Sequence[int] = ()) -> Snapshot:
    table = Table()
    for i in range(n):  # many destinations, so no single one makes a finding
        table.records.append(record(TcpState.TIME_WAIT, ("10.0.0.1", 33000 + i), (f"10.1.{i // 250}.{i % 250}", 443),
                                    timer_ms=30_000))
    history = counter_history("TcpExtTCPTimeWaitOverflow", overflow) if overflow else ()
    return snapshot_of(table, kernel({"inuse": 10, "orphan": 0, "tw": n}, tcp_max_tw_buckets=buckets), history)


@pytest.mark.parametrize(("n", "severity"), [
    (699, None), (700, Severity.WARNING), (899, Severity.WARNING), (900, Severity.CRITICAL),
])
def test_time_wait_against_max_tw_buckets(n: int, severity: Severity | None) -> None:
    found = findings(time_wait_table(n), "time-wait-table")
    assert [f.severity for f in found] == ([severity] if severity else [])
    if found:
        (buckets,) = found[0].suggestions
        assert (buckets.key, buckets.current, buckets.suggested) == ("net.ipv4.tcp_max_tw_buckets", "1000", "2000")
        assert found[0].subject == Subject("state", TcpState.TIME_WAIT)


def test_time_wait_overflow_rising_is_critical_at_any_count() -> None:
    found = one(time_wait_table(10, overflow=[5, 5, 9, 15]), "time-wait-table")
    assert found.severity is Severity.CRITICAL
    assert "+3.3/s destroyed early" in found.title
    assert findings(time_wait_table(10, overflow=[5, 5, 5, 5]), "time-wait-table") == []


# --- accept queue, SYN_RECV, ListenOverflows ------------------------------------------------------------------


@pytest.mark.parametrize(("recv_q", "backlog", "expected"), [
    (8, 10, None), (9, 10, "nearly full"), (10, 10, "nearly full"), (11, 10, "full"),
])
def test_accept_queue_threshold(recv_q: int, backlog: int, expected: str | None) -> None:
    table = Table()
    table.listener(8443, process(pid=77, name="slow-acceptor"), recv_q=recv_q, backlog=backlog)
    found = findings(snapshot_of(table), "accept-queue")
    if expected is None:
        assert found == []
        return
    (queue,) = found
    assert queue.title == (f"port 8443 accept queue {expected}: {recv_q} waiting, backlog {backlog} "
                           "(pid 77 slow-acceptor)")
    assert queue.severity is Severity.WARNING  # no ListenOverflows rate in a single snapshot
    assert queue.subject == Subject("port", "in:8443")
    assert queue.ss.line == "ss -tanp state listening '( sport = :8443 )'"
    assert "raise it there" in text_of(queue) and queue.suggestions == ()


def test_full_queue_with_overflows_rising_is_critical_and_somaxconn_capped_is_advised() -> None:
    table = Table()
    table.listener(8443, recv_q=4097, backlog=4096)
    snapshot = snapshot_of(table, history=counter_history("TcpExtListenOverflows", [0, 10, 20]))
    queue = one(snapshot, "accept-queue")
    assert queue.severity is Severity.CRITICAL
    (somaxconn,) = queue.suggestions
    assert (somaxconn.key, somaxconn.current, somaxconn.suggested) == ("net.core.somaxconn", "4096", "8192")
    assert findings(snapshot, "listen-overflows") == []  # the full queue already explains the counter


def test_listen_overflows_without_a_full_queue_in_sight() -> None:
    table = Table()
    table.listener(8443)
    assert findings(snapshot_of(table, history=counter_history("TcpExtListenOverflows", [3, 3, 3])),
                    "listen-overflows") == []
    overflow = one(snapshot_of(table, history=counter_history("TcpExtListenOverflows", [0, 2, 4])), "listen-overflows")
    assert overflow.severity is Severity.WARNING and overflow.title.startswith("ListenOverflows +2.0/s")


def syn_recv(n: int, syncookies: str = "1", counters: Mapping[str, Sequence[int]] | None = None) -> Snapshot:
    table = Table()
    table.listener(443)
    for i in range(n):
        table.records.append(record(TcpState.SYN_RECV, ("10.0.0.1", 443), (f"198.51.100.{i % 200}", 40000 + i)))
    history = tuple(point(i, float(i), counters={name: values[i] for name, values in (counters or {}).items()})
                    for i in range(len(next(iter(counters.values()))))) if counters else ()
    return snapshot_of(table, kernel(tcp_syncookies=syncookies), history)


@pytest.mark.parametrize(("n", "expected"), [(99, False), (100, True)])
def test_syn_recv_threshold(n: int, expected: bool) -> None:
    assert bool(findings(syn_recv(n), "syn-recv")) is expected


def test_syn_flood_reading_and_advice() -> None:
    flood = one(syn_recv(300, counters={"TcpExtSyncookiesSent": [0, 50, 100]}), "syn-recv")
    assert flood.severity is Severity.WARNING and "SYN cookies being sent" in flood.title
    assert "net.ipv4.tcp_syncookies is already 1" in text_of(flood) and flood.suggestions == ()
    assert "198.51.100." in text_of(flood)
    dropping = one(syn_recv(300, "0", counters={"TcpExtTCPReqQFullDrop": [0, 10, 20]}), "syn-recv")
    assert dropping.severity is Severity.CRITICAL and "waiting for final ACKs" in dropping.title
    assert "TCP_DEFER_ACCEPT" in dropping.title and "accept queue" not in dropping.title  # its clients wait in SYN_SENT
    (cookies,) = dropping.suggestions
    assert (cookies.key, cookies.current, cookies.suggested) == ("net.ipv4.tcp_syncookies", "0", "1")


# --- closing states and orphans --------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.LAST_ACK, TcpState.CLOSING])
@pytest.mark.parametrize(("n", "expected"), [(199, False), (200, True)])
def test_closing_build_up_thresholds(state: TcpState, n: int, expected: bool) -> None:
    table = Table()
    table.unowned(state, n, remote=("10.0.0.9", 443))
    found = findings(snapshot_of(table), "closing")
    assert bool(found) is expected
    if expected:
        (closing,) = found
        assert closing.subject == Subject("state", state) and closing.state is state
        assert closing.title == f"{n} {state.label} sockets, {n} orphaned; top peers 10.0.0.9 ({n})"
        assert closing.ss.line == f"ss -tanp state {state.slug}"


def test_orphaned_fin_wait2_advice_follows_the_current_value() -> None:
    table = Table()
    table.unowned(TcpState.FIN_WAIT2, 300)
    (fin_timeout,) = one(snapshot_of(table), "closing").suggestions
    assert (fin_timeout.key, fin_timeout.current, fin_timeout.suggested) == ("net.ipv4.tcp_fin_timeout", "60", "30")
    assert one(snapshot_of(table, kernel(tcp_fin_timeout="30")), "closing").suggestions == ()
    assert one(snapshot_of(table, kernel(tcp_fin_timeout="10")), "closing").suggestions == ()  # never upward
    assert "CLOSE_WAIT on them" in text_of(one(snapshot_of(table), "closing"))


def test_held_fin_wait2_gets_no_orphan_advice() -> None:
    table = Table()
    for i in range(300):
        table.held(process(), TcpState.FIN_WAIT2, ("10.0.0.1", 33000 + i), ("10.0.0.9", 443))
    assert one(snapshot_of(table), "closing").suggestions == ()


def test_orphaned_last_ack_advice() -> None:
    table = Table()
    table.unowned(TcpState.LAST_ACK, 300)
    (retries,) = one(snapshot_of(table), "closing").suggestions
    assert (retries.key, retries.current, retries.suggested) == ("net.ipv4.tcp_orphan_retries", "0", "3")
    assert "after about 3 s instead of 102 s" in retries.risk  # the kernel's time budgets, not counts
    assert one(snapshot_of(table, kernel(tcp_orphan_retries="2")), "closing").suggestions == ()


@pytest.mark.parametrize(("orphans", "severity"), [
    (49, None), (50, Severity.WARNING), (79, Severity.WARNING), (80, Severity.CRITICAL),
])
def test_orphans_against_tcp_max_orphans(orphans: int, severity: Severity | None) -> None:
    table = Table()
    table.unowned(TcpState.FIN_WAIT1, orphans)
    snapshot = snapshot_of(table, kernel(sockstat={"orphan": orphans}, tcp_max_orphans="100"))
    found = findings(snapshot, "orphans")
    assert [f.severity for f in found] == ([severity] if severity else [])
    if found:
        assert found[0].subject == Subject("state", TcpState.FIN_WAIT1)
        assert {s.key: s.suggested for s in found[0].suggestions} == {
            "net.ipv4.tcp_orphan_retries": "3", "net.ipv4.tcp_max_orphans": "200"}


def test_orphan_aborts_rising_are_critical() -> None:
    table = Table()
    snapshot = snapshot_of(table, kernel(sockstat={"orphan": 5}, tcp_max_orphans="100"),
                           counter_history("TcpExtTCPAbortOnMemory", [0, 1, 2]))
    assert one(snapshot, "orphans").severity is Severity.CRITICAL


# --- the whole analysis -------------------------------------------------------------------------------------------


def busy_snapshot() -> Snapshot:
    table = Table()
    table.close_wait(process(fds=1020, limit=1024), 1000)  # critical leak and critical fds (weight 1020)
    table.listener(8443, process(pid=77, name="slow-acceptor"), recv_q=9, backlog=10)  # warning
    table.unowned(TcpState.TIME_WAIT, 1000, remote=("127.0.0.1", 8081),
                  local_ports=range(41000, 42000))  # info: loopback, reused
    return snapshot_of(table, kernel(tcp_tw_reuse="2"))


def test_findings_come_most_severe_first_then_biggest() -> None:
    analysis = analyze(busy_snapshot())
    assert [f.kind for f in analysis.findings] == ["fd-exhaustion", "close-wait-leak", "accept-queue", "time-wait-ports"]
    assert [f.severity for f in analysis.findings] == [Severity.CRITICAL, Severity.CRITICAL, Severity.WARNING,
                                                       Severity.INFO]
    assert {f.subject for f in analysis.findings[:2]} == {Subject("process", f"pid:{LEAKY_PID}")}


def test_analysis_is_deterministic() -> None:
    assert analyze(busy_snapshot()) == analyze(busy_snapshot())


def test_thresholds_change_what_is_found() -> None:
    snapshot = busy_snapshot()
    assert findings(snapshot, close_wait_warning=2000, close_wait_critical=5000, fd_warning=1.0,
                    listen_queue_warning=1.0, time_wait_group=5000) == []


def test_no_suggestion_is_ever_already_in_force_or_tw_recycle() -> None:
    snapshots = [busy_snapshot(), time_wait_toward(1600), time_wait_table(950), syn_recv(300, "0")]
    for snapshot in snapshots:
        analysis = analyze(snapshot, Thresholds(time_wait_group=100))
        for suggestion in analysis.sysctl.suggestions:
            assert suggestion.current.split() != suggestion.suggested.split()
            assert suggestion.key != "net.ipv4.tcp_tw_recycle"
            assert snapshot.kernel is not None and snapshot.kernel.sysctls[suggestion.key] == suggestion.current


def test_a_snapshot_without_kernel_state_still_analyzes() -> None:
    snapshot = replace(busy_snapshot(), kernel=None)
    analysis = analyze(snapshot)
    assert analysis.findings and analysis.sysctl.note == "kernel settings were not read for this snapshot"
    assert analysis.sysctl.suggestions == ()


# --- the kernel review: CLOSE_WAIT forensics, timewait and orphan accounting, TCP memory ---------------------


def test_close_wait_recv_q_is_split_by_the_bug_it_points_at_on_real_sockets() -> None:
    """The kernel decides: the peer's FIN takes one sequence number, so a CLOSE_WAIT never read shows Recv-Q 1,
    one read to end-of-file 0, one with data left more than 1."""
    from socktop.collect.netlink import NetlinkBackend

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    servers = [listener.accept()[0] for _ in clients]
    try:
        servers[2].sendall(b"hello")  # 5 bytes the client will not read
        for server in servers:
            server.close()
        deadline = time.monotonic() + 30
        ports = {c.getsockname()[1]: i for i, c in enumerate(clients)}
        clients[1].settimeout(30)
        while clients[1].recv(100):  # read to end-of-file
            pass
        while True:
            records = {ports[r.local_port]: r for r in NetlinkBackend().sockets()
                       if r.state is TcpState.CLOSE_WAIT and r.local_port in ports}
            if len(records) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert [records[i].recv_q for i in range(3)] == [1, 0, 6]  # 5 bytes + the FIN
        table = Table()
        owner = process()
        for i, real in records.items():
            table.processes[owner.pid] = owner
            table.pids_by_inode[real.inode] = (owner.pid,)
            table.records.append(real)
        leak = one(snapshot_of(table), "close-wait-leak", close_wait_warning=3)
        (split,) = [line for line in leak.evidence if "Recv-Q" in line]
        assert "1 with Recv-Q 1 (only the FIN unread: never read to end-of-file" in split
        assert "1 with Recv-Q 0 (read end-of-file, then no close()" in split
        assert "1 with Recv-Q above 1 (data never read" in split
    finally:
        for sock in (*clients, listener):
            sock.close()


def test_a_steady_rise_is_a_finding_within_10_seconds_and_the_long_window_confirms() -> None:
    assert findings(rising_leak(3.0, 6), "close-wait-leak") == []  # 6 s: not yet
    early = one(rising_leak(3.0, 9), "close-wait-leak")  # the demo's leak rate, 9 s of history
    assert early.severity is Severity.WARNING and early.title.startswith("27 CLOSE_WAIT leak +3.0/s in pid 4242")
    jump = [0] * 5 + [40] * 5  # one burst is not a steady rise
    table = Table()
    table.close_wait(process(), 40)
    assert findings(snapshot_of(table, history=close_wait_history(jump)), "close-wait-leak") == []


def test_a_leak_that_stopped_reads_stable_and_projects_nothing() -> None:
    counts = [round(2.5 * t) for t in range(61)] + [150] * 100  # rose for 60 s, flat for the last 100 s
    table = Table()
    table.close_wait(process(fds=200, limit=1024), 150)
    leak = one(snapshot_of(table, history=close_wait_history(counts)), "close-wait-leak")
    assert "stable" in leak.title and "+" not in leak.title.split("stable")[0]
    assert "fds run out" not in text_of(leak) and "Too many open files" not in text_of(leak)
    assert leak.metrics["rate_per_s"] == 0 and leak.runs_out_s is None


def test_findings_rank_by_what_runs_out_first() -> None:
    """Both critical: the ports that run out in 24 s come before the bigger leak that needs 5 minutes."""
    table = Table()
    table.close_wait(process(fds=1100, limit=1200), 1100)
    table.unowned(TcpState.TIME_WAIT, 900, remote=("10.0.0.9", 8080), local_ports=range(40000, 40900), ages_s=20)
    snapshot = snapshot_of(table, kernel(ip_local_port_range=SMALL_RANGE),
                           close_wait_history([1080 + t // 3 for t in range(61)]))
    found = {f.kind: f for f in analyze(snapshot, replace(DEFAULT_THRESHOLDS, time_wait_group=100)).findings}
    assert found["close-wait-leak"].severity is found["time-wait-ports"].severity is Severity.CRITICAL
    assert found["close-wait-leak"].weight > found["time-wait-ports"].weight
    kinds = list(found)
    assert kinds.index("time-wait-ports") < kinds.index("close-wait-leak")


def test_the_oldest_close_wait_age_comes_from_lastack_and_unknown_says_nothing() -> None:
    table = Table()
    table.close_wait(process(), 100)
    assert "oldest" not in text_of(one(snapshot_of(table), "close-wait-leak"))  # lastack -1: unknown
    table.records = [r._replace(lastack_ms=1000 * i) for i, r in enumerate(table.records)]
    leak = one(snapshot_of(table), "close-wait-leak")
    assert "oldest: the peer's last ACK came 99 s ago (ss -tni: lastack)" in text_of(leak)
    assert "keeps no age" not in text_of(leak)


def test_descriptors_the_table_no_longer_lists_are_reported() -> None:
    table = Table()
    table.close_wait(process(fds=400, limit=1024), 10)
    table.processes[LEAKY_PID] = replace(table.processes[LEAKY_PID], tcp_fds=160)
    snapshot = snapshot_of(table)
    gap = one(snapshot, "tcp-fd-leak")
    assert gap.title.startswith("150 TCP descriptors with no connection left in pid 4242 leaky-api")
    assert "150 more the kernel no longer lists" in text_of(gap)
    leak = one(snapshot, "close-wait-leak", close_wait_warning=10)
    assert leak.metrics["tcp_fds_unlisted"] == 150 and "160 in /proc/4242/fd, 10 of them" in text_of(leak)


def test_a_connection_aborted_under_its_descriptor_is_counted_on_a_real_process() -> None:
    """An RST ends the connection, the descriptor stays: /proc/PID/fd has one TCP socket more than the table."""
    import os
    import struct

    from socktop.model.engine import Engine

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()  # RST: the client's connection goes to CLOSE, its descriptor stays
    try:
        await_state([client], TcpState.CLOSE)
        snapshot = Engine("netlink", 1.0).refresh()
        group = snapshot.aggregates.by_process[f"pid:{os.getpid()}"]
        assert group.process is not None and group.process.tcp_fds is not None
        assert group.process.tcp_fds - sum(group.counts.values()) >= 1
    finally:
        client.close()
        listener.close()


def test_orphaned_fin_wait2_count_as_timewait_not_as_orphans() -> None:
    table = Table()
    table.unowned(TcpState.TIME_WAIT, 500, remote=("10.0.0.9", 443))
    for r in range(300):
        table.records.append(record(TcpState.FIN_WAIT2, ("10.0.0.1", 50000 + r), (f"10.2.0.{r % 200}", 443))
                             ._replace(timer=TimerKind.TIME_WAIT, timer_ms=20_000))
    table.unowned(TcpState.FIN_WAIT1, 200, local_ports=range(52000, 52200))
    snapshot = snapshot_of(table, kernel({"inuse": 10, "orphan": 600, "tw": 800}, tcp_max_tw_buckets="1000",
                                         tcp_max_orphans="1000"))
    tw = one(snapshot, "time-wait-table")
    assert tw.metrics["count"] == 800 and "500 TIME_WAIT and 300 orphaned FIN_WAIT_2" in text_of(tw)
    orphans = one(snapshot, "orphans")
    assert "orphaned in this table by state: FIN-WAIT-1 200;" in text_of(orphans)
    closing = [f for f in findings(snapshot, "closing") if f.state is TcpState.FIN_WAIT2]
    assert "300 of them timewait sockets" in text_of(closing[0]) and "not as orphans" in text_of(closing[0])


def test_tcp_memory_is_told_apart_from_orphans() -> None:
    aborts = counter_history("TcpExtTCPAbortOnMemory", [0, 4, 8])
    memory = snapshot_of(Table(), kernel({"orphan": 3, "mem": 5000, "tw": 0}, tcp_max_orphans="1000",
                                         tcp_mem="1000 2000 4000"), aborts)
    assert findings(memory, "orphans") == []  # never double tcp_max_orphans when memory is the cause
    tcp_memory = one(memory, "tcp-memory")
    assert tcp_memory.severity is Severity.CRITICAL and "raising tcp_max_orphans would not help" in text_of(tcp_memory)
    assert tcp_memory.suggestions == ()
    orphans = snapshot_of(Table(), kernel({"orphan": 900, "mem": 100, "tw": 0}, tcp_max_orphans="1000",
                                          tcp_mem="1000 2000 4000"), aborts)
    (found,) = findings(orphans, "orphans")
    assert "below it, so the aborts are orphans" in text_of(found)
    assert "net.ipv4.tcp_max_orphans" in {s.key for s in found.suggestions}
    assert findings(orphans, "tcp-memory") == []


def test_the_kernels_lastack_ages_a_real_close_wait_leak() -> None:
    """tcp_info's last ACK received (ss -tni: lastack) reaches the leak finding as the oldest socket's age."""
    import os

    from socktop.model.engine import Engine

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    for server in [listener.accept()[0] for _ in clients]:
        server.close()
    try:
        await_state(clients, TcpState.CLOSE_WAIT)
        snapshot = Engine("netlink", 1.0).refresh()
        ports = {c.getsockname()[1] for c in clients}
        ours = [r for r in snapshot.sockets if r.state is TcpState.CLOSE_WAIT and r.local_port in ports]
        assert len(ours) == 3 and all(r.lastack_ms >= 0 for r in ours)
        leak = next(f for f in analyze(snapshot, replace(DEFAULT_THRESHOLDS, close_wait_warning=3)).findings
                    if f.kind == "close-wait-leak" and f.subject.key == f"pid:{os.getpid()}")
        assert "oldest: the peer's last ACK came" in text_of(leak) and leak.metrics["oldest_lastack_ms"] >= 0
    finally:
        for sock in (*clients, listener):
            sock.close()
