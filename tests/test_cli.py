"""The non-interactive CLI as a user runs it: `--once`, `--json` (schema socktop/1), filters, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from loopback_sockets import alone

from socktop import __version__
from socktop.demo.builders import Built, SocketFarm


def socktop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "socktop", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def close_wait_port():
    with SocketFarm() as farm:  # a port no earlier test's TIME_WAIT points to: --port counts exactly
        yield alone(lambda: farm.close_wait(3), lambda built: built.port, Built.covers).port


def test_once_prints_states_ports_and_processes(close_wait_port: int) -> None:
    result = socktop("--once", "--port", str(close_wait_port))
    assert result.returncode == 0, result.stderr
    for heading in ("By state", "Top ports", "Top processes", "CLOSE-WAIT", str(close_wait_port)):
        assert heading in result.stdout


def test_json_document_has_the_documented_fields(close_wait_port: int) -> None:
    result = socktop("--json", "--sockets", "--port", str(close_wait_port))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "socktop/1"
    for field in ("host", "kernel", "time", "backend", "root", "filters", "coverage", "totals", "ports",
                  "processes", "remote_hosts", "sockets"):
        assert field in document
    assert document["backend"] == "netlink"
    assert document["filters"] == {"state": None, "port": close_wait_port, "pid": None, "container": None}
    assert document["totals"] == {"sockets": 7, "by_state": {"FIN_WAIT2": 3, "CLOSE_WAIT": 3, "LISTEN": 1}}
    (inbound,) = [p for p in document["ports"] if p["direction"] == "in"]
    assert inbound == {"port": close_wait_port, "direction": "in", "total": 4,
                       "by_state": {"CLOSE_WAIT": 3, "LISTEN": 1}, "pids": [os.getpid()]}
    (me,) = [p for p in document["processes"] if p["pid"] == os.getpid()]
    assert me["by_state"]["CLOSE_WAIT"] == 3 and me["fds"] and me["uid"] == os.geteuid()
    assert me["tcp_fds"] >= 4  # the 3 CLOSE_WAIT and the listener are descriptors of this process
    assert len(document["sockets"]) == 7
    sample = document["sockets"][0]
    assert set(sample) >= {"state", "local", "local_port", "remote", "remote_port", "recv_q", "send_q", "timer",
                           "timer_ms", "uid", "inode", "pids", "owner"}


def test_filters_combine(close_wait_port: int) -> None:
    document = json.loads(socktop("--json", "--port", str(close_wait_port), "--state", "close-wait",
                                  "--pid", str(os.getpid())).stdout)
    assert document["totals"]["by_state"] == {"CLOSE_WAIT": 3}
    assert document["filters"]["state"] == "CLOSE_WAIT"
    with subprocess.Popen(["sleep", "60"]) as sleeper:  # a process that holds no socket
        try:
            nobody = json.loads(socktop("--json", "--port", str(close_wait_port), "--pid", str(sleeper.pid)).stdout)
        finally:
            sleeper.kill()
    assert nobody["totals"] == {"sockets": 0, "by_state": {}}


@pytest.mark.parametrize("args, complaint", [
    (["--state", "bogus"], "unknown TCP state 'bogus'"),
    (["--port", "70000"], "invalid port '70000'"),
    (["--pid", "-3"], "argument --pid"),
    (["--interval", "0.1"], "out of range"),
    (["--backend", "carrier-pigeon"], "invalid choice"),
    (["--sockets"], "--sockets needs --json"),
    (["--once", "--json"], "not allowed with"),
    (["demo", "--duration", "forever"], "invalid duration"),
])
def test_bad_arguments_get_one_line_and_a_nonzero_exit(args: list[str], complaint: str) -> None:
    result = socktop(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert complaint in result.stderr


def test_version_and_help() -> None:
    assert socktop("--version").stdout.strip() == f"socktop {__version__}"
    help_text = socktop("--help").stdout
    assert "examples:" in help_text and "socktop --json --state close-wait" in help_text


def test_explicit_backends_give_the_same_counts(close_wait_port: int) -> None:
    counts = {
        backend: json.loads(socktop("--json", "--backend", backend, "--port", str(close_wait_port)).stdout)["totals"]
        for backend in ("netlink", "proc")
    }
    assert counts["netlink"] == counts["proc"]


def test_json_route_parses_its_arguments_before_importing_numpy() -> None:
    """The CLI parses its arguments, and so starts the owner scan (`OwnerScanner.prefetch`), before
    numpy's import: the scan's readlinks overlap it."""
    probe = ("import sys, io, contextlib\n"
             "import socktop.cli\n"
             "before = 'numpy' in sys.modules\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    status = socktop.cli.main(['--json', '--netns', 'self'])\n"
             "print(status, before, 'numpy' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["0", "False", "True"]


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "socktop"
    result = subprocess.run([str(script), "--once"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and socket.gethostname() in result.stdout


def test_once_process_rows_add_up_to_their_total() -> None:
    """A listener's queued connections have no descriptor yet: they are inferred for it. The row shows
    them beside the held sockets, so the states it lists add up to its total."""
    from socktop.model.engine import Engine
    from socktop.report import render_summary

    with SocketFarm() as farm:
        port = farm.full_accept_queue(backlog=2).port
        snapshot = Engine().refresh().filtered(port=port)
    text = render_summary(snapshot, width=200)
    (row,) = [line for line in text.splitlines() if f" {os.getpid()} " in line]
    assert "inferred" in text
    assert row.count("ESTAB 3") == 2 and "LISTEN 1" in row  # 3 clients held, 3 queued inferred
    assert " 7 " in row


@pytest.mark.parametrize("args", [["--config", "/tmp/\x1b[31mred", "--once"],
                                  ["serve", "--listen", "\x1b[31mred.invalid:1"]])
def test_an_error_quoting_what_was_typed_shows_its_escapes(args: list[str]) -> None:
    result = socktop(*args)
    assert result.returncode != 0
    assert "\x1b" not in result.stderr and "\\e[31mred" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_once_writes_counts_as_the_header_does() -> None:
    from frozen import frozen_snapshot

    from socktop.report import render_summary

    text = render_summary(frozen_snapshot(), width=200)
    assert "2,992 sockets" in text
    (row,) = [line for line in text.splitlines() if "TIME-WAIT" in line and "%" in line]
    assert "2,400" in row  # not 2400 under a header that says 2,992


def test_once_in_an_empty_namespace_says_so_in_one_line() -> None:
    if subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=60).returncode:
        pytest.skip("needs unshare -n (root)")
    result = subprocess.run(["unshare", "-n", sys.executable, "-m", "socktop", "--once", "--netns", "self"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "no TCP sockets in this network namespace" in result.stdout
    assert "By state" not in result.stdout and "Top ports" not in result.stdout
