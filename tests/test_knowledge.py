"""The knowledge base: every state covered, the Linux facts right, the known folklore absent."""

from __future__ import annotations

import re

import pytest

from socktop.analyze.knowledge import KNOWLEDGE, WIDTH, explain_text, knowledge_for
from socktop.cli import main
from socktop.collect.kernelstate import SYSCTL_KEYS
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
    assert 20 <= len(lines) <= 70
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
    for tool in ("lsof -nP -a -p PID -iTCP -sTCP:CLOSE_WAIT", "py-spy dump", "jstack", "gdb -p PID", "kill -TERM"):
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
    assert err.count("\n") == 1 and "unknown TCP state" in err
