"""The Containers grouping and per-namespace findings, on constructed tables (the real ones: test_netns_engine)."""

from __future__ import annotations

import socket

import numpy as np

from socktop.analyze.commands import Command
from socktop.analyze.findings import Finding, Severity, Subject
from socktop.analyze.nsfindings import localize, localize_suggestion, where
from socktop.analyze.sysctl import Suggestion
from socktop.collect.columns import SocketColumns
from socktop.collect.containers import Container
from socktop.collect.kernelstate import KernelState
from socktop.collect.netns import Namespace
from socktop.collect.nswatch import NamespaceInfo
from socktop.collect.records import SocketRecord, TcpState, TimerKind
from socktop.model.places import aged, assign_places, group_places, matching_codes, place_predicate, with_closes

HOST = NamespaceInfo(Namespace(4026531840, pids=(1,), own=True), "host")
POD = Container("pod", "pod:5f0c3a1e", "checkout-7f9c", "containerd", "ab" * 32, "5f0c3a1e", "shop")
POD_NS = NamespaceInfo(Namespace(4026532316, pids=(4312,)), "pod shop/checkout-7f9c", POD,
                       KernelState(sysctls={"net.ipv4.ip_local_port_range": "40000 40199"}))
BLUE_NS = NamespaceInfo(Namespace(4026532400, names=("blue",), paths=("/var/run/netns/blue",)), "blue")
WEB = Container("container", "docker:" + "cd" * 32, "web", "docker", "cd" * 32)
CGROUPS = {77: WEB}


def record(state: TcpState, local_port: int, remote_port: int, netns: int = 0, cgroup_id: int = 0,
           inode: int = 0) -> SocketRecord:
    return SocketRecord(socket.AF_INET, state, "127.0.0.1", local_port, "127.0.0.1", remote_port, 0, 0,
                        TimerKind.NONE, 0, 0, 0, inode, 0, -1, cgroup_id, netns)


TABLE = [
    record(TcpState.LISTEN, 8080, 0, cgroup_id=77, inode=1),
    record(TcpState.ESTABLISHED, 8080, 50000, cgroup_id=77, inode=2),
    record(TcpState.TIME_WAIT, 50001, 8080),  # no cgroup id: socktop's own namespace itself
    record(TcpState.ESTABLISHED, 22, 50002, cgroup_id=5, inode=3),  # a cgroup naming no container
    *(record(TcpState.CLOSE_WAIT, 9000, 41000 + i, netns=POD_NS.key, cgroup_id=88, inode=10 + i) for i in range(3)),
    record(TcpState.ESTABLISHED, 6379, 42000, netns=BLUE_NS.key, inode=20),
]


def placed() -> tuple[SocketColumns, np.ndarray, list]:
    columns = SocketColumns.from_records(TABLE)
    codes, slots = assign_places(columns, (HOST, POD_NS, BLUE_NS), CGROUPS.get)
    return columns, codes, slots


def test_each_socket_is_placed_by_namespace_then_cgroup() -> None:
    columns, codes, slots = placed()
    keys = [slots[code].key for code in codes.tolist()]
    assert keys == [WEB.key, WEB.key, "netns:4026531840", "netns:4026531840", *["netns:4026532316"] * 3,
                    "netns:4026532400"]
    places = group_places(columns, codes, slots, None, frozenset({8080, 9000, 6379}), (32768, 60999))
    assert places[WEB.key].counts == {TcpState.LISTEN: 1, TcpState.ESTABLISHED: 1}
    assert places[WEB.key].kind == "container" and places[WEB.key].ports[0] == ("in:8080", 2)
    assert places["netns:4026532316"].kind == "pod" and places["netns:4026532316"].total == 3
    assert places["netns:4026532400"].kind == "netns" and places["netns:4026532400"].label == "blue"
    assert places["netns:4026531840"].kind == "host" and places["netns:4026531840"].total == 2


def test_every_socket_test_agrees_with_the_placement() -> None:
    columns, codes, slots = placed()
    for code, slot in enumerate(slots):
        assert [slot.holds(r) for r in TABLE] == [c == code for c in codes.tolist()], slot.key


def test_container_and_netns_terms() -> None:
    _columns, _codes, slots = placed()
    assert [slots[code].key for code in matching_codes(slots, "pod:5f0c3a1e")] == ["netns:4026532316"]
    assert [slots[code].key for code in matching_codes(slots, "CHECKOUT")] == ["netns:4026532316"]
    assert [slots[code].key for code in matching_codes(slots, "web")] == [WEB.key]
    assert matching_codes(slots, "nothing-like-it") == []
    by_name = place_predicate(slots, "blue", by_namespace=True)
    by_inode = place_predicate(slots, "4026532316", by_namespace=True)
    assert [by_name(r) for r in TABLE].count(True) == 1 and [by_inode(r) for r in TABLE].count(True) == 3
    host = place_predicate(slots, "netns:4026531840")
    assert [host(r) for r in TABLE] == [False, False, True, True, False, False, False, False]


def test_a_kept_dump_is_aged_not_changed() -> None:
    columns = SocketColumns.from_records([
        record(TcpState.TIME_WAIT, 50001, 8080)._replace(timer=TimerKind.TIME_WAIT, timer_ms=30_000),
        record(TcpState.CLOSE_WAIT, 8080, 50002)._replace(lastack_ms=1_000),
        record(TcpState.ESTABLISHED, 8080, 50003)])
    later = aged(columns, 2.5)
    assert later.timer_ms.tolist() == [27_500, 0, 0] and later.lastack_ms.tolist() == [-1, 3_500, -1]
    assert columns.timer_ms.tolist() == [30_000, 0, 0]


def finding() -> Finding:
    return Finding(
        id="close-wait-leak:pid:4312", kind="close-wait-leak", severity=Severity.WARNING,
        title="pid 4312 java holds 5000 CLOSE_WAIT sockets", subject=Subject("process", "pid:4312"),
        state=TcpState.CLOSE_WAIT, evidence=("5000 CLOSE_WAIT held",), metrics={"count": 5000},
        ss=Command("ss -tanp state close-wait | grep -F pid=4312,", "list them"), cause="",
        actions=(Command("kill -TERM 4312  # 'comm=java'", "ask it to exit"),
                 Command("lsof -nP -a -p 4312 -iTCP -sTCP:CLOSE_WAIT", "descriptors")),
    )


def test_a_finding_in_a_pod_names_the_pod_and_runs_inside_it() -> None:
    found = localize(finding(), POD_NS)
    assert found.id == "close-wait-leak:pid:4312@netns:4026532316"
    assert found.title == "pod shop/checkout-7f9c (netns 4026532316): pid 4312 java holds 5000 CLOSE_WAIT sockets"
    assert found.ss.line == "nsenter -t 4312 -n ss -tanp state close-wait | grep -F pid=4312,"
    assert found.actions[0].line == "kill -TERM 4312  # 'comm=java'"  # a pid is the same in every network namespace
    assert found.actions[1].line.startswith("nsenter -t 4312 -n lsof ")
    assert where(BLUE_NS) == "netns blue (4026532400)"
    assert localize(finding(), BLUE_NS).ss.line.startswith("ip netns exec blue ss ")


def test_a_suggestion_for_a_pod_is_applied_inside_and_kept_by_its_spec() -> None:
    suggestion = Suggestion("net.ipv4.ip_local_port_range", "40000 40199", "10240 65535", "why", "risk",
                            Command("sysctl -w 'net.ipv4.ip_local_port_range=10240 65535'", "now"),
                            Command("echo ... | sudo tee -a /etc/sysctl.d/99-zz-socktop.conf", "kept"))
    local = localize_suggestion(suggestion, POD_NS)
    assert local.runtime.line == "nsenter -t 4312 -n sysctl -w 'net.ipv4.ip_local_port_range=10240 65535'"
    assert local.persistent.line.startswith("securityContext: {sysctls: [{name: net.ipv4.ip_local_port_range")
    host_wide = NamespaceInfo(POD_NS.namespace, POD_NS.label, POD, KernelState(host_wide=frozenset({"net.ipv4.tcp_max_orphans"})))
    orphans = Suggestion("net.ipv4.tcp_max_orphans", "1", "2", "why", "risk", Command("sysctl -w x=2", ""),
                         Command("echo", ""))
    assert localize_suggestion(orphans, host_wide).runtime.line == "sysctl -w x=2"
    assert "host-wide" in localize_suggestion(orphans, host_wide).why


def test_closes_go_to_whole_namespaces_only() -> None:
    columns, codes, slots = placed()
    places = with_closes(group_places(columns, codes, slots, None, frozenset(), (32768, 60999)),
                         {0: 7, POD_NS.key: 3})
    assert places["netns:4026531840"].closes == 7 and places["netns:4026532316"].closes == 3
    assert places[WEB.key].closes is None  # a container in socktop's own namespace: close events carry no cgroup
    assert places["netns:4026532400"].closes is None  # no feed counted there
