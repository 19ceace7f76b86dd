"""Commands for another namespace: entered by name, bound file or pid; quoted; settings kept by the pod spec."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from socktop.analyze.commands import Command, ss_sockets, sysctl_runtime
from socktop.analyze.nscommands import docker_sysctl, enter_words, inside, pod_sysctls
from socktop.collect.netns import Namespace, list_namespaces
from socktop.collect.records import TcpState
from namespaces import named_netns, needs_root, netns_inode, process_in_new_netns

POD = Namespace(4026532316, pids=(4312, 4400))
NAMED = Namespace(4026532400, pids=(77,), names=("blue",), paths=("/var/run/netns/blue",))
DOCKER = Namespace(4026532500, names=("1a2b3c4d5e6f",), paths=("/var/run/docker/netns/1a2b3c4d5e6f",))


def test_entered_by_name_then_bound_file_then_pid() -> None:
    assert enter_words(NAMED) == ["ip", "netns", "exec", "blue"]
    assert enter_words(DOCKER) == ["nsenter", "--net=/var/run/docker/netns/1a2b3c4d5e6f"]
    assert enter_words(POD) == ["nsenter", "-t", "4312", "-n"]
    with pytest.raises(ValueError, match="no name or process"):
        enter_words(Namespace(9))


def test_hostile_names_stay_one_word() -> None:
    evil = Namespace(5, names=("x; rm -rf ~",), paths=("/var/run/netns/x; rm -rf ~",))
    line = inside(ss_sockets(TcpState.CLOSE_WAIT), evil).line
    assert shlex.split(line)[:4] == ["ip", "netns", "exec", "x; rm -rf ~"]


def test_only_the_first_program_runs_inside() -> None:
    wrapped = inside(ss_sockets(TcpState.CLOSE_WAIT, pid=4400), POD, "pod shop/checkout-7f9c")
    assert wrapped.line.startswith("nsenter -t 4312 -n ss -tanp state close-wait | grep -F ")
    assert "inside pod shop/checkout-7f9c" in wrapped.note and "root" in wrapped.note
    assert inside(sysctl_runtime("net.ipv4.tcp_fin_timeout", "30"), NAMED).line == (
        "ip netns exec blue sysctl -w net.ipv4.tcp_fin_timeout=30")


def test_own_namespace_is_left_alone_and_other_programs_refused() -> None:
    command = ss_sockets(TcpState.TIME_WAIT)
    assert inside(command, None) is command
    assert inside(command, Namespace(1, own=True)) is command
    with pytest.raises(ValueError):
        inside(Command("echo x | sudo tee -a /etc/sysctl.d/x.conf", ""), POD)


def test_settings_kept_by_the_container_definition() -> None:
    safe = pod_sysctls("net.ipv4.ip_local_port_range", "10240 65535")
    assert safe.line == 'securityContext: {sysctls: [{name: net.ipv4.ip_local_port_range, value: "10240 65535"}]}'
    assert "allowed-unsafe-sysctls" not in safe.note
    assert "--allowed-unsafe-sysctls=net.ipv4.tcp_fin_timeout" in pod_sysctls("net.ipv4.tcp_fin_timeout", "30").note
    assert pod_sysctls("k", 'a"b\x1b').line.endswith('value: "a\\"b\\x1b"}]}')
    assert docker_sysctl("net.ipv4.ip_local_port_range", "10240 65535").line == (
        "--sysctl 'net.ipv4.ip_local_port_range=10240 65535'")


@needs_root
def test_the_wrapped_command_runs_in_that_namespace() -> None:
    with named_netns() as name:
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.tcp_fin_timeout=17"], check=True,
                       timeout=60)
        target = list_namespaces()[netns_inode(name)]
        by_pidless_name = inside(Command("sysctl -n net.ipv4.tcp_fin_timeout", ""), target).line
        pidless = subprocess.run(by_pidless_name, shell=True, capture_output=True, text=True, timeout=60)
        assert pidless.stdout.strip() == "17"
    with process_in_new_netns() as child:
        target = list_namespaces()[os.stat(f"/proc/{child.pid}/ns/net").st_ino]
        line = inside(Command("sysctl -n net.ipv4.tcp_fin_timeout", ""), target).line
        assert line.startswith("nsenter -t ")
        subprocess.run(["nsenter", "-t", str(child.pid), "-n", "sysctl", "-qw", "net.ipv4.tcp_fin_timeout=23"],
                       check=True, timeout=60)
        assert subprocess.run(line, shell=True, capture_output=True, text=True, timeout=60).stdout.strip() == "23"
