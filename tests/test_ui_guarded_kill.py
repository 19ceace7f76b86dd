"""The `k` key's kill line is guarded by the process start time (analyze.commands.guarded_signal):
pasted into a real shell, it signals the process socktop saw and never one that reused its pid."""

from __future__ import annotations

import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from socktop.analyze.commands import guarded_signal, kill_commands
from socktop.collect.owners import start_ticks


def ticks_of(pid: int) -> int:
    ticks = start_ticks(Path(f"/proc/{pid}/stat").read_text())
    assert ticks is not None
    return ticks


def test_the_guarded_line_is_exact_and_quoted() -> None:
    term, kill = kill_commands(4242, "leaky-api", 123456)
    assert term.line == ("if [ \"$(sed 's/.*) //' /proc/4242/stat 2>/dev/null | cut -d' ' -f20)\" = 123456 ]; "
                         "then kill -TERM 4242; else echo 'pid 4242 is no longer the process socktop saw: not "
                         "signalled' >&2; fi  # comm=leaky-api")
    assert "kill -KILL 4242;" in kill.line and "start" in term.note
    for shell in ("bash", "sh"):
        assert subprocess.run([shell, "-n", "-c", term.line], capture_output=True, timeout=60).returncode == 0
    with pytest.raises(ValueError):
        guarded_signal(1, 1, "TERM; reboot")


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_it_signals_the_process_it_names_and_not_a_reused_pid(shell: str, tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "30"])
    try:
        ticks = ticks_of(victim.pid)
        wrong, _ = kill_commands(victim.pid, "sleep", ticks + 1)  # what a reused pid looks like
        result = subprocess.run([shell, "-c", wrong.line], capture_output=True, text=True, timeout=10)
        assert "no longer the process socktop saw" in result.stderr and victim.poll() is None
        right, _ = kill_commands(victim.pid, "x) 9 9 9 $(touch " + shlex.quote(str(tmp_path / "p")) + ")", ticks)
        subprocess.run([shell, "-c", right.line], capture_output=True, text=True, timeout=10)
        assert victim.wait(timeout=10) == -signal.SIGTERM and not (tmp_path / "p").exists()
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def test_a_name_with_parentheses_and_spaces_does_not_shift_the_field() -> None:
    """/proc/PID/stat field 2 is the comm in parentheses, which may hold ") 1 2": counted after the last ") "."""
    import sys

    code = "import sys, time; open('/proc/self/comm', 'w').write('x) 1 2 (y'); print(flush=True); time.sleep(30)"
    victim = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert victim.stdout is not None and victim.stdout.readline() == b"\n"
        assert Path(f"/proc/{victim.pid}/comm").read_text().strip() == "x) 1 2 (y"
        line = guarded_signal(victim.pid, ticks_of(victim.pid), "TERM")
        subprocess.run(["sh", "-c", line], timeout=10)
        assert victim.wait(timeout=10) == -signal.SIGTERM
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
