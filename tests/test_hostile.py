"""socktop under hostile input and a busy machine: issue 9's numbered cases, and issue 10's §6 and §7.

Each test names its case. The command line is run as a user runs it (a
subprocess, through a shell where the case is a redirection or a pipe);
every output that claims to be JSON goes through a strict parser.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from frozen import frozen_snapshot, make_app, press, settle
from loopback_sockets import alone
from nobody import as_nobody
from test_ui_e2e import TMUX, Terminal, terminal, wait_exit  # noqa: F401 - terminal is a fixture

from socktop.analyze.config import DEFAULT_THRESHOLDS, ConfigError, load_config
from socktop.analyze.findings import analyze
from socktop.collect.owners import OwnerScanner
from socktop.collect.records import TcpState
from socktop.demo.builders import Built, SocketFarm
from socktop.model.aggregate import OwnerKind, ProcessGroup
from socktop.model.engine import Engine
from socktop.model.snapshot import plural
from socktop.report import finite, phrase_lines, render_json
from socktop.ui.bars import TopBar
from socktop.ui.details import Selection, commands_for
from socktop.ui.keys import key_name, validate_keymap

SOCKTOP = [sys.executable, "-m", "socktop"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SOCKTOP, *args], capture_output=True, text=True, timeout=timeout)


def shell(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``script`` in bash with $SOCKTOP set to the command; PYTHONUNBUFFERED unset, as users run it."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    env["SOCKTOP"] = " ".join(SOCKTOP)
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=timeout, env=env)


def strict_json(text: str) -> dict:
    """json.loads that refuses NaN and Infinity, which Python's json accepts and JSON does not have."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def one_line_error(result: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("socktop: error: "), result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture(scope="module")
def farm():
    """A few hundred loopback sockets: enough that `--json --sockets` overflows a pipe's 64 KiB."""
    with SocketFarm() as sockets:
        sockets.close_wait(150)
        yield sockets


# --- 1, 11: non-finite and out-of-range numbers --------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "9" * 30])
def test_1_11_non_finite_thresholds_in_the_config_warn_and_keep_the_default(tmp_path: Path, value: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"[thresholds]\nclose_wait_warning = {value}\nport_range_warning = {value}\n")
    result = run("--json", "--config", str(config))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    document = strict_json(result.stdout)
    assert document["thresholds"]["close_wait_warning"] == 100 and document["thresholds"]["port_range_warning"] == 0.5
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 2 and all("finite" in line for line in warnings)


@pytest.mark.parametrize("flag", ["port_range_warning=nan", "port_range_warning=inf", "close_wait_warning=inf",
                                  "close_wait_warning=1e400", "fd_warning=-0.1"])
def test_11_non_finite_threshold_flags_are_rejected_in_one_line(flag: str) -> None:
    one_line_error(run("--json", "--threshold", flag), 2, "finite")


def test_11_json_is_strict_even_when_a_value_is_not_finite() -> None:
    """A NaN that reaches the document (a rate over no time) is written as null, never as NaN."""
    document = {"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": -float("inf"), "e": "x"}}
    assert finite(document) == {"a": None, "b": [1.5, None], "c": {"d": None, "e": "x"}}
    assert strict_json(json.dumps(finite(document), allow_nan=False))


# --- 2, 6, 7: files that cannot be read as a config ----------------------------------------------------

def test_2_non_utf8_config_is_one_line_and_status_2(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(b"[thresholds]\nclose_wait_warning = 5 # \xff\xfe\n")
    for mode in ("--json", "--once"):
        one_line_error(run(mode, "--config", str(config)), 2, "not UTF-8", "0xff")


def test_6_dev_zero_and_a_fifo_are_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo), str(tmp_path)):
        one_line_error(run("--json", "--config", path, timeout=20), 2, "not a regular file")


def test_6_a_huge_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("# padding\n" * 100_000)
    one_line_error(run("--json", "--config", str(config)), 2, "larger than")


def test_7_missing_config_named_on_the_command_line(tmp_path: Path) -> None:
    one_line_error(run("--json", "--config", "/nonexistent"), 2, "/nonexistent", "does not exist")
    one_line_error(run("--once", "--config", str(tmp_path / "none.toml")), 2, "does not exist")


def test_7_missing_default_config_is_silent(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run([*SOCKTOP, "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and result.stderr == ""


def test_7_one_read_hands_each_part_its_section(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[thresholds]\nclose_wait_warning = 7\n[keys]\ncopy_ss = "C"\n')
    loaded = load_config(config)
    assert loaded.thresholds.close_wait_warning == 7 and loaded.keys == {"copy_ss": "C"} and not loaded.warnings
    config.write_bytes(b"\xff")
    with pytest.raises(ConfigError):
        load_config(config)


# --- 3, 4, 5: where the output goes ---------------------------------------------------------------------

@pytest.mark.parametrize("args", ["--json", "--once", "explain close-wait"])
def test_3_closed_stdout_is_one_line(args: str) -> None:
    result = shell(f"$SOCKTOP {args} >&-")
    one_line_error(result, 1, "standard output is closed")


def test_4_a_closed_pipe_ends_quietly_with_141(farm: SocketFarm) -> None:
    result = shell("set -o pipefail; $SOCKTOP --json --sockets | head -c 10 >/dev/null; echo \"status $?\"")
    assert result.stderr == "" and result.stdout.strip() == "status 141"


@pytest.mark.parametrize("args", ["--json", "--once", "--json --sockets", "explain close-wait"])
def test_5_a_full_disk_is_one_line_and_non_zero(args: str, farm: SocketFarm) -> None:
    one_line_error(shell(f"$SOCKTOP {args} >/dev/full"), 1, "No space left on device")


# --- 16: key names and clashes ------------------------------------------------------------------------

def test_16_key_names_are_textual_names() -> None:
    assert key_name("?") == "question_mark" and key_name("K") == "K" and key_name("shift+ctrl+x") == "ctrl+shift+x"
    for bad in ("ctrl-k", "Ctrl+K", "kk", "f25", "ctrl+ctrl+k", "", " ", "\x1b"):
        assert key_name(bad) is None, bad


def test_16_invalid_names_and_clashes_are_rejected_and_defaults_kept() -> None:
    keymap, errors = validate_keymap({"pause": "q", "theme": "x", "sort": "x", "copy_ss": "ctrl-k",
                                      "help": "?,f1"}, "cfg")
    assert keymap == {"help": "question_mark,f1"}
    assert len(errors) == 3
    assert "keys.copy_ss = 'ctrl-k' is not a list of key names" in errors[0]
    assert "key 'q' would be quit (keys.quit) and pause (keys.pause): keys.pause ignored" in errors[1]
    assert "keys.theme, keys.sort ignored, their defaults kept" in errors[2]
    swapped, errors = validate_keymap({"pause": "q", "quit": "space"}, "cfg")
    assert swapped == {"pause": "q", "quit": "space"} and errors == []
    reserved, errors = validate_keymap({"slower": "ctrl+c"}, "cfg")
    assert reserved == {} and "interrupt (Ctrl+C)" in errors[0]


# --- issue 10 §7: the command line ----------------------------------------------------------------------

def test_s7_help_names_the_subcommands() -> None:
    result = run("--help")
    assert result.returncode == 0 and "socktop explain TOPIC" in result.stdout and "socktop demo" in result.stdout


def test_s7_a_pid_that_does_not_exist() -> None:
    one_line_error(run("--json", "--pid", "999999"), 2, "no such process: 999999")
    one_line_error(run("--pid", "4194305"), 2, "no such process")


def test_s7_once_header_breaks_between_phrases_and_counts_in_the_singular() -> None:
    phrases = ("socktop", "a-rather-long-host-name", "Linux 6.18.44-fc-v1045", "backend netlink", "1 socket",
               "owners 97%, 3 sockets closed before their owner was read")
    lines = phrase_lines(phrases, 80)
    assert all(len(line) <= 80 for line in lines) and len(lines) == 2
    assert [phrase for line in lines for phrase in line.strip().split("  ")] == list(phrases)
    result = subprocess.run([*SOCKTOP, "--once", "--state", "listen", "--port", "1"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0 and " 0 sockets" in result.stdout.splitlines()[0]
    assert (plural(1, "socket"), plural(2, "socket"), plural(1500, "socket")) == ("1 socket", "2 sockets",
                                                                                  "1,500 sockets")


async def test_s7_one_socket_in_the_tui_is_singular() -> None:
    snapshot = frozen_snapshot()
    (one,) = [record for record in snapshot.sockets if record.state is TcpState.SYN_RECV][:1]
    app = make_app(replace(snapshot, sockets=[one], aggregates=snapshot.regroup([one])))
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        shown = app.query_one(TopBar).render().plain
        assert re.search(r"\b1 socket\b", shown) and "1 sockets" not in shown, shown


def test_7_serve_reads_the_config_the_same_way(tmp_path: Path) -> None:
    one_line_error(run("serve", "--config", "/nonexistent"), 2, "does not exist")
    one_line_error(run("serve", "--config", "/dev/zero", timeout=20), 2, "not a regular file")


# --- 8, issue 10 §6: sockets that close between the dump and the owner scan ------------------------------

class CloseAfterDump:
    """A real backend that, right after its next dump, runs ``close``: the dump lists those sockets
    with their inodes, and by the time the owner scan reads /proc no process holds them."""

    def __init__(self, backend, close) -> None:
        self.backend, self.close, self.name = backend, close, backend.name

    def sockets(self):
        records = self.backend.sockets()
        if self.close is not None:
            self.close()
            self.close = None
        return records


def close_wait_servers(count: int) -> tuple[socket.socket, list[socket.socket], list[socket.socket]]:
    """``count`` server ends in CLOSE_WAIT, held by this process (their clients have closed)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=count)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(count)]
    servers = [listener.accept()[0] for _ in range(count)]
    for client in clients:
        client.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = {TcpState.parse(line.split()[0]) for line in subprocess.run(
            ["ss", "-tanH", f"sport = :{listener.getsockname()[1]}"], capture_output=True, text=True,
            timeout=60).stdout.splitlines()}
        if states == {TcpState.LISTEN, TcpState.CLOSE_WAIT}:
            break
        time.sleep(0.02)
    return listener, clients, servers


def unknown_owners(snapshot, port: int) -> list:
    """The sockets on ``port`` (either end) counted as held by a process we may not see."""
    return [record for record in snapshot.sockets if port in (record.local_port, record.remote_port)
            and snapshot.owners_of(record).kind is OwnerKind.UNKNOWN]


def test_8_sockets_closed_before_their_owner_was_read_are_no_unknown_owner() -> None:
    listener, _, servers = close_wait_servers(100)
    port = listener.getsockname()[1]
    engine = Engine("netlink")
    engine.backend = CloseAfterDump(engine.backend, lambda: [server.close() for server in servers])
    try:
        snapshot = engine.refresh()
    finally:
        listener.close()
    assert not unknown_owners(snapshot, port)
    assert not [group for key, group in snapshot.aggregates.by_process.items()
                if key.startswith("uid:") and group.counts.get(TcpState.CLOSE_WAIT)]
    closed_note = re.search(r"(\d+) sockets closed before their owner was read", snapshot.source.owner_note)
    assert closed_note and int(closed_note.group(1)) >= 100  # ours, and any other socket that closed meanwhile
    assert "PID namespace" not in snapshot.source.owner_note and "run as root" not in snapshot.source.owner_note
    findings = analyze(snapshot, replace(DEFAULT_THRESHOLDS, close_wait_warning=50)).findings
    assert not [finding for finding in findings if "uid:" in finding.id]
    closed = [record for record in snapshot.sockets if record.inode in snapshot.ownership.closed]
    assert len(closed) == 100 and {snapshot.owners_of(record).kind for record in closed} <= {
        OwnerKind.INFERRED, OwnerKind.NONE}


def test_8_a_churning_server_never_forms_an_unknown_owner_group() -> None:
    """A server that accepts and closes at once, clients that connect in a loop: over 15 refreshes
    no socket is grouped as an owner we may not see, and the note states no unchecked reason."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                listener.accept()[0].close()
            except OSError:
                pass

    def connect() -> None:
        while not stop.is_set():
            try:
                socket.create_connection(listener.getsockname(), timeout=1).close()
            except OSError:
                pass

    threads = [threading.Thread(target=serve), *(threading.Thread(target=connect) for _ in range(2))]
    for thread in threads:
        thread.start()
    try:
        engine = Engine("netlink")
        for _ in range(15):
            snapshot = engine.refresh()
            assert not unknown_owners(snapshot, listener.getsockname()[1])
            assert "PID namespace" not in snapshot.source.owner_note
            assert "run as root" not in snapshot.source.owner_note
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        listener.close()


# --- 9: a holder that exits before its /proc entry is read ---------------------------------------------

HOLDER = ("import socket, sys\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
          "print(s.getsockname()[1], flush=True); sys.stdin.read()\n")


def test_9_no_half_null_process_entries() -> None:
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    port = int(child.stdout.readline())

    class ExitingBeforeRead(OwnerScanner):
        def _refresh_processes(self, owner_pids):
            child.kill()  # its descriptors were read, then it is gone before its name and user are
            child.wait()
            super()._refresh_processes(owner_pids)

    engine = Engine("netlink")
    engine.scanner = ExitingBeforeRead()
    snapshot = engine.refresh()
    assert all(pid in snapshot.ownership.processes for pids in snapshot.ownership.pids_by_inode.values()
               for pid in pids)
    document = strict_json(render_json(snapshot, {}, True))
    for entry in document["processes"]:
        if entry["key"].startswith("pid:"):
            assert entry["pid"] is not None and entry["name"] is not None and entry["user"] != "?", entry
    assert f"pid:{child.pid}" not in snapshot.aggregates.by_process
    assert not [record for record in snapshot.sockets if record.local_port == port
                and snapshot.owners_of(record).kind is OwnerKind.UNKNOWN]


# --- issue 10 §6 and 17: copy keys on a row with no process say what is true ---------------------------

async def test_s6_k_on_a_hidden_owner_row_as_root_never_says_run_as_root() -> None:
    snapshot = frozen_snapshot()
    rooted = replace(snapshot, source=replace(snapshot.source, is_root=True,
                                              owner_note="12 sockets held by no process visible here"))
    app = make_app(rooted)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        await press(pilot, "3")
        processes = app.pane("processes")
        for _ in range(20):
            if processes.selected_key == "uid:998":
                break
            await press(pilot, "down")
        await press(pilot, "k", "l")
        messages = [notification.message for notification in app._notifications]
        assert sum("no process visible here holds these sockets of uid 998, even as root" in message
                   for message in messages) == 2, messages
        assert not any("run socktop as root" in message for message in messages)


def test_17_copy_keys_on_an_exited_process_say_it_exited() -> None:
    exited = ProcessGroup(key="pid:8181", process=None, uid=None, user="?", counts={TcpState.TIME_WAIT: 3},
                          inferred={}, total=3)
    for is_root in (True, False):
        commands = commands_for(Selection(focus="processes", process=exited, is_root=is_root))
        assert commands["kill"].why_not == commands["lsof"].why_not == "pid 8181 has exited: there is no process to act on"
    hidden = replace(exited, key="uid:998", uid=998)
    assert "run socktop as root" in commands_for(Selection(focus="processes", process=hidden))["kill"].why_not


def test_2_a_default_config_that_cannot_be_read_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "socktop").mkdir()
    (tmp_path / "socktop" / "config.toml").write_bytes(b"\xff\xfe")
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run([*SOCKTOP, "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and strict_json(result.stdout)
    assert result.stderr.count("\n") == 1 and "not UTF-8" in result.stderr and "using the defaults" in result.stderr


# --- 10: psutil without root --------------------------------------------------------------------------

def test_10_psutil_without_root_is_honest_about_coverage_and_finds_the_leak() -> None:
    with SocketFarm() as sockets:  # a port no earlier test's TIME_WAIT points to: filtered(port=) holds only these
        port = alone(lambda: sockets.close_wait(60), lambda built: built.port, Built.covers).port

        def look() -> dict:
            snapshot = Engine("psutil").refresh()
            mine = snapshot.filtered(port=port)
            findings = analyze(snapshot, replace(DEFAULT_THRESHOLDS, close_wait_warning=50)).findings
            return {"coverage": snapshot.coverage, "note": snapshot.source.owner_note,
                    "groups": {key: group.counts.get(TcpState.CLOSE_WAIT, 0)
                               for key, group in mine.aggregates.by_process.items()},
                    "findings": [finding.id for finding in findings if finding.kind == "close-wait-leak"]}

        seen = as_nobody(look)
    if seen is None:
        pytest.skip("cannot drop to user nobody here")
    assert seen["coverage"] < 1.0 and "run as root" in seen["note"]
    assert seen["groups"] == {"uid:-1": 60}
    assert seen["findings"] == ["close-wait-leak:uid:-1"]


# --- 12: what the proc backend cannot know ------------------------------------------------------------

def test_12_a_queued_listener_is_never_silent_with_the_proc_backend() -> None:
    with SocketFarm() as sockets:
        port = sockets.full_accept_queue(backlog=4).port
        by_backend = {name: Engine(name).refresh() for name in ("netlink", "proc")}
    (netlink,) = [f for f in analyze(by_backend["netlink"]).findings if f.id == f"accept-queue:in:{port}"]
    assert "full" in netlink.title and netlink.metrics["backlog"] == 4
    proc = by_backend["proc"]
    assert "listen_backlog" in proc.source.unavailable and "listen_backlog" not in by_backend["netlink"].source.unavailable
    (queued,) = [f for f in analyze(proc).findings if f.id == f"accept-queue:in:{port}"]
    assert queued.metrics == {"recv_q": 5, "backlog": None}
    assert "backlog not available with the proc backend" in queued.title and queued.severity.value == "info"
    capped = replace(proc, kernel=replace(proc.kernel, sysctls={**proc.kernel.sysctls, "net.core.somaxconn": "4"}))
    (full,) = [f for f in analyze(capped).findings if f.id == f"accept-queue:in:{port}"]
    assert full.severity.value == "warning" and "full" in full.title


# --- 14, 18: the real terminal (tmux) -------------------------------------------------------------------

def socktop_pid(term: Terminal) -> int:
    """The socktop process the pane's shell started."""
    shell = int(subprocess.run([*TMUX, "display-message", "-p", "-t", term.name, "#{pane_pid}"],
                               capture_output=True, text=True, check=True, timeout=30).stdout)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{shell}/task").iterdir():
            for child in (task / "children").read_text().split():
                if "socktop" in Path(f"/proc/{child}/cmdline").read_text():
                    return int(child)
        time.sleep(0.1)
    raise AssertionError("socktop did not start")


def pane_flags(term: Terminal) -> dict[str, str]:
    names = ("alternate_on", "mouse_any_flag", "mouse_standard_flag", "cursor_flag")
    shown = subprocess.run([*TMUX, "display-message", "-p", "-t", term.name, " ".join(f"#{{{n}}}" for n in names)],
                           capture_output=True, text=True, check=True, timeout=30).stdout.split()
    return dict(zip(names, shown))


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP])
def test_14_sigterm_and_sighup_quit_like_q_and_restore_the_terminal(terminal, number: int) -> None:
    term = terminal("--interval 0.5")
    term.wait_for(lambda s: " sockets" in s)
    assert pane_flags(term)["alternate_on"] == "1"
    os.kill(socktop_pid(term), number)
    assert wait_exit(term) == "0"
    assert pane_flags(term) == {"alternate_on": "0", "mouse_any_flag": "0", "mouse_standard_flag": "0",
                                "cursor_flag": "1"}


def colours(escaped: str) -> set[str]:
    """The colour parameters of every SGR sequence in tmux's ``capture-pane -e`` text (39/49: default)."""
    found = set()
    for parameters in re.findall(r"\x1b\[([0-9;:]*)m", escaped):
        codes = [int(code) for code in re.split("[;:]", parameters) if code]
        for code in codes:
            if code in (38, 48) or 30 <= code <= 37 or 40 <= code <= 47 or 90 <= code <= 107:
                found.add(parameters)
    return found


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_18_no_color_means_no_colour_at_all(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "TERM": "xterm-256color", "COLORTERM": "truecolor", "NO_COLOR": "1"}
    term = Terminal(f"rel-nocolor-{os.getpid()}", f"{shlex.quote(sys.executable)} -m socktop; sleep 30", env)
    try:
        term.wait_for(lambda s: " sockets" in s)
        highlighted = re.compile(r"\x1b\[[0-9;]*7[;m]")  # the highlighted row: reverse video, not a colour
        deadline = time.monotonic() + 60
        while True:  # the table's rows come with the first refresh's view: seconds on a loaded machine
            escaped = subprocess.run([*TMUX, "capture-pane", "-p", "-e", "-t", term.name], capture_output=True,
                                     text=True, check=True, timeout=30).stdout
            if highlighted.search(escaped) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert " sockets" in escaped and not colours(escaped)
        assert highlighted.search(escaped)
    finally:
        term.close()


def test_18_term_dumb_prints_the_summary_and_a_hint() -> None:
    result = subprocess.run(SOCKTOP, capture_output=True, text=True, timeout=60, env={**os.environ, "TERM": "dumb"})
    assert result.returncode == 0 and "By state" in result.stdout and "\x1b[" not in result.stdout
    assert result.stderr.count("\n") == 1 and "TERM=dumb" in result.stderr


async def test_16_a_rejected_key_keeps_its_default_in_the_running_app() -> None:
    keymap, errors = validate_keymap({"pause": "q", "copy_ss": "C"}, "cfg")
    assert keymap == {"copy_ss": "C"} and len(errors) == 1
    app = make_app(keymap=keymap)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        await press(pilot, "space")
        assert app.paused
        await press(pilot, "C")
        assert app.clipboard == "ss -tanp"
        await pilot.press("q")
        await pilot.pause()
    assert app.return_value == 0


# --- 13: TIME_WAIT of a listener shared by forked workers ---------------------------------------------

ACCEPTOR = """
import socket, sys
listener = socket.socket(fileno=int(sys.argv[1]))
while True:
    connection, _ = listener.accept()
    connection.close()  # the server closes first: its side ends in TIME_WAIT, inode 0
"""


def test_13_inferred_time_wait_is_credited_once_across_workers_sharing_a_listener() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = listener.getsockname()[1]
    workers = [subprocess.Popen([sys.executable, "-c", ACCEPTOR, str(listener.fileno())],
                                pass_fds=[listener.fileno()]) for _ in range(2)]
    listener.close()  # only the two workers hold it now, as a prefork server's children do
    try:
        for _ in range(30):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.recv(1)  # the worker's FIN: then ours, so that the worker's side enters TIME_WAIT
        engine = Engine("netlink")
        deadline = time.monotonic() + 10
        while True:
            snapshot = engine.refresh()
            time_wait = [r for r in snapshot.sockets if r.local_port == port and r.state is TcpState.TIME_WAIT]
            if len(time_wait) == 30 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # The kernel may end a TIME_WAIT early (an RST from a client's orphan on a loaded host kills it:
        # tcp_rfc1337=0), so the invariant is checked against what this snapshot holds, not against 30.
        assert len(time_wait) >= 20, [(r.state.name, r.remote_port) for r in snapshot.sockets if r.local_port == port]
        groups = [snapshot.aggregates.by_process.get(f"pid:{worker.pid}") for worker in workers]
        credited = [group.inferred_time_wait for group in groups if group is not None]
        assert sum(credited) == len(time_wait), credited  # each socket once, never once for every worker
        for worker in workers:  # a row agrees with the drill-down into it
            group = snapshot.aggregates.by_process[f"pid:{worker.pid}"]
            assert group.total == len(snapshot.filtered(pid=worker.pid).sockets)
        inferred = sum(sum(group.inferred.values()) for group in snapshot.aggregates.by_process.values())
        assert inferred <= sum(1 for record in snapshot.sockets if not record.inode)  # never more than the table
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def sampling(pid: int) -> bool:
    """Whether the process's main thread sleeps (the --sample loop's wait): not importing, not dumping."""
    try:
        return "nanosleep" in Path(f"/proc/{pid}/wchan").read_text() or \
            Path(f"/proc/{pid}/syscall").read_text().split()[0] in ("230", "115")  # clock_nanosleep: x86-64, arm64
    except (OSError, IndexError):
        return False


def test_ctrl_c_during_a_one_shot_run_says_one_line() -> None:
    # SIGINT as an interactive shell leaves it: a suite started in the background (`pytest &`) ignores SIGINT,
    # its children inherit that, and Python installs no Ctrl-C handler over an ignored SIGINT (as intended)
    child = subprocess.Popen([*SOCKTOP, "--once", "--netns", "self", "--sample", "60", "--interval", "10"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not sampling(child.pid):
            assert child.poll() is None and time.monotonic() < deadline, child.communicate(timeout=10)
            time.sleep(0.05)
        status = Path(f"/proc/{child.pid}/status").read_text()
        for _ in range(15):  # what Ctrl-C sends: the whole foreground process group; pressed again if need be
            os.killpg(child.pid, signal.SIGINT)
            try:
                out, err = child.communicate(timeout=2)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            raise AssertionError(f"Ctrl-C did not end it; its signals were:\n{status}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert (child.returncode, err) == (130, "socktop: interrupted\n"), err


def test_4_the_demo_survives_a_closed_pipe() -> None:
    result = shell("set -o pipefail; $SOCKTOP demo --duration 2 | head -c 1 >/dev/null; echo \"status $?\"")
    assert "Traceback" not in result.stderr and result.stdout.strip() == "status 0", result.stderr


# --- churn: the owner scan's cost follows what changed -------------------------------------------------

def test_churn_a_new_process_costs_its_own_descriptors_not_the_whole_of_proc() -> None:
    """After the first full scan, a socket opened by a newly forked process is placed by reading the
    fd tables of the new processes and the known socket holders only (counted by pid, not timed: the
    machine's other processes may fork meanwhile, and those are new too)."""
    class Recording(OwnerScanner):
        def _read_fds(self, pid, *args):
            self.read.append(pid)
            return super()._read_fds(pid, *args)

    idle = [subprocess.Popen(["sleep", "60"]) for _ in range(30)]  # processes that hold no socket
    scanner = Recording()
    scanner.read = []
    mine = socket.create_server(("127.0.0.1", 0))
    scanner.update({os.fstat(mine.fileno()).st_ino})
    listed, holders = set(scanner._known_pids), set(scanner.processes)  # /proc as the full scan saw it
    assert {process.pid for process in idle} <= listed
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        port = int(child.stdout.readline())
        (inode,) = [int(line.split()[9]) for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                    if int(line.split()[1].split(":")[1], 16) == port and line.split()[3] == "0A"]
        scanner.read = []
        scanner.update({os.fstat(mine.fileno()).st_ino, inode})
        assert scanner.pids_by_inode[inode] == (child.pid,)
        assert child.pid in scanner.read
        old = [pid for pid in scanner.read if pid in listed and pid not in holders]
        assert old == [], (old, len(listed))  # no process the full scan saw without a socket: not the idle ones
    finally:
        for process in (child, *idle):
            process.kill()
            process.wait()
        mine.close()
