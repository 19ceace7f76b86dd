"""The commands socktop hands out: safe to paste whatever a process calls itself, and exact on real sockets.

Safety is proven with the shells themselves (``bash -n``, ``sh -n``, and a
real ``kill`` against a ``sleep`` this test started) and with ``shlex``:
the hostile name must stay one inert word inside the trailing comment.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from socktop.analyze.commands import (
    COMMENT_MAX_CHARS,
    kill_commands,
    lsof_sockets,
    nstat_counters,
    process_kind,
    safe_comment,
    ss_address,
    ss_for_row,
    lsof_unlisted_tcp,
    ss_has_bound_inactive,
    ss_kill,
    ss_kill_refusal,
    ss_sockets,
    ss_state_name,
    stack_dump,
    sysctl_persistent,
    sysctl_runtime,
)
from socktop.collect.netlink import NetlinkBackend
from socktop.collect.records import DISPLAY_STATES, ProcessInfo, SocketRecord, TcpState, TimerKind

HOSTILE_NAMES = [
    "[bold]red[/bold]",
    "$(id)",
    "`id`",
    "it's \"quoted\"",
    ";rm -rf /",
    "a\nrm -rf /",
    "x\r\nkill -9 1",
    "\x1b]52;c;cm0gLXJmIC8K\x07",
    "\x1b[2J\x1b[H",
    "evil\u202eexe.txt",  # right-to-left override: would disguise the line
    "line\u2028sep",
    "tab\there",
    "back\\slash\\",
    "'",
    "#",
    "",
    "$HOME ${IFS} * ? ~ & | < > ( ) { } !! !-1",
    "\x00nul\x7fdel\x9bcsi",
    "x" * 500,
    "-1",  # where '#' is not a comment these would be arguments to kill: every process,
    "1",  # init,
    "%1",  # a job,
    "-9 1",  # a signal and init
]


def _comment_of(line: str) -> str:
    return line.split("  # ", 1)[1]


def _assert_inert(line: str, words: list[str]) -> None:
    """One line, parsed by shlex and both shells as ``words`` followed by a comment."""
    assert "\n" not in line and "\r" not in line
    assert all(ch == " " or ch.isprintable() for ch in line), repr(line)
    assert shlex.split(line, comments=True) == words
    comment = _comment_of(line)
    assert len(shlex.split(comment)) <= 1, comment  # one quoted word even where '#' is not a comment
    assert shlex.split(comment)[0].startswith("comm="), comment  # ...never a pid, a job or an option
    for shell in ("bash", "sh"):
        assert subprocess.run([shell, "-n", "-c", line], capture_output=True, timeout=60).returncode == 0, (shell, line)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_kill_commands_keep_a_hostile_name_in_an_inert_comment(name: str) -> None:
    term, kill = kill_commands(4242, name)
    _assert_inert(term.line, ["kill", "-TERM", "4242"])
    _assert_inert(kill.line, ["kill", "-KILL", "4242"])
    assert "\x1b" not in term.line and "\u202e" not in term.line and "\u2028" not in term.line


def test_comment_is_bounded_and_still_names_the_process() -> None:
    assert safe_comment("leaky-api") == "  # comm=leaky-api"
    assert len(_comment_of(safe_comment("x" * 500))) <= COMMENT_MAX_CHARS + len("comm=") + 2
    assert "\\n" in safe_comment("a\nb") and "\\e" in safe_comment("\x1b[2J")


def test_a_shell_without_comments_still_kills_only_the_pid() -> None:
    """bash with interactive_comments off reads '#' and the name as words: they must be inert."""
    victim = subprocess.Popen(["sleep", "30"])
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        term, _ = kill_commands(victim.pid, f"{bystander.pid}")
        words = shlex.split(term.line, comments=False)
        assert words[:3] == ["kill", "-TERM", str(victim.pid)] and str(bystander.pid) not in words
        subprocess.run(["bash", "-c", shlex.join(words)], capture_output=True, timeout=10)
        assert victim.wait(5) == -15 and bystander.poll() is None
    finally:
        for process in (victim, bystander):
            process.kill()
            process.wait()


def test_kill_command_runs_and_hostile_comment_does_nothing(tmp_path: Path) -> None:
    """Pasted into bash for real, against a sleep this test started: the sleep dies, the name runs nothing."""
    sentinel = tmp_path / "pwned"
    victim = subprocess.Popen(["sleep", "30"])
    try:
        name = f"$(touch {sentinel})`touch {sentinel}`\n touch {sentinel}; touch {sentinel}"
        term, _ = kill_commands(victim.pid, name)
        result = subprocess.run(["bash", "-c", term.line], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, result.stderr
        assert victim.wait(timeout=10) == -signal.SIGTERM
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert not sentinel.exists()


def test_ss_state_names_are_the_ones_ss_accepts() -> None:
    assert ss_state_name(TcpState.ESTABLISHED) == "established"
    assert ss_state_name(TcpState.LISTEN) == "listening"
    assert ss_state_name(TcpState.CLOSE_WAIT) == "close-wait"
    if shutil.which("ss") is None:
        pytest.skip("no ss here")
    for state in DISPLAY_STATES:
        if state is TcpState.CLOSE:
            continue  # -B needs a recent ss; the state name itself is checked without it
        command = ss_sockets(state)
        assert subprocess.run(command.line, shell=True, capture_output=True, timeout=60).returncode == 0, command.line
    assert subprocess.run(["ss", "-tan", "state", ss_state_name(TcpState.CLOSE)], capture_output=True,
                          timeout=60).returncode == 0


def test_ss_filters_quote_the_expression_and_bracket_ipv6() -> None:
    assert ss_sockets(TcpState.CLOSE_WAIT, local_port=8080).line == "ss -tanp state close-wait '( sport = :8080 )'"
    assert ss_sockets(TcpState.TIME_WAIT, local_addr="10.0.0.2", remote_addr="::1", remote_port=443).line == (
        "ss -tanp state time-wait '( src 10.0.0.2 and dst [::1] and dport = :443 )'"
    )
    assert ss_sockets(TcpState.CLOSE_WAIT, pid=4242).line == "ss -tanp state close-wait | grep -F pid=4242,"
    assert ss_address("::ffff:127.0.0.1") == "127.0.0.1"
    with pytest.raises(ValueError):
        ss_address("127.0.0.1; rm -rf /")


def test_ss_filters_on_either_end() -> None:
    """The `/` filter's port:N and addr:A match either end of a socket: so must the ss they become."""
    assert ss_sockets(either_ports=[80]).line == "ss -tanp '( sport = :80 or dport = :80 )'"
    assert ss_sockets(TcpState.ESTABLISHED, local_port=8080, either_ports=[5432], either_addrs=["::1"]).line == (
        "ss -tanp state established '( sport = :8080 ) and ( sport = :5432 or dport = :5432 ) and "
        "( src [::1] or dst [::1] )'"
    )
    with pytest.raises(ValueError):
        ss_sockets(either_addrs=["10.0"])  # part of an address is no ss condition
    if shutil.which("ss") is not None:
        line = ss_sockets(TcpState.LISTEN, local_port=1, either_ports=[2], either_addrs=["::1", "127.0.0.1"]).line
        assert subprocess.run(line, shell=True, capture_output=True, timeout=60).returncode == 0, line


def test_ss_for_row_covers_every_pane() -> None:
    assert ss_for_row("state", TcpState.TIME_WAIT).line == "ss -tanp state time-wait"
    assert ss_for_row("port", "in:8080", TcpState.CLOSE_WAIT).line == "ss -tanp state close-wait '( sport = :8080 )'"
    assert ss_for_row("port", "out:443").line == "ss -tanp '( dport = :443 )'"
    assert ss_for_row("process", "pid:42", TcpState.ESTABLISHED).line == "ss -tanp state established | grep -F pid=42,"
    assert ss_for_row("process", "uid:1000", TcpState.ESTABLISHED).line == "ss -tanp state established"
    assert ss_for_row("remote", "10.1.2.3").line == "ss -tanp '( dst 10.1.2.3 )'"
    closed = ss_for_row("state", TcpState.CLOSE).line
    assert closed.startswith("ss -tanpB state closed") if ss_has_bound_inactive() else closed.startswith("lsof ")
    assert ss_sockets(TcpState.CLOSE, bound_inactive=True).line == "ss -tanpB state closed"
    assert ss_sockets(TcpState.CLOSE, bound_inactive=False, pid=42).line == lsof_unlisted_tcp(42).line
    with pytest.raises(ValueError):
        ss_for_row("planet", "mars")


@pytest.fixture
def close_wait_pair():
    """A loopback connection whose server side closed: the client sits in CLOSE_WAIT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    server.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _close_wait_of(client):
        time.sleep(0.01)
    yield listener, client
    client.close()
    listener.close()


def _close_wait_of(client: socket.socket):
    port = client.getsockname()[1]
    return [r for r in NetlinkBackend().sockets() if r.state is TcpState.CLOSE_WAIT and r.local_port == port]


def _listed_local_ports(line: str) -> set[int]:
    """Local ports in the output of an ``ss ... state S`` command (columns: Recv-Q Send-Q Local Peer ...)."""
    output = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=20).stdout
    return {int(row.split()[2].rpartition(":")[2]) for row in output.splitlines()
            if row.strip() and not row.startswith("Recv-Q")}


@pytest.mark.skipif(shutil.which("ss") is None, reason="no ss here")
def test_ss_filter_lists_exactly_the_sockets_behind_a_row(close_wait_pair) -> None:
    listener, client = close_wait_pair
    client_port = client.getsockname()[1]
    server_port = listener.getsockname()[1]
    by_remote_port = ss_sockets(TcpState.CLOSE_WAIT, remote_port=server_port)
    by_pid = ss_sockets(TcpState.CLOSE_WAIT, pid=os.getpid())
    assert _listed_local_ports(by_remote_port.line) == {client_port}
    assert client_port in _listed_local_ports(by_pid.line)
    either = ss_sockets(TcpState.CLOSE_WAIT, either_ports=[server_port], either_addrs=["127.0.0.1"])
    assert _listed_local_ports(either.line) == {client_port}


@pytest.mark.skipif(shutil.which("lsof") is None, reason="no lsof here")
def test_lsof_lists_the_close_wait_descriptor(close_wait_pair) -> None:
    _, client = close_wait_pair
    command = lsof_sockets(os.getpid(), TcpState.CLOSE_WAIT)
    assert command.line == f"lsof -nP -a -p {os.getpid()} -iTCP -sTCP:CLOSE_WAIT"
    output = subprocess.run(command.line, shell=True, capture_output=True, text=True, timeout=20).stdout
    assert f":{client.getsockname()[1]}->" in output and "(CLOSE_WAIT)" in output


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ss") is None, reason="ss -K needs root")
def test_ss_kill_aborts_exactly_one_connection_we_own(close_wait_pair) -> None:
    _, client = close_wait_pair
    record = _close_wait_of(client)[0]
    command = ss_kill(record)
    assert command is not None and "RST" in command.note and "no fix for a descriptor leak" in command.note
    assert shlex.split(command.line)[:5] == ["ss", "-tK", "state", "close-wait", shlex.split(command.line)[4]]
    subprocess.run(command.line, shell=True, capture_output=True, timeout=20)
    if _close_wait_of(client):
        pytest.skip("this kernel has no CONFIG_INET_DIAG_DESTROY")
    with pytest.raises(OSError):
        client.send(b"x")  # the connection was aborted under the descriptor, which we still hold


def test_ss_kill_is_never_offered_on_a_real_listener(close_wait_pair) -> None:
    """ss -K on a LISTEN socket closes the listener itself: socktop must not hand that out."""
    listener, _ = close_wait_pair
    port = listener.getsockname()[1]
    (record,) = [r for r in NetlinkBackend().sockets() if r.state is TcpState.LISTEN and r.local_port == port]
    assert ss_kill(record) is None
    assert "close the listening socket itself" in ss_kill_refusal(record)


@pytest.mark.parametrize("state", DISPLAY_STATES, ids=lambda s: s.name)
def test_ss_kill_only_where_the_peer_gets_an_rst(state: TcpState) -> None:
    record = SocketRecord(socket.AF_INET, state, "10.0.0.1", 8080, "10.0.0.2", 40000, 0, 0, TimerKind.NONE, 0, 0,
                          0, 77)
    command = ss_kill(record)
    if state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT1, TcpState.FIN_WAIT2):
        assert command is not None and shlex.split(command.line)[:2] == ["ss", "-tK"]
        assert "the peer gets an RST" in command.note
    else:
        assert command is None and ss_kill_refusal(record).startswith("not offered")
    timewait_fin_wait2 = record._replace(state=TcpState.FIN_WAIT2, timer=TimerKind.TIME_WAIT, inode=0)
    assert ss_kill(timewait_fin_wait2) is None and "dropped silently" in ss_kill_refusal(timewait_fin_wait2)


def test_bound_only_sockets_are_listed_by_the_command_socktop_offers() -> None:
    """CLOSE: ss -B where the installed ss has it (iproute2 6.1 has not), else lsof's unlisted TCP descriptors."""
    if shutil.which("ss") is None or shutil.which("lsof") is None:
        pytest.skip("needs ss and lsof")
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        line = ss_sockets(TcpState.CLOSE, pid=os.getpid()).line
        output = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=30).stdout
        if ss_has_bound_inactive():
            assert f":{bound.getsockname()[1]} " in output
        else:
            assert line.startswith("lsof ")
            assert f" {os.fstat(bound.fileno()).st_ino} " in output  # lsof prints the socket's inode


@pytest.mark.parametrize(("key", "value", "words"), [
    ("net.ipv4.tcp_tw_reuse", "1", ["sysctl", "-w", "net.ipv4.tcp_tw_reuse=1"]),
    ("net.ipv4.ip_local_port_range", "15000 65000", ["sysctl", "-w", "net.ipv4.ip_local_port_range=15000 65000"]),
])
def test_sysctl_runtime_is_one_quoted_assignment(key: str, value: str, words: list[str]) -> None:
    line = sysctl_runtime(key, value).line
    assert shlex.split(line) == words
    assert subprocess.run(["bash", "-n", "-c", line], timeout=60).returncode == 0


def test_sysctl_persistent_works_under_sudo_and_applies_its_own_file(tmp_path: Path) -> None:
    """The old `echo ... >> FILE && sysctl --system` failed under sudo (the redirect runs unprivileged).
    Run the line with stand-ins for sudo and sysctl (tests never change the kernel) and a file path
    with a space: the file gets the line sysctl.d(5) reads, then ``sysctl -p`` on that file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "sudo").write_text(f'#!/bin/sh\necho "sudo $*" >> {shlex.quote(str(calls))}\nexec "$@"\n')
    (bin_dir / "sysctl").write_text(f'#!/bin/sh\necho "sysctl $*" >> {shlex.quote(str(calls))}\n')
    for tool in ("sudo", "sysctl"):
        (bin_dir / tool).chmod(0o755)
    target = tmp_path / "sysctl d" / "99-zz-socktop.conf"
    target.parent.mkdir()
    command = sysctl_persistent("net.ipv4.ip_local_port_range", "15000 65000", str(target))
    assert ">>" not in command.line and "sysctl --system" not in command.line
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-c", command.line], check=True, env=env, capture_output=True, timeout=20)
    assert target.read_text() == "net.ipv4.ip_local_port_range = 15000 65000\n"
    assert calls.read_text().splitlines()[-1] == f"sysctl -p {target}"
    assert "sudo tee -a" in command.line and "network namespace" in command.note
    default = sysctl_persistent("net.ipv4.tcp_tw_reuse", "1").line
    assert "/etc/sysctl.d/99-zz-socktop.conf" in default and "99-zz-socktop" > "99-sysctl"


def test_nstat_names_the_counters() -> None:
    assert nstat_counters(["TcpExtListenOverflows", "TcpExtListenDrops"]).line == (
        "nstat -az TcpExtListenDrops TcpExtListenOverflows"
    )


def _process(name: str, cmdline: str, user: str = "app") -> ProcessInfo:
    return ProcessInfo(pid=4242, start_ticks=1, name=name, cmdline=cmdline, uid=1000, user=user)


@pytest.mark.parametrize(("name", "cmdline", "kind", "tool"), [
    ("python3", "/usr/bin/python3 app.py", "python", "py-spy"),
    ("leaky-api", "/usr/bin/python3.11 /opt/leaky-api", "python", "py-spy"),
    ("gunicorn", "gunicorn: worker [app]", "python", "py-spy"),
    ("java", "/usr/lib/jvm/bin/java -jar app.jar", "java", "jstack"),
    ("nginx", "nginx: worker process", "native", "gdb"),
    ("$(id)", "", "native", "gdb"),
])
def test_stack_dump_tool_follows_the_kind_of_process(name: str, cmdline: str, kind: str, tool: str) -> None:
    process = _process(name, cmdline)
    assert process_kind(process) == kind
    command = stack_dump(process)
    assert shlex.split(command.line)[0 if tool != "jstack" else 3] == tool
    assert "4242" in shlex.split(command.line)
    assert subprocess.run(["bash", "-n", "-c", command.line], timeout=60).returncode == 0


def test_jstack_runs_as_the_jvm_user_even_without_a_name() -> None:
    assert shlex.split(stack_dump(_process("java", "java", user="1000")).line)[:3] == ["sudo", "-u", "#1000"]
    hostile = stack_dump(_process("java", "java", user="$(id)")).line
    assert shlex.split(hostile)[:3] == ["sudo", "-u", "$(id)"] and "'$(id)'" in hostile


def test_the_analysis_layer_never_imports_textual_or_rich() -> None:
    code = ("import sys, socktop.analyze.commands, socktop.analyze.knowledge, socktop.analyze.findings, "
            "socktop.analyze.sysctl, socktop.analyze.config; print(sorted({'textual', 'rich'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]"
