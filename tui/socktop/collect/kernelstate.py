"""The kernel's TCP settings and counters, read once per refresh into the snapshot.

Findings and sysctl advice must follow from snapshots alone (deterministic,
testable with constructed snapshots), so the few kernel values they weigh
are read here, in the collect layer, rather than by the analysis itself:

- ``sysctls``: the settings socktop may advise on or cites, keyed by their
  dotted ``sysctl`` name; ``None`` when /proc/sys has no such file: this
  kernel lacks it (``net.ipv4.tcp_tw_reuse_delay`` before 6.14,
  ``tcp_tw_recycle`` since 4.12), or it is host-wide (``HOST_WIDE_KEYS``)
  and socktop runs in another network namespace than the host's, whose
  /proc/sys shows only per-namespace settings (`KernelState.scope_note`).
- ``counters``: cumulative counters since boot from /proc/net/netstat and
  /proc/net/snmp, keyed by their ``nstat`` names (``TcpExtListenOverflows``)
  so a user can look them up with ``nstat -az NAME``; the analysis turns them
  into rates between snapshots.
- ``sockstat``: the TCP line of /proc/net/sockstat: ``inuse`` and ``tw``
  count this network namespace (``tw`` includes orphaned FIN_WAIT_2 turned
  timewait); ``orphan``, ``alloc`` and ``mem`` (pages) are host-wide totals
  in every namespace (net/ipv4/proc.c).

About 20 small reads per refresh; every file may be absent or malformed
(containers, other kernels) and then simply contributes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .owners import read_text

PROC = "/proc"

#: Every sysctl the advisor reads or may suggest (the advisor never suggests tcp_tw_recycle).
SYSCTL_KEYS: tuple[str, ...] = (
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_tw_reuse_delay",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_max_orphans",
    "net.ipv4.tcp_orphan_retries",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.somaxconn",
    "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_syn_linear_timeouts",
    "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_retries2",
    "net.ipv4.tcp_rfc1337",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_tw_recycle",
)

#: Settings the kernel keeps once for the whole host (net/ipv4/sysctl_net_ipv4.c ``ipv4_table``, registered
#: for the initial network namespace only); every other net.ipv4 and net.core key here is per namespace.
HOST_WIDE_KEYS: frozenset[str] = frozenset({"net.ipv4.tcp_max_orphans", "net.ipv4.tcp_mem"})
HOST_WIDE_HIDDEN = "host-wide, not visible from this network namespace"

#: The counters the findings turn into rates, by nstat name.
COUNTER_KEYS: frozenset[str] = frozenset({
    "TcpExtTCPTimeWaitOverflow",  # a TIME_WAIT socket destroyed at once: tcp_max_tw_buckets reached
    "TcpExtListenOverflows",  # a completed handshake found the accept queue full
    "TcpExtListenDrops",  # every drop at a listener, overflows included
    "TcpExtSyncookiesSent",  # the SYN queue was full: answered with a cookie
    "TcpExtTCPReqQFullDrop",  # the SYN queue was full and cookies were off: SYN dropped
    "TcpExtTCPAbortOnMemory",  # an orphan killed: too many orphans or out of TCP memory
    "TcpActiveOpens",  # connect() calls that sent a SYN
    "TcpPassiveOpens",  # connections accepted by a listener's handshake
})


@dataclass(frozen=True, slots=True)
class KernelState:
    """Settings and counters at one refresh; see the module docstring for the keys."""

    sysctls: dict[str, str | None] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    sockstat: dict[str, int] = field(default_factory=dict)
    host_wide: frozenset[str] = frozenset()  # sysctls a namespace does not have, shown as the host's (collect.netns)

    def sysctl_int(self, key: str) -> int | None:
        """A single-number sysctl as an int; None when absent or not one number."""
        value = self.sysctls.get(key)
        return int(value) if value is not None and value.lstrip("-").isdigit() else None

    @property
    def host_wide_hidden(self) -> bool:
        """True in a network namespace other than the host's: /proc/sys there lacks the host-wide keys
        while it has the per-namespace ones (a kernel without tcp_max_orphans does not exist)."""
        return self.sysctls.get("net.ipv4.tcp_max_orphans") is None and \
            self.sysctls.get("net.ipv4.tcp_syncookies") is not None

    def scope_note(self, key: str) -> str:
        """Why ``key`` has no value: host-wide and hidden here, or absent on this kernel ('' when it has one)."""
        if self.sysctls.get(key) is not None:
            return ""
        if key in HOST_WIDE_KEYS and self.host_wide_hidden:
            return HOST_WIDE_HIDDEN
        return "absent on this kernel" if self.sysctls else "not read"

    def tcp_mem(self) -> tuple[int, int, int] | None:
        """``tcp_mem`` (min, pressure, max) in pages; None when absent or malformed."""
        parts = (self.sysctls.get("net.ipv4.tcp_mem") or "").split()
        return (int(parts[0]), int(parts[1]), int(parts[2])) if len(parts) == 3 and all(
            part.isdigit() for part in parts) else None

    def port_range(self) -> tuple[int, int] | None:
        """``ip_local_port_range`` as (low, high); None when absent or malformed."""
        parts = (self.sysctls.get("net.ipv4.ip_local_port_range") or "").split()
        if len(parts) != 2 or not all(part.isdigit() for part in parts):
            return None
        low, high = int(parts[0]), int(parts[1])
        return (low, high) if low <= high else None


def sysctl_path(key: str, proc: str = PROC) -> str:
    """/proc/sys path of a dotted sysctl name (``net.core.somaxconn`` → .../net/core/somaxconn)."""
    return f"{proc}/sys/{key.replace('.', '/')}"


def read_sysctl(key: str, proc: str = PROC) -> str | None:
    """The value as ``sysctl -n`` prints it (whitespace folded), or None when absent."""
    text = read_text(sysctl_path(key, proc), 4096)
    return " ".join(text.split()) if text is not None else None


def parse_counter_table(text: str, wanted: Iterable[str]) -> dict[str, int]:
    """The wanted nstat-named counters of /proc/net/netstat or /proc/net/snmp.

    Those files come in line pairs, ``TcpExt: Name1 Name2`` then
    ``TcpExt: 1 2``; a pair whose lengths differ is skipped as malformed.
    """
    wanted = set(wanted)
    found: dict[str, int] = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2]):
        names, numbers = header.split(), values.split()
        if len(names) != len(numbers) or not names or names[0] != numbers[0]:
            continue
        prefix = names[0].rstrip(":")
        for name, number in zip(names[1:], numbers[1:]):
            key = prefix + name
            if key in wanted and number.lstrip("-").isdigit():
                found[key] = int(number)
    return found


def parse_sockstat(text: str) -> dict[str, int]:
    """The ``TCP:`` line of /proc/net/sockstat as {"inuse": N, "orphan": N, "tw": N, ...}."""
    for line in text.splitlines():
        if line.startswith("TCP:"):
            words = line.split()[1:]
            return {name: int(value) for name, value in zip(words[::2], words[1::2]) if value.isdigit()}
    return {}


def read_sysctls(proc: str = PROC) -> dict[str, str | None]:
    """The SYSCTL_KEYS settings. /proc/sys/net shows the reading thread's network namespace
    (net/sysctl_net.c: ``current->nsproxy->net_ns``), whatever /proc it is read through."""
    return {key: read_sysctl(key, proc) for key in SYSCTL_KEYS}


def read_counters(net: str = f"{PROC}/net", keys: Iterable[str] = COUNTER_KEYS,
                  tables: Iterable[str] = ("netstat", "snmp")) -> tuple[dict[str, int], dict[str, int]]:
    """The ``keys`` counters (of ``tables``) and the sockstat TCP line of the namespace ``net`` belongs
    to (``/proc/PID/net`` is PID's network namespace)."""
    counters: dict[str, int] = {}
    wanted = frozenset(keys)
    for table in tables:
        counters.update(parse_counter_table(read_text(f"{net}/{table}", 1 << 16) or "", wanted))
    return counters, parse_sockstat(read_text(f"{net}/sockstat") or "")


def read_kernel_state(proc: str = PROC) -> KernelState:
    """Everything above, read now; never raises (what cannot be read is left out)."""
    counters, sockstat = read_counters(f"{proc}/net")
    return KernelState(sysctls=read_sysctls(proc), counters=counters, sockstat=sockstat)
