"""Real network namespaces and cgroup v2 directories for tests, always removed afterwards.

Creating either needs root; `needs_root` skips with that reason otherwise,
and `cgroup_v2_dir` skips when no cgroup2 hierarchy is mounted writable.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from socktop.collect.containers import MOUNTINFO, cgroup2_mount

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating network namespaces and cgroups needs root")
_serial = itertools.count()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_serial)}"


@contextmanager
def named_netns(prefix: str = "socktop-test") -> Iterator[str]:
    """``ip netns add`` a namespace with loopback up; deleted on exit whatever happens."""
    name = unique_name(prefix)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=60)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=60)


def netns_inode(name: str) -> int:
    return os.stat(f"/var/run/netns/{name}").st_ino


@contextmanager
def process_in_new_netns() -> Iterator[subprocess.Popen[bytes]]:
    """A sleeping child in an unnamed namespace of its own (``unshare -n``); killed and reaped on exit."""
    child = subprocess.Popen(["unshare", "-n", "sleep", "120"])
    try:
        deadline = time.monotonic() + 30
        while os.readlink(f"/proc/{child.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError("unshare -n did not enter a new namespace")
            time.sleep(0.01)
        yield child
    finally:
        child.kill()
        child.wait(timeout=10)


def writable_cgroup2() -> str:
    """The cgroup2 mount point, or skip saying why it cannot be used."""
    with open(MOUNTINFO) as mountinfo:
        mount = cgroup2_mount(mountinfo.read())
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy is mounted (/proc/self/mountinfo has no cgroup2)")
    if os.geteuid() != 0 or not os.access(mount, os.W_OK):
        pytest.skip(f"the cgroup v2 hierarchy at {mount} is not writable here")
    return mount


@contextmanager
def cgroup_v2_dir(relative: str) -> Iterator[str]:
    """Create ``relative`` (e.g. ``kubepods.slice/…/cri-containerd-ID.scope``) under the cgroup2 mount.

    On exit every process left in the directories created is moved back
    to the cgroup this test runs in, and they are removed deepest first.
    """
    mount = writable_cgroup2()
    created: list[str] = []
    path = mount
    try:
        for part in relative.strip("/").split("/"):
            path = f"{path}/{part}"
            if not os.path.isdir(path):
                os.mkdir(path)
                created.append(path)
        yield path
    finally:
        home = _own_cgroup(mount)
        for directory in reversed(created):
            _empty(directory, home)
            for _attempt in range(50):
                try:
                    os.rmdir(directory)
                    break
                except OSError:
                    time.sleep(0.02)


def move_to_cgroup(pid: int, directory: str) -> None:
    with open(f"{directory}/cgroup.procs", "w") as procs:
        procs.write(str(pid))


def _own_cgroup(mount: str) -> str:
    with open("/proc/self/cgroup") as own:
        for line in own:
            if line.startswith("0::"):
                return mount + line[3:].strip().rstrip("/")
    return mount


def _empty(directory: str, home: str) -> None:
    try:
        with open(f"{directory}/cgroup.procs") as procs:
            pids = procs.read().split()
    except OSError:
        return
    for pid in pids:
        try:
            move_to_cgroup(int(pid), home)
        except OSError as exc:
            print(f"could not move pid {pid} out of {directory}: {exc}", file=sys.stderr)


_FARM = """
import sys
from socktop.demo.builders import SocketFarm
established, close_wait = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()  # placed (namespace, cgroup) before any socket is made
with SocketFarm() as farm:
    if established:
        farm.established(established)
    if close_wait:
        farm.close_wait(close_wait)
    print("ready", flush=True)
    sys.stdin.read()
"""


@contextmanager
def farm_in_netns(name: str, established: int = 0, close_wait: int = 0) -> Iterator[subprocess.Popen[str]]:
    """A child inside namespace ``name`` holding ``established`` pairs and ``close_wait`` leaked
    server ends on its loopback (each build adds its listener); stopped on exit."""
    with _farm(["ip", "netns", "exec", name], established, close_wait) as child:
        yield child


@contextmanager
def farm_in_new_netns(established: int = 0, close_wait: int = 0,
                      cgroup: str | None = None) -> Iterator[subprocess.Popen[str]]:
    """The same in an unnamed namespace of its own (``unshare -n``), moved first into the cgroup
    directory ``cgroup`` when given (so its sockets carry that cgroup's id)."""
    prefix = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "farm"]
    with _farm(prefix, established, close_wait, cgroup) as child:
        yield child


@contextmanager
def _farm(prefix: list[str], established: int, close_wait: int,
          cgroup: str | None = None) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen([*prefix, sys.executable, "-c", _FARM, str(established), str(close_wait)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdin is not None and child.stdout is not None
        if cgroup is not None:
            move_to_cgroup(child.pid, cgroup)
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the socket farm {' '.join(prefix)} did not start (exit {child.poll()})")
        yield child
    finally:
        stop(child, 10)


def ss_counts(name: str) -> dict[str, int]:
    """``ip netns exec NAME ss -tan``, counted by state as ss prints it."""
    return _counted(subprocess.run(["ip", "netns", "exec", name, "ss", "-tan"], capture_output=True, text=True,
                                   check=True, timeout=60).stdout)


def _counted(output: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in output.splitlines()[1:]:
        state = line.split(None, 1)[0] if line.strip() else ""
        if state:
            counts[state] = counts.get(state, 0) + 1
    return counts


def ss_counts_of_pid(pid: int) -> dict[str, int]:
    """``nsenter -t PID -n ss -tan``, counted by state."""
    return _counted(subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-tan"], capture_output=True, text=True,
                                   check=True, timeout=60).stdout)


_POPULATION = """
import sys
from socktop.demo.builders import build_population
with build_population(int(sys.argv[1])) as population:
    print("ready", population.sockets, flush=True)
    sys.stdin.read()
"""


@contextmanager
def population_in_netns(name: str, total: int) -> Iterator[int]:
    """About ``total`` idle ESTABLISHED sockets (with their listeners) held by children inside namespace
    ``name`` (`socktop.demo.builders.build_population`); yields how many; stopped on exit."""
    child = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", _POPULATION, str(total)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        words = child.stdout.readline().split()
        if words[:1] != ["ready"]:
            raise RuntimeError(f"the population in {name} did not start (exit {child.poll()})")
        yield int(words[1])
    finally:
        stop(child, 30)


def stop(child: subprocess.Popen[str], timeout: float) -> None:
    """Close the child's stdin (its cue to let go of its sockets and exit), then wait; kill it if it does not."""
    if child.stdin is not None:
        child.stdin.close()
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(timeout=10)
