"""The records every backend produces: one immutable tuple per TCP socket.

`SocketRecord` is a NamedTuple rather than a frozen dataclass because a
refresh builds up to 50,000 of them per second: a tuple is created in C,
a frozen dataclass pays for ``object.__setattr__`` on every field.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from collections.abc import Collection
from typing import NamedTuple, Protocol, runtime_checkable


class TcpState(IntEnum):
    """Kernel TCP states, numbered as in include/net/tcp_states.h."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12

    @property
    def label(self) -> str:
        """The name `ss` prints (NEW_SYN_RECV is a request socket: SYN-RECV)."""
        return _SS_LABELS[self]

    @property
    def slug(self) -> str:
        """The name `ss` accepts in a state filter, e.g. ``close-wait``."""
        return _SS_LABELS[self].lower()

    @classmethod
    def parse(cls, text: str) -> TcpState:
        """Accept ``close-wait``, ``CLOSE_WAIT``, ``closewait`` or ``8``."""
        key = text.strip().upper().replace("-", "_").replace(" ", "_")
        if key.isdigit() and int(key) in STATE_BY_CODE:
            return STATE_BY_CODE[int(key)]
        compact = key.replace("_", "")
        for state in cls:
            if compact in (state.name.replace("_", ""), _SS_LABELS[state].replace("-", "")):
                return state
        raise ValueError(f"unknown TCP state {text!r}; known: {', '.join(s.slug for s in DISPLAY_STATES)}")


_SS_LABELS = {
    TcpState.ESTABLISHED: "ESTAB",
    TcpState.SYN_SENT: "SYN-SENT",
    TcpState.SYN_RECV: "SYN-RECV",
    TcpState.FIN_WAIT1: "FIN-WAIT-1",
    TcpState.FIN_WAIT2: "FIN-WAIT-2",
    TcpState.TIME_WAIT: "TIME-WAIT",
    TcpState.CLOSE: "UNCONN",
    TcpState.CLOSE_WAIT: "CLOSE-WAIT",
    TcpState.LAST_ACK: "LAST-ACK",
    TcpState.LISTEN: "LISTEN",
    TcpState.CLOSING: "CLOSING",
    TcpState.NEW_SYN_RECV: "SYN-RECV",
}

#: States in the order a user reads them (NEW_SYN_RECV is folded into SYN_RECV).
DISPLAY_STATES: tuple[TcpState, ...] = (
    TcpState.ESTABLISHED,
    TcpState.SYN_SENT,
    TcpState.SYN_RECV,
    TcpState.FIN_WAIT1,
    TcpState.FIN_WAIT2,
    TcpState.TIME_WAIT,
    TcpState.CLOSE,
    TcpState.CLOSE_WAIT,
    TcpState.LAST_ACK,
    TcpState.LISTEN,
    TcpState.CLOSING,
)

STATE_BY_CODE: dict[int, TcpState] = {int(s): s for s in TcpState}

#: The kernel reports request sockets as NEW_SYN_RECV; users know them as SYN_RECV.
CANONICAL_STATE: dict[int, TcpState] = {int(s): s for s in TcpState}
CANONICAL_STATE[int(TcpState.NEW_SYN_RECV)] = TcpState.SYN_RECV


class TimerKind(IntEnum):
    """`inet_diag_msg.timer` codes; /proc/net/tcp uses the same numbers (tr)."""

    NONE = 0
    RETRANSMIT = 1
    KEEPALIVE = 2
    TIME_WAIT = 3
    PROBE = 4

    @property
    def label(self) -> str:
        return _TIMER_LABELS[self]


_TIMER_LABELS = {
    TimerKind.NONE: "",
    TimerKind.RETRANSMIT: "on",
    TimerKind.KEEPALIVE: "keepalive",
    TimerKind.TIME_WAIT: "timewait",
    TimerKind.PROBE: "persist",
}


class SocketRecord(NamedTuple):
    """One TCP socket as the kernel reports it.

    Addresses are text; IPv4-mapped IPv6 addresses are shown as IPv4.
    ``state`` is already canonical (NEW_SYN_RECV folded into SYN_RECV).
    ``timer_ms`` is the time left on ``timer``; 0 when there is none.
    ``inode`` 0 means no process holds the socket (TIME_WAIT, orphans,
    request sockets).
    """

    family: int  # socket.AF_INET or AF_INET6, of the socket as created
    state: TcpState
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    recv_q: int
    send_q: int
    timer: TimerKind
    timer_ms: int
    retransmits: int
    uid: int
    inode: int
    cookie: int = 0  # the kernel's socket id (netlink only); kept from ESTABLISHED into TIME_WAIT
    lastack_ms: int = -1  # ms since the last ACK from the peer (tcp_info), read for CLOSE_WAIT; -1 unknown
    cgroup_id: int = 0  # inode of the socket's cgroup v2 directory (INET_DIAG_CGROUP_ID); 0 unknown
    netns: int = 0  # inode of the socket's network namespace; 0 means socktop's own

    @property
    def four_tuple(self) -> tuple[str, int, str, int]:
        return (self.local_addr, self.local_port, self.remote_addr, self.remote_port)


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What we know of a process that holds sockets.

    Identity is (pid, start_ticks): a PID the kernel reuses for another
    program is another process.
    """

    pid: int
    start_ticks: int
    name: str
    cmdline: str
    uid: int
    user: str
    fd_count: int | None = None
    fd_limit: int | None = None
    tcp_fds: int | None = None  # its TCP socket descriptors, listed in the socket table or not (closed under it)

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)


BACKENDS = ("auto", "netlink", "proc", "psutil")  # what --backend takes: auto picks the first that works


class Backend(Protocol):
    """A way of reading the socket table. Every backend yields the same records."""

    name: str

    def sockets(self) -> list[SocketRecord]:
        """Every TCP socket, IPv4 and IPv6, in every state."""
        ...


@runtime_checkable
class OwnerAwareBackend(Backend, Protocol):
    """A backend that learns owners itself (psutil, where /proc/*/fd does not exist)."""

    def owner_hint(self) -> dict[int, tuple[int, ...]]:
        """pids per (synthetic) inode of the last `sockets()` call."""
        ...

    def processes(self, pids: Collection[int]) -> dict[int, ProcessInfo]:
        """Facts about these processes, skipping those that exited."""
        ...


class BackendUnavailable(RuntimeError):
    """This way of reading the socket table does not work here (and why)."""


class CollectError(RuntimeError):
    """The kernel answered something we cannot use; the message says what."""
