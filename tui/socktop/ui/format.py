"""Small text formatters shared by the widgets: counts, deltas, durations, sparklines, endpoints."""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len, set_cell_size

from ..collect.records import SocketRecord, TcpState
from ..safetext import printable

BLOCKS = "▁▂▃▄▅▆▇█"

#: States shown in the warning colour, and in the danger colour (a pile-up of these is a problem)
WARNING_STATES = frozenset({TcpState.CLOSE_WAIT, TcpState.FIN_WAIT1, TcpState.LAST_ACK, TcpState.CLOSING})
DANGER_STATES = frozenset({TcpState.SYN_RECV, TcpState.NEW_SYN_RECV})


#: a finding's severity in four letters, in the findings strip and the Findings pane alike
SEVERITY_SHORT = {"critical": "CRIT", "warning": "WARN", "info": "INFO"}


def tone_of_state(state: TcpState) -> str:
    if state in DANGER_STATES:
        return "danger"
    if state in WARNING_STATES:
        return "warning"
    return ""


def count(n: int | None) -> str:
    """1,234 up to 99,999; 123k and 1.2M beyond (panes are narrow)."""
    if n is None:
        return "-"
    if abs(n) < 100_000:
        return f"{n:,}"
    if abs(n) < 10_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1_000_000:.1f}M"


def delta(n: int | None) -> str:
    if n is None:
        return ""
    if n == 0:
        return "·"
    return f"+{count(n)}" if n > 0 else f"-{count(-n)}"


def share(fraction: float) -> str:
    if fraction >= 0.995:
        return "100%"
    if fraction < 0.001:
        return "<0.1%" if fraction > 0 else "0%"
    return f"{fraction:.0%}" if fraction >= 0.1 else f"{fraction:.1%}"


def seconds(value: float) -> str:
    """An interval: 0.5s, 1s, 2.5s."""
    return f"{value:g}s"


def timer(ms: int) -> str:
    """Time left on a socket timer: 850ms, 42s, 3m05s, 2h00m."""
    if ms <= 0:
        return ""
    if ms < 1000:
        return f"{ms}ms"
    total = ms // 1000
    if total < 100:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def duration(value: float) -> str:
    """A span of time, rounded down to the second (never longer than it was): 40s, 2m57s, 9m58s, 1h00m."""
    return timer(int(value) * 1000) or "0s"


def sparkline(values: Sequence[int], width: int) -> str:
    """The last ``width`` values as block characters, their height a share of the largest.

    The baseline is 0, not the smallest value: a steady 406-409 draws flat (all full height), not a
    sawtooth from the lowest block to the highest. Zero is the lowest block, any other count at least
    the second, the largest the full block; so a flat series always draws flat.
    """
    values = list(values)[-width:] if width > 0 else []
    if not values:
        return ""
    peak = max(values)
    if peak <= 0:
        return BLOCKS[0] * len(values)
    top = len(BLOCKS) - 1
    return "".join(BLOCKS[min(top, 1 + int(value * (top - 1) / peak + 0.5))] if value > 0 else BLOCKS[0]
                   for value in values)


def endpoint(address: str, port: int) -> str:
    """``10.0.0.5:8080``, ``[::1]:8080``, ``*:*`` for an unconnected peer (untrusted: escaped)."""
    if port == 0 and address in ("0.0.0.0", "::", ""):
        return "*:*"
    shown = printable(address)
    if address in ("0.0.0.0", "::"):
        shown = "*"
    elif ":" in address:
        shown = f"[{shown}]"
    return f"{shown}:{port}"


def ellipsize(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells with a trailing ellipsis (single-width text assumed)."""
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + "…" if width > 0 else ""


def ellipsize_words(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells at a word boundary, the cut marked with "…" (mid-word only when
    the last word would take more than half the width)."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = set_cell_size(text, width - 1)
    cut = head.rfind(" ")
    if not text[len(head):].startswith(" ") and cut > (width - 1) // 2:  # the cut falls in a word
        head = head[:cut]
    return head.rstrip(" ,;:(-") + "…"


def fit_tokens(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells between two words, the cut marked with "…": a name or a number is
    shown whole or not at all (a lone first word longer than the width is the only thing ever split)."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = set_cell_size(text, width - 1)
    if not text[len(head):].startswith(" "):
        cut = head.rfind(" ")
        head = head[:cut] if cut > 0 else head
    return head.rstrip(" ,;:(-") + "…"


def queues(record: SocketRecord) -> tuple[str, str]:
    return (str(record.recv_q), str(record.send_q))
