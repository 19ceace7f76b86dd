"""The knowledge base: every state covered, the Linux facts right, the known folklore absent."""

from __future__ import annotations

import re

import pytest

import subprocess
import sys

from socktop.analyze.knowledge import (
    EPHEMERAL_PORTS_TEXT,
    KNOWLEDGE,
    ORPHANS_TEXT,
    WIDTH,
    RetrySchedule,
    explain_text,
    knowledge_for,
    orphan_retries,
    syn_schedule,
    time_budget,
)
from socktop.analyze.sysctl import SETTINGS
from socktop.cli import main
from socktop.collect.kernelstate import SYSCTL_KEYS, KernelState, read_kernel_state, read_sysctl
from socktop.collect.records import DISPLAY_STATES, TcpState


def test_every_display_state_has_knowledge_and_new_syn_recv_reads_as_syn_recv() -> None:
    assert set(KNOWLEDGE) == set(DISPLAY_STATES)
    assert knowledge_for(TcpState.NEW_SYN_RECV) is KNOWLEDGE[TcpState.SYN_RECV]
    for state, knowledge in KNOWLEDGE.items():
        assert knowledge.state is state
        assert knowledge.meaning and knowledge.side and knowledge.lifetime
        assert knowledge.normal_when and knowledge.symptom_when
        assert knowledge.causes and knowledge.remedies


@pytest.mark.parametrize("state", DISPLAY_STATES, ids=lambda s: s.name)
def test_explain_text_fits_a_terminal_and_a_night_shift(state: TcpState) -> None:
    text = explain_text(state)
    lines = text.splitlines()
    assert 20 <= len(lines) <= 100
    assert lines[0].startswith(state.label)
    prose = [line for line in lines if not line.lstrip().startswith("$ ")]
    assert max(map(len, prose)) <= WIDTH
    assert all(line.isprintable() for line in lines)


def test_time_wait_facts() -> None:
    text = explain_text(TcpState.TIME_WAIT)
    flat = " ".join(text.split())
    assert "60 s" in flat and "active closer" in flat and "set by no sysctl" in flat
    assert "late duplicate" in flat and "last ACK" in flat
    for remedy in ("keep-alive", "client close first", "tcp_tw_reuse=1", "ip_local_port_range",
                   "SO_REUSEADDR", "SO_LINGER"):
        assert remedy in flat, remedy
    assert "removed in Linux 4.12" in flat and "NAT" in flat
    assert "tcp_fin_timeout does not shorten TIME_WAIT" in flat
    assert "does nothing for a server's accepted connections" in flat


def test_close_wait_facts() -> None:
    knowledge = knowledge_for(TcpState.CLOSE_WAIT)
    flat = " ".join(explain_text(TcpState.CLOSE_WAIT).split())
    assert "No timer and no sysctl" in flat and "file descriptor" in flat and "Too many open files" in flat
    commands = " ".join(command for remedy in knowledge.remedies for command in remedy.commands)
    for tool in ("lsof -nP -a -p PID -iTCP -sTCP:CLOSE_WAIT", "py-spy dump", "jcmd PID Thread.print",
                 "debug/pprof/goroutine", "gdb -p PID", "kill -TERM", "ss -tni state close-wait",
                 "lsof -nP -a -p PID | grep -c TCP"):
        assert tool in commands, tool
    assert not knowledge.sysctls
    assert "sysctl" not in commands


def test_no_folklore_anywhere() -> None:
    """The seed pages' known errors: tw_recycle advice, fin_timeout for TIME_WAIT, keepalive or a
    network restart for CLOSE_WAIT."""
    for knowledge in KNOWLEDGE.values():
        advice = " ".join([remedy.action for remedy in knowledge.remedies]
                          + [command for remedy in knowledge.remedies for command in remedy.commands])
        assert "tcp_tw_recycle" not in advice
        assert not re.search(r"restart (the )?network", advice, re.IGNORECASE)
    close_wait_advice = " ".join(r.action for r in knowledge_for(TcpState.CLOSE_WAIT).remedies).lower()
    assert "keepalive" not in close_wait_advice
    time_wait_advice = " ".join(r.action for r in knowledge_for(TcpState.TIME_WAIT).remedies)
    assert "tcp_fin_timeout" not in time_wait_advice


def test_close_wait_says_one_thing_about_keepalive() -> None:
    """tcp_keepalive_timer() (net/ipv4/tcp_timer.c) probes in every state but CLOSE and SYN_SENT, and
    resets the connection when the probes go unanswered: keepalive does end a CLOSE_WAIT socket that
    has SO_KEEPALIVE; what it never ends is the leaked descriptor."""
    for line in knowledge_for(TcpState.CLOSE_WAIT).not_fixes:
        if "keepalive" in line.lower():
            assert "SO_KEEPALIVE" in line and "descriptor" in line, line


def test_the_other_pileups_are_explained() -> None:
    assert "SyncookiesSent" in knowledge_for(TcpState.SYN_RECV).symptom_when
    assert "ListenOverflows" in knowledge_for(TcpState.LISTEN).symptom_when
    assert "tcp_fin_timeout" in knowledge_for(TcpState.FIN_WAIT2).lifetime
    assert "CLOSE_WAIT" in knowledge_for(TcpState.FIN_WAIT2).symptom_when
    assert "tcp_orphan_retries" in knowledge_for(TcpState.LAST_ACK).lifetime


def test_every_setting_named_is_one_the_advisor_reads() -> None:
    for knowledge in KNOWLEDGE.values():
        assert set(knowledge.sysctls) <= set(SYSCTL_KEYS), knowledge.state


@pytest.mark.parametrize("spelling", ["close-wait", "CLOSE_WAIT", "closewait", "8"])
def test_socktop_explain_prints_the_state(spelling: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", spelling]) == 0
    assert capsys.readouterr().out.startswith("CLOSE-WAIT (CLOSE_WAIT, kernel state 8)")


def test_socktop_explain_unknown_state_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "half-open"]) == 2  # a bad argument, as argparse exits
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown state or setting 'half-open'" in err


def test_explain_help_is_usage_and_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--help", "-h"):
        assert main(["explain", flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: socktop explain") and "tcp_syn_linear_timeouts" in out and "close-wait" in out


CITED = ("tcp_retries2", "tcp_syn_retries", "tcp_synack_retries", "tcp_syn_linear_timeouts",
         "ip_local_reserved_ports", "tcp_rfc1337", "tcp_abort_on_overflow", "tcp_mem", "tcp_timestamps")


@pytest.mark.parametrize("name", [*CITED, *(key.rpartition(".")[2] for key in SYSCTL_KEYS)])
def test_explain_knows_every_setting_socktop_cites(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", name]) == 0
    out = capsys.readouterr().out
    for section in ("Here:", "Default:", "Changing it:", "It does not fix:", "Scope:"):
        assert section in out, section
    key = next(k for k in SYSCTL_KEYS if k.endswith("." + name))
    value = read_sysctl(key)
    here = out.split("Here:\n", 1)[1].split("\n", 1)[0].strip()
    assert here == value if value is not None else ("absent" in here or "not visible" in here)


def test_every_setting_any_text_cites_is_explained() -> None:
    texts = " ".join(explain_text(state) for state in DISPLAY_STATES)
    cited = set(re.findall(r"\b(?:tcp|ip)_[a-z0-9_]*[a-z0-9](?![a-z0-9_])", texts)) - {"tcp_rmem", "tcp_wmem"}
    known = {key.rpartition(".")[2] for key in SETTINGS}
    assert cited <= known, cited - known


def test_a_host_wide_setting_in_a_container_reads_host_wide_not_absent() -> None:
    """Inside another network namespace /proc/sys lacks tcp_max_orphans and tcp_mem: never "absent on this kernel"."""
    result = subprocess.run(["unshare", "-n", sys.executable, "-m", "socktop", "explain", "tcp_max_orphans"],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0 and "unshare" in result.stderr:
        pytest.skip("cannot create a network namespace here")
    assert "host-wide, not visible from this network namespace" in result.stdout
    assert "absent on this kernel" not in result.stdout
    hidden = KernelState({"net.ipv4.tcp_syncookies": "1", "net.ipv4.tcp_max_orphans": None, "net.ipv4.tcp_mem": None})
    assert hidden.scope_note("net.ipv4.tcp_mem") == "host-wide, not visible from this network namespace"
    assert KernelState({"net.ipv4.tcp_max_orphans": "4096", "net.ipv4.tcp_tw_reuse_delay": None}).scope_note(
        "net.ipv4.tcp_tw_reuse_delay") == "absent on this kernel"


@pytest.mark.parametrize(("retries", "linear", "count", "last", "end"), [
    (6, 4, 10, 67, 131),  # Linux 6.5+ defaults, ip-sysctl.rst: last retransmission 67 s, timeout 131 s
    (6, 0, 6, 63, 127),  # before 6.5
    (5, 0, 5, 31, 63),  # tcp_synack_retries 5: 31 s and 63 s
    (2, 4, 6, 7, 11),  # 1 s five times, then 2 s, then 4 s
])
def test_syn_schedule_follows_the_kernels_formula(retries: int, linear: int, count: int, last: float,
                                                  end: float) -> None:
    assert syn_schedule(retries, linear) == RetrySchedule(count, last, end)


def test_time_budgets_of_retries2_and_orphan_retries() -> None:
    assert time_budget(15) == pytest.approx(924.6)  # ip-sysctl.rst, tcp_retries2
    assert time_budget(8) == pytest.approx(102.2) and time_budget(3) == pytest.approx(3.0)
    assert orphan_retries(0) == 8


def test_syn_sent_states_the_schedule_of_this_kernel() -> None:
    kernel = read_kernel_state()
    retries = kernel.sysctl_int("net.ipv4.tcp_syn_retries")
    if retries is None:
        pytest.skip("no tcp_syn_retries here")
    plan = syn_schedule(retries, kernel.sysctl_int("net.ipv4.tcp_syn_linear_timeouts") or 0)
    text = " ".join(explain_text(TcpState.SYN_SENT, kernel).split())
    assert f"{plan.retransmissions} retransmissions" in text and "On this kernel" in text
    old = " ".join(explain_text(TcpState.SYN_SENT).split())
    assert "131 s" in old and "tcp_syn_linear_timeouts" in old and "127 s" in old  # before 6.5 only


def test_corrected_statements() -> None:
    """The expert review's wrong and misleading statements, each pinned."""
    flat = {state: " ".join(explain_text(state).split()) for state in DISPLAY_STATES}
    assert "2*MSL, TCP_TIMEWAIT_LEN" not in flat[TcpState.TIME_WAIT] and "60 s on Linux" in flat[TcpState.TIME_WAIT]
    assert "tcp_rfc1337" in flat[TcpState.TIME_WAIT] and "restarts the 60 s" in flat[TcpState.TIME_WAIT]
    assert "does not block clients" in flat[TcpState.TIME_WAIT]
    assert "6.13" not in " ".join(flat.values()) and "Linux 6.14" in flat[TcpState.TIME_WAIT]
    assert "ss -tni dst HOST" in flat[TcpState.TIME_WAIT] and "Windows" in flat[TcpState.TIME_WAIT]
    assert "IP_BIND_ADDRESS_NO_PORT" in flat[TcpState.TIME_WAIT]
    close_wait = flat[TcpState.CLOSE_WAIT]
    assert "did not even read" not in close_wait and "Recv-Q tells which bug" in close_wait
    assert "Keepalive probes the peer; whatever they find" not in close_wait
    assert "SO_KEEPALIVE" in close_wait and "lastack" in close_wait and "/proc/PID/fd" in close_wait
    syn_recv = knowledge_for(TcpState.SYN_RECV)
    assert "accept()s too slowly" not in syn_recv.causes[0] and "TCP_DEFER_ACCEPT" in flat[TcpState.SYN_RECV]
    assert "min(listen() backlog, net.core.somaxconn)" in flat[TcpState.SYN_RECV]
    assert "REJECT" in flat[TcpState.SYN_SENT] and "ICMP" in flat[TcpState.SYN_SENT]
    assert "no limit (RFC 9293 3.8.6.1)" in flat[TcpState.FIN_WAIT1] and "TCP_USER_TIMEOUT" in flat[TcpState.FIN_WAIT1]
    assert "102 s" in flat[TcpState.LAST_ACK] and "sockstat tw" in flat[TcpState.FIN_WAIT2]
    assert "FIN_WAIT_2" not in ORPHANS_TEXT.split(". An orphaned")[0]
    for text in (EPHEMERAL_PORTS_TEXT,):
        assert "EADDRNOTAVAIL" in text and "EADDRINUSE" in text and "IP_LOCAL_PORT_RANGE" in text
    assert "ss -K on a listener" in flat[TcpState.LISTEN]
