"""Commands for sockets and settings in another network namespace (a container's, a pod's).

`ss`, `nstat` and `sysctl -w` act on the namespace of the process that
runs them, so a command about a container's sockets must run inside
the container's namespace: ``ip netns exec NAME`` for a namespace bound
in /var/run/netns, ``nsenter --net=FILE`` for one bound elsewhere
(Docker's /var/run/docker/netns), else ``nsenter -t PID -n`` through a
process in it. A setting written that way lasts until the namespace
goes (a container restart makes a new one); to keep it, it belongs in
the container's definition: a pod's ``securityContext.sysctls``, or
``docker run --sysctl``. Pure functions; every value is quoted.
"""

from __future__ import annotations

import shlex

from ..collect.netns import NAMED_DIRS, Namespace
from .commands import Command

#: The program a wrapped command may start with: those whose answer depends on the namespace they run in.
NAMESPACED_PROGRAMS = frozenset({"ss", "nstat", "sysctl", "lsof"})

#: Settings every Kubernetes release's kubelet accepts in a pod's securityContext.sysctls (its "safe" set,
#: pkg/kubelet/sysctl/safe_sysctls.go); newer releases add more, others need --allowed-unsafe-sysctls.
KUBERNETES_SAFE_SYSCTLS = frozenset({"net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies"})


def enter_words(namespace: Namespace) -> list[str]:
    """The words that run a command inside ``namespace``; ValueError when nothing can enter it."""
    ip_netns_dir = NAMED_DIRS[0]
    for name, path in zip(namespace.names, namespace.paths):
        if path == f"{ip_netns_dir}/{name}":
            return ["ip", "netns", "exec", name]
    if namespace.paths:
        return ["nsenter", f"--net={namespace.paths[0]}"]
    if namespace.pid is not None:
        return ["nsenter", "-t", str(int(namespace.pid)), "-n"]
    raise ValueError(f"netns {namespace.inode}: no name or process to enter it by")


def inside(command: Command, namespace: Namespace | None, label: str = "") -> Command:
    """``command`` run inside ``namespace`` (unchanged for socktop's own, or None).

    Only the first program of the line is wrapped, and only one of
    NAMESPACED_PROGRAMS: what follows a pipe (``grep``) reads text and
    may run anywhere. ``label`` names the namespace in the note.
    """
    if namespace is None or namespace.own:
        return command
    program = command.line.split(" ", 1)[0]
    if program not in NAMESPACED_PROGRAMS:
        raise ValueError(f"{program!r} is not a command to run inside a network namespace")
    words = enter_words(namespace)
    where = label or namespace.label()
    how = "pid in it" if words[0] == "nsenter" and words[1] == "-t" else "its name"
    return Command(f"{shlex.join(words)} {command.line}",
                   f"{command.note} — inside {where} (entered by {how}; needs root)")


def pod_sysctls(key: str, value: str) -> Command:
    """The pod spec lines that set ``key`` in the pod's own namespace at every start."""
    line = f"securityContext: {{sysctls: [{{name: {key}, value: {_yaml_string(value)}}}]}}"
    if key in KUBERNETES_SAFE_SYSCTLS:
        note = "in the pod spec (spec.securityContext, not a container's): applied each time the pod starts"
    else:
        note = ("in the pod spec (spec.securityContext): not in the kubelet's safe set on every release, so the "
                f"node's kubelet may need --allowed-unsafe-sysctls={key} or the pod will not start")
    return Command(line, note)


def docker_sysctl(key: str, value: str) -> Command:
    """The ``docker run`` option that gives the container's namespace ``key`` at every start."""
    return Command(f"--sysctl {shlex.quote(f'{key}={value}')}",
                   "add to the container's docker run options (compose: sysctls:); Docker accepts namespaced "
                   "settings only")


def _yaml_string(value: str) -> str:
    """A YAML double-quoted scalar: sysctl values are numbers and spaces, but never trust them."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in escaped) + '"'
