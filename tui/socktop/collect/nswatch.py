"""At each refresh: the namespaces to read, a socket in each, and what names them.

The engine's poller thread calls `NamespaceWatch.refresh` and dumps each
namespace through the socket it gets; nothing here changes that thread's
namespace (see `netns`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from .containers import Container, ContainerResolver
from .kernelstate import KernelState
from .netns import Namespace, NamespaceKernel, NamespaceSockets, Selection, list_namespaces


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """One network namespace as a snapshot shows it.

    ``label`` is what a user calls it (`Namespace.label`); ``kernel`` its
    own settings and counters (None when they could not be read);
    ``note`` why its sockets are missing, "" when they were read.
    """

    namespace: Namespace
    label: str
    container: Container | None = None
    kernel: KernelState | None = None
    note: str = ""

    @property
    def inode(self) -> int:
        return self.namespace.inode

    @property
    def own(self) -> bool:
        return self.namespace.own

    @property
    def key(self) -> int:
        """The value of `SocketRecord.netns` for its sockets: 0 for socktop's own namespace."""
        return 0 if self.namespace.own else self.namespace.inode


class NamespaceWatch:
    """The namespaces ``selection`` picks, each with a sock_diag socket opened once inside it."""

    def __init__(self, selection: Selection, resolver: ContainerResolver | None = None) -> None:
        self.selection = selection
        self.resolver = resolver if resolver is not None else ContainerResolver()
        self.sockets: NamespaceSockets[socket.socket] = NamespaceSockets()
        self.kernel = NamespaceKernel()

    def refresh(self, host: KernelState) -> list[tuple[NamespaceInfo, socket.socket | None]]:
        """Every picked namespace (socktop's own first, then by label) and its socket, None where it
        could not be entered (the note says why). Raises LookupError when a named or pid selection
        matches nothing now."""
        picked = self.selection.pick(list_namespaces())
        opened = self.sockets.sync(picked)
        self.resolver.forget(picked)
        self.kernel.forget(picked)
        found: list[tuple[NamespaceInfo, socket.socket | None]] = []
        for inode, namespace in picked.items():
            container = self.resolver.for_namespace(namespace)
            label = namespace.label(container.title if container else None)
            sock = opened.get(inode)
            note = "" if sock is not None else f"could not enter it: {self.sockets.failures.get(inode, 'unknown')}"
            try:
                kernel = self.kernel.read(namespace, host) if sock is not None else None
            except OSError as exc:
                kernel, note = None, f"its settings could not be read: {exc.strerror or exc}"
            found.append((NamespaceInfo(namespace, label, container, kernel, note), sock))
        found.sort(key=lambda pair: (not pair[0].own, pair[0].label))
        return found

    def close(self) -> None:
        self.sockets.close()
