"""The engine's view of namespaces at each refresh: picked, entered once, named, with their own settings."""

from __future__ import annotations

import subprocess

import pytest

from socktop.collect.kernelstate import read_kernel_state
from socktop.collect.netns import Selection, own_inode
from socktop.collect.nswatch import NamespaceWatch
from namespaces import named_netns, needs_root, netns_inode


def test_self_is_only_our_own() -> None:
    watch = NamespaceWatch(Selection.parse("self"))
    try:
        [(info, sock)] = watch.refresh(read_kernel_state())
        assert info.own and info.key == 0 and info.inode == own_inode() and sock is not None and info.note == ""
    finally:
        watch.close()


@needs_root
def test_all_reads_each_namespace_with_its_settings() -> None:
    watch = NamespaceWatch(Selection.parse("all"))
    try:
        with named_netns() as name:
            subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40100"],
                           check=True, timeout=60)
            found = watch.refresh(read_kernel_state())
            assert found[0][0].own
            [(info, sock)] = [pair for pair in found if pair[0].inode == netns_inode(name)]
            assert info.label == name and info.key == info.inode and sock is not None
            assert info.kernel is not None and info.kernel.port_range() == (40000, 40100)
            again = dict((pair[0].inode, pair[1]) for pair in watch.refresh(read_kernel_state()))
            assert again[info.inode] is sock
        assert info.inode not in {pair[0].inode for pair in watch.refresh(read_kernel_state())}
        assert sock.fileno() == -1
    finally:
        watch.close()


@needs_root
def test_a_named_selection_that_goes_away_says_so() -> None:
    watch = NamespaceWatch(Selection.parse("no-such-namespace-socktop"))
    with pytest.raises(LookupError, match="no-such-namespace-socktop"):
        watch.refresh(read_kernel_state())
