"""Containers, pods and services, from cgroup v2 paths and the files runtimes leave behind.

A process's cgroup v2 path (the ``0::`` line of /proc/PID/cgroup) names
what started it, by the conventions of systemd and the runtimes:

- Docker: ``…/docker-<id>.scope`` (systemd driver) or ``/docker/<id>`` (cgroupfs driver);
- containerd and CRI-O: ``…/cri-containerd-<id>.scope``, ``…/crio-<id>.scope``; Podman ``libpod-<id>.scope``;
- Kubernetes: ``kubepods[-<qos>]-pod<UID>.slice`` (UID with ``_`` for ``-``) or
  ``/kubepods[/<qos>]/pod<UID>/<id>`` (cgroupfs driver);
- systemd services: ``<name>.service``.

A socket's ``INET_DIAG_CGROUP_ID`` is the inode of its cgroup v2
directory, so `CgroupIndex` maps it back to a path by walking the cgroup2
mount. Names come from files only, never from a runtime's API: the
pod's and container's names from the OCI ``config.json`` annotations
containerd and CRI-O write, Docker's ``config.v2.json``, else the
hostname the container sees (``/proc/PID/root/etc/hostname``). Every one
of those strings is chosen by whoever started the container: display
them through `socktop.safetext.printable`, quote them in commands.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .netns import Namespace
from .owners import read_text

PROC = "/proc"
MOUNTINFO = "/proc/self/mountinfo"
RESCAN_AFTER = 5.0  # seconds between walks of the cgroup tree for ids not found
MAX_CGROUP_DIRS = 200_000  # bounds a walk of a pathological tree
MAX_RUNTIME_FILE = 1 << 20  # OCI config.json files are tens of KB
PIDS_PER_NAMESPACE = 8  # processes whose cgroup is read to name a namespace

_ID = "[0-9a-f]{64}"
_SCOPES = (
    (re.compile(rf"docker-({_ID})\.scope"), "docker"),
    (re.compile(rf"cri-containerd-({_ID})\.scope"), "containerd"),
    (re.compile(rf"crio-({_ID})\.scope"), "crio"),
    (re.compile(rf"libpod-({_ID})\.scope"), "podman"),
)
_BARE_ID = re.compile(_ID)
_POD_SLICE = re.compile(r"(?:[a-z]+-)*kubepods(?:-[a-z]+)*-pod([0-9a-f_]{36})\.slice")  # kind prefixes kubelet-
_POD_DIR = re.compile(r"pod([0-9a-f-]{36})")
_SERVICE = re.compile(r"(.+)\.service")

#: Annotation keys (containerd's CRI plugin, then CRI-O) for the pod, its Kubernetes namespace, the container.
POD_NAME_KEYS = ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name")
POD_NAMESPACE_KEYS = ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace")
CONTAINER_NAME_KEYS = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")


@dataclass(frozen=True, slots=True)
class CgroupOwner:
    """What a cgroup path says about who started its processes; empty fields are unknown."""

    runtime: str = ""  # docker, containerd, crio, podman; "" under Kubernetes' cgroupfs driver
    container_id: str = ""
    pod_uid: str = ""
    service: str = ""  # a systemd unit name, only when no container or pod is in the path


def parse_cgroup_path(path: str) -> CgroupOwner | None:
    """The container, pod or service a cgroup v2 path belongs to; None for anything else.

    The deepest match wins, so a container nested in another (Kubernetes
    in Docker) is named by the inner one.
    """
    runtime = container_id = pod_uid = service = ""
    parent = ""
    for part in path.split("/"):
        if not part:
            continue
        for pattern, name in _SCOPES:
            found = pattern.fullmatch(part)
            if found:
                runtime, container_id = name, found.group(1)
                break
        else:
            pod = _POD_SLICE.fullmatch(part) or (_POD_DIR.fullmatch(part) if parent.startswith("kubepods")
                                                 or _is_qos(parent) else None)
            if pod:
                pod_uid = pod.group(1).replace("_", "-")
            elif _BARE_ID.fullmatch(part) and (parent == "docker" or _POD_DIR.fullmatch(parent)):
                runtime, container_id = ("docker" if parent == "docker" else ""), part
            elif (unit := _SERVICE.fullmatch(part)) is not None:
                service = unit.group(1)
        parent = part
    if not (container_id or pod_uid or service):
        return None
    return CgroupOwner(runtime, container_id, pod_uid, "" if container_id or pod_uid else service)


def _is_qos(part: str) -> bool:
    return part in ("besteffort", "burstable")


def process_cgroup(cgroup_text: str) -> str | None:
    """The cgroup v2 path in /proc/PID/cgroup (its ``0::`` line); None on a v1-only system."""
    for line in cgroup_text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def cgroup2_mount(mountinfo_text: str) -> str | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or ``…/unified`` on hybrid systems)."""
    for line in mountinfo_text.splitlines():
        fields, _, tail = line.partition(" - ")
        parts = fields.split()
        if len(parts) >= 5 and tail.split()[:1] == ["cgroup2"]:
            return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
    return None


class CgroupIndex:
    """cgroup id (the directory's inode, as INET_DIAG_CGROUP_ID gives it) → cgroup v2 path.

    The tree is walked when an id is not known, at most every
    RESCAN_AFTER seconds: containers come and go, but not every refresh.
    """

    def __init__(self, mount: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.mount = mount
        self._clock = clock
        self._paths: dict[int, str] = {}
        self._walked_at = float("-inf")

    @classmethod
    def here(cls) -> CgroupIndex:
        return cls(cgroup2_mount(read_text(MOUNTINFO, 1 << 20) or ""))

    def path_of(self, cgroup_id: int) -> str | None:
        if cgroup_id in self._paths or not cgroup_id or self.mount is None:
            return self._paths.get(cgroup_id)
        if self._clock() - self._walked_at >= RESCAN_AFTER:
            self._walked_at = self._clock()
            self._paths = self._walk(self.mount)
        return self._paths.get(cgroup_id)

    @staticmethod
    def _walk(mount: str) -> dict[int, str]:
        """Every directory under ``mount`` by inode (scandir's d_ino: no stat per directory)."""
        try:
            paths = {os.stat(mount).st_ino: "/"}
        except OSError:
            return {}
        pending = [(mount, "")]
        while pending and len(paths) < MAX_CGROUP_DIRS:
            directory, relative = pending.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    path = f"{relative}/{entry.name}"
                    paths[entry.inode()] = path
                    pending.append((entry.path, path))
        return paths


@dataclass(frozen=True, slots=True)
class Container:
    """A pod, container or service, named as well as the files allow.

    ``key`` is stable across refreshes and unique (``pod:<uid>``,
    ``docker:<id>``, ``service:<name>``); ``name`` is for people and is
    untrusted text.
    """

    kind: str  # "pod", "container" or "service"
    key: str
    name: str
    runtime: str = ""
    container_id: str = ""
    pod_uid: str = ""
    pod_namespace: str = ""  # the pod's Kubernetes namespace, when the runtime's files say

    @property
    def title(self) -> str:
        """``pod shop/checkout-7f9c``, ``container web``, ``service nginx``."""
        scoped = f"{self.pod_namespace}/{self.name}" if self.pod_namespace else self.name
        return f"{self.kind} {scoped}"


@dataclass(frozen=True, slots=True)
class RuntimeFiles:
    """Where runtimes keep their per-container files (overridable for tests)."""

    proc: str = PROC
    docker: str = "/var/lib/docker/containers"
    containerd: str = "/run/containerd/io.containerd.runtime.v2.task"
    crio: str = "/run/containers/storage/overlay-containers"


def _json_file(path: str) -> dict:
    text = read_text(path, MAX_RUNTIME_FILE)
    if text is None or len(text) >= MAX_RUNTIME_FILE:
        return {}
    try:
        document = json.loads(text)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _first(mapping: dict, keys: Iterable[str]) -> str:
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def runtime_annotations(owner: CgroupOwner, files: RuntimeFiles) -> dict[str, str]:
    """The OCI annotations (or Docker's name, as ``docker.name``) of a container, from its runtime's files."""
    ident = owner.container_id
    if not ident:
        return {}
    if owner.runtime == "docker":
        name = _json_file(f"{files.docker}/{ident}/config.v2.json").get("Name")
        return {"docker.name": name.lstrip("/")} if isinstance(name, str) and name.strip("/") else {}
    candidates = [f"{files.crio}/{ident}/userdata/config.json"]
    try:
        candidates += [f"{files.containerd}/{space}/{ident}/config.json" for space in sorted(os.listdir(files.containerd))]
    except OSError:
        pass
    for path in candidates:
        annotations = _json_file(path).get("annotations")
        if isinstance(annotations, dict):
            return {str(key): value for key, value in annotations.items() if isinstance(value, str)}
    return {}


def hostname_of(pid: int, files: RuntimeFiles) -> str:
    """The hostname a process's container sees (a pod's is the pod name by default); "" when unreadable,
    or when the process shares socktop's mount namespace (its /etc/hostname is then the host's own)."""
    try:
        if os.readlink(f"{files.proc}/{pid}/ns/mnt") == os.readlink(f"{files.proc}/self/ns/mnt"):
            return ""
    except OSError:
        pass  # no such links (a test tree): the file alone decides
    text = read_text(f"{files.proc}/{pid}/root/etc/hostname", 256) or ""
    return text.strip().splitlines()[0] if text.strip() else ""


def describe(owner: CgroupOwner, files: RuntimeFiles, pid: int | None = None) -> Container:
    """Name what ``owner`` points at, from its runtime's files, else the hostname ``pid`` sees, else its id."""
    if not (owner.container_id or owner.pod_uid):
        return Container("service", f"service:{owner.service}", owner.service)
    annotations = runtime_annotations(owner, files)
    hostname = hostname_of(pid, files) if pid is not None else ""
    if owner.pod_uid:
        name = _first(annotations, POD_NAME_KEYS) or hostname or f"pod{owner.pod_uid[:8]}"
        return Container("pod", f"pod:{owner.pod_uid}", name, owner.runtime, owner.container_id, owner.pod_uid,
                         _first(annotations, POD_NAMESPACE_KEYS))
    name = (annotations.get("docker.name") or _first(annotations, CONTAINER_NAME_KEYS) or hostname
            or owner.container_id[:12])
    return Container("container", f"{owner.runtime or 'container'}:{owner.container_id}", name, owner.runtime,
                     owner.container_id)


@dataclass(slots=True)
class ContainerResolver:
    """Containers by cgroup id (for sockets) and by namespace (for its label), cached.

    A container's files are read once per container; a namespace is
    re-examined only when the processes it is entered by change.
    """

    files: RuntimeFiles = field(default_factory=RuntimeFiles)
    index: CgroupIndex = field(default_factory=CgroupIndex.here)
    _by_id: dict[int, Container | None] = field(default_factory=dict)
    _by_owner: dict[CgroupOwner, Container] = field(default_factory=dict)
    _by_namespace: dict[int, tuple[tuple[int, ...], Container | None]] = field(default_factory=dict)

    def for_cgroup_id(self, cgroup_id: int) -> Container | None:
        """The container of a socket's cgroup (named through a process in that cgroup, when one is there)."""
        if cgroup_id in self._by_id:
            return self._by_id[cgroup_id]
        path = self.index.path_of(cgroup_id)
        if path is None:
            return None  # not cached: the next walk may find it
        owner = parse_cgroup_path(path)
        found = self._by_id[cgroup_id] = self._describe(owner, self._pid_in(path)) if owner else None
        return found

    def _pid_in(self, path: str) -> int | None:
        text = read_text(f"{self.index.mount}{path.rstrip('/')}/cgroup.procs", 4096) or ""
        first = text.split("\n", 1)[0].strip()
        return int(first) if first.isdigit() else None

    def for_pid(self, pid: int) -> Container | None:
        path = process_cgroup(read_text(f"{self.files.proc}/{pid}/cgroup") or "")
        owner = parse_cgroup_path(path) if path else None
        return self._describe(owner, pid) if owner else None

    def for_namespace(self, namespace: Namespace) -> Container | None:
        """The pod (or else the container, or else the service) most of a namespace's first processes belong to.

        Socktop's own namespace is the host's (or its own container's): never named after one of its processes.
        """
        if namespace.own:
            return None
        probe = namespace.pids[:PIDS_PER_NAMESPACE]
        cached = self._by_namespace.get(namespace.inode)
        if cached is not None and cached[0] == probe:
            return cached[1]
        found = [container for container in map(self.for_pid, probe) if container is not None]
        best = None
        for kind in ("pod", "container", "service"):
            ranked = Counter(container for container in found if container.kind == kind).most_common(1)
            if ranked:
                best = ranked[0][0]
                break
        self._by_namespace[namespace.inode] = (probe, best)
        return best

    def forget(self, alive: Iterable[int]) -> None:
        """Drop namespaces no longer present."""
        keep = set(alive)
        for inode in [inode for inode in self._by_namespace if inode not in keep]:
            del self._by_namespace[inode]

    def _describe(self, owner: CgroupOwner, pid: int | None = None) -> Container:
        known = self._by_owner.get(owner)
        if known is None:
            known = self._by_owner[owner] = describe(owner, self.files, pid)
        return known
