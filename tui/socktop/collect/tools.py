"""What the machine's own tools can do, asked once per process.

A probe runs a program, so it belongs here, below the analysis. The commands ask it when they first need
the answer; the TUI asks it in its poller thread first (`ui.analysis.Analyzer`), so that no drawer waits
for it, while a one-shot `--json` pays for it only when it offers a command that needs it.
"""

from __future__ import annotations

import functools
import subprocess


@functools.cache
def ss_has_bound_inactive() -> bool:
    """Whether the installed ss takes -B (--bound-inactive); iproute2 6.1 (Debian 12, Ubuntu 24.04) does not.

    Asked once per process from ss's own help text, which lists every option it has.
    """
    try:
        result = subprocess.run(["ss", "-h"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--bound-inactive" in result.stdout + result.stderr
