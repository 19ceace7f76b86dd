"""socktop in a real terminal (tmux): over the live demo scenario, and with a process whose name is hostile.

Each test starts its own tmux session (named after the test and this pid),
reads the screen with ``capture-pane``, presses keys with ``send-keys``, and
kills only that session and the child it started.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

WIDTH, HEIGHT = 200, 50
#: a tmux server of our own (its socket named after this process): a shared default server may have been
#: started in another network namespace, and the sessions it starts would see that namespace's sockets
TMUX = ["tmux", "-L", f"socktop-tests-{os.getpid()}"]
#: a comm of 15 bytes (the kernel's limit): markup, a shell substitution, both quotes, and ESC [
HOSTILE_COMM = "[bold]$(id)\"'\x1b["
HOSTILE_ARG = "[red]$(touch /tmp/pwned)\x1b[2J\x1b]0;pwned\x07"


class Terminal:
    """One tmux session running one command."""

    def __init__(self, name: str, command: str, env: dict[str, str], size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
        self.name = name
        exports = [f"-e{key}={value}" for key, value in env.items()]
        for attempt in range(5):  # the server of a session just killed may still be exiting
            started = subprocess.run([*TMUX, "new-session", "-d", "-s", name, "-x", str(size[0]), "-y", str(size[1]),
                                      *exports, command], capture_output=True, text=True, timeout=30)
            if started.returncode == 0:
                return
            time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"tmux new-session failed: {started.stderr.strip()}")

    def screen(self) -> str:
        return subprocess.run([*TMUX, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True,
                              check=False, timeout=30).stdout

    def press(self, *keys: str) -> None:
        """Each key as a person would press it: one at a time, a moment apart."""
        for key in keys:
            subprocess.run([*TMUX, "send-keys", "-t", self.name, key], check=True, timeout=30)
            time.sleep(0.15)

    def type(self, text: str) -> None:
        subprocess.run([*TMUX, "send-keys", "-l", "-t", self.name, text], check=True, timeout=30)

    def wait_for(self, test: Callable[[str], object], timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if test(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; the screen was:\n{screen}")
            time.sleep(0.25)

    def pane_pid(self) -> int:
        """The pid of the shell the session runs its command in."""
        return int(subprocess.run([*TMUX, "list-panes", "-t", self.name, "-F", "#{pane_pid}"], capture_output=True,
                                  text=True, check=True, timeout=30).stdout.split()[0])

    def close(self) -> None:
        subprocess.run([*TMUX, "kill-session", "-t", self.name], capture_output=True, check=False, timeout=30)


@pytest.fixture
def terminal(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Terminal]]:
    started: list[Terminal] = []
    env = {"XDG_CONFIG_HOME": str(tmp_path), "TERM": "xterm-256color", "COLORTERM": "truecolor"}

    def start(arguments: str, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Terminal:
        exit_file = tmp_path / "exit-status"
        # the pane gets its size just after the session starts: let it settle before socktop reads it
        command = (f"sleep 0.5; {shlex.quote(sys.executable)} -m socktop {arguments}; "
                   f"echo $? > {shlex.quote(str(exit_file))}; sleep 30")
        term = Terminal(f"socktop-{request.node.name[:20]}-{os.getpid()}", command, env, size)
        term.exit_file = exit_file  # type: ignore[attr-defined]
        started.append(term)
        return term

    yield start
    for term in started:
        term.close()


def wait_exit(term: Terminal, timeout: float = 60.0) -> str:
    exit_file: Path = term.exit_file  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while not exit_file.exists() or not exit_file.read_text().strip():
        assert time.monotonic() < deadline, f"socktop did not quit; the screen was:\n{term.screen()}"
        time.sleep(0.2)
    return exit_file.read_text().strip()


def pid_alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:  # gone, even between two reads
        return False


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc/*/stat; the comm may hold spaces and parentheses)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_demo_in_a_real_terminal(terminal):
    term = terminal("--demo --interval 0.5")
    screen = term.wait_for(lambda s: re.search(r"CLOSE-WAIT [1-9]", s) and "leaky-api" in s)
    assert re.search(r"socktop .* sockets", screen.splitlines()[0])
    (socktop,) = children_of(term.pane_pid())  # the pane's shell runs socktop, and socktop the demo's roles
    roles = children_of(socktop)
    assert len(roles) >= 5, roles
    term.press("/")
    term.type("state:close-wait")
    term.press("Enter")
    screen = term.wait_for(lambda s: "/state:close-wait" in s and "CLOSE-WAIT" in s)
    in_view = int(re.search(r"([\d,]+) of [\d,]+ sockets", screen).group(1).replace(",", ""))
    assert in_view > 0
    term.press("3")
    term.press("d")
    screen = term.wait_for(lambda s: "Details:" in s and "kill -TERM" in s)
    # the drawer's process (early on upload-srv may lead leaky-api): a bare "N leaky-api" also matched
    # a count in another pane, and a small count is often a live pid (3 is a kernel thread)
    pid = int(re.search(r"kill for pid (\d+) ", screen).group(1))
    assert pid_alive(pid)
    term.press("?")
    term.wait_for(lambda s: "socktop keys" in s)
    term.press("Escape")
    term.wait_for(lambda s: "socktop keys" not in s)
    term.press("q")
    assert wait_exit(term) == "0"
    deadline = time.monotonic() + 30
    while any(map(pid_alive, roles)) and time.monotonic() < deadline:  # the demo stops with socktop
        time.sleep(0.2)
    assert not any(map(pid_alive, roles)), [pid for pid in roles if pid_alive(pid)]


HOSTILE_CHILD = """
import socket, sys, time
open("/proc/self/comm", "w").write(sys.argv[1])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
print(listener.getsockname()[1], flush=True)
time.sleep(float(sys.argv[3]))
"""


def test_hostile_process_name_is_shown_literally(terminal):
    child = subprocess.Popen([sys.executable, "-c", HOSTILE_CHILD, HOSTILE_COMM, HOSTILE_ARG, "60"],
                             stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()  # listening
        assert Path(f"/proc/{child.pid}/comm").read_text().rstrip("\n") == HOSTILE_COMM
        term = terminal("--interval 0.5")
        term.wait_for(lambda s: " sockets" in s)
        term.press("/")
        term.type(f"pid:{child.pid}")
        term.press("Enter", "3", "d")
        literal = "[bold]$(id)\"'\\e["
        screen = term.wait_for(lambda s: literal in s and "Details:" in s)
        assert "/tmp/pwned)\\e[2J\\e]0;pwned\\x07" in screen  # its command line, in the drawer
        lines = screen.splitlines()
        assert lines[0].startswith("socktop ") and len(lines) == HEIGHT  # nothing cleared or scrolled the screen
        title = subprocess.run([*TMUX, "display-message", "-p", "-t", term.name, "#{pane_title}"],
                               capture_output=True, text=True, check=False, timeout=30).stdout
        assert "pwned" not in title
        term.press("q")
        assert wait_exit(term) == "0"
    finally:
        child.kill()
        child.wait()


def test_at_80x24_what_is_wrong_is_on_the_first_screen_and_k_names_its_target(terminal):
    """The issue's case: at 80x24 the findings strip shows the demo's problems; 3, Enter, k copies the kill
    for the row Enter picked (the top one: nobody moved in the pane), and the notification names it."""
    term = terminal("--demo --interval 0.5 --clipboard osc52", size=(80, 24))
    screen = term.wait_for(lambda s: re.search(r"^ (CRIT|WARN) ", s, re.M) and "leaky-api" in s, timeout=60)
    assert all(len(line) <= 80 for line in screen.splitlines()) and "3 Processes" in screen
    term.press("3", "Enter", "k")
    screen = term.wait_for(lambda s: "Copied kill for pid" in s)
    picked = re.search(r"Filter:\s+pid (\d+)", screen).group(1)
    toast = " ".join(line.partition("▌")[2].strip(" │─╯") for line in screen.splitlines() if "▌" in line)
    assert re.search(rf"Copied kill for pid {picked} [\w-]+ \(", toast), toast  # pid, name, (its count
    term.press("q")
    assert wait_exit(term) == "0"
