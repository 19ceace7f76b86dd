"""The owner scanner on real processes: incremental reads, exits mid-scan, reused PIDs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import numpy as np

from socktop.collect.owners import OwnerScanner, read_process, soft_fd_limit, start_ticks

HOLDER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
    "print(s.getsockname()[1], flush=True); sys.stdin.read()\n"
)


def socket_inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def test_finds_this_process_and_leaves_present_sockets_unread(tmp_path) -> None:
    (tmp_path / str(os.getpid())).symlink_to(f"/proc/{os.getpid()}")  # a /proc with only us: no noise
    scanner = OwnerScanner(proc=str(tmp_path))
    held = [socket.socket() for _ in range(200)]
    present = {socket_inode(sock) for sock in held}
    scanner.update(present)
    assert all(scanner.pids_by_inode[inode] == (os.getpid(),) for inode in present)
    me = scanner.processes[os.getpid()]
    assert me.name and me.user and me.fd_count and me.fd_limit == soft_fd_limit(
        open(f"/proc/{os.getpid()}/limits").read())
    links_after_first_scan = scanner.stats.links_read
    scanner.update(present)
    assert scanner.stats.links_read == links_after_first_scan  # nothing unknown: no scan at all
    new = socket.socket()
    scanner.update(present | {socket_inode(new)})
    assert scanner.pids_by_inode[socket_inode(new)] == (os.getpid(),)
    assert scanner.stats.links_read - links_after_first_scan <= links_after_first_scan - len(held) + 1
    for sock in (*held, new):
        sock.close()



def test_a_column_of_inodes_is_read_as_the_set_would_be(tmp_path) -> None:
    """The engine passes the table's inode column (numpy, zeros and repeats included): only what
    opened and closed since the last update costs a Python step, and the result is the set's."""
    (tmp_path / str(os.getpid())).symlink_to(f"/proc/{os.getpid()}")
    held = [socket.socket() for _ in range(3)]
    inodes = [socket_inode(sock) for sock in held]
    scanner = OwnerScanner(proc=str(tmp_path))
    scanner.update(np.array([0, inodes[0], inodes[1], 0, inodes[1]], np.uint64))
    assert set(scanner.pids_by_inode) == set(inodes[:2])
    links = scanner.stats.links_read
    scanner.update(np.array([inodes[1], inodes[0], 0], np.uint64))  # the same sockets: nothing is read
    assert scanner.stats.links_read == links
    scanner.update(np.array([inodes[2], inodes[1]], np.uint64))  # one opened, one closed
    assert set(scanner.pids_by_inode) == set(inodes[1:])
    scanner.update({inodes[2]})  # a set after a column, and a column after a set
    scanner.update(np.array([inodes[0], inodes[2]], np.uint64))
    assert set(scanner.pids_by_inode) == {inodes[0], inodes[2]}
    for sock in held:
        sock.close()

def test_unowned_inodes_do_not_trigger_a_scan_every_time() -> None:
    scanner = OwnerScanner()
    phantom = 999_999_999
    scanner.update({phantom})
    scans = scanner.stats.scans
    scanner.update({phantom})
    assert phantom in scanner.unowned and scanner.stats.scans == scans


def test_a_process_that_exits_mid_scan_is_skipped() -> None:
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    mine = socket.socket()

    class ExitingDuringScan(OwnerScanner):
        def _list_pids(self):
            pids = super()._list_pids()
            child.kill()  # it is listed, then gone before its fds are read
            child.wait()
            return pids

    scanner = ExitingDuringScan()
    scanner.update({socket_inode(mine)})
    assert scanner.pids_by_inode[socket_inode(mine)] == (os.getpid(),)
    assert child.pid not in scanner.processes and scanner.stats.vanished_pids >= 1
    mine.close()


def test_process_facts_survive_odd_command_names() -> None:
    stat = "4242 (evil) name (x)) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 1 1"
    assert start_ticks(stat) == 123456
    assert start_ticks("garbage") is None
    assert soft_fd_limit("Max open files            1024                 524288               files\n") == 1024
    assert soft_fd_limit("Max open files            unlimited            unlimited            files\n") is None
    assert read_process(2**22 + 12345, None) is None  # no such pid: None, not an exception


def test_a_reused_pid_is_read_afresh() -> None:
    me = read_process(os.getpid(), 3)
    assert me is not None
    stale = type(me)(pid=me.pid, start_ticks=me.start_ticks - 1, name="someone-else", cmdline="", uid=me.uid,
                     user=me.user, fd_count=3, fd_limit=me.fd_limit)
    fresh = read_process(os.getpid(), 3, known=stale)
    assert fresh is not None and fresh.name != "someone-else" and fresh.start_ticks == me.start_ticks


def test_a_process_that_renames_itself_is_shown_by_its_new_name() -> None:
    """Demo workers (and many daemons) set /proc/self/comm after start; the cache must follow."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print(flush=True); sys.stdin.readline();"
         "open('/proc/self/comm', 'w').write('renamed-api'); print(flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()
        before = read_process(child.pid, 3)
        child.stdin.write("\n")
        child.stdin.flush()
        child.stdout.readline()
        after = read_process(child.pid, 3, known=before)
        assert before is not None and after is not None
        assert before.name != "renamed-api" and after.name == "renamed-api"
        assert after.start_ticks == before.start_ticks
    finally:
        child.kill()
        child.wait()


def test_full_rescans_are_spread_over_updates_at_long_intervals(tmp_path) -> None:
    """Every FULL_RESCAN_EVERY seconds, but at most once in SPREAD_UPDATES updates: at the exporter's
    15 s a whole scan falls on one collection a minute, at the TUI's 1 s still every 30 s."""
    (tmp_path / str(os.getpid())).symlink_to(f"/proc/{os.getpid()}")
    for interval, updates, expected in ((15.0, 9, [1, 5, 9]), (1.0, 62, [1, 31, 61])):
        now = [0.0]
        scanner = OwnerScanner(proc=str(tmp_path), clock=lambda: now[0])
        with socket.socket() as held:
            full = []
            for update in range(1, updates + 1):
                before = scanner.stats.full_scans
                scanner.update({socket_inode(held)})
                full += [update] if scanner.stats.full_scans > before else []
                now[0] += interval
        assert full == expected, interval


def test_a_reused_fd_number_is_read_again(tmp_path) -> None:
    """fd numbers are reused lowest first: a number that held a file, then a socket closed
    refreshes ago, may name a new socket now, and the incremental scan must see it (the
    clock stands still, so no rate-limited full rescan can come to the rescue)."""
    (tmp_path / str(os.getpid())).symlink_to(f"/proc/{os.getpid()}")
    scanner = OwnerScanner(proc=str(tmp_path), clock=lambda: 0.0)
    for _round in range(2):  # the first round may use up the one full retry
        first = socket.socket()
        scanner.update({socket_inode(first)})
        number = first.fileno()
        first.close()
        scanner.update(set())  # the socket closed one refresh...
        scanner.update(set())  # ...and another passes
        with open(os.devnull) as file_on_that_number:
            assert file_on_that_number.fileno() == number
            scanner.update(set())
        second = socket.socket()
        assert second.fileno() == number
        scanner.update({socket_inode(second)})
        assert scanner.pids_by_inode.get(socket_inode(second)) == (os.getpid(),)
        assert socket_inode(second) not in scanner.unowned
        second.close()


PREFETCH_PROBE = """
import json, os, signal, socket, sys, time
from socktop.collect.owners import OwnerScanner

def inode(sock):
    return os.fstat(sock.fileno()).st_ino

kill_child = sys.argv[1] == "kill"
before = socket.socket()
scanner = OwnerScanner()
scanner.prefetch()
forked = scanner._prefetch is not None
if kill_child:
    os.kill(scanner._prefetch[0], signal.SIGKILL)
time.sleep(0.3)  # the child has most likely read this process's table by now
number = before.fileno()
before.close()
after = socket.socket()  # opened after the prefetch began, most likely in the closed one's descriptor number
later = [socket.socket() for _ in range(3)]
present = {inode(sock) for sock in (after, *later)}
scanner.update(present)
print(json.dumps({"forked": forked, "reused": after.fileno() == number,
                  "owners": sorted(set(scanner.pids_by_inode.get(i, ()) for i in present)),
                  "unowned": len(scanner.unowned), "closed": len(scanner.closed), "me": os.getpid(),
                  "holders": sorted(scanner.processes), "scans": scanner.stats.full_scans}))
"""


def _prefetch_probe(mode: str) -> dict:
    """The probe in a process of its own: `prefetch` forks only while a single thread runs."""
    result = subprocess.run([sys.executable, "-c", PREFETCH_PROBE, mode], capture_output=True, text=True,
                            timeout=60, check=True)
    return json.loads(result.stdout)


def test_prefetched_tables_place_sockets_opened_after_they_were_read() -> None:
    seen = _prefetch_probe("keep")
    assert seen["forked"] and seen["reused"]
    assert seen["owners"] == [[seen["me"]]] and seen["unowned"] == seen["closed"] == 0
    assert seen["holders"] == [seen["me"]] and seen["scans"] == 1  # the child's scan counts, none after it


def test_a_prefetch_child_that_died_leaves_update_to_scan_itself() -> None:
    seen = _prefetch_probe("kill")
    assert seen["forked"]
    assert seen["owners"] == [[seen["me"]]] and seen["unowned"] == seen["closed"] == 0
    assert seen["scans"] == 1  # its own full scan


CANCEL_PROBE = """
import json, os
from socktop.collect.owners import OwnerScanner

scanner = OwnerScanner()
scanner.prefetch()
child = scanner._prefetch[0] if scanner._prefetch else None
scanner.cancel_prefetch()
scanner.cancel_prefetch()  # a second call, as a run's cleanup makes after a failure, does nothing
print(json.dumps({"forked": child is not None, "child_gone": child is not None and not os.path.exists(f"/proc/{child}"),
                  "pending": scanner._prefetch is not None}))
"""


def test_a_prefetch_not_taken_is_ended_and_reaped() -> None:
    """A one-shot run that fails or is interrupted leaves no child behind holding its stdout."""
    result = subprocess.run([sys.executable, "-c", CANCEL_PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == {"forked": True, "child_gone": True, "pending": False}


def test_prefetch_forks_nothing_while_other_threads_run() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        scanner = OwnerScanner()
        scanner.prefetch()
        assert scanner._prefetch is None
        mine = socket.socket()
        scanner.update({socket_inode(mine)})
        assert scanner.pids_by_inode[socket_inode(mine)] == (os.getpid(),)
        mine.close()
    finally:
        stop.set()
        other.join()
