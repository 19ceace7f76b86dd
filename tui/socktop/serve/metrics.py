"""One snapshot and its analysis as Prometheus metric families, with a bounded number of series.

Built once per collection (never per scrape) by `build_families`; every
family is documented in the README ("Watching a fleet"). Cardinality is
bounded by design, whatever the host holds:

- the per-group families (ports, processes, remote hosts, containers) keep, for each
  state, the ``top`` groups with the most sockets in that state and fold
  the rest into one ``other`` series, so the leaking process's CLOSE_WAIT
  series exists even when it holds few sockets in other states;
- a port in the kernel's ephemeral range that nothing here listens on is
  folded into ``port="ephemeral"`` before ranking;
- the per-process descriptor gauges cover only the processes kept above;
- findings: the ``top`` most severe;
- a process's ``container`` label is the Containers grouping's name of the
  place most of its sockets are in ("" for socktop's own namespace outside
  any container): one value per process, so it adds no series;
- no command lines in labels; label values (process, user and container names) go to
  the client library as they are, which escapes them for the text formats.

`series_bound(top)` is the documented ceiling, tested at 50k sockets.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from .. import __version__
from ..analyze.findings import Analysis, Finding, Severity
from ..collect.kernelstate import COUNTER_KEYS, SYSCTL_KEYS
from ..collect.records import DISPLAY_STATES, TcpState
from ..model.aggregate import Aggregates, RowKind, process_key
from ..model.snapshot import Snapshot
from . import DEFAULT_TOP

OTHER = "other"
EPHEMERAL = "ephemeral"
SOCKSTAT_FIELDS = ("inuse", "orphan", "tw", "alloc", "mem")

#: The number a finding's gauge carries, by kind; a kind not listed uses its first numeric metric.
MAIN_NUMBER: Mapping[str, str] = {
    "close-wait-leak": "count",
    "fd-exhaustion": "ratio",
    "time-wait-ports": "share",
    "time-wait-server": "count",
    "time-wait-table": "share",
    "accept-queue": "recv_q",
    "syn-recv": "count",
    "listen-overflows": "overflows_per_s",
    "closing": "count",
    "orphans": "share",
}

Labels = tuple[str, ...]
Counts = Mapping[TcpState, int]


def series_bound(top: int) -> int:
    """The most series `build_families` can yield for a given ``top``.

    Per state S: four grouped families of at most top + 1 series each
    (ports, processes, remote hosts, containers), the state totals, and the descriptor
    gauges (two per kept process, at most S * top processes); then the
    findings, the kernel counters, sockstat, sysctls and a fixed handful.
    """
    states = len(DISPLAY_STATES)
    grouped = 4 * states * (top + 1)
    descriptors = 2 * states * top
    findings = top + len(Severity)
    closes = 2 * (top + 1) + 3  # per port and per process, each top + other; closed, opened, overruns
    fixed = len(COUNTER_KEYS) + len(SOCKSTAT_FIELDS) + len(SYSCTL_KEYS) + 8
    return states + grouped + descriptors + findings + closes + fixed


@dataclass(frozen=True, slots=True)
class Kept:
    """Series of one per-state family: (labels, state, value), and the label sets kept by name."""

    series: list[tuple[Labels, TcpState, int]]
    kept: set[Labels]


def top_per_state(groups: Iterable[tuple[Labels, Counts]], top: int, other: Labels) -> Kept:
    """For each state, the ``top`` groups with the most sockets in it, the rest summed under ``other``.

    Groups with equal labels (folded ports) are summed first. Ties go to the
    smaller labels, so the same table always gives the same series.
    """
    merged: dict[Labels, dict[TcpState, int]] = {}
    for labels, counts in groups:
        into = merged.setdefault(labels, {})
        for state, count in counts.items():
            into[state] = into.get(state, 0) + count
    per_state: dict[TcpState, list[tuple[int, Labels]]] = {}
    for labels, counts in merged.items():
        for state, count in counts.items():
            if count:
                per_state.setdefault(state, []).append((count, labels))
    series: list[tuple[Labels, TcpState, int]] = []
    kept: set[Labels] = set()
    for state in DISPLAY_STATES:
        ranked = per_state.get(state, [])
        best = heapq.nsmallest(top, ranked, key=lambda pair: (-pair[0], pair[1]))
        for count, labels in best:
            series.append((labels, state, count))
            kept.add(labels)
        rest = sum(count for count, _ in ranked) - sum(count for count, _ in best)
        if rest:
            series.append((other, state, rest))
    return Kept(series, kept)


def label_text(value: str) -> str:
    """A label value as it is, except bytes that are not UTF-8 (a name read with surrogateescape),
    which would make the whole exposition fail to encode: those become \\x escapes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def main_number(finding: Finding) -> tuple[str, float]:
    """The finding's headline number and its name (MAIN_NUMBER, else its first number; 1 if none)."""
    preferred = MAIN_NUMBER.get(finding.kind)
    names = ([preferred] if preferred else []) + list(finding.metrics)
    for name in names:
        value = finding.metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return name, float(value)
    return "present", 1.0


def _gauge(name: str, documentation: str, labels: Iterable[str] = (), unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels), unit=unit)


class CloseCounters:
    """Connections closed, per port and per process, as monotonic counters across collections.

    Each collection adds the closes the destroy feed saw since the previous
    refresh (`Churn.closed_by_port`, `closed_by_process`). At most ``top``
    ports and ``top`` processes are tracked at a time: a new one is admitted
    while there is room, else its closes go to ``other``; one with no close
    for ``idle`` collections (or whose process is gone) is dropped, its series
    ending, to make room. ``other`` and every tracked series only ever grow.
    """

    def __init__(self, top: int = DEFAULT_TOP, idle: int = 20) -> None:
        self.top = top
        self.idle = idle
        self.ports = _Tracked()
        self.processes = _Tracked()
        self.closed = self.opened = 0
        self.seen = False  # a destroy feed has reported at least once

    def update(self, snapshot: Snapshot) -> None:
        churn = snapshot.churn
        if churn is None:
            return
        self.seen = True
        self.closed += churn.closes
        self.opened += churn.opens
        aggregates = snapshot.aggregates
        groups = aggregates.by_process
        ports = []
        for key, count in churn.closed_by_port.items():
            direction, _, port = key.partition(":")
            ports.append(((port_label(aggregates, int(port)) if port.isdigit() else port, direction), count))
        processes = [((key, label_text(group.name), label_text(group.user)) if group else (key, "?", "?"), count)
                     for key, count in churn.closed_by_process.items() for group in (groups.get(key),)]
        self.ports.count(ports, self.top, self.idle, lambda labels: True)
        self.processes.count(processes, self.top, self.idle, lambda labels: labels[0] in groups)

    def families(self, snapshot: Snapshot) -> Iterator[Metric]:
        if not self.seen:
            return
        yield CounterMetricFamily("socktop_connections_closed", "TCP sockets freed, from the destroy feed",
                                  value=self.closed)
        yield CounterMetricFamily("socktop_connections_opened", "TCP connections new to a dump or closed unseen",
                                  value=self.opened)
        churn = snapshot.churn
        yield CounterMetricFamily("socktop_destroy_feed_overruns", "Times the kernel's destroy event queue "
                                  "overflowed (events lost: close counts are lower bounds)",
                                  value=churn.overruns if churn is not None else 0)
        ports = CounterMetricFamily("socktop_port_closed", "Connections closed per service port and direction "
                                    "(tracked ports; the rest under port=\"other\")", labels=["port", "direction"])
        for labels, count in self.ports.series((OTHER, "")):
            ports.add_metric(list(labels), count)
        yield ports
        processes = CounterMetricFamily("socktop_process_closed", "Connections closed per process (exact by cookie, "
                                        "or inferred from its port group)", labels=["process", "name", "user"])
        for labels, count in self.processes.series((OTHER, "", "")):
            processes.add_metric(list(labels), count)
        yield processes


class _Tracked:
    """Counts per label set for at most ``top`` label sets at a time, plus a monotonic rest."""

    def __init__(self) -> None:
        self.counts: dict[Labels, int] = {}
        self.idle: dict[Labels, int] = {}  # collections since the last close
        self.other = 0

    def count(self, closes: Iterable[tuple[Labels, int]], top: int, idle: int, alive: Callable[[Labels], bool]) -> None:
        """Drop the idle and the dead, then count this collection's closes (admitting the largest while
        there is room); closes of the same labels are summed first."""
        for labels in list(self.counts):
            self.idle[labels] += 1
            if self.idle[labels] > idle or not alive(labels):
                del self.counts[labels], self.idle[labels]
        merged: dict[Labels, int] = {}
        for labels, count in closes:
            merged[labels] = merged.get(labels, 0) + count
        for labels, count in sorted(merged.items(), key=lambda pair: (-pair[1], pair[0])):
            if labels not in self.counts and len(self.counts) < top:
                self.counts[labels] = 0
            if labels in self.counts:
                self.counts[labels] += count
                self.idle[labels] = 0
            else:
                self.other += count

    def series(self, other: Labels) -> Iterator[tuple[Labels, int]]:
        yield from sorted(self.counts.items())
        if self.other:
            yield other, self.other


def build_families(snapshot: Snapshot, analysis: Analysis, top: int = DEFAULT_TOP,
                   closes: CloseCounters | None = None) -> list[Metric]:
    """Every family for one collection; see the module docstring for the bounds.
    ``closes`` has already been updated with this snapshot (it carries state across collections)."""
    families: list[Metric] = []
    families += _socket_families(snapshot, top)
    if closes is not None:
        families += closes.families(snapshot)
    families += _finding_families(snapshot, analysis, top)
    families += _kernel_families(snapshot)
    families += _self_families(snapshot)
    return families


def _socket_families(snapshot: Snapshot, top: int) -> Iterator[Metric]:
    aggregates = snapshot.aggregates
    by_state = _gauge("socktop_sockets", "TCP sockets by state, as ss -tan counts them (every network namespace read)",
                      ["state"])
    for state in DISPLAY_STATES:
        by_state.add_metric([state.name], aggregates.by_state.get(state, 0))
    yield by_state

    ports = top_per_state((((port_label(aggregates, g.port), g.direction.value), g.counts) for g in aggregates.by_port.values()),
                          top, (OTHER, ""))
    yield _per_state("socktop_port_sockets",
                     "TCP sockets by service port and direction (in: served here, out: called), top ports per state",
                     ["port", "direction"], ports)

    processes = {group.key: group for group in aggregates.by_process.values()}
    containers = process_containers(snapshot)
    kept = top_per_state(
        (((group.key, label_text(group.name), label_text(group.user), containers.get(group.key, "")),
          _held_and_inferred(group.counts, group.inferred))
         for group in processes.values()),
        top, (OTHER, "", "", ""))
    yield _per_state("socktop_process_sockets",
                     "TCP sockets by process (held or inferred, as the TUI counts them), top processes per state",
                     ["process", "name", "user", "container"], kept)

    fds = _gauge("socktop_process_fds", "Open file descriptors of a process in socktop_process_sockets",
                 ["process", "name", "user", "container"])
    limits = _gauge("socktop_process_fd_limit", "RLIMIT_NOFILE (soft) of a process in socktop_process_sockets",
                    ["process", "name", "user", "container"])
    for labels in sorted(kept.kept - {(OTHER, "", "", "")}):
        process = processes[labels[0]].process
        if process is not None and process.fd_count is not None:
            fds.add_metric(list(labels), process.fd_count)
            if process.fd_limit:
                limits.add_metric(list(labels), process.fd_limit)
    yield fds
    yield limits

    remotes = top_per_state((((g.address,), g.counts) for g in aggregates.by_remote.values()), top, (OTHER,))
    yield _per_state("socktop_remote_sockets", "Connected TCP sockets by remote address, top addresses per state",
                     ["remote"], remotes)

    places = top_per_state((((label_text(p.label), p.kind), p.counts) for p in snapshot.places.values()),
                           top, (OTHER, ""))
    yield _per_state("socktop_container_sockets",
                     "TCP sockets by namespace, pod, container or service (the Containers grouping), top per state",
                     ["container", "kind"], places)


def _per_state(name: str, documentation: str, labels: list[str], kept: Kept) -> GaugeMetricFamily:
    """A gauge family of `top_per_state` series: ``labels`` then ``state``."""
    family = _gauge(name, documentation, [*labels, "state"])
    for values, state, count in kept.series:
        family.add_metric([*values, state.name], count)
    return family


def process_containers(snapshot: Snapshot) -> dict[str, str]:
    """Per process key, the label of the place (Containers grouping) holding most of its sockets;
    processes only in socktop's own namespace outside any container are left out (no container)."""
    rows, codes, slots = snapshot.aggregates.rows, snapshot.place_codes, snapshot.place_slots
    if rows is None or codes is None or len(rows.codes) != len(codes):
        return {}
    held = (rows.kinds == RowKind.DIRECT) & (codes >= 0)
    keys, counts = np.unique(codes[held].astype(np.int64) << 32 | rows.codes[held], return_counts=True)
    best: dict[str, tuple[int, str]] = {}
    for key, count in zip(keys.tolist(), counts.tolist()):
        slot = slots[key >> 32]
        label = "" if slot.kind == "host" else label_text(slot.label)
        for pid in rows.pid_sets[key & 0xFFFFFFFF]:
            process = process_key(pid)
            if count > best.get(process, (0, ""))[0]:
                best[process] = (count, label)
    return {process: label for process, (_, label) in best.items() if label}


def port_label(aggregates: Aggregates, port: int) -> str:
    """The port's label: ``ephemeral`` for a port in the kernel's ephemeral range that nothing here listens on."""
    low, high = aggregates.ephemeral_ports
    return EPHEMERAL if low <= port <= high and port not in aggregates.listening_ports else str(port)


def _held_and_inferred(held: Counts, inferred: Counts) -> dict[TcpState, int]:
    both = dict(held)
    for state, count in inferred.items():
        both[state] = both.get(state, 0) + count
    return both


def _finding_families(snapshot: Snapshot, analysis: Analysis, top: int) -> Iterator[Metric]:
    counts = _gauge("socktop_findings", "Active findings by severity (all of them, not only those exported)",
                    ["severity"])
    for severity in Severity:
        counts.add_metric([severity.value], sum(1 for f in analysis.findings if f.severity is severity))
    yield counts
    family = _gauge("socktop_finding",
                    "An active finding (most severe first, at most --top): its headline number, named by 'metric'",
                    ["id", "kind", "severity", "subject", "name", "metric"])
    for finding in analysis.findings[:top]:
        metric, value = main_number(finding)
        family.add_metric([label_text(finding.id), finding.kind, finding.severity.value, _subject_label(finding),
                           label_text(_subject_name(snapshot, finding)), metric], value)
    yield family


def _subject_label(finding: Finding) -> str:
    key = finding.subject.key
    return key.name if isinstance(key, TcpState) else key


def _subject_name(snapshot: Snapshot, finding: Finding) -> str:
    """The process name for a process finding ("" otherwise), so an alert can say who."""
    if finding.subject.kind != "process":
        return ""
    group = snapshot.aggregates.by_process.get(str(finding.subject.key))
    return group.name if group is not None and group.process is not None else ""


def _kernel_families(snapshot: Snapshot) -> Iterator[Metric]:
    kernel = snapshot.kernel
    counters = CounterMetricFamily("socktop_kernel_tcp", "Kernel TCP counters socktop rates (nstat names; "
                                   "/proc/net/netstat and /proc/net/snmp, this network namespace)", labels=["counter"])
    sockstat = _gauge("socktop_sockstat", "The TCP line of /proc/net/sockstat (tw counts timewait-type sockets)",
                      ["field"])
    sysctls = _gauge("socktop_sysctl", "Numeric TCP settings as read at this collection", ["key"])
    if kernel is not None:
        for name in sorted(kernel.counters):
            counters.add_metric([name], kernel.counters[name])
        for field in SOCKSTAT_FIELDS:
            if field in kernel.sockstat:
                sockstat.add_metric([field], kernel.sockstat[field])
        for key in SYSCTL_KEYS:
            value = kernel.sysctl_int(key)
            if value is not None:
                sysctls.add_metric([key], value)
        port_range = kernel.port_range()
        if port_range is not None:
            sysctls.add_metric(["net.ipv4.ip_local_port_range.size"], port_range[1] - port_range[0] + 1)
    yield counters
    yield sockstat
    yield sysctls


def _self_families(snapshot: Snapshot) -> Iterator[Metric]:
    source = snapshot.source
    yield GaugeMetricFamily("socktop_collection_duration", "How long the last collection took",
                            value=snapshot.collect_seconds, unit="seconds")
    yield GaugeMetricFamily("socktop_owner_coverage_ratio",
                            "Share of sockets with an inode whose owning process is known", value=snapshot.coverage)
    yield GaugeMetricFamily("socktop_last_collection_timestamp", "When the last collection was taken (Unix time)",
                            value=snapshot.taken_at, unit="seconds")
    info = InfoMetricFamily("socktop_backend", "How the socket table is read", labels=["backend", "root"])
    info.add_metric([source.backend, str(source.is_root).lower()], {})
    yield info
    build = InfoMetricFamily("socktop_build", "socktop's version", labels=["version"])
    build.add_metric([__version__], {})
    yield build
