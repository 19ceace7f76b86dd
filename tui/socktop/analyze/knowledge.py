"""What every TCP state means on Linux, and what to do when too many sockets sit in it.

Written for an on-call engineer at 3 a.m.: short, exact, Linux-specific.
Facts come from the kernel (include/net/tcp.h, Documentation/networking/
ip-sysctl.rst) and RFC 9293, not from folklore: TIME_WAIT is a fixed 60 s,
tcp_fin_timeout is not a TIME_WAIT knob, tcp_tw_recycle is gone, and no
setting ends CLOSE_WAIT.

The UI and the CLI use:
- `knowledge_for(state) -> StateKnowledge` (NEW_SYN_RECV is folded into SYN_RECV);
- `explain_text(state) -> str`, the plain text of ``socktop explain <state>``;
- `StateKnowledge` fields: meaning, side, lifetime, normal_when, symptom_when,
  causes, remedies (`Remedy`: action, commands; most effective first),
  not_fixes (what people try that does not help, and why), sysctls.
Commands here are generic (PID, PORT in capitals); findings give the exact ones.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from ..collect.records import CANONICAL_STATE, TcpState

WIDTH = 78


@dataclass(frozen=True, slots=True)
class Remedy:
    """One thing to do, and the commands that do or check it, in order."""

    action: str
    commands: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StateKnowledge:
    """Everything a user needs to read a pile-up of one state."""

    state: TcpState
    meaning: str  # one line
    side: str  # which end is in it, and the segment (FIN, ACK, RST) that put it there
    lifetime: str  # how long it normally lasts and what ends it: a timer, the owner, the peer
    normal_when: str
    symptom_when: str
    causes: tuple[str, ...]
    remedies: tuple[Remedy, ...]  # most effective first
    not_fixes: tuple[str, ...] = ()
    sysctls: tuple[str, ...] = ()  # the settings that bear on this state


TIME_WAIT_SECONDS = 60  # TCP_TIMEWAIT_LEN in include/net/tcp.h; no sysctl changes it

TW_RECYCLE_GONE = (
    "net.ipv4.tcp_tw_recycle was removed in Linux 4.12: it dropped connections whose TCP "
    "timestamps went backwards per peer address, which breaks clients behind NAT (many "
    "hosts, one address, unrelated clocks). Never set it; on this kernel the key does not exist."
)
FIN_TIMEOUT_IS_NOT_TIME_WAIT = (
    "net.ipv4.tcp_fin_timeout does not shorten TIME_WAIT (fixed at 60 s); it bounds "
    "orphaned FIN_WAIT_2 sockets."
)

_STACK_DUMPS = ("py-spy dump --pid PID     (Python)", "jstack -l PID     (Java, as the JVM's user)",
                "gdb -p PID -batch -ex 'thread apply all bt'     (native)")

KNOWLEDGE: dict[TcpState, StateKnowledge] = {k.state: k for k in (
    StateKnowledge(
        TcpState.ESTABLISHED,
        meaning="An open connection: both sides can send data.",
        side="Both ends, client and server, after the handshake: SYN, SYN-ACK, ACK.",
        lifetime="As long as the applications keep it. A FIN (close()) or an RST ends it. An idle connection "
                 "has no timeout unless the application enables keepalive (first probe after "
                 "tcp_keepalive_time, 7200 s by default); unacknowledged data is retransmitted per "
                 "tcp_retries2 (about 15 minutes by default) before the kernel gives up.",
        normal_when="Long-lived connections: databases, connection pools, brokers, HTTP keep-alive, SSH.",
        symptom_when="The count grows with no matching load (connections opened and never closed), idle "
                     "connections to peers that are gone, or Send-Q keeps growing (the peer is not reading).",
        causes=(
            "A connection pool without an upper bound, or a new connection per task that is never closed.",
            "Peers that vanished without FIN or RST (crash, NAT or firewall idle timeout) on idle "
            "connections without keepalive: nothing ever tells this side.",
            "Slow consumers: Recv-Q (we do not read) or Send-Q (the peer does not read) that does not drain.",
        ),
        remedies=(
            Remedy("See who holds them and to whom, with queues and timers.", ("ss -tanpo state established",)),
            Remedy("Bound the pool and close idle connections in the application."),
            Remedy("Enable SO_KEEPALIVE on long idle connections so dead peers are detected; "
                   "tcp_keepalive_time/intvl/probes set when (defaults 7200 s, then 9 probes 75 s apart).",
                   ("sysctl -ar tcp_keepalive_",)),
        ),
        sysctls=("net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"),
    ),
    StateKnowledge(
        TcpState.SYN_SENT,
        meaning="connect() sent a SYN and waits for the SYN-ACK.",
        side="The client (active opener), right after connect().",
        lifetime="One round trip. A SYN-ACK moves it to ESTABLISHED; an RST ends it at once (connection "
                 "refused); with no answer the SYN is retransmitted tcp_syn_retries times (6 by default, "
                 "about 127 s) unless the application's connect timeout is shorter.",
        normal_when="A few, for a moment, while connections open.",
        symptom_when="Many, or old ones: the destination does not answer.",
        causes=(
            "Destination host or route down (no RST comes back).",
            "A firewall that drops SYNs silently (one that rejects sends RST, which ends it at once).",
            "The server's listen queue is full and it drops the SYNs.",
        ),
        remedies=(
            Remedy("Find the destinations, then test one.", ("ss -tanp state syn-sent", "nc -vz HOST PORT")),
            Remedy("Give the application a connect timeout of seconds, not the kernel's two minutes, "
                   "and back off between retries."),
            Remedy("On the server, look for a full accept queue: LISTEN with Recv-Q at Send-Q, "
                   "ListenOverflows rising.", ("nstat -az TcpExtListenOverflows TcpExtListenDrops",)),
        ),
    ),
    StateKnowledge(
        TcpState.SYN_RECV,
        meaning="Half-open: a listener received a SYN, answered SYN-ACK and waits for the final ACK.",
        side="The server. On Linux these are request sockets in the listener's SYN queue (the kernel "
             "calls them NEW_SYN_RECV; ss shows SYN-RECV): no descriptor, no process.",
        lifetime="One round trip. The client's ACK makes a connection and queues it for accept(); an RST "
                 "ends it; without an answer the SYN-ACK is retransmitted tcp_synack_retries times "
                 "(5 by default, about 63 s).",
        normal_when="A few on a busy server.",
        symptom_when="Hundreds on one listener. With SyncookiesSent rising: a SYN flood or a burst larger "
                     "than the SYN queue. With ListenOverflows rising: the accept queue is full, the kernel "
                     "drops the client's final ACK and the server keeps SYN_RECV while the client thinks "
                     "it is connected.",
        causes=(
            "An application that accept()s too slowly: its accept queue is full.",
            "A SYN flood from spoofed addresses, which never send the final ACK.",
            "Final ACKs lost on the way in (asymmetric routing, a one-way firewall rule).",
        ),
        remedies=(
            Remedy("Check the listener's accept queue (Recv-Q against Send-Q) and the drop counters.",
                   ("ss -tln '( sport = :PORT )'", "nstat -az TcpExtListenOverflows TcpExtSyncookiesSent")),
            Remedy("Full accept queue: make the application accept faster (more workers, an accept loop "
                   "that never blocks), then raise its listen() backlog, which the kernel caps at "
                   "net.core.somaxconn."),
            Remedy("SYN flood: keep net.ipv4.tcp_syncookies=1 (the default: cookies only when the SYN queue "
                   "is full) and filter upstream.", ("sysctl net.ipv4.tcp_syncookies",)),
            Remedy("net.ipv4.tcp_max_syn_backlog only matters with syncookies off; with them on, the "
                   "listen backlog bounds the SYN queue."),
        ),
        sysctls=("net.ipv4.tcp_syncookies", "net.ipv4.tcp_max_syn_backlog", "net.core.somaxconn"),
    ),
    StateKnowledge(
        TcpState.FIN_WAIT1,
        meaning="This side sent its FIN (close() or shutdown()) and waits for the peer to acknowledge it.",
        side="The active closer, leaving ESTABLISHED; often already orphaned (closed by its process).",
        lifetime="One round trip: the ACK moves it to FIN_WAIT_2, the peer's own FIN to CLOSING. Unsent "
                 "data leaves before the FIN, so a peer that stopped reading (zero window) holds it here. "
                 "Retransmissions stop after tcp_retries2, or tcp_orphan_retries once orphaned (0 means 8).",
        normal_when="For a moment on any host that closes connections.",
        symptom_when="Many that stay: peers gone or unreachable, or peers not reading (large Send-Q). "
                     "Orphaned ones count against tcp_max_orphans.",
        causes=(
            "Peers that disappeared (crash, network cut) after we wrote to them.",
            "Peers that stopped reading: our FIN waits behind unsent data.",
        ),
        remedies=(
            Remedy("Look at the peers, Send-Q and retransmit timers.", ("ss -tano state fin-wait-1",)),
            Remedy("Busy servers: lower net.ipv4.tcp_orphan_retries so orphaned ones give up sooner."),
            Remedy("Watch the orphan total against net.ipv4.tcp_max_orphans.", ("cat /proc/net/sockstat",)),
        ),
        sysctls=("net.ipv4.tcp_orphan_retries", "net.ipv4.tcp_max_orphans"),
    ),
    StateKnowledge(
        TcpState.FIN_WAIT2,
        meaning="Our FIN was acknowledged; we wait for the peer's FIN.",
        side="The active closer, after the ACK of its FIN. The peer is in CLOSE_WAIT meanwhile.",
        lifetime="Until the peer closes. If our process already called close() (an orphan, no descriptor) "
                 "the kernel drops it after tcp_fin_timeout (60 s by default). After shutdown(SHUT_WR) "
                 "with the descriptor still open there is no limit.",
        normal_when="For a moment; longer for protocols that half-close and keep reading the answer.",
        symptom_when="Many toward one peer: that peer's application does not close its end. It has a "
                     "CLOSE_WAIT leak: run socktop there.",
        causes=(
            "A CLOSE_WAIT leak in the peer application.",
            "shutdown(SHUT_WR) here without a later close(), waiting on a peer that never answers.",
        ),
        remedies=(
            Remedy("Find the peer, then fix its missing close().", ("ss -tanp state fin-wait-2",)),
            Remedy("Orphaned ones pile up: lower net.ipv4.tcp_fin_timeout (e.g. 30). It does not touch "
                   "sockets still held by a descriptor."),
            Remedy("Half-closed with a descriptor: close() after reading the answer, with a read timeout."),
        ),
        not_fixes=("tcp_fin_timeout does not shorten TIME_WAIT.",),
        sysctls=("net.ipv4.tcp_fin_timeout",),
    ),
    StateKnowledge(
        TcpState.TIME_WAIT,
        meaning="The connection is over; this side closed first and keeps its 4-tuple reserved for 60 s.",
        side="The active closer: the side whose FIN went first, a client that hangs up or a server that "
             "closes after answering. It comes from FIN_WAIT_2 when the peer's FIN arrives (we send the "
             "last ACK) or from CLOSING when our FIN is ACKed. No process holds it (inode 0).",
        lifetime="A fixed 60 s on Linux (2*MSL, TCP_TIMEWAIT_LEN), set by no sysctl. It lets late duplicate "
                 "segments of the old connection die out before the 4-tuple carries a new one, and lets this "
                 "side answer again if the peer retransmits its FIN because our last ACK was lost.",
        normal_when="Any busy host: N closes per second keep about 60*N in TIME_WAIT. Each costs a little "
                    "kernel memory and no descriptor.",
        symptom_when="On a client, when one (source address, destination address, destination port) fills "
                     "much of ip_local_port_range: connect() fails with EADDRNOTAVAIL (\"Cannot assign "
                     "requested address\"). Host-wide, when the total nears tcp_max_tw_buckets and "
                     "TCPTimeWaitOverflow rises.",
        causes=(
            "A new connection per request: no keep-alive, no pool.",
            "A server that closes first (keep-alive off, or a server idle timeout shorter than the "
            "clients'), which parks TIME_WAIT on the server.",
            "Health checks, crawlers or scripts opening one connection per probe.",
        ),
        remedies=(
            Remedy("Reuse connections: HTTP keep-alive, connection pools, HTTP/2 or gRPC multiplexing."),
            Remedy("Let the client close first, so TIME_WAIT lands on the many clients, not the one server."),
            Remedy("Outgoing connections: net.ipv4.tcp_tw_reuse=1 lets connect() take over a TIME_WAIT "
                   "4-tuple (needs TCP timestamps; 2, the default, only for loopback). It does nothing for "
                   "a server's accepted connections.", ("sysctl -w net.ipv4.tcp_tw_reuse=1",)),
            Remedy("Widen net.ipv4.ip_local_port_range (default 32768-60999: 28,232 ports per destination), "
                   "clear of the ports your services listen on; or spread over more destination or source "
                   "addresses.", ("sysctl net.ipv4.ip_local_port_range",)),
            Remedy("A restarted server that fails with EADDRINUSE: set SO_REUSEADDR on the listening socket "
                   "before bind(). It lets bind() ignore the TIME_WAIT; it removes none."),
            Remedy("Last resort, for connections whose end you control: SO_LINGER with timeout 0 makes "
                   "close() send RST and skip TIME_WAIT, but unsent data is lost and the peer sees a reset."),
        ),
        not_fixes=(
            FIN_TIMEOUT_IS_NOT_TIME_WAIT,
            TW_RECYCLE_GONE,
            "Lowering tcp_max_tw_buckets only makes the kernel destroy TIME_WAIT sockets early "
            "(TCPTimeWaitOverflow): it removes the protection, not the cause.",
        ),
        sysctls=("net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_tw_reuse_delay", "net.ipv4.ip_local_port_range",
                 "net.ipv4.tcp_max_tw_buckets"),
    ),
    StateKnowledge(
        TcpState.CLOSE,
        meaning="No connection: a TCP socket that neither listens nor is connected.",
        side="Either side. Socket tables list it only while it is bound to a port, e.g. bind() before "
             "connect() or listen(); ss shows these only with -B (--bound-inactive), which older ss lacks.",
        lifetime="Until the process connects, listens or closes it: no timer.",
        normal_when="A few, for a moment, between bind() and connect() or listen().",
        symptom_when="Many held by one process: each keeps a port (and a descriptor) that nothing uses.",
        causes=(
            "bind() before connect() to pick a source address: each one reserves a port up front.",
            "A leak of sockets that were created and bound but never used or closed.",
        ),
        remedies=(
            Remedy("Find the owner and its descriptors.", ("ss -tanpB state closed", "ls -l /proc/PID/fd")),
            Remedy("Bind-before-connect: set IP_BIND_ADDRESS_NO_PORT so the port is chosen at connect()."),
            Remedy("Close the sockets the code path forgets (the same hunt as for CLOSE_WAIT)."),
        ),
    ),
    StateKnowledge(
        TcpState.CLOSE_WAIT,
        meaning="The peer closed its side (sent FIN); this process has not called close() yet.",
        side="The passive closer: it received the peer's FIN while ESTABLISHED and the kernel ACKed it. "
             "The kernel's part is done; the application holds the descriptor.",
        lifetime="Normally milliseconds: the application reads end-of-file and closes. No timer and no sysctl "
                 "ends it: it lasts until the owner calls close() or exits. Each one holds a file descriptor.",
        normal_when="A handful, briefly, on a busy service.",
        symptom_when="A count that stays up or keeps rising for one process: a descriptor leak that ends in "
                     "\"Too many open files\" (EMFILE) at its RLIMIT_NOFILE. Recv-Q above 0 means it did "
                     "not even read what the peer sent.",
        causes=(
            "A code path that never closes: an error or early return without finally / with / defer.",
            "HTTP responses whose body is never read to the end or closed, so the pooled connection is "
            "never released.",
            "A pool that keeps connections the server already closed (server idle timeout shorter than "
            "the pool's) and never checks them.",
            "A blocked thread or event loop that never gets to the close.",
        ),
        remedies=(
            Remedy("See the sockets and the peers that closed on us.", ("ss -tanp state close-wait",)),
            Remedy("Find the descriptors, then where the threads are, and fix the missing close() or "
                   "release.", ("lsof -nP -a -p PID -iTCP -sTCP:CLOSE_WAIT", *_STACK_DUMPS)),
            Remedy("Stop-gap: restart that process; the kernel closes all its sockets. The leak returns "
                   "until the code is fixed.", ("kill -TERM PID",)),
            Remedy("Pools: validate idle connections and keep the pool's idle timeout below the server's."),
        ),
        not_fixes=(
            "No sysctl governs CLOSE_WAIT: tcp_fin_timeout, keepalive and TIME_WAIT settings do not end it.",
            "Keepalive probes the peer; whatever they find, the descriptor stays open until close().",
            "Restarting the network service: the socket belongs to this process, not to the network.",
            "ss -K aborts one connection but the process keeps the descriptor: the leak stays.",
        ),
    ),
    StateKnowledge(
        TcpState.LAST_ACK,
        meaning="The peer closed first, then we closed; we wait for the ACK of our FIN.",
        side="The passive closer, leaving CLOSE_WAIT when its process called close(). Usually orphaned.",
        lifetime="One round trip: the ACK ends it (no TIME_WAIT on this side). Without an answer our FIN is "
                 "retransmitted until tcp_orphan_retries (0 means 8) gives up.",
        normal_when="For a moment on servers whose clients close first.",
        symptom_when="Many that stay: the peers went away after sending their FIN, or our FINs are "
                     "dropped on the way.",
        causes=(
            "Clients that close and vanish (mobile networks, crashed hosts).",
            "A firewall or NAT that forgot the connection and drops our FIN.",
        ),
        remedies=(
            Remedy("See the peers and the retransmit timers.", ("ss -tano state last-ack",)),
            Remedy("Busy servers: lower net.ipv4.tcp_orphan_retries so they give up sooner."),
            Remedy("Check the path (firewall or NAT idle timeouts) toward those peers."),
        ),
        sysctls=("net.ipv4.tcp_orphan_retries", "net.ipv4.tcp_max_orphans"),
    ),
    StateKnowledge(
        TcpState.LISTEN,
        meaning="A server socket waiting for connections; Recv-Q is its accept queue, Send-Q the queue's limit.",
        side="The server, after listen(). Connections wait in its accept queue until accept() takes them.",
        lifetime="Until the process closes it or exits.",
        normal_when="One per service port and address (several with SO_REUSEPORT).",
        symptom_when="Recv-Q near Send-Q: the application does not accept() fast enough. New SYNs and final "
                     "ACKs are then dropped and ListenOverflows / ListenDrops rise; clients see slow or "
                     "failed connects.",
        causes=(
            "Too few workers, or an accept loop blocked by other work.",
            "A backlog too small for bursts: listen(fd, backlog), capped at net.core.somaxconn.",
        ),
        remedies=(
            Remedy("Check the queue and the drop counters.",
                   ("ss -tln '( sport = :PORT )'", "nstat -az TcpExtListenOverflows TcpExtListenDrops")),
            Remedy("Make the application accept faster: more workers, no blocking work in the accept loop."),
            Remedy("Raise the backlog in the application, and net.core.somaxconn if it caps it "
                   "(4096 by default since Linux 5.4).", ("sysctl net.core.somaxconn",)),
        ),
        sysctls=("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"),
    ),
    StateKnowledge(
        TcpState.CLOSING,
        meaning="Both sides sent FIN at the same time; we wait for the ACK of ours.",
        side="Either side, in a simultaneous close: the peer's FIN arrived while we waited in FIN_WAIT_1.",
        lifetime="One round trip, then TIME_WAIT. Retransmissions are bounded like FIN_WAIT_1's "
                 "(tcp_orphan_retries once orphaned).",
        normal_when="Rare, and brief.",
        symptom_when="Many that stay: ACKs lost on the path, or peers that vanished mid-close.",
        causes=("Packet loss during simultaneous closes.", "Peers that disappeared during the close."),
        remedies=(
            Remedy("See the peers and timers.", ("ss -tano state closing",)),
            Remedy("Check the path to those peers for loss."),
        ),
        sysctls=("net.ipv4.tcp_orphan_retries",),
    ),
)}

#: Orphans: closed by their process, still in FIN_WAIT_1, FIN_WAIT_2, CLOSING or LAST_ACK.
ORPHANS_TEXT = (
    "Orphans are sockets their process already closed, still finishing the close (FIN_WAIT_1, "
    "FIN_WAIT_2, CLOSING, LAST_ACK). Past net.ipv4.tcp_max_orphans the kernel resets new ones at once "
    "(\"too many orphaned sockets\", TCPAbortOnMemory)."
)


def knowledge_for(state: TcpState) -> StateKnowledge:
    """The knowledge of one state; NEW_SYN_RECV (a request socket) reads as SYN_RECV."""
    return KNOWLEDGE[CANONICAL_STATE[int(state)]]


def explain_text(state: TcpState) -> str:
    """``socktop explain <state>``: plain text for a terminal, 78 columns."""
    knowledge = knowledge_for(state)
    lines = [f"{knowledge.state.label} ({knowledge.state.name}, kernel state {int(knowledge.state)})",
             *_wrapped(knowledge.meaning, "  ")]
    for title, text in (("Who is in it", knowledge.side), ("How long", knowledge.lifetime),
                        ("Many is normal when", knowledge.normal_when),
                        ("Many is a symptom when", knowledge.symptom_when)):
        lines += ["", f"{title}:", *_wrapped(text, "  ")]
    lines += ["", "Usual causes:"]
    for cause in knowledge.causes:
        lines += _wrapped(cause, "  - ", "    ")
    lines += ["", "What to do, most effective first:"]
    for number, remedy in enumerate(knowledge.remedies, 1):
        lines += _wrapped(remedy.action, f"  {number}. ", "     ")
        lines += [f"       $ {command}" for command in remedy.commands]
    if knowledge.not_fixes:
        lines += ["", "What does not help:"]
        for text in knowledge.not_fixes:
            lines += _wrapped(text, "  - ", "    ")
    if knowledge.sysctls:
        lines += ["", *_wrapped(", ".join(knowledge.sysctls), "Settings: ", "  ")]
    return "\n".join(lines)


def _wrapped(text: str, first: str, rest: str | None = None) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=first if rest is None else rest)
