"""The sysctl advisor: this kernel's settings and counters, and changes tied to what a snapshot shows.

Rules it never breaks: it never suggests a value already in force, never a
sysctl this kernel lacks (it says the key is absent instead), and never
net.ipv4.tcp_tw_recycle (`explain_sysctl` says why). Counters are rates
between snapshots, never totals since boot.

The findings call `Advisor.propose` with the evidence in hand; the UI and
CLI use `sysctl_context(snapshot, thresholds, suggestions) -> SysctlContext`
(readings, counter rates, the suggestions of every finding) and
`explain_sysctl(name)` for ``socktop explain tcp_tw_recycle``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..collect.kernelstate import COUNTER_KEYS, SYSCTL_KEYS, KernelState
from ..model.snapshot import HistoryPoint, Snapshot
from .commands import Command, sysctl_persistent, sysctl_runtime
from .config import Thresholds
from .knowledge import FIN_TIMEOUT_IS_NOT_TIME_WAIT, TW_RECYCLE_GONE

TW_RECYCLE = "net.ipv4.tcp_tw_recycle"

#: What each setting governs, one line, for the context table and `socktop explain <sysctl>`.
SYSCTL_NOTES: dict[str, str] = {
    "net.ipv4.tcp_tw_reuse": "0 off, 1 on, 2 loopback only: lets connect() take over a TIME_WAIT 4-tuple "
                             "(outgoing connections only; needs TCP timestamps)",
    "net.ipv4.tcp_tw_reuse_delay": "ms a TIME_WAIT socket must age before tcp_tw_reuse may take it (Linux 6.13+)",
    "net.ipv4.tcp_timestamps": "TCP timestamps; tcp_tw_reuse relies on them",
    "net.ipv4.tcp_max_tw_buckets": "most TIME_WAIT sockets; past it new ones are destroyed at once "
                                   "(TCPTimeWaitOverflow)",
    "net.ipv4.ip_local_port_range": "ephemeral ports for outgoing connections: bounds the connections one "
                                    "source address holds to one destination address and port",
    "net.ipv4.tcp_fin_timeout": "seconds an orphaned FIN_WAIT_2 socket waits for the peer's FIN "
                                "(not a TIME_WAIT setting)",
    "net.ipv4.tcp_keepalive_time": "seconds of idleness before the first keepalive probe, on sockets "
                                   "that enabled SO_KEEPALIVE",
    "net.ipv4.tcp_keepalive_intvl": "seconds between keepalive probes",
    "net.ipv4.tcp_keepalive_probes": "unanswered probes before the connection is dropped",
    "net.ipv4.tcp_max_orphans": "most sockets closed by their process but still closing; past it they are "
                                "reset (each may hold up to about 64 KB of memory)",
    "net.ipv4.tcp_orphan_retries": "retransmissions before an orphaned socket gives up (0 means 8)",
    "net.ipv4.tcp_syncookies": "answer with SYN cookies when a listener's SYN queue overflows (1, the default)",
    "net.ipv4.tcp_max_syn_backlog": "limit on unanswered SYNs per listener when syncookies are off",
    "net.core.somaxconn": "cap on the backlog a listener may ask for in listen()",
    TW_RECYCLE: "removed in Linux 4.12; never set it",
}

#: Counters, by nstat name: what a non-zero rate means.
COUNTER_NOTES: dict[str, str] = {
    "TcpExtTCPTimeWaitOverflow": "TIME_WAIT sockets destroyed early: tcp_max_tw_buckets reached",
    "TcpExtListenOverflows": "handshakes dropped because an accept queue was full",
    "TcpExtListenDrops": "connections dropped at a listener, overflows included",
    "TcpExtSyncookiesSent": "SYN cookies sent: a SYN queue was full",
    "TcpExtTCPReqQFullDrop": "SYNs dropped: a SYN queue was full and syncookies are off",
    "TcpExtTCPAbortOnMemory": "connections reset: too many orphans or TCP memory exhausted",
    "TcpActiveOpens": "outgoing connections started (connect())",
    "TcpPassiveOpens": "incoming connections accepted by a listener's handshake",
}


@dataclass(frozen=True, slots=True)
class SysctlReading:
    """One setting as this kernel has it; ``value`` None when the key is absent here."""

    key: str
    value: str | None
    note: str


@dataclass(frozen=True, slots=True)
class CounterRate:
    """A counter's rate over the recent history; ``per_second`` None until two snapshots have it."""

    name: str
    per_second: float | None
    over_seconds: float
    note: str


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One change to one setting, tied to what the snapshot shows."""

    key: str
    current: str
    suggested: str
    why: str
    risk: str
    runtime: Command  # sysctl -w, lost at reboot
    persistent: Command  # a line under /etc/sysctl.d/, then sysctl --system


@dataclass(frozen=True, slots=True)
class SysctlContext:
    """The settings and counter rates behind the findings, and every suggestion made."""

    readings: tuple[SysctlReading, ...]
    rates: tuple[CounterRate, ...]
    suggestions: tuple[Suggestion, ...]
    note: str = ""  # e.g. /proc/sys could not be read at all


@dataclass(slots=True)
class Advisor:
    """Collects one finding's suggestions, and says why a change was not suggested."""

    kernel: KernelState | None
    suggestions: list[Suggestion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def value(self, key: str) -> str | None:
        return self.kernel.sysctls.get(key) if self.kernel else None

    def propose(self, key: str, suggested: str, why: str, risk: str) -> None:
        """Suggest ``key = suggested`` unless the key is absent, already at that value, or tcp_tw_recycle."""
        if key == TW_RECYCLE:
            raise ValueError(TW_RECYCLE_GONE)
        current = self.value(key)
        if current is None:
            self.notes.append(f"{key} is absent on this kernel: nothing to set")
        elif current.split() == suggested.split():
            self.notes.append(f"{key} is already {current}")
        else:
            self.suggestions.append(Suggestion(
                key=key, current=current, suggested=suggested, why=why, risk=risk,
                runtime=sysctl_runtime(key, suggested), persistent=sysctl_persistent(key, suggested),
            ))


def doubled(value: int | None, at_least: int = 0) -> str:
    """The next doubling of ``value`` that reaches ``at_least``, as a sysctl value."""
    target = max(1, value or 1) * 2
    while target < at_least:
        target *= 2
    return str(target)


def wider_port_range(current: tuple[int, int]) -> tuple[int, int]:
    """10000-65535 unless already wider: 55,536 ports, ends of different parity as ip-sysctl advises."""
    return min(current[0], 10000), 65535


def counter_rate(points: Sequence[HistoryPoint], name: str) -> tuple[float | None, float]:
    """(per second, over seconds) between the first and last point that have the counter.

    A counter that went down (a new network namespace, a wrap) gives no rate.
    """
    having = [point for point in points if name in point.counters]
    if len(having) < 2:
        return None, 0.0
    span = having[-1].monotonic - having[0].monotonic
    delta = having[-1].counters[name] - having[0].counters[name]
    if span <= 0 or delta < 0:
        return None, span
    return delta / span, span


def recent(points: Sequence[HistoryPoint], window_seconds: float) -> Sequence[HistoryPoint]:
    """The points of the last ``window_seconds`` of history (all of them when it is shorter)."""
    if not points:
        return points
    start = points[-1].monotonic - window_seconds
    return [point for point in points if point.monotonic >= start]


def sysctl_context(snapshot: Snapshot, thresholds: Thresholds, suggestions: Iterable[Suggestion]) -> SysctlContext:
    """Every setting read, every counter as a rate, and the suggestions (one per key, first wins)."""
    kernel = snapshot.kernel
    sysctls = kernel.sysctls if kernel else {}
    readings = tuple(SysctlReading(key, sysctls.get(key), _reading_note(key, sysctls.get(key)))
                     for key in SYSCTL_KEYS)
    points = recent(snapshot.history, thresholds.rate_window_seconds)
    rates = tuple(CounterRate(name, *counter_rate(points, name), COUNTER_NOTES[name]) for name in sorted(COUNTER_KEYS))
    unique: dict[str, Suggestion] = {}
    for suggestion in suggestions:
        unique.setdefault(suggestion.key, suggestion)
    note = ""
    if kernel is None:
        note = "kernel settings were not read for this snapshot"
    elif not any(value is not None for value in sysctls.values()):
        note = "/proc/sys could not be read: no setting is known, none is suggested"
    return SysctlContext(readings, rates, tuple(unique.values()), note)


def _reading_note(key: str, value: str | None) -> str:
    if key == TW_RECYCLE:
        return "absent: removed in Linux 4.12 (it broke clients behind NAT); never set it" if value is None \
            else "still present on this old kernel: keep it 0 (it breaks clients behind NAT)"
    return SYSCTL_NOTES[key] if value is not None else f"absent on this kernel: {SYSCTL_NOTES[key]}"


def explain_sysctl(name: str) -> str | None:
    """What one setting does and what socktop says about it; None when socktop does not know it.

    ``name`` may be dotted (net.ipv4.tcp_tw_reuse) or short (tcp_tw_reuse).
    """
    key = next((k for k in SYSCTL_NOTES if name.strip() in (k, k.rpartition(".")[2])), None)
    if key is None:
        return None
    text = f"{key}: {SYSCTL_NOTES[key]}."
    if key == TW_RECYCLE:
        return f"{text}\n{TW_RECYCLE_GONE}\nFor TIME_WAIT pressure see: socktop explain time-wait"
    if key == "net.ipv4.tcp_fin_timeout":
        return f"{text}\n{FIN_TIMEOUT_IS_NOT_TIME_WAIT}"
    return text
