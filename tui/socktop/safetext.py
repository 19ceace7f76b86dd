"""Untrusted text made safe to show: process names, command lines, user names, addresses.

Other users choose these strings. They must reach the terminal as text:
control characters (ESC above all) are shown escaped, never interpreted,
and so are the invisible characters that can make text read differently
from what it is (bidi overrides, zero-width joiners, line separators).
Markup safety is the renderer's job (Rich/Textual ``Text``, never markup).
"""

from __future__ import annotations

_CONTROL = (*range(0x20), 0x7F, *range(0x80, 0xA0))
_INVISIBLE = (
    0x00AD, 0x061C, 0x180E, *range(0x200B, 0x2010), 0x2028, 0x2029, *range(0x202A, 0x202F),
    *range(0x2060, 0x2065), *range(0x2066, 0x206A), 0xFEFF,
)
_ESCAPES = {code: f"\\x{code:02x}" for code in _CONTROL}
_ESCAPES.update({code: f"\\u{code:04x}" for code in _INVISIBLE})
_ESCAPES.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x1B: "\\e"})


def printable(text: str) -> str:
    """``text`` with every C0/C1 control, DEL and invisible formatting character written as an escape."""
    return text.translate(_ESCAPES)
