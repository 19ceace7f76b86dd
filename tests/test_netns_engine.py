"""Every namespace, every container, end to end: real namespaces with loopback traffic, checked against `ss`.

Root only (creating namespaces and cgroups); each test removes what it made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from socktop.analyze.findings import analyze
from socktop.collect.netns import Selection
from socktop.collect.records import TcpState
from socktop.model.engine import Engine
from socktop.model.snapshot import Snapshot
from namespaces import (
    cgroup_v2_dir, farm_in_netns, farm_in_new_netns, move_to_cgroup, named_netns, needs_root, netns_inode,
    ss_counts, ss_counts_of_pid, stop, unique_name, writable_cgroup2,
)

pytestmark = needs_root
POD_UID = "5f0c3a1e-8b2d-4c6e-9a7f-0e1d2c3b4a59"
CTR_ID = "7d3e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d4e"


def per_namespace(snapshot: Snapshot) -> dict[int, Counter[str]]:
    """Sockets per namespace key, counted by the state name ss prints."""
    counts: dict[int, Counter[str]] = {}
    for record in snapshot.sockets:
        counts.setdefault(record.netns, Counter())[record.state.label] += 1
    return counts


def refreshed(selection: str) -> tuple[Engine, Snapshot]:
    engine = Engine(netns=Selection.parse(selection))
    return engine, engine.refresh()


def test_each_namespace_counts_what_ss_inside_it_lists() -> None:
    with named_netns() as a, named_netns() as b, named_netns() as c, \
            farm_in_netns(a, established=40), farm_in_netns(b, established=5, close_wait=12), \
            farm_in_netns(c, close_wait=3):
        engine, snapshot = refreshed(f"{a},{b},{c}")
        try:
            counts = per_namespace(snapshot)
            for name in (a, b, c):
                assert dict(counts[netns_inode(name)]) == ss_counts(name), name
            assert 0 not in counts  # socktop's own namespace was not asked for
            assert {info.label for info in snapshot.namespaces} == {a, b, c}
            assert snapshot.source.netns == f"{a},{b},{c} (3)"
        finally:
            engine.close()


def test_a_close_wait_leak_in_a_namespace_is_found_and_named() -> None:
    with named_netns() as name, farm_in_netns(name, established=10, close_wait=120) as farm:
        engine, snapshot = refreshed(name)
        try:
            leaks = [f for f in analyze(snapshot).findings if f.kind == "close-wait-leak"]
            [leak] = leaks
            inode = netns_inode(name)
            assert leak.id == f"close-wait-leak:pid:{farm.pid}@netns:{inode}"
            assert leak.title.startswith(f"netns {name} ({inode}): ") and "120 CLOSE_WAIT" in leak.title
            assert leak.ss.line.startswith(f"ip netns exec {name} ss -tanp state close-wait")
            listed = subprocess.run(leak.ss.line, shell=True, capture_output=True, text=True, timeout=60).stdout
            assert len(listed.splitlines()) == 120  # grep keeps the lines naming the pid: the 120 leaked
        finally:
            engine.close()


def test_findings_use_each_namespace_own_settings() -> None:
    """A narrow ip_local_port_range inside one namespace: only that namespace's TIME_WAIT toward one
    destination counts against it (port spaces are per namespace)."""
    with named_netns() as narrow, named_netns() as wide:
        subprocess.run(["ip", "netns", "exec", narrow, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40199"],
                       check=True, timeout=60)
        engine, snapshot = refreshed(f"{narrow},{wide}")
        try:
            infos = {info.label: info for info in snapshot.namespaces}
            assert infos[narrow].kernel is not None and infos[narrow].kernel.port_range() == (40000, 40199)
            assert infos[wide].kernel is not None and infos[wide].kernel.port_range() != (40000, 40199)
        finally:
            engine.close()


def test_a_pod_namespace_is_grouped_under_its_pod() -> None:
    writable_cgroup2()
    pod = (f"{unique_name('socktop-test')}.slice/kubepods-burstable.slice/"
           f"kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-{CTR_ID}.scope")
    with cgroup_v2_dir(pod) as directory, farm_in_new_netns(established=25, close_wait=4, cgroup=directory) as farm:
        engine, snapshot = refreshed(str(farm.pid))
        try:
            [place] = snapshot.places.values()
            assert place.kind == "pod" and place.container is not None and place.container.pod_uid == POD_UID
            assert place.label == place.namespace.label and place.label.startswith("pod ")
            assert {state.label: count for state, count in place.counts.items()} == ss_counts_of_pid(farm.pid)
            sockets = [r for r in snapshot.sockets if r.state is TcpState.ESTABLISHED]
            assert sockets and all(r.cgroup_id == os.stat(directory).st_ino for r in sockets)
            only = snapshot.filtered(place=f"pod:{POD_UID}")
            assert only.aggregates.total == place.total
            assert snapshot.filtered(place="no-such-pod").aggregates.total == 0
        finally:
            engine.close()


def test_a_host_network_container_is_grouped_by_its_sockets_cgroup() -> None:
    """In socktop's own namespace a socket belongs to the container its cgroup id names (a host-network
    container), the rest to the namespace itself."""
    writable_cgroup2()
    scope = f"{unique_name('socktop-test')}.slice/docker-{CTR_ID}.scope"
    with cgroup_v2_dir(scope) as directory:
        child = subprocess.Popen([sys.executable, "-c", _HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert child.stdin is not None and child.stdout is not None
            move_to_cgroup(child.pid, directory)
            child.stdin.write("go\n")
            child.stdin.flush()
            ports = child.stdout.readline().split()
            engine, snapshot = refreshed("self")
            try:
                place = snapshot.places[f"docker:{CTR_ID}"]
                assert place.kind == "container" and place.namespace.own
                assert place.counts == {TcpState.LISTEN: 1, TcpState.ESTABLISHED: 2}
                assert any(key == f"in:{ports[0]}" for key, _ in place.ports)
                assert [key for key, _ in place.processes] == [f"pid:{child.pid}"]
            finally:
                engine.close()
        finally:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout=10)


_HOLD = """
import socket, sys
sys.stdin.readline()  # moved into its cgroup first: a socket takes the cgroup of the process that makes it
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(8)
client = socket.create_connection(listener.getsockname()); server, _ = listener.accept()
print(listener.getsockname()[1], flush=True)
sys.stdin.read()
"""


def test_json_says_which_namespaces_and_where_each_socket_lives() -> None:
    with named_netns() as name, farm_in_netns(name, established=3):
        result = subprocess.run([sys.executable, "-m", "socktop", "--json", "--sockets", "--netns", name],
                                capture_output=True, text=True, timeout=60, check=True)
        document = json.loads(result.stdout)
        inode = netns_inode(name)
        assert document["netns"] == f"{name} (1)"
        assert [ns["label"] for ns in document["namespaces"]] == [name]
        assert {s["netns"] for s in document["sockets"]} == {inode}
        assert {s["container"] for s in document["sockets"]} == {f"netns:{inode}"}
        assert [c["key"] for c in document["containers"]] == [f"netns:{inode}"]
        assert document["containers"][0]["total"] == len(document["sockets"]) == 7


def test_a_bad_netns_is_one_line_and_status_2() -> None:
    result = subprocess.run([sys.executable, "-m", "socktop", "--json", "--netns", "a/b"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--netns" in result.stderr
    gone = subprocess.run([sys.executable, "-m", "socktop", "--json", "--netns", "no-such-ns-socktop"],
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1 and "no network namespace" in gone.stderr


def test_without_root_only_its_own_namespace_and_it_says_so() -> None:
    runner = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run(["setpriv", "--version"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("setpriv (util-linux) is not installed")
    with named_netns() as name, farm_in_netns(name, established=3):
        result = subprocess.run([*runner, sys.executable, "-m", "socktop", "--json", "--sockets"],
                                capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/nonexistent"})
        document = json.loads(result.stdout)
        assert document["netns"] == "self (not root: other namespaces cannot be entered)"
        assert netns_inode(name) not in {s["netns"] for s in document["sockets"]}


_SERVER_CLOSES_FIRST = """
import socket, sys, time
listener = socket.create_server(("127.0.0.1", 18080))
client = socket.create_connection(("127.0.0.1", 18080))
server, _ = listener.accept()
server.close()  # the server side closes first: its TIME_WAIT (inode 0) stays on port 18080
time.sleep(0.2)
client.close()
print("ready", flush=True)
sys.stdin.read()
"""


def test_an_unheld_socket_is_tied_to_the_listener_of_its_own_namespace() -> None:
    """Every replica listens on the same port: a server-side TIME_WAIT is inferred to the listener
    in its own namespace, never to another namespace's."""
    with named_netns() as a, named_netns() as b:
        children = [subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", _SERVER_CLOSES_FIRST],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for name in (a, b)]
        try:
            for child in children:
                assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            engine, snapshot = refreshed(f"{a},{b}")
            try:
                for name, child in zip((a, b), children):
                    [time_wait] = [r for r in snapshot.sockets if r.netns == netns_inode(name)
                                   and r.state is TcpState.TIME_WAIT and r.local_port == 18080]
                    assert [p.pid for p in snapshot.owners_of(time_wait).processes] == [child.pid]
                    part = snapshot.filtered(state=TcpState.TIME_WAIT, place=f"netns:{netns_inode(name)}")
                    assert list(part.aggregates.by_process) == [f"pid:{child.pid}"]
            finally:
                engine.close()
        finally:
            for child in children:
                stop(child, 10)


def test_connections_closed_inside_a_namespace_are_counted() -> None:
    """The destroy feed is per namespace: one is opened inside each namespace read."""
    with named_netns() as name:
        engine, _snapshot = refreshed(name)
        try:
            subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c",
                            "import socket\n"
                            "l = socket.create_server(('127.0.0.1', 0))\n"
                            "for _ in range(5):\n"
                            "    c = socket.create_connection(l.getsockname()); s = l.accept()[0]\n"
                            "    c.close(); s.close()\n"], check=True, timeout=60)
            closes, deadline = 0, time.monotonic() + 60
            while closes < 5 and time.monotonic() < deadline:  # the kernel broadcasts from a workqueue
                snapshot = engine.refresh()
                assert snapshot.churn is not None
                # every close counted is that namespace's: none of socktop's own (the host's may churn)
                assert snapshot.places[f"netns:{netns_inode(name)}"].closes == snapshot.churn.closes
                closes += snapshot.churn.closes
                time.sleep(0.1)
            assert closes >= 5
        finally:
            engine.close()


def test_as_root_every_namespace_is_read_by_default() -> None:
    with named_netns() as name, farm_in_netns(name, established=2):
        environ = {key: value for key, value in os.environ.items() if key != "SOCKTOP_NETNS"}
        result = subprocess.run([sys.executable, "-m", "socktop", "--json"], capture_output=True, text=True,
                                timeout=60, env=environ, check=True)
        document = json.loads(result.stdout)
        assert document["netns"].startswith("all (")
        assert netns_inode(name) in {ns["inode"] for ns in document["namespaces"]}
        bad = subprocess.run([sys.executable, "-m", "socktop", "--json"], capture_output=True, text=True,
                             timeout=60, env={**environ, "SOCKTOP_NETNS": "a/b"})
        assert bad.returncode == 2 and bad.stderr.startswith("socktop: error: SOCKTOP_NETNS: invalid --netns")
