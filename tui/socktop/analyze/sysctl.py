"""The sysctl advisor: this kernel's settings and counters, and changes tied to what a snapshot shows.

Rules it never breaks: it never suggests a value already in force, never a
sysctl it cannot see (it says why: absent on this kernel, or host-wide and
not visible from this network namespace), and never
net.ipv4.tcp_tw_recycle (`explain_sysctl` says why). Counters are rates
between snapshots, never totals since boot.

The findings call `Advisor.propose` with the evidence in hand; the UI and
CLI use `sysctl_context(snapshot, thresholds, suggestions) -> SysctlContext`
(readings, counter rates, the suggestions of every finding) and
`explain_sysctl(name, kernel)` for ``socktop explain tcp_tw_recycle``;
`SETTINGS` holds what socktop knows of every setting it cites.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..collect.kernelstate import COUNTER_KEYS, HOST_WIDE_KEYS, SYSCTL_KEYS, KernelState
from ..model.snapshot import HistoryPoint, Snapshot
from .commands import Command, sysctl_persistent, sysctl_runtime
from .config import Thresholds
from .knowledge import (EPHEMERAL_PORTS_TEXT, FIN_TIMEOUT_IS_NOT_TIME_WAIT, SCOPE_TEXT, TW_RECYCLE_GONE, TW_REUSE_TEXT,
                        wrapped)

TW_RECYCLE = "net.ipv4.tcp_tw_recycle"


@dataclass(frozen=True, slots=True)
class Setting:
    """What socktop knows of one kernel setting: for the context table and ``socktop explain NAME``."""

    key: str
    note: str  # one line: what it governs
    default: str
    fixes: str  # what changing it does
    does_not_fix: str
    since: str = ""  # the first kernel that has it, when recent


def _s(key: str, note: str, default: str, fixes: str, does_not_fix: str, since: str = "") -> Setting:
    return Setting(key, note, default, fixes, does_not_fix, since)


#: Every setting any socktop text cites (`SYSCTL_KEYS`), checked against Documentation/networking/ip-sysctl.rst
#: and net/ipv4 of Linux 6.18.
SETTINGS: dict[str, Setting] = {s.key: s for s in (
    _s("net.ipv4.tcp_tw_reuse", "0 off, 1 on, 2 loopback only: lets a new outgoing connect() take over a "
       "TIME_WAIT 4-tuple", "2",
       TW_REUSE_TEXT,
       "Server-side TIME_WAIT (accepted connections), peers that send no timestamps, and live connections "
       "filling the port range."),
    _s("net.ipv4.tcp_tw_reuse_delay", "ms after entering TIME_WAIT before tcp_tw_reuse may take the 4-tuple",
       "1000", "Lower, TIME_WAIT ports come back sooner for new outgoing connections.",
       "Anything while tcp_tw_reuse is 0; it must stay above the peer's timestamp clock tick, or PAWS can "
       "no longer reject old duplicates.", since="6.14"),
    _s("net.ipv4.tcp_timestamps", "TCP timestamps (RFC 7323): 1 on with a random offset per connection",
       "1", "Needed by tcp_tw_reuse and PAWS; this host's value only says whether it offers them.",
       "Whether a peer sends them: reuse needs the peer's timestamps on that connection (ss -tni shows ts)."),
    _s("net.ipv4.tcp_max_tw_buckets", "most timewait sockets in this network namespace (sockstat tw, orphaned "
       "FIN_WAIT_2 included); past it new ones are destroyed at once (TCPTimeWaitOverflow)",
       "scaled with memory at boot", "Raising it stops the early destruction (about 256 bytes each).",
       "The short connections that cause TIME_WAIT; lowering it only removes TIME_WAIT's protection."),
    _s("net.ipv4.ip_local_port_range", "ephemeral ports: bounds the connections one source address holds to "
       "one destination address and port", "32768 60999",
       f"Wider, more connections per destination. {EPHEMERAL_PORTS_TEXT}",
       "Server-side TIME_WAIT; and a service that later binds a port inside the range may find it taken "
       "(list such ports in ip_local_reserved_ports)."),
    _s("net.ipv4.ip_local_reserved_ports", "ports (ranges, comma separated) that automatic port selection "
       "never picks", "empty", "Keeps ephemeral connections off your services' ports inside the range.",
       "Explicit bind() to those ports; it shrinks the ephemeral range."),
    _s("net.ipv4.tcp_fin_timeout", "seconds an orphaned FIN_WAIT_2 socket waits for the peer's FIN "
       "(not a TIME_WAIT setting)", "60",
       "Lower, orphaned FIN_WAIT_2 end sooner (at most 60: as timewait sockets, counted in tw).",
       f"{FIN_TIMEOUT_IS_NOT_TIME_WAIT} Nor sockets still held after shutdown(SHUT_WR)."),
    _s("net.ipv4.tcp_keepalive_time", "seconds of idleness before the first keepalive probe, on sockets "
       "that enabled SO_KEEPALIVE", "7200",
       "Lower, dead peers of idle connections are found sooner (and the kernel aborts the connection).",
       "Sockets without SO_KEEPALIVE; a CLOSE_WAIT leak (the descriptor stays open)."),
    _s("net.ipv4.tcp_keepalive_intvl", "seconds between keepalive probes", "75",
       "Lower, a dead peer is declared sooner.", "Sockets without SO_KEEPALIVE."),
    _s("net.ipv4.tcp_keepalive_probes", "unanswered probes before the connection is dropped", "9",
       "Fewer, a dead peer is declared sooner.", "Sockets without SO_KEEPALIVE."),
    _s("net.ipv4.tcp_max_orphans", "most orphans (sockets no process holds, finishing a close: FIN_WAIT_1, "
       "LAST_ACK, CLOSING) host-wide; past it they are reset", "scaled with memory at boot",
       "Raising it (with memory: up to about 64 KB each) stops resets for too many orphans.",
       "TCPAbortOnMemory caused by TCP memory above tcp_mem; orphaned FIN_WAIT_2 (they count in tw)."),
    _s("net.ipv4.tcp_orphan_retries", "retransmissions before an orphan gives up, as a time budget from a "
       "200 ms minimum timeout (0 means 8)", "0 (means 8: about 102 s)",
       "Lower, orphaned FIN_WAIT_1, LAST_ACK and CLOSING end sooner: 3 is about 3 s, whatever the RTT.",
       "Sockets still held by a process (tcp_retries2 bounds those)."),
    _s("net.ipv4.tcp_syncookies", "answer with SYN cookies when a listener's SYN queue overflows", "1",
       "1 keeps a SYN flood from filling the SYN queue.",
       "A full accept queue: that is the application accepting too slowly."),
    _s("net.ipv4.tcp_max_syn_backlog", "with syncookies off, drops SYNs from unproven peers once less than a "
       "quarter of it is left", "128 and up, scaled with memory",
       "Only matters with tcp_syncookies 0.",
       "The SYN queue's own cap, min(listen() backlog, somaxconn), and the accept queue."),
    _s("net.core.somaxconn", "cap on the backlog a listener may ask for in listen() (accept and SYN queue)",
       "4096 (128 before Linux 5.4)", "Raising it lets applications that ask for more get it.",
       "An application that asks for a small backlog, or accepts too slowly."),
    _s("net.ipv4.tcp_abort_on_overflow", "1: reset a client whose handshake finds the accept queue full",
       "0", "Clients fail fast instead of retrying.",
       "The overload itself; with 0 a burst recovers by itself, with 1 it becomes failed connections."),
    _s("net.ipv4.tcp_syn_retries", "SYN retransmissions before connect() gives up (ETIMEDOUT)", "6",
       "Lower, connect() to a dead destination fails sooner (6 with 4 linear timeouts: about 131 s).",
       "Slow failures inside one application: its own connect timeout is the better place for that."),
    _s("net.ipv4.tcp_syn_linear_timeouts", "SYN retransmissions at a fixed 1 s before the backoff doubles; "
       "they add to tcp_syn_retries", "4",
       "Faster recovery from short losses while connecting.", "SYN-ACK retransmissions on the server.",
       since="6.5"),
    _s("net.ipv4.tcp_synack_retries", "SYN-ACK retransmissions before a half-open connection is dropped", "5",
       "Lower, SYN_RECV of clients that never answer end sooner (5: the last at 31 s, gone after 63 s).",
       "SYN floods (keep syncookies on)."),
    _s("net.ipv4.tcp_retries2", "retransmissions of unacknowledged data before an established connection "
       "is aborted, as a time budget from a 200 ms minimum timeout", "15 (about 924.6 s)",
       "Lower, connections to dead peers with unacknowledged data fail sooner (8: about 102 s).",
       "Idle connections (keepalive finds those); per socket, TCP_USER_TIMEOUT is the finer tool."),
    _s("net.ipv4.tcp_rfc1337", "1: TIME_WAIT ignores RSTs (RFC 1337); 0: an RST ends TIME_WAIT early", "0",
       "1 protects TIME_WAIT from assassination by stray RSTs.", "The number of TIME_WAIT sockets."),
    _s("net.ipv4.tcp_mem", "pages all TCP sockets may use host-wide: min, pressure, max", "scaled with memory "
       "at boot", "Past max the kernel aborts (TCPAbortOnMemory, \"out of memory -- consider tuning "
       "tcp_mem\"); raising it moves that point.", "Too many orphans (tcp_max_orphans), or one socket's "
       "buffers (tcp_rmem, tcp_wmem)."),
    _s(TW_RECYCLE, "removed in Linux 4.12; never set it", "absent", TW_RECYCLE_GONE,
       "Nothing safely: it breaks clients behind NAT."),
)}
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
    persistent: Command  # a line under /etc/sysctl.d/ (sudo tee -a), then sysctl -p on that file


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
            where = self.kernel.scope_note(key) if self.kernel else "not read"
            self.notes.append(f"{key} is {where}: nothing to set here")
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
    readings = tuple(SysctlReading(key, sysctls.get(key), _reading_note(key, sysctls.get(key), kernel))
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


def _reading_note(key: str, value: str | None, kernel: KernelState | None) -> str:
    note = SETTINGS[key].note
    if key == TW_RECYCLE:
        return "absent: removed in Linux 4.12 (it broke clients behind NAT); never set it" if value is None \
            else "still present on this old kernel: keep it 0 (it breaks clients behind NAT)"
    if value is not None:
        return note
    return f"{kernel.scope_note(key) if kernel else 'not read'}: {note}"


def find_setting(name: str) -> Setting | None:
    """The setting called ``name``, dotted (net.ipv4.tcp_tw_reuse) or short (tcp_tw_reuse)."""
    name = name.strip()
    return next((s for k, s in SETTINGS.items() if name in (k, k.rpartition(".")[2])), None)


def explain_sysctl(name: str, kernel: KernelState | None = None) -> str | None:
    """``socktop explain SETTING``: what it governs, its value on this kernel, the default, what changing it
    does and does not fix, and its scope; None when socktop does not know the name."""
    setting = find_setting(name)
    if setting is None:
        return None
    key = setting.key
    value = kernel.sysctls.get(key) if kernel else None
    if value is not None:
        here = value
    elif kernel is None or not kernel.sysctls:
        here = "not read (/proc/sys unreadable)"
    elif key == TW_RECYCLE:
        here = "absent on this kernel (removed in 4.12)"
    else:
        here = kernel.scope_note(key) + (f" (it appeared in Linux {setting.since})" if setting.since and
                                         key not in HOST_WIDE_KEYS else "")
    scope = ("host-wide: one value for every network namespace, set from the host's" if key in HOST_WIDE_KEYS
             else "per network namespace: this value is this namespace's; a container has its own")
    lines = [key, *wrapped(setting.note + ".", "  ")]
    for title, text in (("Here", here), ("Default", setting.default + (f" (since Linux {setting.since})"
                                                                        if setting.since else "")),
                        ("Changing it", setting.fixes), ("It does not fix", setting.does_not_fix),
                        ("Scope", scope)):
        lines += ["", f"{title}:", *wrapped(text, "  ")]
    if key == TW_RECYCLE:
        lines += ["", "For TIME_WAIT pressure see: socktop explain time-wait"]
    else:
        lines += ["", "To change it (now, then across reboots):", f"  $ {sysctl_runtime(key, 'VALUE').line}",
                  f"  $ {sysctl_persistent(key, 'VALUE').line}", "", *wrapped(SCOPE_TEXT, "  ")]
    return "\n".join(lines)
