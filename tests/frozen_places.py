"""The frozen snapshot (tests/frozen.py) on a container host: its processes run in a pod, a Docker
container and a systemd service sharing the host's network namespace, told apart by their sockets'
cgroup ids, as the engine groups them (`socktop.model.places`)."""

from __future__ import annotations

from dataclasses import replace

from frozen import frozen_snapshot

from socktop.collect.columns import table_of
from socktop.collect.containers import Container
from socktop.collect.netns import Namespace
from socktop.collect.nswatch import NamespaceInfo
from socktop.model.places import assign_places, group_places
from socktop.model.snapshot import Snapshot

HOST = NamespaceInfo(Namespace(4026531840, pids=(1, 4242, 5151, 6161), own=True), "host")
CHECKOUT = Container("pod", "pod:7c1e2a90-5b3d-4f6e-8a1b-2c3d4e5f6a7b", "checkout-7f9c", "containerd", "a1" * 32,
                     "7c1e2a90-5b3d-4f6e-8a1b-2c3d4e5f6a7b", "shop")
WEB = Container("container", "docker:" + "b2" * 32, "web", "docker", "b2" * 32)
CRAWLER = Container("service", "service:crawler", "crawler")
CGROUP_OF_PID = {4242: 101, 6161: 102, 5151: 103}  # leaky-api in the pod, nginx in Docker, the crawler a service
CONTAINERS = {101: CHECKOUT, 102: WEB, 103: CRAWLER}


def containers_snapshot() -> Snapshot:
    """`frozen_snapshot()` with each held socket's cgroup id and the Containers grouping."""
    base = frozen_snapshot()
    holders = base.ownership.pids_by_inode
    table = table_of([record._replace(cgroup_id=CGROUP_OF_PID.get(min(holders.get(record.inode, (0,))), 0))
                      for record in base.sockets])
    aggregates = base.regroup(table)
    codes, slots = assign_places(table.columns, (HOST,), CONTAINERS.get)
    places = group_places(table.columns, codes, slots, aggregates.rows, aggregates.listening_ports,
                          aggregates.ephemeral_ports)
    return replace(base, sockets=table, aggregates=aggregates, namespaces=(HOST,), places=places,
                   place_slots=tuple(slots), place_codes=codes, source=replace(base.source, netns="all (1)"))
