"""PsutilBackend on real loopback sockets: synthetic inodes, owner hints, and the unprivileged fallback.

The one thing faked is psutil refusing the system-wide listing, as it does
on macOS without root: Linux never refuses, so it is simulated at that
boundary, and the fallback then runs for real.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

import psutil
import pytest
from loopback_sockets import IPV4, Population

from socktop.collect.psutil_backend import SYNTHETIC_INODE_BASE, PsutilBackend
from socktop.collect.records import BackendUnavailable, TcpState


@pytest.fixture
def population() -> Iterator[Population]:
    population = Population.listen(IPV4)
    try:
        population.established(3)
        population.time_wait(1)
        yield population
    finally:
        population.close()


def refuse(*_args: object, **_kwargs: object) -> None:
    raise psutil.AccessDenied(msg="net_connections needs root here")


def test_synthetic_inodes_stay_put_between_snapshots(population: Population) -> None:
    backend = PsutilBackend()
    first = {record.four_tuple: record.inode for record in population.ours(backend.sockets())}
    second = {record.four_tuple: record.inode for record in population.ours(backend.sockets())}
    assert first == second
    owned = [inode for inode in first.values() if inode]
    assert len(owned) == 7  # the listener and both ends of three connections
    assert all(inode >= SYNTHETIC_INODE_BASE for inode in owned)
    assert {backend.owner_hint()[inode] for inode in owned} == {(os.getpid(),)}


def test_without_privileges_it_lists_the_sockets_of_our_own_processes(
        population: Population, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "net_connections", refuse)
    backend = PsutilBackend()
    assert not backend.system_wide
    records = population.ours(backend.sockets())
    # Every socket this process holds is there; the TIME_WAIT one, held by no process, cannot be.
    assert {(record.state, *record.four_tuple) for record in records} == {
        (state, *rest) for _family, state, *rest in population.expected if state != TcpState.TIME_WAIT}
    assert all(backend.owner_hint()[record.inode] == (os.getpid(),) for record in records)


def test_unavailable_when_psutil_cannot_list_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*_args: object, **_kwargs: object) -> None:
        raise NotImplementedError("no socket listing on this platform")

    monkeypatch.setattr(psutil, "net_connections", unsupported)
    with pytest.raises(BackendUnavailable, match="psutil cannot list TCP sockets here"):
        PsutilBackend()


def test_processes_describes_the_owners(population: Population) -> None:
    backend = PsutilBackend()
    backend.sockets()
    me = backend.processes({os.getpid(), 0})
    assert list(me) == [os.getpid()]
    info = me[os.getpid()]
    assert (info.uid, info.name) == (os.getuid(), psutil.Process().name())
    assert info.fd_count is not None and info.fd_count >= len(population.held) + 1
    assert info.fd_limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    backend.sockets()
    assert backend.processes({os.getpid()})[os.getpid()].start_ticks == info.start_ticks
