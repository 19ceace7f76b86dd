"""Network namespaces: found, entered from a helper thread only, one socket each, closed when gone.

The real-namespace tests create namespaces with `ip netns add` and
`unshare -n` (root only) and remove them whatever happens.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import threading

import pytest

from socktop.collect.kernelstate import KernelState, read_kernel_state
from socktop.collect.netns import (
    Namespace, NamespaceKernel, NamespaceSockets, Selection, activity, in_namespace, list_namespaces,
    netns_inode_of_link, own_inode, sock_diag_socket,
)
from namespaces import named_netns, needs_root, netns_inode, process_in_new_netns

SIOCGSKNS = 0x894C  # ioctl: a descriptor of the namespace a socket lives in


def socket_namespace(sock: socket.socket) -> int:
    """The inode of the namespace ``sock`` lives in, asked of the kernel."""
    fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS, 0)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def thread_namespace() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_link_targets() -> None:
    assert netns_inode_of_link("net:[4026531840]") == 4026531840
    assert netns_inode_of_link("net:[]") is None
    assert netns_inode_of_link("mnt:[4026531840]") is None
    assert netns_inode_of_link("net:[12x]") is None


def test_labels_prefer_the_bound_name_then_the_container() -> None:
    assert Namespace(4026532316, pids=(412, 900), names=("blue",)).label("pod web") == "blue"
    assert Namespace(4026532316, pids=(412, 900)).label("pod web") == "pod web"
    assert Namespace(4026532316, pids=(412, 900)).label() == "netns:4026532316 (pid 412)"
    assert Namespace(4026532316).label() == "netns:4026532316"


@pytest.mark.parametrize(("text", "expected"), [
    ("all", Selection("all")), ("self", Selection("self")), ("4312", Selection("some", pids=(4312,))),
    ("blue", Selection("some", names=("blue",))), (" cni-1b2c ", Selection("some", names=("cni-1b2c",))),
    ("blue,4312, green", Selection("some", names=("blue", "green"), pids=(4312,))),
])
def test_selection_parse(text: str, expected: Selection) -> None:
    assert Selection.parse(text) == expected


@pytest.mark.parametrize("text", ["", "0", "../etc", "a/b", "..", "blue,,green", "all,blue"])
def test_selection_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="--netns"):
        Selection.parse(text)


def test_selection_picks_and_says_what_is_missing() -> None:
    found = {1: Namespace(1, pids=(1, 2), own=True), 7: Namespace(7, pids=(40,), names=("blue",)),
             8: Namespace(8, pids=(41,))}
    assert Selection.parse("all").pick(found) == found
    assert list(Selection.parse("self").pick(found)) == [1]
    assert list(Selection.parse("blue").pick(found)) == [7]
    assert list(Selection.parse("40").pick(found)) == [7]
    assert sorted(Selection.parse("blue,41").pick(found)) == [7, 8]
    with pytest.raises(LookupError, match="no network namespace green, pid 99 "):
        Selection.parse("blue,green,99").pick(found)
    assert Selection.parse("blue,41").describe() == "blue,pid 41"
    assert Selection.default(is_root=True).mode == "all"
    assert Selection.default(is_root=False).mode == "self"


def test_own_namespace_is_listed_and_marked() -> None:
    found = list_namespaces()
    assert found[own_inode()].own
    assert os.getpid() in found[own_inode()].pids
    assert sum(ns.own for ns in found.values()) == 1


@needs_root
def test_named_and_unnamed_namespaces_are_found_once() -> None:
    with named_netns() as name, process_in_new_netns() as child:
        found = list_namespaces()
        named = found[netns_inode(name)]
        assert named.names == (name,) and not named.own
        unnamed = found[os.stat(f"/proc/{child.pid}/ns/net").st_ino]
        assert child.pid in unnamed.pids and not unnamed.names
        inodes = [ns.inode for ns in found.values()]
        assert len(inodes) == len(set(inodes))


@needs_root
def test_only_a_helper_thread_enters_and_its_sockets_stay_inside() -> None:
    before = thread_namespace()
    with named_netns() as name:
        target = list_namespaces()[netns_inode(name)]
        seen = in_namespace(target, thread_namespace)
        sock = in_namespace(target, sock_diag_socket)
        try:
            assert seen == target.inode
            assert thread_namespace() == before  # this thread never moved
            assert socket_namespace(sock) == target.inode  # the socket stays there, whoever uses it
        finally:
            sock.close()
    assert [t.name for t in threading.enumerate() if t.name.startswith("socktop-netns")] == []


@needs_root
def test_errors_inside_are_raised_here() -> None:
    with named_netns() as name:
        target = list_namespaces()[netns_inode(name)]
        with pytest.raises(FileNotFoundError):
            in_namespace(target, lambda: open("/nonexistent/socktop"))


def test_a_gone_namespace_cannot_be_entered() -> None:
    with pytest.raises(OSError):
        in_namespace(Namespace(1, pids=(2 ** 22 + 7,)), sock_diag_socket)


@needs_root
def test_one_socket_per_namespace_reused_then_closed_when_it_goes() -> None:
    registry = NamespaceSockets()
    try:
        with named_netns() as name:
            inode = netns_inode(name)
            first = dict(registry.sync(list_namespaces()))
            assert socket_namespace(first[inode]) == inode
            assert socket_namespace(first[own_inode()]) == own_inode()
            again = registry.sync(list_namespaces())
            assert again[inode] is first[inode]  # opened once, reused
        gone = first[inode]
        registry.sync(list_namespaces())
        assert inode not in registry.sockets and gone.fileno() == -1
    finally:
        registry.close()


@needs_root
def test_a_namespace_that_cannot_be_entered_is_noted_not_fatal() -> None:
    registry = NamespaceSockets()
    try:
        ghost = Namespace(999, pids=(2 ** 22 + 7,))
        opened = registry.sync({own_inode(): Namespace(own_inode(), own=True), 999: ghost})
        assert list(opened) == [own_inode()] and 999 in registry.failures
        assert registry.sync({own_inode(): Namespace(own_inode(), own=True)}) and 999 not in registry.failures
    finally:
        registry.close()


@needs_root
def test_each_namespace_has_its_own_settings_and_host_wide_ones_come_from_the_host() -> None:
    host = read_kernel_state()
    with named_netns() as name:
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40100"],
                       check=True, timeout=60)
        target = list_namespaces()[netns_inode(name)]
        state = NamespaceKernel().read(target, host)
        assert state.port_range() == (40000, 40100)
        assert host.port_range() != (40000, 40100)
        if host.sysctls.get("net.ipv4.tcp_max_orphans") is not None:  # global: no such file inside (net/ipv4/sysctl_net_ipv4.c ipv4_table)
            assert "net.ipv4.tcp_max_orphans" in state.host_wide
            assert state.sysctls["net.ipv4.tcp_max_orphans"] == host.sysctls["net.ipv4.tcp_max_orphans"]
        assert "net.ipv4.ip_local_port_range" not in state.host_wide
        assert state.sockstat.get("inuse") == 0  # nothing open in there


@needs_root
def test_counters_come_through_a_process_inside_when_there_is_one() -> None:
    with process_in_new_netns() as child:
        target = list_namespaces()[os.stat(f"/proc/{child.pid}/ns/net").st_ino]
        reader = NamespaceKernel()
        first = reader.read(target, KernelState())
        second = reader.read(target, KernelState())  # settings cached, counters through /proc/PID/net
        assert first.sysctls == second.sysctls and second.sockstat.get("inuse") == 0
        assert "TcpActiveOpens" in second.counters


def test_own_namespace_label() -> None:
    assert Namespace(4026531840, pids=(1, 2), own=True).label() == "host"
    assert Namespace(4026532316, pids=(30,), own=True).label() == "socktop's netns"
    assert Namespace(4026532316, pids=(30,), names=("blue",), own=True).label() == "blue"


@needs_root
def test_activity_moves_only_when_the_namespace_tcp_does() -> None:
    with named_netns() as name:
        target = list_namespaces()[netns_inode(name)]
        reader = NamespaceKernel()
        quiet = activity(reader.read(target, KernelState()))
        assert quiet is not None and activity(reader.read(target, KernelState())) == quiet
        subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c",
                        "import socket; l = socket.create_server(('127.0.0.1', 0)); "
                        "c = socket.create_connection(l.getsockname()); l.accept()[0].close(); c.close()"], check=True,
                       timeout=60)
        assert activity(reader.read(target, KernelState())) != quiet
    assert activity(None) is None and activity(KernelState()) is None


@needs_root
def test_a_discarded_socket_is_opened_anew() -> None:
    registry = NamespaceSockets()
    try:
        with named_netns() as name:
            inode = netns_inode(name)
            first = registry.sync(list_namespaces())[inode]
            registry.discard(inode)
            assert first.fileno() == -1
            again = registry.sync(list_namespaces())[inode]
            assert again is not first and socket_namespace(again) == inode
    finally:
        registry.close()
