"""Containers, pods and services from cgroup v2 paths, cgroup ids and the runtimes' files.

The paths are the shapes systemd, Docker, containerd, CRI-O and the
kubelet create; the real-cgroup tests make such directories under the
cgroup2 mount (root, writable) and put a real process in them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from socktop.collect.containers import (
    CgroupIndex, CgroupOwner, Container, ContainerResolver, RuntimeFiles, cgroup2_mount, describe, hostname_of,
    parse_cgroup_path, process_cgroup,
)
from socktop.collect.netns import list_namespaces
from namespaces import cgroup_v2_dir, move_to_cgroup, process_in_new_netns, unique_name, writable_cgroup2

DOCKER_ID = "4f3c9d1e2b7a8c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d"
CTR_ID = "8e1f0a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7"
POD_UID = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
POD_SLICE_UID = POD_UID.replace("-", "_")


@pytest.mark.parametrize(("path", "expected"), [
    (f"/system.slice/docker-{DOCKER_ID}.scope", CgroupOwner("docker", DOCKER_ID)),
    (f"/docker/{DOCKER_ID}", CgroupOwner("docker", DOCKER_ID)),
    (f"/system.slice/docker-{DOCKER_ID}.scope/init.scope", CgroupOwner("docker", DOCKER_ID)),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice/cri-containerd-{CTR_ID}.scope",
     CgroupOwner("containerd", CTR_ID, POD_UID)),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_SLICE_UID}.slice/crio-{CTR_ID}.scope",
     CgroupOwner("crio", CTR_ID, POD_UID)),
    (f"/kubepods.slice/kubepods-pod{POD_SLICE_UID}.slice/cri-containerd-{CTR_ID}.scope",  # Guaranteed QoS: no QoS slice
     CgroupOwner("containerd", CTR_ID, POD_UID)),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SLICE_UID}.slice",
     CgroupOwner("", "", POD_UID)),
    (f"/kubepods/burstable/pod{POD_UID}/{CTR_ID}", CgroupOwner("", CTR_ID, POD_UID)),
    (f"/kubepods/pod{POD_UID}/{CTR_ID}", CgroupOwner("", CTR_ID, POD_UID)),
    (f"/machine.slice/libpod-{CTR_ID}.scope/container", CgroupOwner("podman", CTR_ID)),
    ("/system.slice/nginx.service", CgroupOwner(service="nginx")),
    ("/system.slice/system-getty.slice/getty@tty1.service", CgroupOwner(service="getty@tty1")),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/vte-spawn-1.scope",
     CgroupOwner(service="user@1000")),
    # Kubernetes inside Docker (kind): the innermost names it.
    (f"/system.slice/docker-{DOCKER_ID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
     f"kubelet-kubepods-burstable-pod{POD_SLICE_UID}.slice/cri-containerd-{CTR_ID}.scope",
     CgroupOwner("containerd", CTR_ID, POD_UID)),
])
def test_paths_name_their_owner(path: str, expected: CgroupOwner) -> None:
    assert parse_cgroup_path(path) == expected


@pytest.mark.parametrize("path", [
    "/", "", "/user.slice/user-1000.slice/session-3.scope", "/init.scope",
    f"/system.slice/crio-conmon-{CTR_ID}.scope",  # CRI-O's monitor, not the container
    "/docker/not-an-id", f"/other/{CTR_ID}", "/kubepods/burstable/podnot-a-uid",
    f"/system.slice/docker-{DOCKER_ID[:12]}.scope",  # ids in cgroups are always whole
])
def test_other_paths_name_nothing(path: str) -> None:
    assert parse_cgroup_path(path) is None


def test_process_cgroup_line() -> None:
    assert process_cgroup("0::/system.slice/nginx.service\n") == "/system.slice/nginx.service"
    hybrid = "9:name=systemd:/\n4:memory:/x\n0::/kubepods/pod1/abc\n"
    assert process_cgroup(hybrid) == "/kubepods/pod1/abc"
    assert process_cgroup("4:memory:/x\n") is None


def test_cgroup2_mount_from_mountinfo() -> None:
    unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
    hybrid = ("31 22 0:27 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
              "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
              "42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert cgroup2_mount(unified) == "/sys/fs/cgroup"
    assert cgroup2_mount(hybrid) == "/sys/fs/cgroup/unified"
    assert cgroup2_mount("41 31 0:38 / /mnt/cg\\040v2 rw - cgroup2 cgroup2 rw\n") == "/mnt/cg v2"
    assert cgroup2_mount(hybrid.splitlines()[0]) is None


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def _runtime_files(tmp_path: Path, real_proc: bool = False) -> RuntimeFiles:
    """Runtime directories under ``tmp_path``; /proc too unless the test watches real processes."""
    return RuntimeFiles(proc="/proc" if real_proc else str(tmp_path / "proc"), docker=str(tmp_path / "docker"),
                        containerd=str(tmp_path / "containerd"), crio=str(tmp_path / "crio"))


def test_names_from_the_runtimes_files(tmp_path: Path) -> None:
    files = _runtime_files(tmp_path)
    _write_json(tmp_path / "docker" / DOCKER_ID / "config.v2.json", {"Name": "/web", "ID": DOCKER_ID})
    _write_json(tmp_path / "containerd" / "k8s.io" / CTR_ID / "config.json", {"annotations": {
        "io.kubernetes.cri.sandbox-name": "checkout-7f9c", "io.kubernetes.cri.sandbox-namespace": "shop",
        "io.kubernetes.cri.container-name": "app"}})
    web = describe(CgroupOwner("docker", DOCKER_ID), files)
    assert (web.kind, web.name, web.key, web.title) == ("container", "web", f"docker:{DOCKER_ID}", "container web")
    pod = describe(CgroupOwner("containerd", CTR_ID, POD_UID), files)
    assert (pod.kind, pod.name, pod.pod_namespace, pod.key) == ("pod", "checkout-7f9c", "shop", f"pod:{POD_UID}")
    assert pod.title == "pod shop/checkout-7f9c"
    crio = CTR_ID[::-1]
    _write_json(tmp_path / "crio" / crio / "userdata" / "config.json", {"annotations": {
        "io.kubernetes.pod.name": "cart-5d4b", "io.kubernetes.pod.namespace": "shop"}})
    assert describe(CgroupOwner("crio", crio, POD_UID), files).title == "pod shop/cart-5d4b"
    assert describe(CgroupOwner(service="nginx"), files) == Container("service", "service:nginx", "nginx")


def test_names_fall_back_to_hostname_then_id(tmp_path: Path) -> None:
    files = _runtime_files(tmp_path)
    (tmp_path / "proc" / "812" / "root" / "etc").mkdir(parents=True)
    (tmp_path / "proc" / "812" / "root" / "etc" / "hostname").write_text("checkout-7f9c\n")
    assert describe(CgroupOwner("", CTR_ID, POD_UID), files, pid=812).name == "checkout-7f9c"
    assert describe(CgroupOwner("", CTR_ID, POD_UID), files).name == "pod1a2b3c4d"
    assert describe(CgroupOwner("docker", DOCKER_ID), files).name == DOCKER_ID[:12]
    (tmp_path / "docker" / DOCKER_ID).mkdir(parents=True)
    (tmp_path / "docker" / DOCKER_ID / "config.v2.json").write_text("{not json")
    assert describe(CgroupOwner("docker", DOCKER_ID), files).name == DOCKER_ID[:12]


def test_the_hostname_of_a_process_sharing_our_mount_namespace_is_not_a_container_name() -> None:
    """Its /etc/hostname is the host's own: naming a pod after it would be a lie."""
    files = RuntimeFiles()
    assert hostname_of(os.getpid(), files) == ""
    assert describe(CgroupOwner("", CTR_ID, POD_UID), files, pid=os.getpid()).name == "pod1a2b3c4d"


def test_oversized_runtime_files_are_not_read(tmp_path: Path) -> None:
    files = _runtime_files(tmp_path)
    _write_json(tmp_path / "docker" / DOCKER_ID / "config.v2.json", {"Name": "/web", "pad": "x" * (1 << 20)})
    assert describe(CgroupOwner("docker", DOCKER_ID), files).name == DOCKER_ID[:12]


def test_the_root_cgroup_is_known_by_its_inode() -> None:
    index = CgroupIndex.here()
    if index.mount is None:
        pytest.skip("no cgroup v2 hierarchy is mounted")
    assert index.path_of(os.stat(index.mount).st_ino) == "/"
    assert index.path_of(0) is None


def _pod_path(qos: str = "burstable") -> str:
    return (f"{unique_name('socktop-test')}.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{POD_SLICE_UID}.slice/"
            f"cri-containerd-{CTR_ID}.scope")


def test_a_process_in_a_pod_cgroup_is_that_pod(tmp_path: Path) -> None:
    writable_cgroup2()
    with cgroup_v2_dir(_pod_path()) as directory:
        child = subprocess.Popen(["sleep", "60"])
        try:
            move_to_cgroup(child.pid, directory)
            resolver = ContainerResolver(files=_runtime_files(tmp_path, real_proc=True))
            pod = resolver.for_pid(child.pid)
            assert pod is not None and (pod.kind, pod.pod_uid, pod.container_id) == ("pod", POD_UID, CTR_ID)
            by_id = resolver.for_cgroup_id(os.stat(directory).st_ino)  # as INET_DIAG_CGROUP_ID gives it
            assert by_id == pod
        finally:
            child.kill()
            child.wait(timeout=10)


def test_a_namespace_is_named_after_the_pod_its_processes_are_in(tmp_path: Path) -> None:
    writable_cgroup2()
    files = _runtime_files(tmp_path, real_proc=True)
    _write_json(tmp_path / "containerd" / "k8s.io" / CTR_ID / "config.json", {"annotations": {
        "io.kubernetes.cri.sandbox-name": "checkout-7f9c", "io.kubernetes.cri.sandbox-namespace": "shop"}})
    with cgroup_v2_dir(_pod_path()) as directory, process_in_new_netns() as child:
        move_to_cgroup(child.pid, directory)
        namespace = list_namespaces()[os.stat(f"/proc/{child.pid}/ns/net").st_ino]
        resolver = ContainerResolver(files=files)
        pod = resolver.for_namespace(namespace)
        assert pod is not None and pod.title == "pod shop/checkout-7f9c"
        assert namespace.label(pod.title) == "pod shop/checkout-7f9c"
        own = next(ns for ns in list_namespaces().values() if ns.own)
        assert resolver.for_namespace(own) is None


def test_a_docker_scope_is_that_container(tmp_path: Path) -> None:
    writable_cgroup2()
    files = _runtime_files(tmp_path, real_proc=True)
    _write_json(tmp_path / "docker" / DOCKER_ID / "config.v2.json", {"Name": "/web"})
    with cgroup_v2_dir(f"{unique_name('socktop-test')}.slice/docker-{DOCKER_ID}.scope") as directory:
        child = subprocess.Popen(["sleep", "60"])
        try:
            move_to_cgroup(child.pid, directory)
            container = ContainerResolver(files=files).for_pid(child.pid)
            assert container is not None and container.title == "container web"
        finally:
            child.kill()
            child.wait(timeout=10)
