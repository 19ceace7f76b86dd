"""The suite's socktop runs read the test's own network namespace unless a test says otherwise.

As root `socktop` reads every network namespace by default; the tests
compare its counts with `ss` run in their own namespace, and other
namespaces on the machine (other test runs, containers) would count too.
Tests of the namespaces feature pass --netns, or clear the variable.
The tmux tests' server is gone at the end, with its socket file.
"""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["SOCKTOP_NETNS"] = "self"


@pytest.fixture(scope="session", autouse=True)
def no_tmux_server_left() -> Iterator[None]:
    """The suite's own tmux server (tests/test_ui_e2e.py: its socket named after this process) ends with
    its last session, but its socket file stays behind: at the end both are made sure of."""
    yield
    from test_ui_e2e import TMUX

    if shutil.which("tmux") is None:
        return
    subprocess.run([*TMUX, "kill-server"], capture_output=True, timeout=30)
    Path(os.environ.get("TMUX_TMPDIR", "/tmp"), f"tmux-{os.getuid()}", TMUX[2]).unlink(missing_ok=True)
