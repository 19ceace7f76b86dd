"""Untrusted text made safe to show: process names, command lines, user names, addresses.

Other users choose these strings. They must reach the terminal as text:
control characters (ESC above all) are shown escaped, never interpreted.
Markup safety is the renderer's job (Rich/Textual ``Text``, never markup).
"""

from __future__ import annotations

_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x1B: "\\e"})


def printable(text: str) -> str:
    """``text`` with every C0/C1 control character and DEL written as an escape."""
    return text.translate(_ESCAPES)
