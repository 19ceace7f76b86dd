"""The findings engine: patterns in a snapshot and its history turned into diagnoses with evidence and commands.

Findings come only from the snapshot (sockets, owners, aggregates, kernel
settings and counters) and its history, so they are deterministic and
testable with constructed snapshots. The UI and CLI call one function:

    analyze(snapshot, thresholds=DEFAULT_THRESHOLDS, warnings=()) -> Analysis

`Analysis.findings` is most severe first, then what runs out first
(``runs_out_s``: descriptors, ports), then most sockets first. A
`Finding` has: ``id`` (stable across refreshes, e.g. "close-wait-leak:pid:4242"),
``kind`` ("close-wait-leak", "fd-exhaustion", "time-wait-ports",
"time-wait-server", "time-wait-table", "accept-queue", "syn-recv",
"listen-overflows", "closing", "orphans", "tcp-memory", "tcp-fd-leak"),
``severity``, a one-line ``title`` that says what is wrong, key numbers
first (what, where, how fast, when it runs out), ``subject`` (the pane row it is about: kind "state" with a
TcpState key, "port" with "in:8080"/"out:443", "process" with "pid:4242" or
"uid:1000"), ``state``, ``evidence`` lines, ``metrics`` (numbers, for JSON),
``ss`` (lists the sockets behind it), ``cause`` (from the knowledge base),
``actions`` (copyable commands) and ``suggestions`` (sysctl changes, each
with runtime and persistent forms). `Analysis.sysctl` is the advisor's
context: every setting read, counter rates, all suggestions.
Untrusted text (process names, command lines) in titles and evidence has
passed through `safetext.printable`.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any
from operator import itemgetter

import numpy as np

from ..collect.columns import SocketTable, group_rows, table_of
from ..collect.records import SocketRecord, TcpState, TimerKind
from ..model.aggregate import DEFAULT_EPHEMERAL_PORTS, LOCAL_PORT, ProcessGroup, inbound_flags
from ..model.history import process_series, rate_per_second, span_seconds
from ..model.snapshot import HistoryPoint, Snapshot
from ..safetext import printable
from .commands import Command, kill_commands, lsof_sockets, nstat_counters, ss_sockets, stack_dump
from .config import DEFAULT_THRESHOLDS, Thresholds
from .knowledge import (EPHEMERAL_PORTS_TEXT, TIME_WAIT_SECONDS, duration_text, knowledge_for, orphan_retries,
                        time_budget)
from .nsfindings import localize, split
from .sysctl import Advisor, Suggestion, SysctlContext, counter_rate, doubled, recent, sysctl_context, wider_port_range

TIME_WAIT_BYTES = 256  # a tw_sock_TCP slab object
CLOSING_STATES = (TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.LAST_ACK, TcpState.CLOSING)
TOP_PEERS = 3
DESTINATION = itemgetter(2, 4, 5)  # (local address, remote address, remote port)
DESTINATION_COLUMNS = ("local_addr", "remote_addr", "remote_port")  # the same, as SocketColumns names


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """2 for critical, 1 for warning, 0 for info: sort descending for most severe first."""
        return _RANKS[self]


_RANKS = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


@dataclass(frozen=True, slots=True)
class Subject:
    """The pane row a finding is about; ``key`` matches the Aggregates keys (or a TcpState)."""

    kind: str  # "state", "port" or "process"
    key: TcpState | str

    def __str__(self) -> str:
        return self.key.label if isinstance(self.key, TcpState) else self.key


@dataclass(frozen=True, slots=True)
class Finding:
    """One diagnosis: what, how bad, the numbers behind it, why, and what to run."""

    id: str
    kind: str
    severity: Severity
    title: str
    subject: Subject
    state: TcpState
    evidence: tuple[str, ...]
    metrics: Mapping[str, float | int | str | None]
    ss: Command
    cause: str
    actions: tuple[Command, ...]
    suggestions: tuple[Suggestion, ...] = ()
    weight: float = 0.0  # orders findings of one severity and outlook: the sockets involved
    runs_out_s: float | None = None  # seconds until what it concerns runs out at the recent rate; None: not heading there


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything the analysis says about one snapshot."""

    findings: tuple[Finding, ...]  # most severe first
    sysctl: SysctlContext
    thresholds: Thresholds
    warnings: tuple[str, ...] = ()  # e.g. a config file that could not be used


def analyze(snapshot: Snapshot, thresholds: Thresholds = DEFAULT_THRESHOLDS,
            warnings: Sequence[str] = ()) -> Analysis:
    """Every finding for this snapshot, most severe first, and the sysctl context.

    Each network namespace is judged on its own sockets and settings (`nsfindings`).
    """
    findings: list[Finding] = []
    for part, namespace in split(snapshot, thresholds.rate_window_seconds):
        found = _findings(part, thresholds)
        findings += found if namespace is None else [localize(finding, namespace) for finding in found]
    findings.sort(key=lambda f: (-f.severity.rank, f.runs_out_s if f.runs_out_s is not None else math.inf,
                                 -f.weight, f.id))
    context = sysctl_context(snapshot, thresholds, (s for f in findings for s in f.suggestions))
    return Analysis(tuple(findings), context, thresholds, tuple(warnings))


def _findings(snapshot: Snapshot, thresholds: Thresholds) -> list[Finding]:
    scan = _Scan(snapshot, thresholds)
    findings = [
        *_close_wait_leaks(scan),
        *_tcp_fd_leaks(scan),
        *_fd_exhaustion(scan),
        *_time_wait_destinations(scan),
        *_time_wait_served_ports(scan),
        *_time_wait_table(scan),
        *_accept_queues(scan),
        *_syn_recv(scan),
        *_closing_buildups(scan),
        *_orphans(scan),
        *_tcp_memory(scan),
    ]
    if not any(finding.kind == "accept-queue" for finding in findings):
        findings += _listen_overflows(scan)
    return findings


class _Scan:
    """What the finders share for one snapshot: records by state, recent history, counter rates."""

    def __init__(self, snapshot: Snapshot, thresholds: Thresholds) -> None:
        self.snapshot = snapshot
        self.thresholds = thresholds
        self.kernel = snapshot.kernel
        self.points: Sequence[HistoryPoint] = recent(snapshot.history, thresholds.rate_window_seconds)
        self.span = span_seconds(self.points)
        self.port_range = (self.kernel.port_range() if self.kernel else None) or DEFAULT_EPHEMERAL_PORTS
        self._by_state: dict[TcpState, Sequence[SocketRecord]] = {}
        self._time_wait_sides: tuple[SocketTable, SocketTable] | None = None

    def records(self, state: TcpState) -> Sequence[SocketRecord]:
        """The sockets in one state, picked from the columns (their records built as they are read), each once."""
        found = self._by_state.get(state)
        if found is None:
            found = []
            if self.snapshot.aggregates.by_state.get(state):
                found = self.snapshot.select(self.snapshot.columns.state == state)
            self._by_state[state] = found
        return found

    def time_wait_sides(self) -> tuple[SocketTable, SocketTable]:
        """TIME_WAIT split into (client side, server side) by the rule the port groups were made by
        (`inbound_flags`): "in" serves, "out" called out. Split over the columns: no record is built."""
        if self._time_wait_sides is None:
            table = table_of(self.records(TcpState.TIME_WAIT))
            aggregates = self.snapshot.aggregates
            serving = inbound_flags(table.columns.local_port, table.columns.remote_port,
                                    aggregates.listening_ports, aggregates.ephemeral_ports)
            self._time_wait_sides = (table.take(~serving), table.take(serving))
        return self._time_wait_sides

    def rate(self, counter: str) -> float | None:
        return counter_rate(self.points, counter)[0]

    def sysctl_int(self, key: str) -> int | None:
        return self.kernel.sysctl_int(key) if self.kernel else None

    def trusted_trend(self) -> bool:
        return self.span >= self.thresholds.trend_min_seconds

    def advisor(self) -> Advisor:
        return Advisor(self.kernel)

    def held_by(self, group: ProcessGroup, state: TcpState) -> list[SocketRecord]:
        """The sockets in ``state`` that this process (or, for a uid row, its unseen processes) holds."""
        pids_by_inode = self.snapshot.ownership.pids_by_inode
        if group.pid is not None:
            return [r for r in self.records(state) if group.pid in pids_by_inode.get(r.inode, ())]
        return [r for r in self.records(state) if r.inode and r.uid == group.uid and not pids_by_inode.get(r.inode)]


def _finding(kind: str, key: str, severity: Severity, title: str, subject: Subject, state: TcpState,
             evidence: Iterable[str], metrics: Mapping[str, float | int | str | None], ss: Command,
             actions: Iterable[Command] = (), advisor: Advisor | None = None, cause: str = "",
             weight: float = 0.0, runs_out_s: float | None = None) -> Finding:
    """A Finding whose cause defaults to the knowledge of its state and whose advisor notes join the evidence."""
    knowledge = knowledge_for(state)
    notes = advisor.notes if advisor else []
    return Finding(
        id=f"{kind}:{key}" if key else kind, kind=kind, severity=severity, title=title, subject=subject,
        state=state, evidence=(*evidence, *notes), metrics=dict(metrics), ss=ss,
        cause=cause or f"{knowledge.meaning} Usual causes: {' '.join(knowledge.causes)}",
        actions=tuple(actions), suggestions=tuple(advisor.suggestions) if advisor else (), weight=weight,
        runs_out_s=runs_out_s,
    )


# --- CLOSE_WAIT and descriptors ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Trend:
    """One process's count in one state over three windows: short (warns), recent (the rate used), long."""

    short_rate: float
    short_span: float
    steady: bool  # the short window rises step by step, not in one jump
    recent_rate: float
    recent_span: float
    long_rate: float
    long_span: float


def _trend(scan: _Scan, key: str, state: TcpState) -> _Trend:
    history, limits = scan.snapshot.history, scan.thresholds
    short = _covering(history, limits.trend_warn_seconds)
    short_series = process_series(short, key, state)
    rising_steps = sum(1 for a, b in zip(short_series, short_series[1:]) if b > a)
    falling_steps = sum(1 for a, b in zip(short_series, short_series[1:]) if b < a)
    steady = len(short_series) >= 3 and rising_steps >= (len(short_series) - 1) / 2 and \
        falling_steps * 4 <= len(short_series) - 1
    recent_points = recent(history, limits.trend_min_seconds)
    return _Trend(
        rate_per_second(short, short_series), span_seconds(short), steady,
        rate_per_second(recent_points, process_series(recent_points, key, state)), span_seconds(recent_points),
        rate_per_second(scan.points, process_series(scan.points, key, state)), scan.span,
    )


def _covering(points: Sequence[HistoryPoint], seconds: float) -> Sequence[HistoryPoint]:
    """The last points that span at least ``seconds`` (all of them when the history is shorter): refreshes
    come a little late, so "the last 8 s" taken strictly would never quite span 8 s."""
    start = points[-1].monotonic - seconds if points else 0.0
    first = next((i for i in range(len(points) - 1, -1, -1) if points[i].monotonic <= start), 0)
    return points[first:]


def _close_wait_leaks(scan: _Scan) -> Iterable[Finding]:
    """A process whose CLOSE_WAIT count is high, or rises: a steady rise over the short window
    (trend_warn_seconds) warns; the long window (trend_min_seconds and more) confirms it. The rate
    that projects "Too many open files" is the recent one, so a leak that stopped reads "stable"."""
    limits = scan.thresholds
    for group in scan.snapshot.aggregates.by_process.values():
        count = group.counts.get(TcpState.CLOSE_WAIT, 0)
        if not count:
            continue
        trend = _trend(scan, group.key, TcpState.CLOSE_WAIT)
        enough = count >= limits.close_wait_rise_min
        warned = enough and trend.steady and trend.short_rate >= limits.close_wait_rise_per_s and \
            trend.short_span >= limits.trend_warn_seconds
        confirmed = enough and scan.trusted_trend() and trend.long_rate >= limits.close_wait_rise_per_s
        if count < limits.close_wait_warning and not (warned or confirmed):
            continue
        rising_now = (warned or confirmed) and trend.recent_rate >= limits.close_wait_rise_per_s
        rate = trend.recent_rate if rising_now else 0.0
        held = scan.held_by(group, TcpState.CLOSE_WAIT)
        fds, fd_limit = _fds(group)
        minutes_left = _minutes_to_fd_limit(group, rate) if rising_now else None
        critical = count >= limits.close_wait_critical or (
            minutes_left is not None and minutes_left <= limits.fd_exhaustion_minutes)
        owner = _owner_text(group)
        if rising_now:
            title = f"{count:,} CLOSE_WAIT leak {_rate_text(rate)} in {owner}"
            if minutes_left is not None:
                title += f": fds run out in ~{duration_text(minutes_left * 60)}"
        elif confirmed or scan.trusted_trend():
            title = f"{count:,} CLOSE_WAIT held by {owner}, stable" + (
                f" (rose {_rate_text(trend.long_rate)} earlier)" if confirmed else "")
        else:
            title = f"{count:,} CLOSE_WAIT held by {owner}"
        yield _finding(
            "close-wait-leak", group.key, Severity.CRITICAL if critical else Severity.WARNING, title,
            Subject("process", group.key), TcpState.CLOSE_WAIT,
            evidence=[
                f"{count:,} CLOSE_WAIT held; a finding from {limits.close_wait_warning}, or from "
                f"{limits.close_wait_rise_min} when rising; critical from {limits.close_wait_critical}",
                _leak_trend_text(scan, trend),
                *_oldest_text(held),
                f"peers that closed: {_peers_text(held)}" if held else "peers: not visible (owner not readable)",
                *_unread_text(held),
                *_descriptor_gap_text(group),
                *_fd_text(group, rate, minutes_left),
            ],
            metrics={"count": count, "rate_per_s": round(rate, 4), "span_s": round(trend.recent_span, 1),
                     "long_rate_per_s": round(trend.long_rate, 4), "fds": fds, "fd_limit": fd_limit,
                     "minutes_to_fd_limit": None if minutes_left is None else round(minutes_left, 1),
                     "oldest_lastack_ms": max(map(_lastack, held), default=-1),
                     "tcp_fds_unlisted": _unlisted_tcp_fds(group)},
            ss=ss_sockets(TcpState.CLOSE_WAIT, pid=group.pid, local_port=_only_port(held, group)),
            actions=_process_actions(group, TcpState.CLOSE_WAIT),
            weight=count,
            runs_out_s=None if minutes_left is None else minutes_left * 60,
        )


def close_wait_forensics(snapshot: Snapshot, group: ProcessGroup) -> list[str]:
    """For the process drawer: its CLOSE_WAIT by Recv-Q (which bug), the oldest one's age, and its TCP
    descriptors against its sockets in the table."""
    held = _Scan(snapshot, DEFAULT_THRESHOLDS).held_by(group, TcpState.CLOSE_WAIT)
    return [*_unread_text(held), *_oldest_text(held), *_descriptor_gap_text(group)]


def recv_q_meaning(record: SocketRecord) -> str:
    """What one socket's Recv-Q says ('' unless the state gives it a meaning beyond unread bytes)."""
    if record.state is TcpState.CLOSE_WAIT:
        return ("only the peer's FIN unread: never read to end-of-file" if record.recv_q == 1 else
                "end-of-file read, close() never called" if record.recv_q == 0 else
                f"{record.recv_q - 1} bytes never read, and the FIN")
    if record.state is TcpState.LISTEN:
        return (f"{record.recv_q} waiting for accept(), backlog {record.send_q}"
                + (": full, new SYNs are dropped" if record.recv_q > record.send_q else ""))
    return ""


def lastack_text(record: SocketRecord) -> str:
    """``lastack`` as an age ('' when unknown)."""
    age = _lastack(record)
    return f"{duration_text(age / 1000)} since the peer's last ACK (ss -tni: lastack)" if age >= 0 else ""


def _leak_trend_text(scan: _Scan, trend: _Trend) -> str:
    limits = scan.thresholds
    if trend.short_span < limits.trend_warn_seconds:
        return f"trend: needs {limits.trend_warn_seconds:.0f} s of history, have {trend.short_span:.0f} s"
    parts = [f"last {trend.short_span:.0f} s {_rate_text(trend.short_rate)}"
             + ("" if trend.steady or abs(trend.short_rate) < limits.close_wait_rise_per_s else " (not steady)")]
    if trend.recent_span > trend.short_span:
        parts.append(f"last {trend.recent_span:.0f} s {_rate_text(trend.recent_rate)}")
    if trend.long_span > trend.recent_span:
        parts.append(f"last {trend.long_span:.0f} s {_rate_text(trend.long_rate)}")
    return (f"trend: {', '.join(parts)}; a rise counts from {_rate_text(limits.close_wait_rise_per_s)} "
            f"(steady over {limits.trend_warn_seconds:.0f} s warns, {limits.trend_min_seconds:.0f} s confirms)")


def _lastack(record: SocketRecord) -> int:
    """``lastack_ms``, -1 when unknown, including records built without the trailing fields."""
    return record[_LASTACK] if len(record) > _LASTACK else -1


_LASTACK = SocketRecord._fields.index("lastack_ms")


def _oldest_text(held: Sequence[SocketRecord]) -> list[str]:
    """The age of the oldest, from tcp_info's last ACK received (ss -tni: lastack); nothing when unknown."""
    oldest = max(map(_lastack, held), default=-1)
    if oldest < 0:
        return []
    return [f"oldest: the peer's last ACK came {duration_text(oldest / 1000)} ago (ss -tni: lastack), about "
            "when it closed: the leak is at least that old"]


def _unlisted_tcp_fds(group: ProcessGroup) -> int | None:
    """TCP descriptors of the process that no socket of the table stands for: connections the kernel
    ended under the descriptor (keepalive, timeout, RST) or, without -B dumps, bound-only sockets."""
    process = group.process
    if process is None or process.tcp_fds is None:
        return None
    return max(0, process.tcp_fds - sum(group.counts.values()))


def _descriptor_gap_text(group: ProcessGroup) -> list[str]:
    unlisted = _unlisted_tcp_fds(group)
    if unlisted is None:
        return []
    held = sum(group.counts.values())
    line = f"TCP descriptors: {held + unlisted} in /proc/{group.pid}/fd, {held} of them sockets in the table"
    if unlisted:
        line += (f"; {unlisted:,} more the kernel no longer lists (aborted under the descriptor by keepalive, "
                 "a timeout or an RST, or bound only): leaked just the same")
    return [line]


def _tcp_fd_leaks(scan: _Scan) -> Iterable[Finding]:
    """A process holding many TCP descriptors whose connections are gone from the table: a descriptor
    leak that shows few CLOSE_WAIT (the kernel aborted them under the descriptor)."""
    limits = scan.thresholds
    for group in scan.snapshot.aggregates.by_process.values():
        unlisted = _unlisted_tcp_fds(group)
        if unlisted is None or unlisted < limits.close_wait_warning:
            continue
        fds, fd_limit = _fds(group)
        yield _finding(
            "tcp-fd-leak", group.key, Severity.WARNING,
            f"{unlisted:,} TCP descriptors with no connection left in {_owner_text(group)}: a descriptor leak",
            Subject("process", group.key), TcpState.CLOSE,
            evidence=[*_descriptor_gap_text(group),
                      f"{group.counts.get(TcpState.CLOSE_WAIT, 0):,} CLOSE_WAIT held: a leak can show few once "
                      "keepalive or a timeout has aborted the connections; a finding from "
                      f"{limits.close_wait_warning}",
                      *_fd_text(group, 0.0, None)],
            metrics={"tcp_fds_unlisted": unlisted, "fds": fds, "fd_limit": fd_limit},
            ss=ss_sockets(TcpState.CLOSE, pid=group.pid),
            actions=_process_actions(group, None),
            cause="The process keeps descriptors of connections that are over: the peer closed (CLOSE_WAIT) "
                  "and the kernel later aborted the connection (keepalive probe answered by RST, "
                  "TCP_USER_TIMEOUT, a write answered by RST), but close() was never called.",
            weight=unlisted,
        )


def _fd_exhaustion(scan: _Scan) -> Iterable[Finding]:
    """Any socket-holding process near its RLIMIT_NOFILE."""
    limits = scan.thresholds
    for group in scan.snapshot.aggregates.by_process.values():
        fds, limit = _fds(group)
        if fds is None or not limit or fds / limit < limits.fd_warning:
            continue
        share = fds / limit
        yield _finding(
            "fd-exhaustion", group.key, Severity.CRITICAL if share >= limits.fd_critical else Severity.WARNING,
            f"{math.floor(share * 100)}% of file descriptors used ({fds:,} of {limit:,}) by {_owner_text(group)}",
            Subject("process", group.key), TcpState.CLOSE_WAIT if group.counts.get(TcpState.CLOSE_WAIT) else
            TcpState.ESTABLISHED,
            evidence=[
                f"{fds:,} descriptors open, RLIMIT_NOFILE {limit:,}: a finding from {limits.fd_warning:.0%}, "
                f"critical from {limits.fd_critical:.0%}",
                f"{group.total:,} TCP sockets held, {group.counts.get(TcpState.CLOSE_WAIT, 0):,} of them CLOSE_WAIT",
                "at the limit every open(), socket() and accept() fails with EMFILE (\"Too many open files\")",
            ],
            metrics={"fds": fds, "fd_limit": limit, "ratio": round(share, 4)},
            ss=ss_sockets(pid=group.pid),
            actions=_process_actions(group, None),
            cause="Descriptors are opened faster than they are closed (a leak), or the limit is too low for "
                  "the load. Sockets in CLOSE_WAIT are the usual leak: each holds a descriptor.",
            weight=fds,
        )


def _count_text(value: int | None) -> str:
    """A count as the panes print it ("131,072"), or "unknown" when it could not be read."""
    return f"{value:,}" if value is not None else "unknown"


def _fds(group: ProcessGroup) -> tuple[int | None, int | None]:
    process = group.process
    return (process.fd_count, process.fd_limit) if process else (None, None)


def _minutes_to_fd_limit(group: ProcessGroup, rate: float) -> float | None:
    fds, limit = _fds(group)
    if fds is None or not limit or rate <= 0:
        return None
    return max(0.0, (limit - fds) / rate / 60)


def _fd_text(group: ProcessGroup, rate: float, minutes_left: float | None) -> list[str]:
    fds, limit = _fds(group)
    if fds is None:
        return ["descriptors: unknown (the owning process is not visible here)"]
    if not limit:
        return [f"descriptors: {fds:,} open, no RLIMIT_NOFILE limit"]
    line = f"descriptors: {fds:,} of {limit:,} (RLIMIT_NOFILE)"
    if minutes_left is not None:
        line += f": \"Too many open files\" in about {duration_text(minutes_left * 60)} at {_rate_text(rate)}"
    return [line]


def _unread_text(held: Sequence[SocketRecord]) -> list[str]:
    """CLOSE_WAIT split by Recv-Q, each with the bug it points at (the peer's FIN takes one sequence number)."""
    if not held:
        return []
    by_q = Counter(min(record.recv_q, 2) for record in held)
    parts = [f"{by_q[1]} with Recv-Q 1 (only the FIN unread: never read to end-of-file, e.g. an idle pooled "
             "connection or a socket nobody polls)" if by_q[1] else "",
             f"{by_q[0]} with Recv-Q 0 (read end-of-file, then no close(): a missing close on the EOF or error "
             "path)" if by_q[0] else "",
             f"{by_q[2]} with Recv-Q above 1 (data never read: a reader stuck or abandoned)" if by_q[2] else ""]
    return ["; ".join(part for part in parts if part)]


def _only_port(held: Sequence[SocketRecord], group: ProcessGroup) -> int | None:
    """For a row with no pid to filter on (a uid row), the one local port all its sockets share."""
    if group.pid is not None:
        return None
    ports = {record.local_port for record in held}
    return ports.pop() if len(ports) == 1 else None


def _process_actions(group: ProcessGroup, state: TcpState | None) -> list[Command]:
    process = group.process
    if process is None:
        return []
    return [lsof_sockets(process.pid, state), stack_dump(process), *kill_commands(process.pid, process.name, process.start_ticks)]


# --- TIME_WAIT -----------------------------------------------------------------------------------


def _time_wait_destinations(scan: _Scan) -> Iterable[Finding]:
    """Client-side TIME_WAIT per (local address, remote address, remote port) against the ephemeral range."""
    limits = scan.thresholds
    candidates = _groups_of_at_least(scan.time_wait_sides()[0], DESTINATION, DESTINATION_COLUMNS,
                                     limits.time_wait_group)
    if not candidates:
        return
    # every socket from that address to that destination holds one of its ports, whatever its state
    toward = {port for _, _, port in candidates}
    snapshot = scan.snapshot
    in_use = _group_sizes(snapshot.select(np.isin(snapshot.columns.remote_port, list(toward))), DESTINATION,
                          DESTINATION_COLUMNS)
    port_range = scan.port_range
    range_size = port_range[1] - port_range[0] + 1
    for (local, remote, port), records in candidates.items():
        count, used = len(records), in_use[(local, remote, port)]
        measured = _close_rate_toward(scan, remote, port)
        rate = measured[0] if measured else _time_wait_rate(records)
        share = used / range_size
        steady = used - count + rate * TIME_WAIT_SECONDS
        seconds_left = (range_size - used) / rate if rate > 0 and steady >= range_size else None
        reuse = _tw_reuse_applies(scan, remote)
        # with reuse toward loopback (this kernel's own timestamps), connect() takes over TIME_WAIT ports: only
        # the live connections can run the range out; toward others it depends on the peer's timestamps
        reused = bool(reuse) and ipaddress.ip_address(remote).is_loopback
        pressure, runs_out_in = ((used - count) / range_size, None) if reused else (share, seconds_left)
        if pressure >= limits.port_range_critical or (runs_out_in is not None and runs_out_in <= 60):
            severity = Severity.CRITICAL
        elif pressure >= limits.port_range_warning or runs_out_in is not None:
            severity = Severity.WARNING
        else:
            severity = Severity.INFO
        outlook = ("reused (tcp_tw_reuse)" if reused else
                   f"ports run out in ~{_duration_text(seconds_left)}" if runs_out_in is not None
                   else f"steady near {min(steady / range_size, 1):.0%}")
        advisor = scan.advisor()
        if severity is not Severity.INFO and not reused:
            _advise_port_pressure(scan, advisor, f"{remote}:{port}", count, share, port_range)
        group = scan.snapshot.aggregates.by_port.get(f"out:{port}")
        yield _finding(
            "time-wait-ports", f"{local}>{remote}:{port}", severity,
            f"{count:,} TIME_WAIT toward {remote}:{port}, {_rate_text(rate)}: {share:.0%} of ports in use, {outlook}",
            Subject("port", f"out:{port}"), TcpState.TIME_WAIT,
            evidence=[
                f"this host closes first (client side): {count:,} TIME_WAIT, {used:,} ports in use toward "
                f"{remote}:{port} from {local}",
                f"ip_local_port_range {port_range[0]}-{port_range[1]}: {range_size} ports per destination; "
                f"a finding from {limits.port_range_warning:.0%}, critical from {limits.port_range_critical:.0%}",
                f"connections closed toward it: {_rate_text(rate)} over the last {measured[1]:.0f} s (the kernel's "
                f"close events), each a TIME_WAIT for {TIME_WAIT_SECONDS} s when this host closes first"
                if measured else
                f"new TIME_WAIT: about {_rate_text(rate)} (from the age of the oldest, each lasts {TIME_WAIT_SECONDS} s)",
                f"opened by {_pids_text(scan, group.pids)}" if group and group.pids else
                "opened by: unknown, the connections closed between refreshes (TIME_WAIT has no owner); "
                "the live ones toward it name the process",
                *([reuse] if reuse else []),
                "connect() fails with EADDRNOTAVAIL when no port is left for this destination; more source "
                "addresses help only if the application bind()s with IP_BIND_ADDRESS_NO_PORT or "
                "IP_LOCAL_PORT_RANGE (socktop explain ip_local_port_range)",
            ],
            metrics={"count": count, "ports_in_use": used, "range": range_size, "share": round(share, 4),
                     "rate_per_s": round(rate, 2),
                     "seconds_to_exhaustion": None if seconds_left is None else round(seconds_left)},
            ss=ss_sockets(TcpState.TIME_WAIT, local_addr=local, remote_addr=remote, remote_port=port),
            actions=[ss_sockets(remote_addr=remote, remote_port=port), nstat_counters(["TcpActiveOpens"])],
            advisor=advisor,
            cause="This host closes its outgoing connections first, so each close parks a TIME_WAIT for 60 s "
                  "on a source port toward this destination: a new connection per request (no keep-alive, "
                  f"no pool) turns the request rate into port use. {EPHEMERAL_PORTS_TEXT}",
            weight=count,
            runs_out_s=runs_out_in,
        )


def _grouped(records: Sequence[SocketRecord], names: tuple[str, ...]
             ) -> tuple[SocketTable, np.ndarray, np.ndarray, np.ndarray]:
    """The rows grouped by the columns ``names``, at C speed: the table, each row's group,
    each group's first row and each group's size."""
    table = table_of(records)
    inverse, first, sizes = group_rows([getattr(table.columns, name) for name in names])
    return table, inverse, first, sizes


def _group_sizes(records: Sequence[SocketRecord], key: Callable[[SocketRecord], Hashable],
                 names: tuple[str, ...]) -> Counter:
    """How many records share each ``key`` (the columns ``names`` hold it); one record built per group."""
    table, _, first, sizes = _grouped(records, names)
    return Counter({key(table[row]): size for row, size in zip(first.tolist(), sizes.tolist())})


def _groups_of_at_least(records: Sequence[SocketRecord], key: Callable[[SocketRecord], Hashable],
                        names: tuple[str, ...], minimum: int) -> dict[Any, SocketTable]:
    """The records grouped by ``key`` (the columns ``names`` hold it), only the groups of ``minimum``
    or more; counted over the columns, so only the big groups' records are ever built."""
    table, inverse, first, sizes = _grouped(records, names)
    return {key(table[int(first[group])]): table.take(np.flatnonzero(inverse == group))
            for group in np.flatnonzero(sizes >= max(minimum, 1)).tolist()}


def _close_rate_toward(scan: _Scan, remote: str, port: int) -> tuple[float, float] | None:
    """Outgoing closes per second toward a destination, and over how many seconds, from the
    kernel's destroy events; None without them (no feed, or a single refresh)."""
    churn = scan.snapshot.churn
    if churn is None or not churn.seconds:
        return None
    group = churn.toward(remote, port)
    return (group.per_second if group else 0.0), churn.seconds


def _time_wait_rate(records: Sequence[SocketRecord]) -> float:
    """New TIME_WAIT per second: the count over the age of the oldest (each starts with 60 s on its timer)."""
    oldest_age = TIME_WAIT_SECONDS - int(table_of(records).columns.timer_ms.min()) / 1000
    return len(records) / max(oldest_age, 1.0)


def _tw_reuse_applies(scan: _Scan, remote: str) -> str:
    """Why tcp_tw_reuse already frees these ports for new connections ('' when it does not)."""
    reuse, timestamps = scan.sysctl_int("net.ipv4.tcp_tw_reuse"), scan.sysctl_int("net.ipv4.tcp_timestamps")
    if not reuse or timestamps == 0 or (reuse == 2 and not ipaddress.ip_address(remote).is_loopback):
        return ""
    delay = scan.sysctl_int("net.ipv4.tcp_tw_reuse_delay")
    after = f"{delay} ms" if delay is not None else "1 s"
    return (f"tcp_tw_reuse is {reuse}{' (loopback only)' if reuse == 2 else ''}: new connections to this "
            f"destination may take over TIME_WAIT ports {after} after they entered TIME_WAIT, but only those whose "
            "peer sent TCP timestamps (check: ss -tni dst " + remote + ", look for ts)")


def _advise_port_pressure(scan: _Scan, advisor: Advisor, destination: str, count: int, share: float,
                          port_range: tuple[int, int]) -> None:
    if scan.sysctl_int("net.ipv4.tcp_timestamps") == 0:
        advisor.notes.append("tcp_tw_reuse would need net.ipv4.tcp_timestamps, which is 0 here")
    else:
        advisor.propose(
            "net.ipv4.tcp_tw_reuse", "1",
            f"{count:,} TIME_WAIT toward {destination} hold {share:.0%} of the ports; with reuse, new outgoing "
            f"connections may take over TIME_WAIT ports instead of waiting 60 s, if that peer sends TCP "
            f"timestamps (ss -tni dst {destination.rpartition(':')[0]}: look for ts)",
            "relies on the peer's TCP timestamps to reject old duplicates (none from Windows by default or "
            "behind some load balancers: then it does nothing); applies to every outgoing connection of this "
            "network namespace; no effect on connections a server accepts",
        )
    low, high = wider_port_range(port_range)
    added = sorted(p for p in scan.snapshot.aggregates.listening_ports if low <= p < port_range[0] or
                   port_range[1] < p <= high)
    clash = (f"; this host listens on {', '.join(map(str, added[:5]))} inside the new range: list such ports in "
             f"net.ipv4.ip_local_reserved_ports") if added else ""
    advisor.propose(
        "net.ipv4.ip_local_port_range", f"{low} {high}",
        f"{share:.0%} of the {port_range[1] - port_range[0] + 1} ephemeral ports toward {destination} are in use",
        "a service that starts later on a port inside the range may find it taken by an outgoing connection "
        f"(EADDRINUSE){clash}",
    )


def _time_wait_served_ports(scan: _Scan) -> Iterable[Finding]:
    """Server-side TIME_WAIT: on a port we serve, the server closes first."""
    limits = scan.thresholds
    for port, records in _groups_of_at_least(scan.time_wait_sides()[1], LOCAL_PORT, ("local_port",),
                                             limits.time_wait_group).items():
        count, rate = len(records), _time_wait_rate(records)
        yield _finding(
            "time-wait-server", f"in:{port}", Severity.INFO,
            f"{count:,} server-side TIME_WAIT on port {port}, {_rate_text(rate)}: the server closes first",
            Subject("port", f"in:{port}"), TcpState.TIME_WAIT,
            evidence=[
                f"{count:,} TIME_WAIT on served port {port} ({_pids_text(scan, scan.snapshot.aggregates.listener_pids.get(port, ()))}); "
                f"a finding from {limits.time_wait_group}",
                f"peers: {_peers_text(records)}",
                "they use no ephemeral ports here and do not block clients (a new SYN reopens the 4-tuple); "
                "tcp_tw_reuse does nothing for accepted connections",
            ],
            metrics={"count": count, "rate_per_s": round(rate, 2)},
            ss=ss_sockets(TcpState.TIME_WAIT, local_port=port),
            cause="The server closes the connections first (keep-alive off, or a server idle timeout shorter than "
                  "the clients'), so TIME_WAIT lands on the server. Let the clients close first, or keep "
                  "connections open.",
            weight=count,
        )


def _time_wait_table(scan: _Scan) -> Iterable[Finding]:
    """Timewait sockets (sockstat tw: TIME_WAIT and orphaned FIN_WAIT_2 turned timewait) against
    tcp_max_tw_buckets, and TCPTimeWaitOverflow rising."""
    limits = scan.thresholds
    rows = scan.snapshot.aggregates.by_state.get(TcpState.TIME_WAIT, 0)
    fin_wait2 = sum(1 for r in scan.records(TcpState.FIN_WAIT2) if r.timer is TimerKind.TIME_WAIT)
    tw = scan.kernel.sockstat.get("tw") if scan.kernel else None
    total = tw if tw is not None else rows + fin_wait2
    buckets = scan.sysctl_int("net.ipv4.tcp_max_tw_buckets")
    overflow = scan.rate("TcpExtTCPTimeWaitOverflow") or 0.0
    share = total / buckets if buckets else 0.0
    if share < limits.tw_buckets_warning and overflow <= 0:
        return
    critical = overflow > 0 or share >= limits.tw_buckets_critical
    advisor = scan.advisor()
    needed = max(total, int(buckets or 0))
    advisor.propose(
        "net.ipv4.tcp_max_tw_buckets", doubled(buckets, 2 * needed),
        f"{total:,} timewait sockets against a limit of {_count_text(buckets)}" + (f"; {overflow:.1f}/s destroyed early" if overflow else ""),
        f"each costs about {TIME_WAIT_BYTES} bytes of kernel memory; the cause (short connections) remains",
    )
    overflow_text = f", {_rate_text(overflow)} destroyed early" if overflow else ""
    yield _finding(
        "time-wait-table", "", Severity.CRITICAL if critical else Severity.WARNING,
        f"{total:,} timewait sockets: {share:.0%} of tcp_max_tw_buckets ({_count_text(buckets)}){overflow_text}",
        Subject("state", TcpState.TIME_WAIT), TcpState.TIME_WAIT,
        evidence=[
            (f"sockstat tw {tw:,} in this network namespace" if tw is not None else
             f"{total:,} timewait sockets in the table (sockstat not readable)")
            + f" ({rows:,} TIME_WAIT and {fin_wait2:,} orphaned FIN_WAIT_2 in the table; both count), "
            f"tcp_max_tw_buckets {_count_text(buckets)}: a finding from {limits.tw_buckets_warning:.0%}, critical from "
            f"{limits.tw_buckets_critical:.0%}",
            f"TCPTimeWaitOverflow {_counter_text(scan, 'TcpExtTCPTimeWaitOverflow')}: past the limit new timewait "
            "sockets are destroyed at once and lose their protection",
        ],
        metrics={"count": total, "limit": buckets, "share": round(share, 4), "overflow_per_s": round(overflow, 3)},
        ss=ss_sockets(TcpState.TIME_WAIT),
        actions=[nstat_counters(["TcpExtTCPTimeWaitOverflow"])],
        advisor=advisor,
        weight=total,
    )


# --- listeners: accept queue and SYN_RECV -------------------------------------------------------------


def _accept_queues(scan: _Scan) -> Iterable[Finding]:
    """A LISTEN socket whose accept queue (Recv-Q) is near its backlog (Send-Q)."""
    if "listen_backlog" in scan.snapshot.source.unavailable:
        yield from _accept_queues_without_backlog(scan)
        return
    limits = scan.thresholds
    worst: dict[int, SocketRecord] = {}
    for record in scan.records(TcpState.LISTEN):
        if record.send_q and record.recv_q >= limits.listen_queue_warning * record.send_q:
            known = worst.get(record.local_port)
            if known is None or record.recv_q / record.send_q > known.recv_q / known.send_q:
                worst[record.local_port] = record
    overflows = scan.rate("TcpExtListenOverflows")
    somaxconn = scan.sysctl_int("net.core.somaxconn")
    for port, record in worst.items():
        full = record.recv_q > record.send_q  # the kernel queues one more than the backlog
        advisor = scan.advisor()
        if somaxconn is not None and record.send_q >= somaxconn:
            advisor.propose("net.core.somaxconn", doubled(somaxconn),
                            f"the listener on port {port} has a backlog of {record.send_q}, the somaxconn cap, "
                            f"and its queue holds {record.recv_q}",
                            "a longer queue, not a faster application: connections wait longer before failing; "
                            "the application must also ask for a larger backlog in listen()")
        else:
            advisor.notes.append(f"the backlog {record.send_q} is what the application asked for in listen() "
                                 f"(below net.core.somaxconn {somaxconn}): raise it there")
        pids = scan.snapshot.aggregates.listener_pids.get(port, ())
        processes = [p for p in map(scan.snapshot.process, pids) if p is not None]
        yield _finding(
            "accept-queue", f"in:{port}",
            Severity.CRITICAL if full and overflows else Severity.WARNING,
            f"port {port} accept queue {'full' if full else 'nearly full'}: {record.recv_q} waiting, "
            f"backlog {record.send_q} ({_pids_text(scan, pids)})",
            Subject("port", f"in:{port}"), TcpState.LISTEN,
            evidence=[
                f"Recv-Q {record.recv_q} (connections waiting for accept()) against Send-Q {record.send_q} "
                f"(the backlog); a finding from {limits.listen_queue_warning:.0%}",
                f"in this network namespace (every listener counts) ListenOverflows "
                f"{_counter_text(scan, 'TcpExtListenOverflows')}, "
                f"ListenDrops {_counter_text(scan, 'TcpExtListenDrops')}",
                f"{sum(1 for r in scan.records(TcpState.SYN_RECV) if r.local_port == port)} SYN_RECV on the port",
            ],
            metrics={"recv_q": record.recv_q, "backlog": record.send_q,
                     "overflows_per_s": None if overflows is None else round(overflows, 3)},
            ss=ss_sockets(TcpState.LISTEN, local_port=port),
            actions=[nstat_counters(["TcpExtListenOverflows", "TcpExtListenDrops"]),
                     *(stack_dump(process) for process in processes[:1])],
            advisor=advisor,
            weight=record.recv_q,
        )


def _accept_queues_without_backlog(scan: _Scan) -> Iterable[Finding]:
    """Listeners with connections waiting for accept() when the backend cannot say the backlog.

    Never silent: the queue is full for certain once it holds more than
    net.core.somaxconn (every backlog is capped there), otherwise the
    finding says the limit is not available with this backend.
    """
    backend = scan.snapshot.source.backend
    if "listen_queue" in scan.snapshot.source.unavailable:
        return  # psutil knows neither the queue nor its limit: the README says so; nothing to weigh here
    somaxconn = scan.sysctl_int("net.core.somaxconn")
    waiting: dict[int, int] = {}
    for record in scan.records(TcpState.LISTEN):
        if record.recv_q:
            waiting[record.local_port] = max(waiting.get(record.local_port, 0), record.recv_q)
    for port, queued in waiting.items():
        full = somaxconn is not None and queued > somaxconn
        pids = scan.snapshot.aggregates.listener_pids.get(port, ())
        yield _finding(
            "accept-queue", f"in:{port}", Severity.WARNING if full else Severity.INFO,
            f"port {port} accept queue {'full' if full else 'in use'}: {queued} waiting, backlog not available "
            f"with the {backend} backend ({_pids_text(scan, pids)})",
            Subject("port", f"in:{port}"), TcpState.LISTEN,
            evidence=[
                f"Recv-Q {queued} (connections waiting for accept()); the backlog (Send-Q) is not available with "
                f"the {backend} backend: `ss -ltn` shows it",
                f"every backlog is capped at net.core.somaxconn {somaxconn}" + (": the queue is past it, so full"
                                                                               if full else ""),
            ],
            metrics={"recv_q": queued, "backlog": None},
            ss=ss_sockets(TcpState.LISTEN, local_port=port),
            actions=[nstat_counters(["TcpExtListenOverflows", "TcpExtListenDrops"])],
            weight=queued,
        )


def _syn_recv(scan: _Scan) -> Iterable[Finding]:
    """Many half-open connections on one listening port: a SYN flood, or a full accept queue."""
    limits = scan.thresholds
    per_port = Counter(record.local_port for record in scan.records(TcpState.SYN_RECV))
    cookies, dropped = scan.rate("TcpExtSyncookiesSent") or 0.0, scan.rate("TcpExtTCPReqQFullDrop") or 0.0
    for port, count in per_port.items():
        if count < limits.syn_recv_warning:
            continue
        advisor = scan.advisor()
        advisor.propose("net.ipv4.tcp_syncookies", "1",
                        f"{count:,} half-open connections on port {port}; cookies answer a full SYN queue instead "
                        "of dropping SYNs",
                        "connections made with cookies while the queue is full lose some TCP options "
                        "(kept only with timestamps)")
        reading = ("SYN cookies being sent: a SYN flood or a burst beyond the SYN queue" if cookies else
                   "waiting for final ACKs: spoofed SYNs, lost ACKs or TCP_DEFER_ACCEPT")
        yield _finding(
            "syn-recv", f"in:{port}", Severity.CRITICAL if dropped else Severity.WARNING,
            f"{count:,} SYN_RECV on port {port}: {reading}",
            Subject("port", f"in:{port}"), TcpState.SYN_RECV,
            evidence=[
                f"{count:,} half-open connections on port {port}; a finding from {limits.syn_recv_warning}",
                f"SyncookiesSent {_counter_text(scan, 'TcpExtSyncookiesSent')}, TCPReqQFullDrop "
                f"{_counter_text(scan, 'TcpExtTCPReqQFullDrop')}, ListenOverflows "
                f"{_counter_text(scan, 'TcpExtListenOverflows')}",
                f"sources: {_peers_text(scan.records(TcpState.SYN_RECV), port=port)}",
            ],
            metrics={"count": count, "syncookies_per_s": round(cookies, 3), "reqq_drops_per_s": round(dropped, 3)},
            ss=ss_sockets(TcpState.SYN_RECV, local_port=port),
            actions=[nstat_counters(["TcpExtSyncookiesSent", "TcpExtTCPReqQFullDrop", "TcpExtListenOverflows"])],
            advisor=advisor,
            weight=count,
        )


def _listen_overflows(scan: _Scan) -> Iterable[Finding]:
    """ListenOverflows rising while no listener is caught with a full queue: bursts between snapshots."""
    rate = scan.rate("TcpExtListenOverflows")
    if not rate:
        return
    yield _finding(
        "listen-overflows", "", Severity.WARNING,
        f"ListenOverflows +{rate:.1f}/s: an accept queue overflows between refreshes",
        Subject("state", TcpState.LISTEN), TcpState.LISTEN,
        evidence=[f"ListenOverflows {_counter_text(scan, 'TcpExtListenOverflows')}, ListenDrops "
                  f"{_counter_text(scan, 'TcpExtListenDrops')}; no listener's Recv-Q is near its backlog right now"],
        metrics={"overflows_per_s": round(rate, 3)},
        ss=ss_sockets(TcpState.LISTEN),
        actions=[nstat_counters(["TcpExtListenOverflows", "TcpExtListenDrops"])],
        weight=rate,
    )


# --- closing states and orphans ------------------------------------------------------------------------


def _closing_buildups(scan: _Scan) -> Iterable[Finding]:
    """FIN_WAIT_1, FIN_WAIT_2, LAST_ACK or CLOSING piling up in the table (this network namespace)."""
    limits = scan.thresholds
    for state in CLOSING_STATES:
        records = scan.records(state)
        if len(records) < limits.closing_warning:
            continue
        orphaned = sum(1 for record in records if not record.inode)
        timewait = sum(1 for record in records if record.timer is TimerKind.TIME_WAIT)
        advisor = scan.advisor()
        if orphaned * 2 >= len(records):
            why = f"{orphaned:,} orphaned {state.label} wait on peers that do not answer or do not close"
            (_advise_fin_timeout if state is TcpState.FIN_WAIT2 else _advise_orphan_retries)(scan, advisor, why)
        peer_hint = (["the peers have not closed their end: look for CLOSE_WAIT on them"]
                     if state is TcpState.FIN_WAIT2 else [])
        yield _finding(
            "closing", state.slug, Severity.WARNING,
            f"{len(records):,} {state.label} sockets, {orphaned:,} orphaned; top peers {_peers_text(records)}",
            Subject("state", state), state,
            evidence=[f"{len(records)} {state.label}; a finding from {limits.closing_warning}",
                      f"{orphaned:,} orphaned (closed by their process, no descriptor)"
                      + (f", {timewait} of them timewait sockets (tcp_fin_timeout at most 60): they end after "
                         "tcp_fin_timeout and count in sockstat tw against tcp_max_tw_buckets, not as orphans"
                         if timewait else ""), *peer_hint],
            metrics={"count": len(records), "orphaned": orphaned},
            ss=ss_sockets(state),
            advisor=advisor,
            weight=len(records),
        )


def _advise_fin_timeout(scan: _Scan, advisor: Advisor, why: str) -> None:
    """Orphaned FIN_WAIT_2 end sooner with a shorter tcp_fin_timeout (never suggested upward)."""
    fin_timeout = scan.sysctl_int("net.ipv4.tcp_fin_timeout")
    if fin_timeout is None or fin_timeout > 30:
        advisor.propose("net.ipv4.tcp_fin_timeout", "30", why,
                        "a peer slower than 30 s to close gets an RST instead of a clean close")


def _advise_orphan_retries(scan: _Scan, advisor: Advisor, why: str) -> None:
    """Other orphans give up sooner with fewer tcp_orphan_retries (0 means 8; never suggested upward)."""
    retries = scan.sysctl_int("net.ipv4.tcp_orphan_retries")
    if retries is None or retries == 0 or retries > 3:
        now = duration_text(time_budget(orphan_retries(retries)))
        advisor.propose("net.ipv4.tcp_orphan_retries", "3", why,
                        f"an orphan then gives up after about {duration_text(time_budget(3))} instead of {now} (a "
                        "time budget from a 200 ms minimum timeout, whatever the round-trip time): peers slower or "
                        "lossier than that get an RST and may lose the last data")


def _orphaned(scan: _Scan) -> dict[TcpState, int]:
    """Orphans in the table by state, as sockstat counts them: an orphaned FIN_WAIT_2 turned timewait
    (timer timewait, tcp_fin_timeout at most 60) is counted in tw, not here."""
    return {state: sum(1 for r in scan.records(state) if not r.inode and r.timer is not TimerKind.TIME_WAIT)
            for state in CLOSING_STATES}


def _memory_pages(scan: _Scan) -> tuple[int | None, tuple[int, int, int] | None]:
    """TCP memory in pages (sockstat mem, host-wide) and tcp_mem (None when hidden or absent)."""
    kernel = scan.kernel
    return (kernel.sockstat.get("mem"), kernel.tcp_mem()) if kernel else (None, None)


def _orphans(scan: _Scan) -> Iterable[Finding]:
    """Orphans (sockstat, host-wide) against tcp_max_orphans, and TCPAbortOnMemory rising while TCP memory
    is below tcp_mem's max (else `_tcp_memory` says it is memory)."""
    limits = scan.thresholds
    kernel = scan.kernel
    orphans = kernel.sockstat.get("orphan") if kernel else None
    maximum = scan.sysctl_int("net.ipv4.tcp_max_orphans")
    aborts = scan.rate("TcpExtTCPAbortOnMemory") or 0.0
    mem, tcp_mem = _memory_pages(scan)
    memory_full = mem is not None and tcp_mem is not None and mem >= tcp_mem[2]
    if orphans is None:
        return
    share = orphans / maximum if maximum else 0.0
    if share < limits.orphans_warning and (aborts <= 0 or memory_full or not orphans):
        return
    critical = (aborts > 0 and not memory_full) or share >= limits.orphans_critical
    closing = _orphaned(scan)
    state = max(closing, key=closing.__getitem__)
    advisor = scan.advisor()
    _advise_orphan_retries(scan, advisor, f"{orphans:,} orphans" + (f" against a limit of {maximum:,}" if maximum else "")
                           + ": fewer retries end them sooner")
    if maximum and share >= limits.orphans_warning:
        advisor.propose("net.ipv4.tcp_max_orphans", doubled(maximum),
                        f"{orphans:,} orphans against a limit of {maximum:,}",
                        "each orphan may hold up to about 64 KB of unswappable memory")
    limit_text = f"tcp_max_orphans {maximum:,}" if maximum else (
        f"tcp_max_orphans {kernel.scope_note('net.ipv4.tcp_max_orphans') if kernel else 'not read'}")
    memory_text = (f"TCP memory {mem} pages (sockstat mem, host-wide) against tcp_mem max {tcp_mem[2]}: "
                   + ("at the max, so the aborts may be memory too" if memory_full else "below it, so the aborts "
                      "are orphans") if mem is not None and tcp_mem is not None else
                   "TCP memory against tcp_mem: tcp_mem " + (kernel.scope_note("net.ipv4.tcp_mem") if kernel else
                                                            "not read") + ", so the cause of aborts is not certain")
    yield _finding(
        "orphans", "", Severity.CRITICAL if critical else Severity.WARNING,
        (f"{orphans:,} orphaned sockets: {share:.0%} of tcp_max_orphans ({maximum:,})" if maximum else
         f"{orphans:,} orphaned sockets (host-wide)")
        + (f", {_rate_text(aborts)} aborted" if aborts else ""),
        Subject("state", state), state,
        evidence=[
            f"{orphans:,} orphans (sockstat orphan, host-wide), {limit_text}: a finding from "
            f"{limits.orphans_warning:.0%}, critical from {limits.orphans_critical:.0%}",
            "orphaned in this table by state: " + (", ".join(f"{s.label} {n}" for s, n in closing.items() if n)
                                                   or "none") + "; orphaned FIN_WAIT_2 turned timewait count in tw, "
            "not here",
            f"TCPAbortOnMemory {_counter_text(scan, 'TcpExtTCPAbortOnMemory')}: resets for too many orphans "
            "(\"too many orphaned sockets\", earlier for idle or zero-window peers) or for TCP memory",
            memory_text,
        ],
        metrics={"orphans": orphans, "limit": maximum, "share": round(share, 4), "aborts_per_s": round(aborts, 3)},
        ss=ss_sockets(state),
        actions=[nstat_counters(["TcpExtTCPAbortOnMemory"])],
        advisor=advisor,
        cause="Sockets their process already closed are still finishing the close: peers that do not answer "
              "(FIN_WAIT_1, LAST_ACK, CLOSING) or do not read (a zero window holds FIN_WAIT_1).",
        weight=orphans,
    )


def _tcp_memory(scan: _Scan) -> Iterable[Finding]:
    """TCP memory (sockstat mem, host-wide) at tcp_mem's pressure or max: the kernel trims buffers, then
    aborts connections (TCPAbortOnMemory, "out of memory -- consider tuning tcp_mem")."""
    mem, tcp_mem = _memory_pages(scan)
    if mem is None or tcp_mem is None or mem < tcp_mem[1]:
        return
    aborts = scan.rate("TcpExtTCPAbortOnMemory") or 0.0
    full = mem >= tcp_mem[2]
    yield _finding(
        "tcp-memory", "", Severity.CRITICAL if full else Severity.WARNING,
        f"TCP memory {mem} pages: {mem / tcp_mem[2]:.0%} of tcp_mem max ({tcp_mem[2]})"
        + (f", {_rate_text(aborts)} connections aborted" if aborts else ", under pressure"),
        Subject("state", TcpState.ESTABLISHED), TcpState.ESTABLISHED,
        evidence=[
            f"sockstat mem {mem} pages (host-wide); tcp_mem min {tcp_mem[0]}, pressure {tcp_mem[1]}, "
            f"max {tcp_mem[2]}: above pressure the kernel trims buffers, at max it aborts (TCPAbortOnMemory "
            f"{_counter_text(scan, 'TcpExtTCPAbortOnMemory')})",
            "this is memory, not orphans: raising tcp_max_orphans would not help",
        ],
        metrics={"pages": mem, "pressure": tcp_mem[1], "limit": tcp_mem[2], "aborts_per_s": round(aborts, 3)},
        ss=ss_sockets(TcpState.ESTABLISHED),
        actions=[nstat_counters(["TcpExtTCPAbortOnMemory", "TcpExtTCPMemoryPressures"]),
                 Command("ss -tm", "per socket memory (skmem): find the sockets with large queues")],
        cause="TCP sockets hold more buffer memory than tcp_mem allows host-wide: many connections with data "
              "queued (peers not reading, or this host not reading), or tcp_mem too small for the load.",
        weight=mem,
    )


# --- text helpers ---------------------------------------------------------------------------------------


def _owner_text(group: ProcessGroup) -> str:
    if group.process is None:
        return f"uid {group.uid} ({printable(group.user)}, process not visible)"
    return f"pid {group.process.pid} {printable(group.process.name)}"


def _pids_text(scan: _Scan, pids: Iterable[int]) -> str:
    names = [f"pid {pid} {printable(process.name)}" if (process := scan.snapshot.process(pid)) else f"pid {pid}"
             for pid in pids]
    return ", ".join(names[:3]) if names else "no owner visible"


def _peers_text(records: Iterable[SocketRecord], port: int | None = None) -> str:
    peers = Counter(record.remote_addr for record in records if port is None or record.local_port == port)
    text = ", ".join(f"{address} ({count:,})" for address, count in peers.most_common(TOP_PEERS))
    more = len(peers) - TOP_PEERS
    return text + (f" and {more} more" if more > 0 else "")


def _rate_text(rate: float) -> str:
    if abs(rate) >= 10:
        return f"{rate:+.0f}/s"
    if abs(rate) >= 0.1:
        return f"{rate:+.1f}/s"
    return f"{rate * 60:+.1f}/min"


def _duration_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _counter_text(scan: _Scan, name: str) -> str:
    rate, span = counter_rate(scan.points, name)
    return "no rate yet (one snapshot)" if rate is None else f"{_rate_text(rate)} over {span:.0f} s"
