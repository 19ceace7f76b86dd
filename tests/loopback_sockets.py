"""Real TCP sockets on loopback in known states, for tests that read them back from the kernel.

Only loopback addresses, only ports the kernel picks, and every socket is
closed by `Population.close` (TIME_WAIT ones expire on their own after 60 s).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from socktop.collect.netlink import NetlinkBackend
from socktop.collect.records import SocketRecord, TcpState

Made = TypeVar("Made")

#: (family, state, local addr, local port, remote addr, remote port): what every backend must agree on.
SocketKey = tuple[int, TcpState, str, int, str, int]


def socket_key(record: SocketRecord) -> SocketKey:
    return (record.family, record.state, *record.four_tuple)


def plain_address(address: str) -> str:
    """An address as socktop prints it: IPv4-mapped IPv6 as IPv4 (worked out independently of AddressText)."""
    ip = ipaddress.ip_address(address)
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def alone(build: Callable[[], Made], port: Callable[[Made], int], ours: Callable[[Made, SocketRecord], bool],
          tries: int = 50) -> Made:
    """``build()`` again until no older socket has the port it got at either end (the earlier builds stay
    open, so each gets a new port): a TIME_WAIT an earlier test left toward a listener that had the same
    port would count in a filter by port. ``ours(made, record)`` tells the build's own sockets."""
    backend = NetlinkBackend()
    for _ in range(tries):
        made = build()
        if all(ours(made, record) for record in backend.sockets() if port(made) in (record.local_port,
                                                                                   record.remote_port)):
            return made
    raise AssertionError(f"each of {tries} ports the kernel gave had older sockets on it")


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a population lives: the listener's family and address, the clients' family and target."""

    name: str
    listen_family: int
    listen_host: str
    client_family: int
    connect_host: str


IPV4 = Layout("ipv4", socket.AF_INET, "127.0.0.1", socket.AF_INET, "127.0.0.1")
IPV6 = Layout("ipv6", socket.AF_INET6, "::1", socket.AF_INET6, "::1")
# An IPv6 listener bound to ::ffff:127.0.0.1: its accepted sockets are AF_INET6 with IPv4 addresses.
V4_MAPPED = Layout("v4-mapped", socket.AF_INET6, "::ffff:127.0.0.1", socket.AF_INET, "127.0.0.1")


@dataclass(slots=True)
class Population:
    """A listener and the connections to it, with the sockets the kernel must list for them."""

    layout: Layout
    listener: socket.socket
    port: int
    held: list[socket.socket] = field(default_factory=list)
    client_ports: set[int] = field(default_factory=set)
    expected: set[SocketKey] = field(default_factory=set)

    @classmethod
    def listen(cls, layout: Layout) -> Population:
        listener = socket.socket(layout.listen_family, socket.SOCK_STREAM)
        if layout.listen_family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, layout.client_family == socket.AF_INET6)
        listener.bind((layout.listen_host, 0))
        listener.listen(64)
        population = cls(layout, listener, listener.getsockname()[1])
        population._expect(listener, TcpState.LISTEN)
        return population

    def ours(self, records: list[SocketRecord]) -> list[SocketRecord]:
        """The records with both ends ours: a TIME_WAIT left by an earlier listener on the same port is not."""
        port, ends = self.port, self.client_ports | {self.port, 0}
        return [record for record in records if port in (record.local_port, record.remote_port)
                and record.local_port in ends and record.remote_port in ends]

    def established(self, count: int) -> list[tuple[socket.socket, socket.socket]]:
        """``count`` accepted connections, both ends ESTABLISHED and held open."""
        pairs = self._pairs(count)
        for client, server in pairs:
            self._expect(client, TcpState.ESTABLISHED)
            self._expect(server, TcpState.ESTABLISHED)
        return pairs

    def half_closed(self, count: int) -> None:
        """Clients shut down writing: client FIN_WAIT2, server CLOSE_WAIT, both held open."""
        for client, server in self._pairs(count):
            client.shutdown(socket.SHUT_WR)
            self._expect(client, TcpState.FIN_WAIT2)
            self._expect(server, TcpState.CLOSE_WAIT)

    def time_wait(self, count: int) -> None:
        """Client closes first, then the server: the client's end stays in TIME_WAIT for 60 s."""
        for client, server in self._pairs(count):
            self._expect(client, TcpState.TIME_WAIT)
            client.close()
            server.close()

    def unaccepted(self, count: int) -> None:
        """Connections left in the accept queue: the listener's recv_q counts them, no process holds them.

        Call it last: a later accept() would take them off the queue.
        """
        for _ in range(count):
            client = self._connect()
            self._expect(client, TcpState.ESTABLISHED)
            self.expected.add((self.layout.listen_family, TcpState.ESTABLISHED,
                               *_plain_end(client.getpeername()), *_plain_end(client.getsockname())))

    def settle(self, read: Callable[[], list[SocketRecord]], timeout: float = 30.0) -> None:
        """Wait (bounded) until ``read()`` lists exactly the expected sockets: FINs take a moment (longer on
        a loaded machine)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if {socket_key(record) for record in self.ours(read())} == self.expected:
                return
            time.sleep(0.01)

    def close(self) -> None:
        for sock in self.held:
            sock.close()
        self.listener.close()

    def _pairs(self, count: int) -> list[tuple[socket.socket, socket.socket]]:
        return [self._connect_and_accept() for _ in range(count)]

    def _connect(self) -> socket.socket:
        client = socket.socket(self.layout.client_family, socket.SOCK_STREAM)
        self.held.append(client)
        client.connect((self.layout.connect_host, self.port))
        self.client_ports.add(client.getsockname()[1])
        return client

    def _connect_and_accept(self) -> tuple[socket.socket, socket.socket]:
        client = self._connect()
        server, _peer = self.listener.accept()
        self.held.append(server)
        return client, server

    def _expect(self, sock: socket.socket, state: TcpState) -> None:
        remote = sock.getpeername() if state != TcpState.LISTEN else (_wildcard(sock.family), 0)
        self.expected.add((sock.family, state, *_plain_end(sock.getsockname()), *_plain_end(remote)))


def _plain_end(address: tuple) -> tuple[str, int]:
    return plain_address(address[0]), address[1]


def _wildcard(family: int) -> str:
    return "0.0.0.0" if family == socket.AF_INET else "::"
