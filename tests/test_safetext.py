"""Untrusted names reach the screen as visible text, never as terminal control."""

from __future__ import annotations

import pytest

from socktop.safetext import printable


@pytest.mark.parametrize("raw, shown", [
    ("nginx", "nginx"),
    ("[bold]red[/bold] $(id) 'q' \"q\"", "[bold]red[/bold] $(id) 'q' \"q\""),
    ("evil\x1b[2Jname", "evil\\e[2Jname"),
    ("osc\x1b]52;c;aGk=\x07", "osc\\e]52;c;aGk=\\x07"),
    ("two\nlines\r", "two\\nlines\\r"),
    ("c1\x9bcsi", "c1\\x9bcsi"),
    ("ad\u202eslj.exe", "ad\\u202eslj.exe"),
    ("zero\u200bwidth\u2028sep", "zero\\u200bwidth\\u2028sep"),
    ("ünïcödé 名前", "ünïcödé 名前"),
])
def test_printable_escapes_what_could_act_on_the_terminal(raw: str, shown: str) -> None:
    assert printable(raw) == shown
