"""Network namespaces: which exist, how to enter one, and one netlink socket per namespace.

A sock_diag dump lists the sockets of the netlink socket's own namespace
only (``sock_net(skb->sk)``), so seeing a container's sockets takes a
netlink socket created inside its namespace. A socket stays in the
namespace it was created in, whichever thread uses it later; so each is
created once, by a short-lived thread that entered the namespace with
``setns(fd, CLONE_NEWNET)`` (which moves only the calling thread), and
reused at every refresh. The UI and poller threads never change namespace.

Namespaces are found by the inode behind ``/proc/PID/ns/net`` (every
process, deduplicated) and the named ones bound in ``/var/run/netns``
(``ip netns add``) and ``/var/run/docker/netns``. An open socket holds a
reference to its namespace, so the kernel cannot give its inode number to
a new one while socktop holds it; a namespace that no process or name
reaches any more is closed here, which lets the kernel free it.

Things only readable from inside a namespace (its ``/proc/sys/net``
settings: the kernel picks them by the reading thread's namespace, not by
the /proc mount, so ``/proc/PID/root/proc/sys`` shows socktop's own) are
read by `in_namespace` the same way.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from .kernelstate import COUNTER_KEYS, KernelState, read_counters, read_sysctls

PROC = "/proc"
CLONE_NEWNET = 0x40000000
NAMED_DIRS = ("/var/run/netns", "/var/run/docker/netns")
NETNS_VARIABLE = "SOCKTOP_NETNS"  # the default of --netns, when set
NETLINK_SOCK_DIAG = 4
ENTER_TIMEOUT = 5.0  # seconds a helper thread may take: it only opens a socket or reads small files
RETRY_FAILED_AFTER = 10.0  # a namespace that could not be entered is retried this much later
SETTINGS_EVERY = 5.0  # seconds between reads of a namespace's sysctls (a thread each time)
#: Counters that move whenever a namespace's TCP sockets can have changed: a segment in or out, a
#: connection opened, failed or reset (with sockstat's inuse and tw: a socket made, freed or timed out).
ACTIVITY_KEYS = ("TcpInSegs", "TcpOutSegs", "TcpActiveOpens", "TcpPassiveOpens", "TcpAttemptFails",
                 "TcpEstabResets")
_READ_KEYS = COUNTER_KEYS | frozenset(ACTIVITY_KEYS)
_LINK_PREFIX = "net:["

T = TypeVar("T")


class Closable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=Closable)


@dataclass(frozen=True, slots=True)
class Namespace:
    """One network namespace: its inode, the processes in it, and the names it is bound under.

    ``pids`` is sorted, so ``pid`` (the one to enter by and to name it by)
    is the same at every refresh while that process lives. ``own`` is
    socktop's own namespace, which needs no entering.
    """

    inode: int
    pids: tuple[int, ...] = ()
    names: tuple[str, ...] = ()  # "/var/run/netns" names first, then Docker's
    paths: tuple[str, ...] = ()  # the bound files behind ``names``
    own: bool = False

    @property
    def pid(self) -> int | None:
        return self.pids[0] if self.pids else None

    def label(self, container: str | None = None) -> str:
        """What a user calls it: its bound name, else its container or pod, else ``netns:INODE (pid N)``.

        Socktop's own is "host" when PID 1 is in it, else "socktop's netns" (socktop runs in a container).
        """
        if self.names:
            return self.names[0]
        if self.own:
            return "host" if 1 in self.pids else "socktop's netns"
        if container:
            return container
        return f"netns:{self.inode}" + (f" (pid {self.pid})" if self.pid is not None else "")

    def entry_paths(self) -> tuple[str, ...]:
        """Files that open this namespace: the bound names, then a few of its processes."""
        return self.paths + tuple(f"{PROC}/{pid}/ns/net" for pid in self.pids[:3])


def netns_inode_of_link(target: str) -> int | None:
    """The inode in a ``/proc/PID/ns/net`` link target (``net:[4026531840]``); None if it is not one."""
    if not (target.startswith(_LINK_PREFIX) and target.endswith("]")):
        return None
    digits = target[len(_LINK_PREFIX):-1]
    return int(digits) if digits.isdigit() else None


def own_inode(proc: str = PROC) -> int:
    """socktop's own namespace (the main thread's: no thread of ours stays elsewhere)."""
    return os.stat(f"{proc}/self/ns/net").st_ino


def list_namespaces(proc: str = PROC, named_dirs: Iterable[str] = NAMED_DIRS) -> dict[int, Namespace]:
    """Every network namespace this process can see, by inode.

    Without root only the namespaces of our own processes are visible
    (reading another user's ``ns/net`` link needs ptrace-read access).
    A process that exits during the walk is skipped.
    """
    pids_by_inode: dict[int, list[int]] = {}
    try:
        entries = os.listdir(proc)
    except OSError:
        entries = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            inode = netns_inode_of_link(os.readlink(f"{proc}/{entry}/ns/net"))
        except OSError:
            continue
        if inode is not None:
            pids_by_inode.setdefault(inode, []).append(int(entry))
    named: dict[int, list[tuple[str, str]]] = {}
    for directory in named_dirs:
        for name, path in _bound_files(directory):
            try:
                inode = os.stat(path).st_ino
            except OSError:
                continue
            named.setdefault(inode, []).append((name, path))
    mine = own_inode(proc)
    found: dict[int, Namespace] = {}
    for inode in pids_by_inode.keys() | named.keys() | {mine}:
        bound = named.get(inode, [])
        found[inode] = Namespace(
            inode=inode, pids=tuple(sorted(pids_by_inode.get(inode, ()))),
            names=tuple(name for name, _ in bound), paths=tuple(path for _, path in bound), own=inode == mine,
        )
    return found


def _bound_files(directory: str) -> list[tuple[str, str]]:
    """(name, path) of the files in a directory of bound namespaces, sorted by name; none if it is absent."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [(name, os.path.join(directory, name)) for name in names if not name.startswith(".")]


def _libc_setns() -> Callable[[int, int], None]:
    """``os.setns`` (Python 3.12+), else libc's ``setns(2)`` through ctypes."""
    if hasattr(os, "setns"):
        return os.setns
    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.setns
    call.argtypes = (ctypes.c_int, ctypes.c_int)
    call.restype = ctypes.c_int

    def setns(fd: int, nstype: int) -> None:
        if call(fd, nstype) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return setns


_setns = _libc_setns()


def open_namespace(namespace: Namespace) -> int:
    """A descriptor of ``namespace``, checked to be that namespace (a pid may have been reused).

    Raises OSError naming the last reason when no entry path works.
    """
    last: OSError = FileNotFoundError(f"netns {namespace.inode}: no process or name left to enter it by")
    for path in namespace.entry_paths():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            last = exc
            continue
        if os.fstat(fd).st_ino == namespace.inode:
            return fd
        os.close(fd)
        last = FileNotFoundError(f"{path} now names another namespace")
    raise last


def in_namespace(namespace: Namespace, action: Callable[[], T], timeout: float = ENTER_TIMEOUT) -> T:
    """``action()`` run by a new thread that entered ``namespace``; its result, or its exception.

    The thread ends with the call, so no thread of socktop stays in
    another namespace. Sockets ``action`` creates live in ``namespace``
    for good. Socktop's own namespace runs ``action`` here, directly.
    """
    if namespace.own:
        return action()
    fd = open_namespace(namespace)
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _setns(fd, CLONE_NEWNET)
            outcome.append(action())
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)
        finally:
            os.close(fd)  # here, not by the caller: after a timeout the caller must not close it under us

    helper = threading.Thread(target=run, name=f"socktop-netns-{namespace.inode}", daemon=True)
    try:
        helper.start()
    except BaseException:
        os.close(fd)
        raise
    helper.join(timeout)
    if failure:
        raise failure[0]
    if not outcome:
        raise TimeoutError(f"netns {namespace.inode}: no answer from inside it within {timeout:g} s")
    return outcome[0]


def sock_diag_socket() -> socket.socket:
    """A NETLINK_SOCK_DIAG socket in the calling thread's namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)


@dataclass(slots=True)
class NamespaceSockets(Generic[S]):
    """One socket per namespace, opened once inside it by ``opener``, closed when the namespace goes.

    The sock_diag dump uses the default opener; the destroy feeds pass
    their own (a `DestroyFeed` made inside: it joins the destroy groups of
    that namespace). A namespace that cannot be entered (not root, gone
    mid-way) is noted in ``failures`` with the reason and retried after
    RETRY_FAILED_AFTER.
    """

    opener: Callable[[], S] = sock_diag_socket  # type: ignore[assignment]
    clock: Callable[[], float] = time.monotonic
    sockets: dict[int, S] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    _failed_at: dict[int, float] = field(default_factory=dict)

    def sync(self, namespaces: Mapping[int, Namespace]) -> dict[int, S]:
        """Open sockets for namespaces new since the last call, close those of namespaces gone."""
        for inode in [inode for inode in self.sockets if inode not in namespaces]:
            self.sockets.pop(inode).close()
        for inode in [inode for inode in self._failed_at if inode not in namespaces]:
            del self._failed_at[inode]
            self.failures.pop(inode, None)
        now = self.clock()
        for inode, namespace in namespaces.items():
            if inode in self.sockets or now - self._failed_at.get(inode, float("-inf")) < RETRY_FAILED_AFTER:
                continue
            try:
                self.sockets[inode] = in_namespace(namespace, self.opener)
            except OSError as exc:
                self._failed_at[inode] = now
                self.failures[inode] = exc.strerror or str(exc)
            else:
                self._failed_at.pop(inode, None)
                self.failures.pop(inode, None)
        return self.sockets

    def discard(self, inode: int) -> None:
        """Close one namespace's socket (a dump through it failed and may have left messages
        behind); the next `sync` opens a fresh one."""
        sock = self.sockets.pop(inode, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


@dataclass(frozen=True, slots=True)
class Selection:
    """Which namespaces to watch: ``--netns all|self|NAME|PID``, or several names and pids with commas."""

    mode: str  # "all", "self" or "some"
    names: tuple[str, ...] = ()
    pids: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Selection:
        """``all``, ``self``, or a comma list of pids (digits) and namespace names; ValueError on an odd one."""
        text = text.strip()
        if text in ("all", "self"):
            return cls(text)
        names: list[str] = []
        pids: list[int] = []
        for term in text.split(","):
            term = term.strip()
            if term.isdigit() and int(term) > 0:
                pids.append(int(term))
            elif not term or term.isdigit() or "/" in term or term in (".", "..", "all", "self"):
                raise ValueError(f"invalid --netns {text!r}: expected all, self, a name in /var/run/netns "
                                 "or a pid (several with commas)")
            else:
                names.append(term)
        return cls("some", tuple(names), tuple(pids))

    @classmethod
    def default(cls, is_root: bool) -> Selection:
        """Every namespace as root (entering one needs CAP_SYS_ADMIN), only socktop's own otherwise."""
        return cls("all" if is_root else "self")

    @classmethod
    def chosen(cls, option: Selection | None, environ: Mapping[str, str] = os.environ) -> Selection:
        """``--netns`` as given, else ``$SOCKTOP_NETNS``, else the default for this process's
        privileges; ValueError naming the variable when it holds no valid selection."""
        if option is not None:
            return option
        text = environ.get(NETNS_VARIABLE, "")
        if not text:
            return cls.default(os.geteuid() == 0)
        try:
            return cls.parse(text)
        except ValueError as exc:
            raise ValueError(f"{NETNS_VARIABLE}: {exc}") from None

    def describe(self) -> str:
        return self.mode if self.mode != "some" else ",".join([*self.names, *(f"pid {pid}" for pid in self.pids)])

    def pick(self, found: Mapping[int, Namespace]) -> dict[int, Namespace]:
        """The selected namespaces among ``found``; LookupError naming each term that matches none."""
        if self.mode == "all":
            return dict(found)
        if self.mode == "self":
            return {inode: ns for inode, ns in found.items() if ns.own}
        picked: dict[int, Namespace] = {}
        missing: list[str] = []
        for term, matches in [*((name, lambda ns, name=name: name in ns.names) for name in self.names),
                              *((f"pid {pid}", lambda ns, pid=pid: pid in ns.pids) for pid in self.pids)]:
            hits = {inode: ns for inode, ns in found.items() if matches(ns)}
            if not hits:
                missing.append(term)
            picked.update(hits)
        if missing:
            raise LookupError(f"no network namespace {', '.join(missing)} (seen: {len(found)} namespaces)")
        return picked


@dataclass(slots=True)
class NamespaceKernel:
    """Each namespace's own settings and counters (a pod may have its own ``ip_local_port_range``).

    Settings are read from a thread inside the namespace, the only way
    (see the module docstring), every SETTINGS_EVERY seconds; counters at
    every call, through ``/proc/PID/net`` of a process in it, or from such
    a thread when no process is; /proc/PID/net/netstat (long, a few
    hundred counters) only when `activity` moved since the last call (its
    counters count events that move it too). Settings the kernel keeps host-wide are
    absent inside a non-initial namespace (``tcp_max_orphans``): they are
    taken from ``host`` and named in ``KernelState.host_wide``.
    """

    clock: Callable[[], float] = time.monotonic
    _settings: dict[int, tuple[float, dict[str, str | None]]] = field(default_factory=dict)
    _counted: dict[int, KernelState] = field(default_factory=dict)  # the last state read, by inode

    def read(self, namespace: Namespace, host: KernelState) -> KernelState:
        """``namespace``'s state; ``host`` (socktop's own) for its own namespace. Raises OSError when it cannot be entered."""
        if namespace.own:
            return host
        now = self.clock()
        cached = self._settings.get(namespace.inode)
        counters, sockstat = {}, {}
        if cached is not None and now - cached[0] < SETTINGS_EVERY and namespace.pid is not None:
            sysctls = cached[1]
            net = f"{PROC}/{namespace.pid}/net"
            counters, sockstat = read_counters(net, _READ_KEYS, ("snmp",))
            last = self._counted.get(namespace.inode)
            moved = activity(KernelState(counters=counters, sockstat=sockstat))
            if last is not None and moved is not None and moved == activity(last):
                counters = dict(last.counters)
            elif sockstat:
                counters.update(read_counters(net, _READ_KEYS, ("netstat",))[0])
        if not sockstat:  # settings due, no process to read through, or it just left
            sysctls, (counters, sockstat) = in_namespace(
                namespace, lambda: (read_sysctls(), read_counters(f"{PROC}/thread-self/net", _READ_KEYS)))
            self._settings[namespace.inode] = (now, sysctls)
        host_wide = frozenset(key for key, value in sysctls.items() if value is None and host.sysctls.get(key) is not None)
        merged = {**sysctls, **{key: host.sysctls[key] for key in host_wide}}
        state = self._counted[namespace.inode] = KernelState(sysctls=merged, counters=counters, sockstat=sockstat,
                                                             host_wide=host_wide)
        return state

    def forget(self, alive: Iterable[int]) -> None:
        """Drop namespaces no longer present."""
        keep = set(alive)
        for inode in [inode for inode in self._settings if inode not in keep]:
            del self._settings[inode]
            self._counted.pop(inode, None)


def activity(state: KernelState | None) -> tuple[int, ...] | None:
    """What `ACTIVITY_KEYS` and sockstat's inuse and tw read: equal at two refreshes means no TCP
    socket of that namespace changed state in between; None when any is unreadable."""
    if state is None:
        return None
    values = [state.counters.get(key) for key in ACTIVITY_KEYS]
    values += [state.sockstat.get("inuse"), state.sockstat.get("tw")]
    return None if None in values else tuple(values)  # type: ignore[arg-type]
