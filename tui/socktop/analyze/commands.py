"""Shell commands socktop hands out, built by pure functions and safe to paste.

Every value that reaches a command passes through ``shlex.quote`` or is a
validated number or address. A process name (chosen by whoever started
the process) is only ever put in a trailing comment, and that comment is
made safe twice: control and invisible characters are escaped (no newline
to end the comment, no ESC to drive the terminal, no bidi override to
disguise the line), and the rest is shell-quoted as one word that starts
with ``comm=``, so that even a shell that does not treat ``#`` as a comment
(interactive zsh without INTERACTIVE_COMMENTS, bash with
``shopt -u interactive_comments``) passes only inert words: a process named
``-1`` or ``%1`` must never become ``kill -TERM 4242 # -1``, which such a
shell runs as a kill of every process.

The UI and the findings use:
- `Command` (line, note): what to copy, and one line on what it does;
- `ss_sockets(...)`, `ss_for_row(kind, key, state)`: `ss` listing exactly the sockets of a row;
- `lsof_sockets(pid, state)`, `kill_commands(pid, name, start_ticks)` (guarded by the start time);
- `ss_kill(record)` (None where aborting would hurt or do nothing: `ss_kill_refusal(record)` says why);
- `sysctl_runtime(key, value)`, `sysctl_persistent(key, value)`;
- `stack_dump(process)`: py-spy, jstack or gdb, by the kind of process;
- `nstat_counters(names)`: the kernel counters behind a finding.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from ..collect.records import ProcessInfo, SocketRecord, TcpState, TimerKind
from ..collect.tools import ss_has_bound_inactive
from ..safetext import printable

#: Where persistent settings go. At boot the files under /etc/sysctl.d/ (and /run, /usr/lib) are applied in
#: lexical order of their names and the last one to set a key wins: "99-zz-" sorts after Ubuntu's
#: 99-sysctl.conf (the old /etc/sysctl.conf) and the "90-…" files distributions ship.
SYSCTL_FILE = "/etc/sysctl.d/99-zz-socktop.conf"
COMMENT_MAX_CHARS = 60

#: Where ``ss -K`` sends the peer an RST: tcp_abort() resets only the states of tcp_need_reset()
#: (include/net/tcp.h). SYN_RECV is left out: the ones socktop lists are request sockets, which
#: tcp_abort() drops silently. LISTEN is left out above all: ss -K closes the listener itself.
SS_KILL_STATES = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT1, TcpState.FIN_WAIT2})

#: ss takes most states by their slug, but not these three.
_SS_STATE_NAMES = {TcpState.ESTABLISHED: "established", TcpState.LISTEN: "listening", TcpState.CLOSE: "closed"}


@dataclass(frozen=True, slots=True)
class Command:
    """A command line to copy, and one line saying what it does and what it costs."""

    line: str
    note: str


def safe_comment(text: str) -> str:
    """``  # 'comm=text'`` that nothing in ``text`` can end early, run, turn into an argument
    (a pid, ``-1``, a ``%job``) or use to drive the terminal."""
    shown = "".join(
        f"\\u{ord(char):04x}" if unicodedata.category(char) in ("Cf", "Zl", "Zp") else char
        for char in printable(text)
    )
    if len(shown) > COMMENT_MAX_CHARS:
        shown = shown[: COMMENT_MAX_CHARS - 1] + "…"
    return f"  # {shlex.quote('comm=' + shown)}"


def ss_state_name(state: TcpState) -> str:
    """The name ss accepts after ``state`` (``established``, ``listening``, ``close-wait``, ...)."""
    return _SS_STATE_NAMES.get(state, state.slug)


def ss_address(address: str) -> str:
    """An address as an ss filter wants it: IPv6 in brackets (a bare ``::1`` silently matches nothing),
    IPv4-mapped IPv6 as IPv4 (the kernel matches an IPv4 condition against mapped sockets)."""
    ip = ipaddress.ip_address(address)  # raises ValueError on anything that is not an address
    if ip.version == 6 and ip.ipv4_mapped is None:
        return f"[{ip}]"
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def _ss_expression(local_addr: str | None, local_port: int | None,
                   remote_addr: str | None, remote_port: int | None,
                   either_ports: Iterable[int] = (), either_addrs: Iterable[str] = ()) -> str:
    terms = [
        term for term in (
            f"src {ss_address(local_addr)}" if local_addr else "",
            f"sport = :{int(local_port)}" if local_port else "",
            f"dst {ss_address(remote_addr)}" if remote_addr else "",
            f"dport = :{int(remote_port)}" if remote_port else "",
        ) if term
    ]
    clauses = [f"( {' and '.join(terms)} )"] if terms else []
    clauses += [f"( sport = :{int(port)} or dport = :{int(port)} )" for port in either_ports]
    clauses += [f"( src {address} or dst {address} )" for address in map(ss_address, either_addrs)]
    return " and ".join(clauses)


def lsof_unlisted_tcp(pid: int | None = None) -> Command:
    """TCP descriptors that no TCP table lists: bound-only sockets (state CLOSE) and connections the kernel
    already closed under a descriptor still open. lsof prints them as ``protocol: TCP`` (older lsof: "can't
    identify protocol"), never with a state, so ``-sTCP:CLOSE`` cannot select them."""
    words = ["lsof", "-nP", *(["-a", "-p", str(int(pid))] if pid is not None else [])]
    line = f"{shlex.join(words)} 2>/dev/null | grep -E 'protocol: TCP|identify protocol'"
    return Command(line, "TCP descriptors no socket table lists: bound but never connected or listening, or "
                         "closed by the kernel (RST, keepalive, timeout) while the process still holds them")


def ss_sockets(state: TcpState | None = None, *, local_addr: str | None = None, local_port: int | None = None,
               remote_addr: str | None = None, remote_port: int | None = None, pid: int | None = None,
               either_ports: Iterable[int] = (), either_addrs: Iterable[str] = (),
               bound_inactive: bool | None = None) -> Command:
    """``ss -tanp [state S] '( filter )'`` for exactly these sockets.

    ``either_ports`` and ``either_addrs`` each add a condition on either
    end (``( sport = :N or dport = :N )``, ``( src A or dst A )``).
    ss cannot filter by process, so ``pid`` keeps the lines whose
    ``users:`` field names that pid; sockets no process holds (TIME_WAIT,
    SYN_RECV) never carry one, so for them filter by port instead.
    Bound-only sockets (CLOSE) are listed only by an ss with -B
    (``bound_inactive``, asked of the installed ss when None); without it
    the command is lsof's list of TCP descriptors no table shows.
    """
    if state is TcpState.CLOSE and not (ss_has_bound_inactive() if bound_inactive is None else bound_inactive):
        fallback = lsof_unlisted_tcp(pid)
        return Command(fallback.line, f"{fallback.note} (this ss has no -B to list bound-only sockets)")
    words = ["ss", "-tanpB" if state is TcpState.CLOSE else "-tanp"]
    if state is not None:
        words += ["state", ss_state_name(state)]
    expression = _ss_expression(local_addr, local_port, remote_addr, remote_port, either_ports, either_addrs)
    if expression:
        words.append(expression)
    line = shlex.join(words)
    scope = f"{state.label} sockets" if state is not None else "sockets"
    if pid is not None:
        line += f" | grep -F {shlex.quote(f'pid={int(pid)},')}"
        scope += f" held by pid {int(pid)}"
    return Command(line, f"list the {scope} (add -o for timers, -i for TCP details)")


def ss_for_row(kind: str, key: object, state: TcpState | None = None) -> Command:
    """`ss` for one row of a pane: kind "state" (key a TcpState), "port" ("in:8080" serves on
    local port 8080, "out:443" calls remote port 443), "process" ("pid:4242"; "uid:N" rows
    list by state only) or "remote" (an address)."""
    if kind == "state":
        return ss_sockets(key if isinstance(key, TcpState) else TcpState.parse(str(key)))
    text = str(key)
    if kind == "port":
        direction, _, port = text.partition(":")
        return ss_sockets(state, **{"local_port" if direction == "in" else "remote_port": int(port)})
    if kind == "process":
        prefix, _, number = text.partition(":")
        return ss_sockets(state, pid=int(number) if prefix == "pid" else None)
    if kind == "remote":
        return ss_sockets(state, remote_addr=text)
    raise ValueError(f"unknown row kind {kind!r}")


def lsof_sockets(pid: int, state: TcpState | None = None) -> Command:
    """``lsof -nP -a -p PID -iTCP [-sTCP:STATE]``: the descriptors behind a process's sockets."""
    words = ["lsof", "-nP", "-a", "-p", str(int(pid)), "-iTCP"]
    if state is not None:
        words.append(f"-sTCP:{state.name}")
    return Command(shlex.join(words), "the descriptors (fd numbers) holding them; -nP: no DNS or port-name lookups")


def kill_commands(pid: int, name: str, start_ticks: int | None = None) -> tuple[Command, Command]:
    """TERM first, KILL as the second step; the name only in a trailing comment.

    With ``start_ticks`` (field 22 of /proc/PID/stat as socktop read it: the start time after boot, in
    clock ticks; Documentation/filesystems/proc.rst, fs/proc/array.c do_task_stat) each line is guarded:
    it signals only while /proc/PID/stat still shows that start time, so a pid the kernel has reused for
    another program since is never signalled. The fields are counted after the last ") " (the name in
    field 2 may hold spaces and parentheses): field 22 is the 20th there.
    """
    pid = int(pid)
    comment = safe_comment(name)
    if start_ticks is None:
        term, kill = f"kill -TERM {pid}", f"kill -KILL {pid}"
        check = "; check the pid is still that process first"
    else:
        term, kill = (guarded_signal(pid, int(start_ticks), signal) for signal in ("TERM", "KILL"))
        check = (f"; it signals only while /proc/{pid}/stat still shows the start time socktop read (tick "
                 f"{int(start_ticks)} after boot), so a pid the kernel gave to another program since is left alone")
    return (
        Command(f"{term}{comment}", f"ask the process to exit (closes its sockets){check}"),
        Command(f"{kill}{comment}", "only if it is still running after TERM: no cleanup, the kernel closes its "
                                    "sockets"),
    )


def guarded_signal(pid: int, start_ticks: int, signal: str) -> str:
    """``kill -SIGNAL pid`` run only while /proc/PID/stat's start time (field 22) is ``start_ticks``."""
    pid, start_ticks = int(pid), int(start_ticks)
    if signal not in ("TERM", "KILL", "INT", "HUP"):
        raise ValueError(f"not a signal socktop hands out: {signal!r}")
    read = f"sed 's/.*) //' /proc/{pid}/stat 2>/dev/null | cut -d' ' -f20"
    refused = shlex.quote(f"pid {pid} is no longer the process socktop saw: not signalled")
    return (f'if [ "$({read})" = {start_ticks} ]; then kill -{signal} {pid}; '
            f"else echo {refused} >&2; fi")


def ss_kill_refusal(record: SocketRecord) -> str:
    """Why ``ss -K`` is not offered for this socket ('' when it is)."""
    state = record.state
    if state in SS_KILL_STATES and record.timer is not TimerKind.TIME_WAIT:
        return ""
    if state is TcpState.LISTEN:
        return ("not offered on a listener: ss -K would close the listening socket itself and every new "
                "connection would be refused")
    if state is TcpState.TIME_WAIT or record.timer is TimerKind.TIME_WAIT:
        return ("not offered: a timewait socket is dropped silently (no RST) and ends by itself within "
                "60 s; no process holds it")
    if state in (TcpState.SYN_RECV, TcpState.NEW_SYN_RECV):
        return "not offered: a request socket is dropped silently (no RST); the client's SYN is answered again"
    return (f"not offered: aborting {state.label} sends the peer no RST; it ends on its own retransmission "
            "timers")


def ss_kill(record: SocketRecord) -> Command | None:
    """``ss -tK`` for this one connection, only where it sends the peer an RST (`SS_KILL_STATES`);
    None elsewhere (`ss_kill_refusal` says why). Needs root and CONFIG_INET_DIAG_DESTROY."""
    if ss_kill_refusal(record):
        return None
    expression = _ss_expression(record.local_addr, record.local_port, record.remote_addr, record.remote_port)
    line = shlex.join(["ss", "-tK", "state", ss_state_name(record.state), expression])
    note = ("abort this one connection: the peer gets an RST (its next read or write fails with "
            "ECONNRESET); needs root and CONFIG_INET_DIAG_DESTROY")
    if record.inode:
        note += "; the process keeps its descriptor (its reads then fail) until it closes it"
    if record.state is TcpState.CLOSE_WAIT:
        note += ": no fix for a descriptor leak"
    return Command(line, note)


def sysctl_runtime(key: str, value: str) -> Command:
    """``sysctl -w key=value``: in force at once, lost at reboot."""
    return Command(shlex.join(["sysctl", "-w", f"{key}={value}"]),
                   "takes effect now (root) in this network namespace, lost at reboot")


def sysctl_persistent(key: str, value: str, path: str = SYSCTL_FILE) -> Command:
    """Append ``key = value`` to a file under /etc/sysctl.d/ and apply that file.

    ``sudo tee -a``, not ``>>``: under sudo a redirect is still opened by the
    unprivileged shell. ``sysctl -p FILE`` applies this file only; ``sysctl
    --system`` would re-apply every file, and a later one could undo this.
    """
    quoted = shlex.quote(path)
    line = f"echo {shlex.quote(f'{key} = {value}')} | sudo tee -a {quoted} && sudo sysctl -p {quoted}"
    return Command(line, f"kept across reboots in {path}; at boot the last file (in name order) that sets "
                         f"{key} wins: grep -rs {key} /etc/sysctl.d /run/sysctl.d /usr/lib/sysctl.d "
                         "/etc/sysctl.conf. Most TCP settings are per network namespace: this sets the host's, "
                         "not a container's")


def nstat_counters(names: Iterable[str]) -> Command:
    """``nstat -az NAME...``: the counters since boot (``nstat`` without -a shows the change since its last run)."""
    return Command(shlex.join(["nstat", "-az", *sorted(names)]), "the kernel counters behind this, since boot")


def process_kind(process: ProcessInfo) -> str:
    """"python", "java" or "native", told from the name and the program in the command line."""
    program = os.path.basename(process.cmdline.split(" ", 1)[0]) if process.cmdline else ""
    for candidate in (process.name, program):
        lowered = candidate.lower()
        if lowered.startswith(("python", "pypy", "gunicorn", "uwsgi", "celery")):
            return "python"
        if lowered.startswith("java"):
            return "java"
    return "native"


def stack_dump(process: ProcessInfo) -> Command:
    """The tool that shows where every thread of this process is, to find the missing close()."""
    pid = str(int(process.pid))
    kind = process_kind(process)
    if kind == "python":
        return Command(shlex.join(["py-spy", "dump", "--pid", pid]),
                       "Python stacks of every thread (pip install py-spy; root or ptrace rights)")
    if kind == "java":
        user = f"#{process.uid}" if process.user.isdigit() else process.user  # sudo takes a bare uid as #N
        return Command(shlex.join(["sudo", "-u", user, "jstack", "-l", pid]),
                       "every Java thread's stack; run as the JVM's own user")
    return Command(shlex.join(["gdb", "-p", pid, "-batch", "-ex", "thread apply all bt"]),
                   "native stacks of every thread; pauses the process for a moment (root or ptrace rights)")
