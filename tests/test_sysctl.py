"""The kernel state reader on this machine's real /proc, on broken ones, and the advisor's rules."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from socktop.analyze.config import DEFAULT_THRESHOLDS
from socktop.analyze.findings import analyze
from socktop.analyze.sysctl import (
    Advisor,
    counter_rate,
    doubled,
    explain_sysctl,
    recent,
    sysctl_context,
    wider_port_range,
)
from socktop.collect.kernelstate import (
    COUNTER_KEYS,
    SYSCTL_KEYS,
    KernelState,
    parse_counter_table,
    parse_sockstat,
    read_kernel_state,
    sysctl_path,
)
from socktop.model.engine import Engine
from test_findings import Table, counter_history, kernel, point, snapshot_of

# --- reading this machine -----------------------------------------------------------------------------


def test_reads_this_kernels_sysctls_as_sysctl_prints_them() -> None:
    state = read_kernel_state()
    assert set(state.sysctls) == set(SYSCTL_KEYS)
    assert state.sysctls["net.ipv4.tcp_tw_recycle"] is None  # removed in 4.12; this is 6.x
    for key, value in state.sysctls.items():
        assert (value is None) is (not Path(sysctl_path(key)).exists()), key
    if shutil.which("sysctl"):
        for key in ("net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse", "net.core.somaxconn"):
            shown = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, check=True, timeout=60).stdout
            assert state.sysctls[key] == " ".join(shown.split())
    assert state.port_range() is not None and state.sysctl_int("net.ipv4.tcp_fin_timeout") is not None


def test_reads_this_kernels_counters_and_sockstat() -> None:
    first = read_kernel_state()
    assert set(first.counters) == set(COUNTER_KEYS)  # every one of them exists on Linux 6.x
    assert {"inuse", "orphan", "tw", "alloc", "mem"} <= set(first.sockstat)
    second = read_kernel_state()
    assert all(second.counters[name] >= first.counters[name] for name in COUNTER_KEYS)  # counters only grow


def test_read_kernel_state_is_cheap_enough_for_every_refresh() -> None:
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        read_kernel_state()
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.005  # about 0.35 ms here; a refresh is 1 s


def test_engine_snapshots_carry_the_kernel_state_and_history_counters() -> None:
    engine = Engine()
    engine.refresh()
    snapshot = engine.refresh()
    assert snapshot.kernel is not None and snapshot.kernel.sysctls["net.core.somaxconn"]
    assert [set(p.counters) for p in snapshot.history] == [set(COUNTER_KEYS)] * 2
    assert snapshot.filtered(port=1).kernel is snapshot.kernel
    analysis = analyze(snapshot)
    for suggestion in analysis.sysctl.suggestions:  # whatever this machine shows right now
        assert suggestion.current == snapshot.kernel.sysctls[suggestion.key] != suggestion.suggested
    rates = {rate.name: rate for rate in analysis.sysctl.rates}
    assert set(rates) == set(COUNTER_KEYS) and all(r.per_second is not None and r.per_second >= 0
                                                   for r in rates.values())


# --- broken and foreign /proc ---------------------------------------------------------------------------


def test_missing_proc_gives_an_empty_state_and_no_advice(tmp_path: Path) -> None:
    state = read_kernel_state(str(tmp_path))
    assert state.sysctls == dict.fromkeys(SYSCTL_KEYS) and state.counters == {} and state.sockstat == {}
    context = sysctl_context(snapshot_of(Table(), state), DEFAULT_THRESHOLDS, ())
    assert context.note == "/proc/sys could not be read: no setting is known, none is suggested"


def test_malformed_files_contribute_nothing(tmp_path: Path) -> None:
    (tmp_path / "sys/net/ipv4").mkdir(parents=True)
    (tmp_path / "net").mkdir()
    (tmp_path / "sys/net/ipv4/ip_local_port_range").write_text("60999\t32768\n")
    (tmp_path / "sys/net/ipv4/tcp_fin_timeout").write_text("sixty\n")
    (tmp_path / "net/netstat").write_text("TcpExt: ListenOverflows ListenDrops\nTcpExt: 12\n"
                                          "IpExt: InNoRoutes\nIpExt: 0\n")
    (tmp_path / "net/snmp").write_text("Tcp: ActiveOpens PassiveOpens\nTcp: 7 x\n")
    (tmp_path / "net/sockstat").write_text("sockets: used 3\nTCP: inuse 4 orphan 1 tw many\n")
    state = read_kernel_state(str(tmp_path))
    assert state.sysctls["net.ipv4.ip_local_port_range"] == "60999 32768" and state.port_range() is None
    assert state.sysctl_int("net.ipv4.tcp_fin_timeout") is None
    assert state.counters == {"TcpActiveOpens": 7}  # the short netstat pair is skipped, 'x' is not a number
    assert state.sockstat == {"inuse": 4, "orphan": 1}


def test_counter_table_and_sockstat_parsers() -> None:
    text = "TcpExt: SyncookiesSent ListenOverflows\nTcpExt: 3 9\nIpExt: ListenOverflows\nIpExt: 1\n"
    assert parse_counter_table(text, {"TcpExtListenOverflows", "IpExtListenOverflows"}) == {
        "TcpExtListenOverflows": 9, "IpExtListenOverflows": 1}
    assert parse_sockstat("TCP: inuse 1 orphan 0 tw 9005 alloc 1 mem 185\n")["tw"] == 9005
    assert parse_sockstat("UDP: inuse 1\n") == {}


# --- the advisor's rules -------------------------------------------------------------------------------------


def test_advisor_never_suggests_a_value_in_force_or_an_absent_key() -> None:
    advisor = Advisor(kernel(tcp_tw_reuse="1", tcp_tw_reuse_delay=None))
    advisor.propose("net.ipv4.tcp_tw_reuse", "1", "why", "risk")
    advisor.propose("net.ipv4.tcp_tw_reuse_delay", "500", "why", "risk")
    advisor.propose("net.ipv4.ip_local_port_range", "32768   60999", "why", "risk")  # same value, other spacing
    assert advisor.suggestions == []
    assert advisor.notes == ["net.ipv4.tcp_tw_reuse is already 1",
                             "net.ipv4.tcp_tw_reuse_delay is absent on this kernel: nothing to set here",
                             "net.ipv4.ip_local_port_range is already 32768 60999"]
    advisor.propose("net.core.somaxconn", "8192", "why", "risk")
    (suggestion,) = advisor.suggestions
    assert (suggestion.current, suggestion.runtime.line) == ("4096", "sysctl -w net.core.somaxconn=8192")
    assert suggestion.persistent.line == ("echo 'net.core.somaxconn = 8192' | sudo tee -a "
                                          "/etc/sysctl.d/99-zz-socktop.conf && sudo sysctl -p "
                                          "/etc/sysctl.d/99-zz-socktop.conf")


def test_advisor_refuses_tcp_tw_recycle_and_says_why() -> None:
    with pytest.raises(ValueError, match="removed in Linux 4.12"):
        Advisor(kernel()).propose("net.ipv4.tcp_tw_recycle", "1", "why", "risk")
    text = explain_sysctl("tcp_tw_recycle")
    assert text is not None and "NAT" in text and "4.12" in text
    readings = {r.key: r for r in sysctl_context(snapshot_of(Table()), DEFAULT_THRESHOLDS, ()).readings}
    assert readings["net.ipv4.tcp_tw_recycle"].value is None
    assert readings["net.ipv4.tcp_tw_recycle"].note.startswith("absent: removed in Linux 4.12")


def test_explain_sysctl_names() -> None:
    assert explain_sysctl("net.ipv4.tcp_fin_timeout") == explain_sysctl("tcp_fin_timeout")
    assert "does not shorten TIME_WAIT" in (explain_sysctl("tcp_fin_timeout") or "")
    assert explain_sysctl("vm.swappiness") is None


def test_suggested_values() -> None:
    assert doubled(4096) == "8192" and doubled(1000, at_least=5000) == "8000" and doubled(None) == "2"
    assert wider_port_range((32768, 60999)) == (10000, 65535)
    assert wider_port_range((1024, 65535)) == (1024, 65535)


def test_counters_are_rates_between_snapshots_not_totals() -> None:
    points = counter_history("TcpExtListenOverflows", [1000, 1010, 1030])
    assert counter_rate(points, "TcpExtListenOverflows") == (15.0, 2.0)
    assert counter_rate(points[:1], "TcpExtListenOverflows") == (None, 0.0)
    assert counter_rate(counter_history("TcpExtListenOverflows", [50, 10]), "TcpExtListenOverflows")[0] is None
    assert counter_rate(points, "TcpExtSyncookiesSent") == (None, 0.0)
    context = sysctl_context(snapshot_of(Table(), history=points), DEFAULT_THRESHOLDS, ())
    (overflows,) = [r for r in context.rates if r.name == "TcpExtListenOverflows"]
    assert overflows.per_second == 15.0


def test_rates_look_at_the_recent_window_only() -> None:
    points = tuple(point(i, float(i)) for i in range(0, 300, 10))
    assert [p.monotonic for p in recent(points, 60)] == [230.0, 240.0, 250.0, 260.0, 270.0, 280.0, 290.0]
    assert recent((), 60) == ()


def test_suggestions_are_one_per_key_first_wins() -> None:
    first, second = Advisor(kernel()), Advisor(kernel())
    first.propose("net.core.somaxconn", "8192", "first", "risk")
    second.propose("net.core.somaxconn", "16384", "second", "risk")
    context = sysctl_context(snapshot_of(Table()), DEFAULT_THRESHOLDS, [*first.suggestions, *second.suggestions])
    assert [(s.suggested, s.why) for s in context.suggestions] == [("8192", "first")]


def test_kernel_state_helpers() -> None:
    state = KernelState({"net.ipv4.ip_local_port_range": "1024 65535", "net.core.somaxconn": "-1"})
    assert state.port_range() == (1024, 65535) and state.sysctl_int("net.core.somaxconn") == -1
    assert KernelState().port_range() is None and KernelState().sysctl_int("net.core.somaxconn") is None
