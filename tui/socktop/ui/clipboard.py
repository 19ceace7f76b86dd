"""Where a copied command goes: the terminal (OSC 52), the desktop clipboard (pyperclip), or a dialog.

``--clipboard``:
- ``auto`` (default): OSC 52 always; also pyperclip when not over SSH and a
  desktop session is there (DISPLAY, WAYLAND_DISPLAY, macOS). When nothing
  confirms the copy (OSC 52 has no answer), a dialog shows the command.
- ``osc52``: OSC 52 only; the user says their terminal takes it, so no dialog.
- ``system``: pyperclip only; a dialog when it fails.
- ``off``: nothing is copied; the dialog shows the command to select by hand.

pyperclip runs in a thread: it may spawn xclip or wl-copy, which can hang
on a dead display, and the UI must not.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

MODES = ("auto", "osc52", "system", "off")


@dataclass(frozen=True, slots=True)
class ClipboardPlan:
    """What to do with one copy, decided from the mode and the environment."""

    osc52: bool  # send OSC 52 through the terminal
    system: bool  # try pyperclip (in a thread)
    trust_osc52: bool  # OSC 52 counts as confirmed (the user chose it)


def over_ssh(environ: Mapping[str, str] = os.environ) -> bool:
    return any(environ.get(name) for name in ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY"))


def has_desktop(environ: Mapping[str, str] = os.environ) -> bool:
    return sys.platform == "darwin" or any(environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY"))


def plan(mode: str, environ: Mapping[str, str] = os.environ) -> ClipboardPlan:
    if mode not in MODES:
        raise ValueError(f"clipboard mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return ClipboardPlan(False, False, False)
    if mode == "osc52":
        return ClipboardPlan(True, False, True)
    if mode == "system":
        return ClipboardPlan(False, True, False)
    return ClipboardPlan(True, not over_ssh(environ) and has_desktop(environ), False)


def system_copy(text: str) -> str:
    """Copy with pyperclip and read it back; "" on success, else why not. Call it in a thread."""
    try:
        import pyperclip

        pyperclip.copy(text)
        if pyperclip.paste() != text:
            return "the desktop clipboard did not keep the text"
    except Exception as exc:  # pyperclip raises its own, OSError, or anything its backends raise
        return f"desktop clipboard unavailable ({type(exc).__name__}: {exc})"
    return ""
