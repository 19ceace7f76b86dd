"""Findings per network namespace: each judged by its own settings, named by its container, commands inside it.

Every network namespace has its own port space, TIME_WAIT table and most
TCP settings (a pod may run with its own ``ip_local_port_range``), so a
snapshot of several namespaces is analysed one namespace at a time:
`split` gives each its sockets, settings and counter history, and
`localize` names the container or pod in a finding's title ("pod
shop/checkout-7f9c (netns 4026532316): java (pid 4312) holds 5000
CLOSE_WAIT sockets") and makes its commands run inside that namespace.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..collect.columns import distinct
from ..collect.nswatch import NamespaceInfo
from ..model.snapshot import Snapshot
from .commands import Command
from .nscommands import NAMESPACED_PROGRAMS, docker_sysctl, inside, pod_sysctls
from .sysctl import Suggestion, recent

if TYPE_CHECKING:
    from .findings import Finding


def split(snapshot: Snapshot, window_seconds: float) -> list[tuple[Snapshot, NamespaceInfo | None]]:
    """The snapshot per namespace that holds sockets; itself alone (with None) when only socktop's own does.

    The namespaces other than socktop's own get the history of the last
    ``window_seconds`` (what the findings read) with their own counters
    (`HistoryPoint.netns_counters`).
    """
    others = [info for info in snapshot.namespaces if not info.own and info.kernel is not None]
    netns = snapshot.columns.netns
    present = set(distinct(netns).tolist()) if len(netns) else set()
    if not any(info.key in present for info in others):
        return [(snapshot, None)]
    parts: list[tuple[Snapshot, NamespaceInfo | None]] = []
    for info in snapshot.namespaces:
        if info.key not in present:
            continue
        part = snapshot.in_namespace(info.key)
        if not info.own:
            history = tuple(replace(point, counters=point.netns_counters.get(info.key, {}))
                            for point in recent(snapshot.history, window_seconds))
            part = replace(part, kernel=info.kernel, history=history)
        parts.append((part, None if info.own else info))
    return parts


def where(info: NamespaceInfo) -> str:
    """``pod shop/checkout-7f9c (netns 4026532316)``, ``netns blue (4026532400)`` or ``netns:4026532316 (pid 4312)``."""
    if info.container is not None:
        return f"{info.container.title} (netns {info.inode})"
    if info.namespace.names:
        return f"netns {info.namespace.names[0]} ({info.inode})"
    return info.label


def localize(finding: Finding, info: NamespaceInfo) -> Finding:
    """``finding`` about a namespace other than socktop's own: named after it, its commands run inside it."""
    place = where(info)
    return replace(
        finding,
        id=f"{finding.id}@netns:{info.inode}",
        title=f"{place}: {finding.title}",
        evidence=(*finding.evidence, f"in {place}: counted and judged with that namespace's own settings"),
        ss=_inside(finding.ss, info, place),
        actions=tuple(_inside(action, info, place) for action in finding.actions),
        suggestions=tuple(localize_suggestion(suggestion, info) for suggestion in finding.suggestions),
    )


def localize_suggestion(suggestion: Suggestion, info: NamespaceInfo) -> Suggestion:
    """A setting change for that namespace: applied inside it now, kept by the container's definition.

    A host-wide setting (absent inside a namespace) stays a host command, and says so.
    """
    if info.kernel is not None and suggestion.key in info.kernel.host_wide:
        return replace(suggestion, why=f"{suggestion.why} (host-wide: this changes it for every namespace)")
    container = info.container
    if container is not None and container.kind == "pod":
        persistent = pod_sysctls(suggestion.key, suggestion.suggested)
    elif container is not None and container.runtime == "docker":
        persistent = docker_sysctl(suggestion.key, suggestion.suggested)
    else:
        persistent = Command(suggestion.runtime.line, "this namespace's settings go with it: set it again where "
                                                      "the namespace is made (the container's definition)")
    return replace(suggestion, runtime=_inside(suggestion.runtime, info, where(info)), persistent=persistent)


def _inside(command: Command, info: NamespaceInfo, place: str) -> Command:
    """``command`` run inside the namespace when it asks the kernel about one (ss, nstat, sysctl, lsof)."""
    if command.line.split(" ", 1)[0] not in NAMESPACED_PROGRAMS:
        return command
    try:
        return inside(command, info.namespace, place)
    except ValueError:  # nothing left to enter it by: the command as it is, saying where it belongs
        return replace(command, note=f"{command.note} — run it inside {place}")

