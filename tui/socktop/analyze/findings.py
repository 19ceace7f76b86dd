"""The findings engine: patterns in a snapshot and its history turned into diagnoses with evidence and commands.

Findings come only from the snapshot (sockets, owners, aggregates, kernel
settings and counters) and its history, so they are deterministic and
testable with constructed snapshots. The UI and CLI call one function:

    analyze(snapshot, thresholds=DEFAULT_THRESHOLDS, warnings=()) -> Analysis

`Analysis.findings` is most severe first (then most sockets first). A
`Finding` has: ``id`` (stable across refreshes, e.g. "close-wait-leak:pid:4242"),
``kind`` ("close-wait-leak", "fd-exhaustion", "time-wait-ports",
"time-wait-server", "time-wait-table", "accept-queue", "syn-recv",
"listen-overflows", "closing", "orphans"), ``severity``, a one-line ``title``
with the numbers, ``subject`` (the pane row it is about: kind "state" with a
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
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import compress
from typing import Any
from operator import itemgetter, not_

from ..collect.records import SocketRecord, TcpState
from ..model.aggregate import DEFAULT_EPHEMERAL_PORTS, LOCAL_PORT, REMOTE_PORT, STATE, ProcessGroup
from ..model.history import process_series, rate_per_second, span_seconds
from ..model.snapshot import HistoryPoint, Snapshot
from ..safetext import printable
from .commands import Command, kill_commands, lsof_sockets, nstat_counters, ss_sockets, stack_dump
from .config import DEFAULT_THRESHOLDS, Thresholds
from .knowledge import TIME_WAIT_SECONDS, knowledge_for
from .nsfindings import localize, split
from .sysctl import Advisor, Suggestion, SysctlContext, counter_rate, doubled, recent, sysctl_context, wider_port_range

TIME_WAIT_BYTES = 256  # a tw_sock_TCP slab object
CLOSING_STATES = (TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.LAST_ACK, TcpState.CLOSING)
TOP_PEERS = 3
DESTINATION = itemgetter(2, 4, 5)  # (local address, remote address, remote port)


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
    weight: float = 0.0  # orders findings of one severity: the sockets involved


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
    findings.sort(key=lambda f: (-f.severity.rank, -f.weight, f.id))
    context = sysctl_context(snapshot, thresholds, (s for f in findings for s in f.suggestions))
    return Analysis(tuple(findings), context, thresholds, tuple(warnings))


def _findings(snapshot: Snapshot, thresholds: Thresholds) -> list[Finding]:
    scan = _Scan(snapshot, thresholds)
    findings = [
        *_close_wait_leaks(scan),
        *_fd_exhaustion(scan),
        *_time_wait_destinations(scan),
        *_time_wait_served_ports(scan),
        *_time_wait_table(scan),
        *_accept_queues(scan),
        *_syn_recv(scan),
        *_closing_buildups(scan),
        *_orphans(scan),
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
        self._states: list[TcpState] | None = None
        self._by_state: dict[TcpState, list[SocketRecord]] = {}
        self._time_wait_sides: tuple[list[SocketRecord], list[SocketRecord]] | None = None

    def records(self, state: TcpState) -> list[SocketRecord]:
        """The sockets in one state: C-level passes, only for states the snapshot has, each once."""
        found = self._by_state.get(state)
        if found is None:
            found = []
            if self.snapshot.aggregates.by_state.get(state):
                if self._states is None:
                    self._states = list(map(STATE, self.snapshot.sockets))
                found = list(compress(self.snapshot.sockets, map(state.__eq__, self._states)))
            self._by_state[state] = found
        return found

    def time_wait_sides(self) -> tuple[list[SocketRecord], list[SocketRecord]]:
        """TIME_WAIT split into (client side, server side) by the rule the port groups were made by
        (`Aggregates.inbound_flags`): "in" serves, "out" called out."""
        if self._time_wait_sides is None:
            records = self.records(TcpState.TIME_WAIT)
            serving = self.snapshot.aggregates.inbound_flags(records)
            self._time_wait_sides = (list(compress(records, map(not_, serving))), list(compress(records, serving)))
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
             weight: float = 0.0) -> Finding:
    """A Finding whose cause defaults to the knowledge of its state and whose advisor notes join the evidence."""
    knowledge = knowledge_for(state)
    notes = advisor.notes if advisor else []
    return Finding(
        id=f"{kind}:{key}" if key else kind, kind=kind, severity=severity, title=title, subject=subject,
        state=state, evidence=(*evidence, *notes), metrics=dict(metrics), ss=ss,
        cause=cause or f"{knowledge.meaning} Usual causes: {' '.join(knowledge.causes)}",
        actions=tuple(actions), suggestions=tuple(advisor.suggestions) if advisor else (), weight=weight,
    )


# --- CLOSE_WAIT and descriptors ------------------------------------------------------------------


def _close_wait_leaks(scan: _Scan) -> Iterable[Finding]:
    """A process whose CLOSE_WAIT count is high, or keeps rising across the history window."""
    limits = scan.thresholds
    for group in scan.snapshot.aggregates.by_process.values():
        count = group.counts.get(TcpState.CLOSE_WAIT, 0)
        if not count:
            continue
        series = process_series(scan.points, group.key, TcpState.CLOSE_WAIT)
        rate = rate_per_second(scan.points, series)
        rising = scan.trusted_trend() and rate >= limits.close_wait_rise_per_s and count >= limits.close_wait_rise_min
        if count < limits.close_wait_warning and not rising:
            continue
        held = scan.held_by(group, TcpState.CLOSE_WAIT)
        fds, fd_limit = _fds(group)
        minutes_left = _minutes_to_fd_limit(group, rate) if rising else None
        critical = count >= limits.close_wait_critical or (
            minutes_left is not None and minutes_left <= limits.fd_exhaustion_minutes)
        trend = f", {_rate_text(rate)} over {scan.span:.0f} s" if rising else ""
        yield _finding(
            "close-wait-leak", group.key, Severity.CRITICAL if critical else Severity.WARNING,
            f"{_owner_text(group)} holds {count} CLOSE_WAIT sockets{trend}",
            Subject("process", group.key), TcpState.CLOSE_WAIT,
            evidence=[
                f"{count} CLOSE_WAIT held; a finding from {limits.close_wait_warning}, critical from "
                f"{limits.close_wait_critical}",
                _trend_text(scan, rate, limits.close_wait_rise_per_s),
                *([f"lowest count over the last {scan.span:.0f} s: {min(series)}; a count that never drops means "
                   f"none is being closed (the kernel keeps no age for CLOSE_WAIT sockets)"]
                  if series and scan.trusted_trend() else []),
                f"peers that closed: {_peers_text(held)}" if held else "peers: not visible (owner not readable)",
                *_unread_text(held),
                *_fd_text(group, rate if rising else 0.0, minutes_left),
            ],
            metrics={"count": count, "rate_per_s": round(rate, 4), "span_s": round(scan.span, 1),
                     "fds": fds, "fd_limit": fd_limit,
                     "minutes_to_fd_limit": None if minutes_left is None else round(minutes_left, 1)},
            ss=ss_sockets(TcpState.CLOSE_WAIT, pid=group.pid, local_port=_only_port(held, group)),
            actions=_process_actions(group, TcpState.CLOSE_WAIT),
            weight=count,
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
            f"{_owner_text(group)} uses {fds} of {limit} file descriptors ({share:.0%})",
            Subject("process", group.key), TcpState.CLOSE_WAIT if group.counts.get(TcpState.CLOSE_WAIT) else
            TcpState.ESTABLISHED,
            evidence=[
                f"{fds} descriptors open, RLIMIT_NOFILE {limit}: a finding from {limits.fd_warning:.0%}, "
                f"critical from {limits.fd_critical:.0%}",
                f"{group.total} TCP sockets held, {group.counts.get(TcpState.CLOSE_WAIT, 0)} of them CLOSE_WAIT",
                "at the limit every open(), socket() and accept() fails with EMFILE (\"Too many open files\")",
            ],
            metrics={"fds": fds, "fd_limit": limit, "ratio": round(share, 4)},
            ss=ss_sockets(pid=group.pid),
            actions=_process_actions(group, None),
            cause="Descriptors are opened faster than they are closed (a leak), or the limit is too low for "
                  "the load. Sockets in CLOSE_WAIT are the usual leak: each holds a descriptor.",
            weight=fds,
        )


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
        return [f"descriptors: {fds} open, no RLIMIT_NOFILE limit"]
    line = f"descriptors: {fds} of {limit} (RLIMIT_NOFILE)"
    if minutes_left is not None:
        line += f": \"Too many open files\" in about {minutes_left:.0f} min at {_rate_text(rate)}"
    return [line]


def _unread_text(held: Sequence[SocketRecord]) -> list[str]:
    unread = sum(1 for record in held if record.recv_q)
    return [f"{unread} with unread data (Recv-Q > 0): the process did not even read what the peer sent"] \
        if unread else []


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
    return [lsof_sockets(process.pid, state), stack_dump(process), *kill_commands(process.pid, process.name)]


# --- TIME_WAIT -----------------------------------------------------------------------------------


def _time_wait_destinations(scan: _Scan) -> Iterable[Finding]:
    """Client-side TIME_WAIT per (local address, remote address, remote port) against the ephemeral range."""
    limits = scan.thresholds
    candidates = _groups_of_at_least(scan.time_wait_sides()[0], DESTINATION, limits.time_wait_group)
    if not candidates:
        return
    # every socket from that address to that destination holds one of its ports, whatever its state
    toward = {port for _, _, port in candidates}
    sockets = scan.snapshot.sockets
    in_use = Counter(map(DESTINATION, compress(sockets, map(toward.__contains__, map(REMOTE_PORT, sockets)))))
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
        # with reuse, connect() takes over TIME_WAIT ports: only the live connections can run the range out
        pressure, runs_out_in = ((used - count) / range_size, None) if reuse else (share, seconds_left)
        if pressure >= limits.port_range_critical or (runs_out_in is not None and runs_out_in <= 60):
            severity = Severity.CRITICAL
        elif pressure >= limits.port_range_warning or runs_out_in is not None:
            severity = Severity.WARNING
        else:
            severity = Severity.INFO
        outlook = (f"exhausted in about {_duration_text(seconds_left)} at {_rate_text(rate)}"
                   if seconds_left is not None else f"steady near {min(steady / range_size, 1):.0%} at {_rate_text(rate)}")
        advisor = scan.advisor()
        if severity is not Severity.INFO:
            _advise_port_pressure(scan, advisor, f"{remote}:{port}", count, share, port_range)
        group = scan.snapshot.aggregates.by_port.get(f"out:{port}")
        yield _finding(
            "time-wait-ports", f"{local}>{remote}:{port}", severity,
            f"{count} TIME_WAIT from {local} to {remote}:{port}: {share:.0%} of the ephemeral ports, {outlook}",
            Subject("port", f"out:{port}"), TcpState.TIME_WAIT,
            evidence=[
                f"this host closes first (client side): {count} TIME_WAIT, {used} ports in use toward "
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
            ],
            metrics={"count": count, "ports_in_use": used, "range": range_size, "share": round(share, 4),
                     "rate_per_s": round(rate, 2),
                     "seconds_to_exhaustion": None if seconds_left is None else round(seconds_left)},
            ss=ss_sockets(TcpState.TIME_WAIT, local_addr=local, remote_addr=remote, remote_port=port),
            actions=[ss_sockets(remote_addr=remote, remote_port=port), nstat_counters(["TcpActiveOpens"])],
            advisor=advisor,
            cause="This host closes its outgoing connections first, so each close parks a TIME_WAIT for 60 s "
                  "on a source port toward this destination: a new connection per request (no keep-alive, "
                  "no pool) turns the request rate into port use.",
            weight=count,
        )


def _groups_of_at_least(records: Sequence[SocketRecord], key: Callable[[SocketRecord], Hashable],
                        minimum: int) -> dict[Any, list[SocketRecord]]:
    """The records grouped by ``key``, only the groups of ``minimum`` or more (counted in C first)."""
    big = {value: [] for value, size in Counter(map(key, records)).items() if size >= max(minimum, 1)}
    if big:
        for record in records:
            group = big.get(key(record))
            if group is not None:
                group.append(record)
    return big


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
    oldest_age = TIME_WAIT_SECONDS - min(record.timer_ms for record in records) / 1000
    return len(records) / max(oldest_age, 1.0)


def _tw_reuse_applies(scan: _Scan, remote: str) -> str:
    """Why tcp_tw_reuse already frees these ports for new connections ('' when it does not)."""
    reuse, timestamps = scan.sysctl_int("net.ipv4.tcp_tw_reuse"), scan.sysctl_int("net.ipv4.tcp_timestamps")
    if not reuse or timestamps == 0 or (reuse == 2 and not ipaddress.ip_address(remote).is_loopback):
        return ""
    delay = scan.sysctl_int("net.ipv4.tcp_tw_reuse_delay")
    after = f"{delay} ms" if delay is not None else "1 s"
    return (f"tcp_tw_reuse is {reuse}{' (loopback only)' if reuse == 2 else ''}: new connections to this "
            f"destination take over TIME_WAIT ports older than {after}, so they do not run out")


def _advise_port_pressure(scan: _Scan, advisor: Advisor, destination: str, count: int, share: float,
                          port_range: tuple[int, int]) -> None:
    if scan.sysctl_int("net.ipv4.tcp_timestamps") == 0:
        advisor.notes.append("tcp_tw_reuse would need net.ipv4.tcp_timestamps, which is 0 here")
    else:
        advisor.propose(
            "net.ipv4.tcp_tw_reuse", "1",
            f"{count} TIME_WAIT toward {destination} hold {share:.0%} of the ports; with reuse, new outgoing "
            f"connections take over TIME_WAIT ports instead of waiting 60 s",
            "relies on TCP timestamps to reject old duplicates; applies to every outgoing connection of the "
            "host; no effect on connections a server accepts",
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
    for port, records in _groups_of_at_least(scan.time_wait_sides()[1], LOCAL_PORT, limits.time_wait_group).items():
        count, rate = len(records), _time_wait_rate(records)
        yield _finding(
            "time-wait-server", f"in:{port}", Severity.INFO,
            f"port {port} closes first: {count} server-side TIME_WAIT, about {_rate_text(rate)}",
            Subject("port", f"in:{port}"), TcpState.TIME_WAIT,
            evidence=[
                f"{count} TIME_WAIT on served port {port} ({_pids_text(scan, scan.snapshot.aggregates.listener_pids.get(port, ()))}); "
                f"a finding from {limits.time_wait_group}",
                f"peers: {_peers_text(records)}",
                "they use no ephemeral ports here; tcp_tw_reuse does nothing for accepted connections",
            ],
            metrics={"count": count, "rate_per_s": round(rate, 2)},
            ss=ss_sockets(TcpState.TIME_WAIT, local_port=port),
            cause="The server closes the connections first (keep-alive off, or a server idle timeout shorter than "
                  "the clients'), so TIME_WAIT lands on the server. Let the clients close first, or keep "
                  "connections open.",
            weight=count,
        )


def _time_wait_table(scan: _Scan) -> Iterable[Finding]:
    """Total TIME_WAIT against tcp_max_tw_buckets, and TCPTimeWaitOverflow rising."""
    limits = scan.thresholds
    total = scan.snapshot.aggregates.by_state.get(TcpState.TIME_WAIT, 0)
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
        f"{total} TIME_WAIT against a limit of {buckets}" + (f"; {overflow:.1f}/s destroyed early" if overflow else ""),
        f"each TIME_WAIT costs about {TIME_WAIT_BYTES} bytes of kernel memory; the cause (short connections) remains",
    )
    overflow_text = f", TCPTimeWaitOverflow +{overflow:.1f}/s" if overflow else ""
    yield _finding(
        "time-wait-table", "", Severity.CRITICAL if critical else Severity.WARNING,
        f"{total} TIME_WAIT: {share:.0%} of tcp_max_tw_buckets ({buckets}){overflow_text}",
        Subject("state", TcpState.TIME_WAIT), TcpState.TIME_WAIT,
        evidence=[
            f"{total} TIME_WAIT in this network namespace, tcp_max_tw_buckets {buckets}: a finding from "
            f"{limits.tw_buckets_warning:.0%}, critical from {limits.tw_buckets_critical:.0%}",
            f"TCPTimeWaitOverflow {_counter_text(scan, 'TcpExtTCPTimeWaitOverflow')}: past the limit new TIME_WAIT "
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
                f"host-wide (every listener counts) ListenOverflows {_counter_text(scan, 'TcpExtListenOverflows')}, "
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
                        f"{count} half-open connections on port {port}; cookies answer a full SYN queue instead "
                        "of dropping SYNs",
                        "connections made with cookies while the queue is full lose some TCP options "
                        "(kept only with timestamps)")
        reading = ("SYN cookies being sent: a SYN flood or a burst beyond the SYN queue" if cookies else
                   "waiting for the final ACK: a full accept queue, lost ACKs or spoofed SYNs")
        yield _finding(
            "syn-recv", f"in:{port}", Severity.CRITICAL if dropped else Severity.WARNING,
            f"{count} SYN_RECV on port {port}: {reading}",
            Subject("port", f"in:{port}"), TcpState.SYN_RECV,
            evidence=[
                f"{count} half-open connections on port {port}; a finding from {limits.syn_recv_warning}",
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
    """FIN_WAIT_1, FIN_WAIT_2, LAST_ACK or CLOSING piling up host-wide."""
    limits = scan.thresholds
    for state in CLOSING_STATES:
        records = scan.records(state)
        if len(records) < limits.closing_warning:
            continue
        orphaned = sum(1 for record in records if not record.inode)
        advisor = scan.advisor()
        if orphaned * 2 >= len(records):
            why = f"{orphaned} orphaned {state.label} wait on peers that do not answer or do not close"
            (_advise_fin_timeout if state is TcpState.FIN_WAIT2 else _advise_orphan_retries)(scan, advisor, why)
        peer_hint = (["the peers have not closed their end: look for CLOSE_WAIT on them"]
                     if state is TcpState.FIN_WAIT2 else [])
        yield _finding(
            "closing", state.slug, Severity.WARNING,
            f"{len(records)} {state.label} sockets, {orphaned} orphaned; top peers {_peers_text(records)}",
            Subject("state", state), state,
            evidence=[f"{len(records)} {state.label}; a finding from {limits.closing_warning}",
                      f"{orphaned} orphaned (closed by their process, no descriptor)", *peer_hint],
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
        advisor.propose("net.ipv4.tcp_orphan_retries", "3", why,
                        "orphaned connections to slow or lossy peers are reset sooner; their last data may be lost")


def _orphans(scan: _Scan) -> Iterable[Finding]:
    """Orphans (sockstat) against tcp_max_orphans, and TCPAbortOnMemory rising."""
    limits = scan.thresholds
    orphans = scan.kernel.sockstat.get("orphan") if scan.kernel else None
    maximum = scan.sysctl_int("net.ipv4.tcp_max_orphans")
    aborts = scan.rate("TcpExtTCPAbortOnMemory") or 0.0
    if orphans is None or not maximum:
        return
    share = orphans / maximum
    if share < limits.orphans_warning and aborts <= 0:
        return
    critical = aborts > 0 or share >= limits.orphans_critical
    closing = {state: sum(1 for r in scan.records(state) if not r.inode) for state in CLOSING_STATES}
    state = max(closing, key=closing.__getitem__)
    advisor = scan.advisor()
    _advise_orphan_retries(scan, advisor, f"{orphans} orphans against a limit of {maximum}: fewer retries "
                                          "end them sooner")
    advisor.propose("net.ipv4.tcp_max_orphans", doubled(maximum),
                    f"{orphans} orphans against a limit of {maximum}",
                    "each orphan may hold up to about 64 KB of unswappable memory")
    yield _finding(
        "orphans", "", Severity.CRITICAL if critical else Severity.WARNING,
        f"{orphans} orphaned sockets: {share:.0%} of tcp_max_orphans ({maximum})"
        + (f", TCPAbortOnMemory +{aborts:.1f}/s" if aborts else ""),
        Subject("state", state), state,
        evidence=[
            f"{orphans} orphans (/proc/net/sockstat), tcp_max_orphans {maximum}: a finding from "
            f"{limits.orphans_warning:.0%}, critical from {limits.orphans_critical:.0%}",
            "orphaned by state: " + ", ".join(f"{s.label} {n}" for s, n in closing.items() if n),
            f"TCPAbortOnMemory {_counter_text(scan, 'TcpExtTCPAbortOnMemory')}: past the limit the kernel resets "
            "orphans (\"too many orphaned sockets\")",
        ],
        metrics={"orphans": orphans, "limit": maximum, "share": round(share, 4), "aborts_per_s": round(aborts, 3)},
        ss=ss_sockets(state),
        actions=[nstat_counters(["TcpExtTCPAbortOnMemory"])],
        advisor=advisor,
        cause="Sockets their process already closed are still finishing the close: peers that do not answer "
              "(FIN_WAIT_1, LAST_ACK) or do not close (FIN_WAIT_2).",
        weight=orphans,
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
    text = ", ".join(f"{address} ({count})" for address, count in peers.most_common(TOP_PEERS))
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


def _trend_text(scan: _Scan, rate: float, threshold: float) -> str:
    if not scan.trusted_trend():
        return f"trend: needs {scan.thresholds.trend_min_seconds:.0f} s of history, have {scan.span:.0f} s"
    return f"trend: {_rate_text(rate)} over the last {scan.span:.0f} s; a rise counts from {_rate_text(threshold)}"


def _counter_text(scan: _Scan, name: str) -> str:
    rate, span = counter_rate(scan.points, name)
    return "no rate yet (one snapshot)" if rate is None else f"{_rate_text(rate)} over {span:.0f} s"
