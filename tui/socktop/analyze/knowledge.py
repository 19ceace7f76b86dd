"""What every TCP state means on Linux, and what to do when too many sockets sit in it.

Written for an on-call engineer at 3 a.m.: short, exact, Linux-specific.
Facts come from the kernel (include/net/tcp.h, net/ipv4/tcp_timer.c,
tcp_minisocks.c, tcp_ipv4.c, Documentation/networking/ip-sysctl.rst) and
RFC 9293, not from folklore: TIME_WAIT is 60 s on Linux, tcp_fin_timeout
is not a TIME_WAIT knob, tcp_tw_recycle is gone, and no setting ends
CLOSE_WAIT (though the kernel may abort the connection under it).

The UI and the CLI use:
- `knowledge_for(state) -> StateKnowledge` (NEW_SYN_RECV is folded into SYN_RECV);
- `explain_text(state, kernel) -> str`, the plain text of ``socktop explain <state>``;
- `on_this_kernel(state, kernel)`: the timings and limits this kernel's settings give the state;
- `syn_schedule`, `time_budget`: the kernel's retransmission formulas, pure;
- `StateKnowledge` fields: meaning, side, lifetime, normal_when, symptom_when,
  causes, remedies (`Remedy`: action, commands; most effective first),
  not_fixes (what people try that does not help, and why), sysctls.
Commands here are generic (PID, PORT in capitals); findings give the exact ones.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

from ..collect.kernelstate import KernelState
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
INITIAL_RTO_S = 1.0  # TCP_TIMEOUT_INIT: the first SYN and SYN-ACK timeout
MIN_RTO_S = 0.2  # TCP_RTO_MIN: the base of the time budgets of tcp_retries2 and tcp_orphan_retries
MAX_RTO_S = 120.0  # TCP_RTO_MAX

TW_RECYCLE_GONE = (
    "net.ipv4.tcp_tw_recycle was removed in Linux 4.12: it dropped connections whose TCP "
    "timestamps went backwards per peer address, which breaks clients behind NAT (many "
    "hosts, one address, unrelated clocks). Never set it, even on an older kernel that still has it."
)
FIN_TIMEOUT_IS_NOT_TIME_WAIT = (
    "net.ipv4.tcp_fin_timeout does not shorten TIME_WAIT (fixed at 60 s); it bounds "
    "orphaned FIN_WAIT_2 sockets."
)
TW_REUSE_TEXT = (
    "net.ipv4.tcp_tw_reuse=1 lets a new outgoing connect() take over a TIME_WAIT 4-tuple "
    "tcp_tw_reuse_delay ms (default 1000, Linux 6.14+) after it entered TIME_WAIT (before 6.14: 1 s after "
    "the last timestamp from the peer), and only if the peer sent TCP timestamps on that old connection: "
    "Windows does not by default and some load balancers strip them, whatever this host's tcp_timestamps "
    "says. Check with ss -tni dst HOST (look for ts). 2, the default, does it for loopback only. It does "
    "nothing for a server's accepted connections."
)
EPHEMERAL_PORTS_TEXT = (
    "When connect() picks the source port, ports are shared per (source address, destination address, "
    "destination port): one source can hold a whole ip_local_port_range of connections, TIME_WAIT "
    "included, toward each destination, and connect() fails with EADDRNOTAVAIL when none is left for that "
    "destination. An application that bind()s before connect() (to pick a source address) reserves the "
    "port on that address for every destination, and bind() fails with EADDRINUSE, unless it sets "
    "IP_BIND_ADDRESS_NO_PORT (Linux 4.2) or IP_LOCAL_PORT_RANGE (6.3): only then do more source addresses "
    "add ports; otherwise they can make exhaustion worse. Since 4.6 connect() tries even ports first and "
    "bind() odd ones; both fall back to the whole range. Ports in ip_local_reserved_ports are never picked."
)
CLOSE_WAIT_RECV_Q_TEXT = (
    "Recv-Q tells which bug (the peer's FIN takes one sequence number): 1 = only the FIN is unread, the "
    "application never read to end-of-file (an idle pooled connection, a socket nobody polls); 0 = it read "
    "end-of-file and still did not close (a missing close() on the EOF or error path); more than 1 = data "
    "it never read (a reader stuck or abandoned)."
)
DESCRIPTOR_LEAK_TEXT = (
    "The socket can leave CLOSE_WAIT while the descriptor stays: with SO_KEEPALIVE on (Go turns it on by "
    "default) a probe draws an RST once the peer has forgotten the connection and the socket goes to CLOSE; "
    "so do TCP_USER_TIMEOUT and a write answered by RST. The kernel then lists it in no table, so a leak can "
    "show few CLOSE_WAIT while /proc/PID/fd keeps growing (lsof: \"protocol: TCP\" with no state): compare "
    "the process's socket descriptors with its sockets in the table."
)
ORPHANS_TEXT = (
    "Orphans are sockets no process holds any more, still finishing a close: FIN_WAIT_1, LAST_ACK and "
    "CLOSING. They count in sockstat orphan (host-wide) against net.ipv4.tcp_max_orphans (host-wide). An "
    "orphaned FIN_WAIT_2 is not one with tcp_fin_timeout at most 60 (the default): it becomes a small "
    "timewait socket counted in sockstat tw against tcp_max_tw_buckets. The kernel resets orphans past the "
    "limit (\"too many orphaned sockets\") and earlier for idle or zero-window peers, which count 2 or 4 "
    "times (tcp_out_of_resources()); TCPAbortOnMemory also counts resets for TCP memory above tcp_mem's "
    "third value (\"out of memory -- consider tuning tcp_mem\")."
)

_STACK_DUMPS = ("jcmd PID Thread.print     (Java, as the JVM's user)",
                "curl -s 'http://127.0.0.1:PPROF_PORT/debug/pprof/goroutine?debug=2'     (Go with net/http/pprof)",
                "py-spy dump --pid PID     (Python)",
                "gdb -p PID -batch -ex 'thread apply all bt'     (native)")

KNOWLEDGE: dict[TcpState, StateKnowledge] = {k.state: k for k in (
    StateKnowledge(
        TcpState.ESTABLISHED,
        meaning="An open connection: both sides can send data.",
        side="Both ends, client and server, after the handshake: SYN, SYN-ACK, ACK.",
        lifetime="As long as the applications keep it. A FIN (close()) or an RST ends it. An idle connection "
                 "has no timeout unless the application enables keepalive (first probe after "
                 "tcp_keepalive_time, 7200 s by default); unacknowledged data is retransmitted until the time "
                 "budget of tcp_retries2 runs out (15: about 924.6 s, whatever the round-trip time) or the "
                 "socket's TCP_USER_TIMEOUT, then the kernel aborts the connection.",
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
                   "tcp_keepalive_time/intvl/probes set when (defaults 7200 s, then 9 probes 75 s apart), "
                   "TCP_KEEPIDLE/KEEPINTVL/KEEPCNT per socket.", ("sysctl -ar tcp_keepalive_",)),
            Remedy("Bound how long unacknowledged data may wait with TCP_USER_TIMEOUT on the socket."),
        ),
        sysctls=("net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
                 "net.ipv4.tcp_retries2"),
    ),
    StateKnowledge(
        TcpState.SYN_SENT,
        meaning="connect() sent a SYN and waits for the SYN-ACK.",
        side="The client (active opener), right after connect().",
        lifetime="One round trip. A SYN-ACK moves it to ESTABLISHED; an RST ends it at once (ECONNREFUSED), "
                 "so does an ICMP unreachable (EHOSTUNREACH, ECONNREFUSED). With no answer the SYN is "
                 "retransmitted: since Linux 6.5 the first tcp_syn_linear_timeouts (4) retransmissions "
                 "come 1 s apart, then the wait doubles; with tcp_syn_retries 6 that is 10 retransmissions "
                 "and ETIMEDOUT after about 131 s (before 6.5: 6 retransmissions, about 127 s), unless the "
                 "application's connect timeout is shorter.",
        normal_when="A few, for a moment, while connections open.",
        symptom_when="Many, or old ones: the destination does not answer.",
        causes=(
            "Destination host or route down (no RST comes back). A host down on the local subnet fails "
            "faster: EHOSTUNREACH after about 3 s without an ARP answer.",
            "A firewall that drops SYNs silently. One that rejects (iptables REJECT sends ICMP "
            "port-unreachable by default, or an RST with --reject-with tcp-reset) ends SYN_SENT at once.",
            "The server's accept queue is full: its kernel drops the SYNs (ListenOverflows rises there), so "
            "the clients wait here.",
        ),
        remedies=(
            Remedy("Find the destinations, then test one.", ("ss -tanpo state syn-sent", "nc -vz HOST PORT")),
            Remedy("Give the application a connect timeout of seconds, not the kernel's two minutes, "
                   "and back off between retries."),
            Remedy("On the server, look for a full accept queue: LISTEN with Recv-Q above Send-Q, "
                   "ListenOverflows rising.", ("nstat -az TcpExtListenOverflows TcpExtListenDrops",)),
        ),
        sysctls=("net.ipv4.tcp_syn_retries", "net.ipv4.tcp_syn_linear_timeouts"),
    ),
    StateKnowledge(
        TcpState.SYN_RECV,
        meaning="Half-open: a listener received a SYN, answered SYN-ACK and waits for the final ACK.",
        side="The server. On Linux these are request sockets in the listener's SYN queue (the kernel "
             "calls them NEW_SYN_RECV; ss shows SYN-RECV): no descriptor, no process.",
        lifetime="One round trip. The client's ACK makes a connection and queues it for accept(); an RST "
                 "ends it; without an answer the SYN-ACK is retransmitted tcp_synack_retries times "
                 "(5 by default: the last at 31 s, given up after 63 s).",
        normal_when="A few on a busy server.",
        symptom_when="Hundreds on one listener. With SyncookiesSent rising: a SYN flood or a burst larger "
                     "than the SYN queue. With ListenOverflows rising the accept queue is full: the kernel "
                     "drops new SYNs (those clients wait in SYN_SENT, not here) and the final ACKs of "
                     "handshakes under way (those stay here while their client believes it is connected).",
        causes=(
            "A SYN flood from spoofed addresses, which never send the final ACK.",
            "Final ACKs lost on the way in (asymmetric routing, a one-way firewall rule).",
            "TCP_DEFER_ACCEPT (nginx listen ... deferred, haproxy defer-accept): the kernel keeps the "
            "connection here until the client sends data, so idle clients pile up by design.",
            "A full accept queue, for the handshakes already under way when it filled.",
        ),
        remedies=(
            Remedy("Check the listener's accept queue (Recv-Q against Send-Q) and the drop counters.",
                   ("ss -tln '( sport = :PORT )'", "nstat -az TcpExtListenOverflows TcpExtSyncookiesSent")),
            Remedy("SYN flood: keep net.ipv4.tcp_syncookies=1 (the default: cookies only when the SYN queue "
                   "is full) and filter upstream.", ("sysctl net.ipv4.tcp_syncookies",)),
            Remedy("Full accept queue: make the application accept faster (more workers, an accept loop "
                   "that never blocks), then raise its listen() backlog, which the kernel caps at "
                   "net.core.somaxconn."),
            Remedy("The SYN queue is capped at min(listen() backlog, net.core.somaxconn) whatever the "
                   "settings; with syncookies off, net.ipv4.tcp_max_syn_backlog only adds a rule that drops "
                   "SYNs from unproven peers once less than a quarter of it is left."),
        ),
        not_fixes=("net.ipv4.tcp_abort_on_overflow=1 resets clients when the accept queue is full instead of "
                   "letting them retry: it turns a slow server into failing connections.",),
        sysctls=("net.ipv4.tcp_syncookies", "net.ipv4.tcp_max_syn_backlog", "net.core.somaxconn",
                 "net.ipv4.tcp_synack_retries"),
    ),
    StateKnowledge(
        TcpState.FIN_WAIT1,
        meaning="This side sent its FIN (close() or shutdown()) and waits for the peer to acknowledge it.",
        side="The active closer, leaving ESTABLISHED; often already orphaned (closed by its process).",
        lifetime="One round trip: the ACK moves it to FIN_WAIT_2, the peer's own FIN to CLOSING. Unsent "
                 "data leaves before the FIN, so a peer that stopped reading (zero window) holds it here. "
                 "Orphaned, it gives up when the time budget of tcp_orphan_retries runs out (0 means 8: "
                 "about 102 s; 3: about 3 s; built from a 200 ms minimum timeout, whatever the round-trip "
                 "time). With the descriptor still open, retransmissions stop after tcp_retries2; but a peer "
                 "that keeps answering zero-window probes holds it with no limit (RFC 9293 3.8.6.1): only "
                 "TCP_USER_TIMEOUT or closing bounds it.",
        normal_when="For a moment on any host that closes connections.",
        symptom_when="Many that stay: peers gone or unreachable, or peers not reading (large Send-Q). "
                     "Orphaned ones count against tcp_max_orphans (host-wide).",
        causes=(
            "Peers that disappeared (crash, network cut) after we wrote to them.",
            "Peers that stopped reading: our FIN waits behind unsent data.",
        ),
        remedies=(
            Remedy("Look at the peers, Send-Q and timers.", ("ss -tano state fin-wait-1",)),
            Remedy("Busy servers: lower net.ipv4.tcp_orphan_retries so orphaned ones give up sooner."),
            Remedy("Sockets still held: set TCP_USER_TIMEOUT, or close them after a write timeout."),
            Remedy("Watch the orphan total against net.ipv4.tcp_max_orphans.", ("cat /proc/net/sockstat",)),
        ),
        sysctls=("net.ipv4.tcp_orphan_retries", "net.ipv4.tcp_max_orphans", "net.ipv4.tcp_retries2"),
    ),
    StateKnowledge(
        TcpState.FIN_WAIT2,
        meaning="Our FIN was acknowledged; we wait for the peer's FIN.",
        side="The active closer, after the ACK of its FIN. The peer is in CLOSE_WAIT meanwhile.",
        lifetime="Until the peer closes. If our process already called close() (an orphan) the kernel ends "
                 "it after tcp_fin_timeout (60 s by default); with tcp_fin_timeout at most 60 it becomes a "
                 "small timewait socket (ss: FIN-WAIT-2 with timer:(timewait,...), no process), counted in "
                 "sockstat tw against tcp_max_tw_buckets, not as an orphan. After shutdown(SHUT_WR) with "
                 "the descriptor still open there is no limit.",
        normal_when="For a moment; longer for protocols that half-close and keep reading the answer.",
        symptom_when="Many toward one peer: that peer's application does not close its end. It has a "
                     "CLOSE_WAIT leak: run socktop there.",
        causes=(
            "A CLOSE_WAIT leak in the peer application.",
            "shutdown(SHUT_WR) here without a later close(), waiting on a peer that never answers.",
        ),
        remedies=(
            Remedy("Find the peer, then fix its missing close().", ("ss -tanpo state fin-wait-2",)),
            Remedy("Orphaned ones pile up: lower net.ipv4.tcp_fin_timeout (e.g. 30). It does not touch "
                   "sockets still held by a descriptor."),
            Remedy("Half-closed with a descriptor: close() after reading the answer, with a read timeout."),
        ),
        not_fixes=("tcp_fin_timeout does not shorten TIME_WAIT.",),
        sysctls=("net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_max_tw_buckets"),
    ),
    StateKnowledge(
        TcpState.TIME_WAIT,
        meaning="The connection is over; this side closed first and keeps its 4-tuple reserved for 60 s.",
        side="The active closer: the side whose FIN went first, a client that hangs up or a server that "
             "closes after answering. It comes from FIN_WAIT_2 when the peer's FIN arrives (we send the "
             "last ACK) or from CLOSING when our FIN is ACKed. No process holds it (inode 0).",
        lifetime="60 s on Linux (TCP_TIMEWAIT_LEN, an implementation constant set by no sysctl; RFC 9293's "
                 "2*MSL would be 240 s). It lets late duplicate segments of the old connection die out "
                 "before the 4-tuple carries a new one, and lets this side answer again if the peer "
                 "retransmits its FIN because our last ACK was lost; such a FIN restarts the 60 s. An RST "
                 "from the peer ends it early while tcp_rfc1337 is 0 (the default).",
        normal_when="Any busy host: N closes per second keep about 60*N in TIME_WAIT. Each costs a little "
                    "kernel memory and no descriptor. Server-side TIME_WAIT does not block clients: a new SYN "
                    "with a higher sequence number or timestamp reopens the 4-tuple.",
        symptom_when="On a client, when one (source address, destination address, destination port) fills "
                     "much of ip_local_port_range: connect() fails with EADDRNOTAVAIL (\"Cannot assign "
                     "requested address\"). In the network namespace, when sockstat tw (which also counts "
                     "orphaned FIN_WAIT_2) nears tcp_max_tw_buckets and TCPTimeWaitOverflow rises.",
        causes=(
            "A new connection per request: no keep-alive, no pool.",
            "A server that closes first (keep-alive off, or a server idle timeout shorter than the "
            "clients'), which parks TIME_WAIT on the server.",
            "Health checks, crawlers or scripts opening one connection per probe.",
        ),
        remedies=(
            Remedy("Reuse connections: HTTP keep-alive, connection pools, HTTP/2 or gRPC multiplexing."),
            Remedy("Let the client close first, so TIME_WAIT lands on the many clients, not the one server."),
            Remedy(f"Outgoing connections: {TW_REUSE_TEXT}", ("ss -tni dst HOST", "sysctl -w net.ipv4.tcp_tw_reuse=1")),
            Remedy("Widen net.ipv4.ip_local_port_range (default 32768-60999: 28,232 ports per destination), "
                   "clear of the ports your services listen on (or list those in ip_local_reserved_ports); or "
                   "spread over more destination addresses. More source addresses help only where the "
                   "application bind()s with IP_BIND_ADDRESS_NO_PORT or IP_LOCAL_PORT_RANGE (see socktop "
                   "explain ip_local_port_range).", ("sysctl net.ipv4.ip_local_port_range",)),
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
        sysctls=("net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_tw_reuse_delay", "net.ipv4.tcp_timestamps",
                 "net.ipv4.ip_local_port_range", "net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_rfc1337"),
    ),
    StateKnowledge(
        TcpState.CLOSE,
        meaning="No connection: a TCP socket that neither listens nor is connected.",
        side="Either side. Socket tables list it only while it is bound to a port, e.g. bind() before "
             "connect() or listen(); ss shows these only with -B (--bound-inactive), which iproute2 6.1 "
             "(Debian 12, Ubuntu 24.04) lacks. A connection the kernel aborted (RST, keepalive, timeout) "
             "under a descriptor still open is also CLOSE, and listed in no table unless the application "
             "bound its port itself.",
        lifetime="Until the process connects, listens or closes it: no timer.",
        normal_when="A few, for a moment, between bind() and connect() or listen().",
        symptom_when="Many held by one process: each keeps a descriptor, and a bound one a port, that nothing "
                     "uses.",
        causes=(
            "bind() before connect() to pick a source address: each one reserves a port up front.",
            "A leak of sockets that were created and bound but never used or closed.",
            "A descriptor leak whose connections the kernel already ended (see CLOSE-WAIT).",
        ),
        remedies=(
            Remedy("Find the owner and its descriptors (ss -B where ss has it; lsof prints the rest as "
                   "\"protocol: TCP\", with no state).",
                   ("ss -tanpB state closed", "lsof -nP -a -p PID | grep 'protocol: TCP'", "ls -l /proc/PID/fd")),
            Remedy("Bind-before-connect: set IP_BIND_ADDRESS_NO_PORT so the port is chosen at connect()."),
            Remedy("Close the sockets the code path forgets (the same hunt as for CLOSE_WAIT)."),
        ),
        sysctls=("net.ipv4.ip_local_port_range",),
    ),
    StateKnowledge(
        TcpState.CLOSE_WAIT,
        meaning="The peer closed its side (sent FIN); this process has not called close() yet.",
        side="The passive closer: it received the peer's FIN while ESTABLISHED and the kernel ACKed it. "
             "The kernel's part is done; the application holds the descriptor.",
        lifetime="Normally milliseconds: the application reads end-of-file and closes. No timer and no sysctl "
                 "ends it: it lasts until the owner calls close() or exits, unless the kernel aborts the "
                 "connection under it (keepalive, TCP_USER_TIMEOUT, an RST). Each one holds a file "
                 "descriptor. Its age: ss -tni state close-wait shows lastack: (ms since the last ACK from "
                 "the peer), close to the time since its FIN.",
        normal_when="A handful, briefly, on a busy service.",
        symptom_when="A count that stays up or keeps rising for one process: a descriptor leak that ends in "
                     f"\"Too many open files\" (EMFILE) at its RLIMIT_NOFILE. {CLOSE_WAIT_RECV_Q_TEXT}",
        causes=(
            "A code path that never closes: an error or early return without finally / with / defer.",
            "HTTP responses whose body is never read to the end or closed, so the pooled connection is "
            "never released.",
            "A pool that keeps connections the server already closed (server idle timeout shorter than "
            "the pool's) and never checks them: Recv-Q 1.",
            "A blocked thread or event loop that never gets to the close.",
        ),
        remedies=(
            Remedy("See the sockets, their Recv-Q and age (lastack), and the peers that closed on us.",
                   ("ss -tanp state close-wait", "ss -tni state close-wait")),
            Remedy("Count its TCP descriptors against its sockets in the table (socktop's process drawer "
                   "shows both): descriptors no table lists are connections the kernel already ended, still "
                   "held, and lsof prints them as \"protocol: TCP\".",
                   ("lsof -nP -a -p PID | grep -c TCP", "ss -tanp | grep -c pid=PID,",
                    "lsof -nP -a -p PID -iTCP -sTCP:CLOSE_WAIT")),
            Remedy("Find where the threads are and fix the missing close() or release. Go without pprof: "
                   "SIGQUIT prints every goroutine to stderr, and ends the process.", _STACK_DUMPS),
            Remedy("Stop-gap: restart that process; the kernel closes all its sockets. The leak returns "
                   "until the code is fixed.", ("kill -TERM PID",)),
            Remedy("Pools: validate idle connections and keep the pool's idle timeout below the server's."),
        ),
        not_fixes=(
            "No sysctl fixes a CLOSE_WAIT leak: tcp_fin_timeout and the TIME_WAIT settings do not touch "
            "CLOSE_WAIT, and the keepalive settings act only on sockets with SO_KEEPALIVE, where they can end "
            "the connection but never close the descriptor (below).",
            DESCRIPTOR_LEAK_TEXT,
            "Restarting the network service: the socket belongs to this process, not to the network.",
            "ss -K aborts one connection but the process keeps the descriptor: the leak stays.",
        ),
    ),
    StateKnowledge(
        TcpState.LAST_ACK,
        meaning="The peer closed first, then we closed; we wait for the ACK of our FIN.",
        side="The passive closer, leaving CLOSE_WAIT when its process called close(). Usually orphaned.",
        lifetime="One round trip: the ACK ends it (no TIME_WAIT on this side). Without an answer our FIN is "
                 "retransmitted until the time budget of tcp_orphan_retries runs out (0 means 8: about "
                 "102 s; 3: about 3 s).",
        normal_when="For a moment on servers whose clients close first.",
        symptom_when="Many that stay: the peers went away after sending their FIN, or our FINs are "
                     "dropped on the way. Orphaned ones count against tcp_max_orphans (host-wide).",
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
        symptom_when="Recv-Q above Send-Q (the queue is full) or close to it: the application does not "
                     "accept() fast enough. New SYNs and final ACKs are then dropped and ListenOverflows / "
                     "ListenDrops rise; clients wait in SYN_SENT and see slow or failed connects.",
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
        not_fixes=("ss -K on a listener closes the listening socket itself: every new connection is refused.",
                   "net.ipv4.tcp_abort_on_overflow=1 resets clients instead of letting them retry."),
        sysctls=("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_abort_on_overflow"),
    ),
    StateKnowledge(
        TcpState.CLOSING,
        meaning="Both sides sent FIN at the same time; we wait for the ACK of ours.",
        side="Either side, in a simultaneous close: the peer's FIN arrived while we waited in FIN_WAIT_1.",
        lifetime="One round trip, then TIME_WAIT. Retransmissions are bounded like FIN_WAIT_1's "
                 "(the time budget of tcp_orphan_retries once orphaned).",
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

SCOPE_TEXT = (
    "Most net.ipv4 TCP settings and counters are per network namespace: a host sysctl or file does not "
    "change a container's namespace (set it in the container's namespace: Kubernetes securityContext.sysctls "
    "of the pod, docker run --sysctl, or nsenter -n -t PID sysctl -w). tcp_max_orphans and tcp_mem are "
    "host-wide and visible only from the host's namespace; sockstat orphan and mem are host-wide totals "
    "even inside a container, while sockstat tw and the socket table are the namespace's own."
)


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """When the kernel retransmits and gives up: the count, the last retransmission, the end."""

    retransmissions: int
    last_retransmission_s: float
    give_up_s: float


def syn_schedule(retries: int, linear_timeouts: int = 0) -> RetrySchedule:
    """A SYN's (or, with ``linear_timeouts`` 0, a SYN-ACK's) retransmissions, per net/ipv4/tcp_timer.c.

    The first timeout is 1 s (TCP_TIMEOUT_INIT). In SYN_SENT, since 6.5,
    ``tcp_syn_linear_timeouts`` more retransmissions are allowed and their
    timeouts stay at 1 s before the doubling starts (capped at TCP_RTO_MAX):
    6 and 4 give 10 retransmissions, the last at 67 s, ETIMEDOUT at 131 s;
    6 and 0 (older kernels) 6 and 127 s; tcp_synack_retries 5 gives 31 s and 63 s.
    """
    count = max(0, retries) + max(0, linear_timeouts)
    waits = [min(INITIAL_RTO_S * (1 if i <= linear_timeouts else 2 ** (i - linear_timeouts)), MAX_RTO_S)
             for i in range(count + 1)]
    return RetrySchedule(count, sum(waits[:-1]), sum(waits))


def time_budget(retries: int, rto_base: float = MIN_RTO_S, rto_max: float = MAX_RTO_S) -> float:
    """Seconds after which ``retries`` (tcp_retries2, tcp_orphan_retries) give up: the kernel turns the count
    into the time an exponential backoff from ``rto_base`` would take (tcp_model_timeout()), whatever the
    real round-trip time. 15 gives 924.6 s; 8, 102.2 s; 3, 3 s."""
    threshold = int(math.log2(rto_max / rto_base))
    if retries <= threshold:
        return ((2 << retries) - 1) * rto_base
    return ((2 << threshold) - 1) * rto_base + (retries - threshold) * rto_max


def orphan_retries(value: int | None) -> int:
    """tcp_orphan_retries as the kernel applies it: 0 means 8 (tcp_orphan_retries() in tcp_timer.c)."""
    return 8 if not value else value


def duration_text(seconds: float) -> str:
    """``3 s``, ``102 s``, ``15.4 min``, ``5.5 h``, ``2.3 days``: how long, for a person."""
    if seconds < 10:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    if seconds < 300:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min".replace(".0 min", " min")
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h".replace(".0 h", " h")
    return f"{seconds / 86400:.1f} days"


def on_this_kernel(state: TcpState, kernel: KernelState | None) -> list[str]:
    """What this kernel's settings make of ``state``: the timings and limits that apply here."""
    if kernel is None or not kernel.sysctls:
        return []
    value = kernel.sysctl_int
    lines: list[str] = []
    state = CANONICAL_STATE[int(state)]
    if state is TcpState.SYN_SENT and value("net.ipv4.tcp_syn_retries") is not None:
        retries, linear = value("net.ipv4.tcp_syn_retries") or 0, value("net.ipv4.tcp_syn_linear_timeouts")
        plan = syn_schedule(retries, linear or 0)
        lines.append(f"tcp_syn_retries {retries}, tcp_syn_linear_timeouts "
                     f"{linear if linear is not None else 'absent (before 6.5)'}: {plan.retransmissions} "
                     f"retransmissions, the last at {duration_text(plan.last_retransmission_s)}, connect() "
                     f"fails with ETIMEDOUT after about {duration_text(plan.give_up_s)}.")
    if state is TcpState.SYN_RECV and value("net.ipv4.tcp_synack_retries") is not None:
        plan = syn_schedule(value("net.ipv4.tcp_synack_retries") or 0)
        lines.append(f"tcp_synack_retries {plan.retransmissions}: the last SYN-ACK at "
                     f"{duration_text(plan.last_retransmission_s)}, given up after {duration_text(plan.give_up_s)}; "
                     f"tcp_syncookies {kernel.sysctls.get('net.ipv4.tcp_syncookies')}, somaxconn "
                     f"{kernel.sysctls.get('net.core.somaxconn')}.")
    if state is TcpState.ESTABLISHED and value("net.ipv4.tcp_retries2") is not None:
        retries = value("net.ipv4.tcp_retries2") or 0
        lines.append(f"tcp_retries2 {retries}: unacknowledged data is given up after about "
                     f"{duration_text(time_budget(retries))}; keepalive (where enabled) probes after "
                     f"{kernel.sysctls.get('net.ipv4.tcp_keepalive_time')} s idle.")
    if state in (TcpState.FIN_WAIT1, TcpState.LAST_ACK, TcpState.CLOSING):
        retries = value("net.ipv4.tcp_orphan_retries")
        if retries is not None:
            lines.append(f"tcp_orphan_retries {retries}{' (means 8)' if retries == 0 else ''}: an orphan gives "
                         f"up after about {duration_text(time_budget(orphan_retries(retries)))}.")
    if state in (TcpState.FIN_WAIT1, TcpState.LAST_ACK, TcpState.CLOSING):
        orphans, limit = kernel.sockstat.get("orphan"), value("net.ipv4.tcp_max_orphans")
        if orphans is not None:
            cap = f"tcp_max_orphans {limit}" if limit is not None else f"tcp_max_orphans {kernel.scope_note('net.ipv4.tcp_max_orphans')}"
            lines.append(f"orphans now: {orphans} (sockstat, host-wide); {cap}.")
    if state is TcpState.FIN_WAIT2 and value("net.ipv4.tcp_fin_timeout") is not None:
        fin = value("net.ipv4.tcp_fin_timeout") or 0
        form = ("a timewait socket (counted in sockstat tw)" if fin <= TIME_WAIT_SECONDS else
                "a full orphan socket (counted against tcp_max_orphans)")
        lines.append(f"tcp_fin_timeout {fin}: an orphaned FIN_WAIT_2 lasts about {fin} s, as {form}.")
    if state in (TcpState.TIME_WAIT, TcpState.FIN_WAIT2):
        tw, buckets = kernel.sockstat.get("tw"), value("net.ipv4.tcp_max_tw_buckets")
        if tw is not None and buckets:
            lines.append(f"timewait sockets now: {tw} (sockstat tw, this network namespace) of "
                         f"tcp_max_tw_buckets {buckets}.")
    if state is TcpState.TIME_WAIT and value("net.ipv4.tcp_tw_reuse") is not None:
        reuse = value("net.ipv4.tcp_tw_reuse")
        meaning = {0: "off", 1: "on for every destination", 2: "on for loopback only"}.get(reuse or 0, "?")
        delay = kernel.sysctls.get("net.ipv4.tcp_tw_reuse_delay")
        lines.append(f"tcp_tw_reuse {reuse} ({meaning}), tcp_tw_reuse_delay "
                     f"{delay + ' ms' if delay else 'absent (before 6.14: 1 s)'}, tcp_timestamps "
                     f"{kernel.sysctls.get('net.ipv4.tcp_timestamps')}, tcp_rfc1337 "
                     f"{kernel.sysctls.get('net.ipv4.tcp_rfc1337')}.")
    if state in (TcpState.TIME_WAIT, TcpState.CLOSE) and kernel.port_range():
        low, high = kernel.port_range()  # type: ignore[misc]
        reserved = kernel.sysctls.get("net.ipv4.ip_local_reserved_ports")
        lines.append(f"ip_local_port_range {low}-{high}: {high - low + 1:,} ports per destination"
                     + (f", minus ip_local_reserved_ports {reserved}" if reserved else "") + ".")
    if state is TcpState.LISTEN and value("net.core.somaxconn") is not None:
        lines.append(f"somaxconn {value('net.core.somaxconn')} caps every listen() backlog; "
                     f"tcp_abort_on_overflow {value('net.ipv4.tcp_abort_on_overflow')}.")
    return lines


def knowledge_for(state: TcpState) -> StateKnowledge:
    """The knowledge of one state; NEW_SYN_RECV (a request socket) reads as SYN_RECV."""
    return KNOWLEDGE[CANONICAL_STATE[int(state)]]


def explain_text(state: TcpState, kernel: KernelState | None = None) -> str:
    """``socktop explain <state>``: plain text for a terminal, 78 columns; with ``kernel``, what its
    settings make of the state and their values now."""
    knowledge = knowledge_for(state)
    lines = [f"{knowledge.state.label} ({knowledge.state.name}, kernel state {int(knowledge.state)})",
             *wrapped(knowledge.meaning, "  ")]
    for title, text in (("Who is in it", knowledge.side), ("How long", knowledge.lifetime),
                        ("Many is normal when", knowledge.normal_when),
                        ("Many is a symptom when", knowledge.symptom_when)):
        lines += ["", f"{title}:", *wrapped(text, "  ")]
    lines += ["", "Usual causes:"]
    for cause in knowledge.causes:
        lines += wrapped(cause, "  - ", "    ")
    lines += ["", "What to do, most effective first:"]
    for number, remedy in enumerate(knowledge.remedies, 1):
        lines += wrapped(remedy.action, f"  {number}. ", "     ")
        lines += [f"       $ {command}" for command in remedy.commands]
    if knowledge.not_fixes:
        lines += ["", "What does not help:"]
        for text in knowledge.not_fixes:
            lines += wrapped(text, "  - ", "    ")
    here = on_this_kernel(knowledge.state, kernel)
    if here:
        lines += ["", "On this kernel:"]
        for text in here:
            lines += wrapped(text, "  - ", "    ")
    if knowledge.sysctls:
        lines += ["", *wrapped(", ".join(knowledge.sysctls), "Settings (socktop explain NAME): ", "  ")]
    return "\n".join(lines)


def wrapped(text: str, first: str, rest: str | None = None) -> list[str]:
    """``text`` wrapped to WIDTH columns, the first line after ``first``, the others after ``rest``."""
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=first if rest is None else rest)
