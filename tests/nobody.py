"""Run a piece of socktop as user nobody, in a forked child of the test process.

The interpreter of the test run may sit where nobody cannot read it (a
pyenv under /root), and the system's python3 may lack numpy: so instead
of a new interpreter the child is a fork that has already imported
everything. It drops every descriptor it inherited (the parent's sockets
must not count as nobody's) and then its privileges.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

NOBODY = 65534


def as_nobody(work: Callable[[], Any]) -> Any:
    """``work()`` run as user nobody; its JSON-able result, or None where the drop is not possible."""
    if os.geteuid() != 0:
        return None
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            devnull = os.open(os.devnull, os.O_RDONLY)
            for fd in map(int, os.listdir("/proc/self/fd")):  # hold none of the parent's sockets
                if fd > 2 and fd not in (write_end, devnull):
                    try:
                        os.dup2(devnull, fd)
                    except OSError:
                        pass
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write_end, json.dumps(work()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(child, 0)
    return json.loads(b"".join(chunks)) if status == 0 else None


def run_cli_as_nobody(args: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
    """`socktop ARGS` as nobody: its exit status, stdout and stderr, or None where that is not possible."""
    from socktop.cli import main

    def work() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            os.environ["XDG_CONFIG_HOME"] = "/nonexistent"  # nobody's: HOME is still ours
            status = main(list(args))
        return status, out.getvalue(), err.getvalue()

    result = as_nobody(work)
    if result is None:
        return None
    status, out, err = result
    return subprocess.CompletedProcess([sys.executable, "-m", "socktop", *args], status, out, err)
