"""The per-socket list: a `LineTable` that stays smooth at 50,000 rows.

Only the lines on screen are ever formatted (`row_strip`), from the
already filtered and sorted list the view thread hands over; owners are
looked up for those lines only. Sockets new since the previous refresh
carry a ``+`` and the "new" colour for one refresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from rich.segment import Segment
from textual.message import Message
from textual.strip import Strip

from ..collect.records import SocketRecord
from ..model.aggregate import OwnerKind
from ..model.snapshot import Snapshot
from ..safetext import printable
from . import format as fmt
from .table import ColumnSpec, LineTable
from .view import CONNECTION, DESCENDING, SOCKET_SORT_COLUMNS, index_of

#: the columns; a narrow pane drops Recv-Q first, then Send-Q, Timer and the owner
COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("mark", "", 2),  # "+ " for a new socket
    ColumnSpec("local", "Local", 23),
    ColumnSpec("remote", "Remote", 23),
    ColumnSpec("state", "State", 11),
    ColumnSpec("recv_q", "Recv-Q", 8, numeric=True, drop=4),
    ColumnSpec("send_q", "Send-Q", 8, numeric=True, drop=3),
    ColumnSpec("timer", "Timer", 10, numeric=True, drop=2),
    ColumnSpec("owner", "Owner (~ inferred)", 21, drop=1, flex=True),
)


class SocketList(LineTable):
    """Every socket behind the current selection, one line each."""

    KIND = "sockets"
    COLUMNS = COLUMNS
    DEFAULT_CSS = """
    SocketList > .sockets--new { color: $socktop-success; text-style: bold; }
    SocketList > .sockets--warning { color: $socktop-warning; }
    SocketList > .sockets--danger { color: $socktop-error; text-style: bold; }
    SocketList > .sockets--muted { color: $text-muted; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = LineTable.COMPONENT_CLASSES | {
        "sockets--new", "sockets--warning", "sockets--danger", "sockets--muted",
    }

    class Moved(Message):
        """The user moved the cursor to another socket."""

        def __init__(self, sockets: SocketList) -> None:
            super().__init__()
            self.sockets = sockets

    class DetailsRequested(Message):
        def __init__(self, sockets: SocketList) -> None:
            super().__init__()
            self.sockets = sockets

    class SortRequested(Message):
        def __init__(self, sockets: SocketList, column: str, reverse: bool) -> None:
            super().__init__()
            self.sockets = sockets
            self.column = column
            self.reverse = reverse

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.records: Sequence[SocketRecord] = ()
        self.snapshot: Snapshot | None = None
        self.new: np.ndarray | None = None  # per row: new since the refresh before (`view.with_new`)
        self.sort_column, self.sort_reverse = "state", False
        self._cursor_connection: tuple | None = None
        self._lines: dict[int, Strip] = {}
        self.border_title = "4 Sockets"

    # --- data -----------------------------------------------------------------------------------

    def set_data(self, snapshot: Snapshot, records: Sequence[SocketRecord], new: np.ndarray | None,
                 found: tuple[tuple, int] | None, sort: tuple[str, bool]) -> None:
        """Show ``records`` (already filtered and sorted); the cursor stays on its socket, or its neighbour.
        ``new``: which rows are new (None: none); ``found``: where the view thread found the cursor's socket
        in ``records`` (`view.with_cursor`)."""
        hint, on_screen, resorted = self.cursor, self.cursor_on_screen(), sort != (self.sort_column, self.sort_reverse)
        self.snapshot, self.records, self.new = snapshot, records, new
        self.sort_column, self.sort_reverse = sort
        connection = self._cursor_connection if self.chosen else None  # not chosen yet: the top row
        if connection is None:
            index: int | None = 0
        elif found is not None and found[0] == connection:
            index = found[1]
        else:
            index = index_of(records, connection, hint) if connection else None
        self._lines.clear()
        self.update_size()
        self.cursor = min(hint if index is None else index, max(0, len(records) - 1))
        self._remember_cursor()
        if resorted:  # a new order: show its top (the cursor stays on its socket)
            self.scroll_to(y=0, animate=False, immediate=True)
        elif on_screen:
            self.scroll_to_cursor()
        self.refresh()

    @property
    def row_total(self) -> int:
        return len(self.records)

    def is_new(self, index: int) -> bool:
        """Row ``index`` is a socket the refresh before did not have."""
        return self.new is not None and bool(self.new[index])

    @property
    def selected(self) -> SocketRecord | None:
        return self.records[self.cursor] if 0 <= self.cursor < len(self.records) else None

    @property
    def cursor_connection(self) -> tuple | None:
        """The 4-tuple of the socket under the cursor (read by the view thread: an immutable tuple)."""
        return self._cursor_connection

    def _remember_cursor(self) -> None:
        record = self.selected
        self._cursor_connection = CONNECTION(record) if record is not None else None

    def forget_lines(self) -> None:
        self._lines.clear()

    # --- cursor and sort --------------------------------------------------------------------------

    def moved(self) -> None:
        self._remember_cursor()
        self.post_message(self.Moved(self))

    def action_details(self) -> None:
        self.post_message(self.DetailsRequested(self))

    def header_clicked(self, spec: ColumnSpec) -> None:
        if spec.key in SOCKET_SORT_COLUMNS:
            reverse = (not self.sort_reverse) if spec.key == self.sort_column else spec.key in DESCENDING
            self.post_message(self.SortRequested(self, spec.key, reverse))

    def sort_mark(self, spec: ColumnSpec) -> str:
        return (" ▼" if self.sort_reverse else " ▲") if spec.key == self.sort_column else ""

    def cycle_sort(self, reverse_only: bool = False) -> None:
        """``s``: sort by the next column; ``S``: reverse the order (the view thread re-sorts)."""
        if reverse_only:
            column, reverse = self.sort_column, not self.sort_reverse
        else:
            index = SOCKET_SORT_COLUMNS.index(self.sort_column) if self.sort_column in SOCKET_SORT_COLUMNS else -1
            column = SOCKET_SORT_COLUMNS[(index + 1) % len(SOCKET_SORT_COLUMNS)]
            reverse = column in DESCENDING
        self.post_message(self.SortRequested(self, column, reverse))

    @property
    def sort_text(self) -> str:
        label = next(spec.label for spec in COLUMNS if spec.key == self.sort_column).split(" (")[0]
        return f"{label} {'▼' if self.sort_reverse else '▲'}"

    # --- rendering --------------------------------------------------------------------------------

    def _style(self, name: str) -> Any:
        return self.style_of(f"sockets--{name}")

    def owner_text(self, record: SocketRecord) -> tuple[str, bool]:
        """The owner column and whether it is a guess (inferred or unknown)."""
        if self.snapshot is None:
            return "", True
        attribution = self.snapshot.owners_of(record)
        names = ", ".join(f"{p.pid} {printable(p.name)}" for p in attribution.processes[:2])
        if len(attribution.processes) > 2:
            names += f" +{len(attribution.processes) - 2}"
        if attribution.kind in (OwnerKind.DIRECT, OwnerKind.COOKIE):
            return names, False
        if attribution.kind is OwnerKind.INFERRED:
            return "~" + names, True
        if attribution.kind is OwnerKind.UNKNOWN:
            return f"uid {printable(self.snapshot.user_of(record.uid))} (not visible)", True
        return "-", True

    def row_strip(self, index: int) -> Strip:
        strip = self._lines.get(index)
        if strip is None:
            strip = self._lines[index] = self._line(index)
        return strip

    def _line(self, index: int) -> Strip:
        record = self.records[index]
        base = self.base_style
        new = self.is_new(index)
        if new:
            base = base + self._style("new")
        tone = fmt.tone_of_state(record.state)
        values = {
            "mark": "+ " if new else "  ",
            "local": fmt.endpoint(record.local_addr, record.local_port),
            "remote": fmt.endpoint(record.remote_addr, record.remote_port),
            "state": record.state.label,
            "recv_q": str(record.recv_q),
            "send_q": str(record.send_q),
            "timer": fmt.timer(record.timer_ms) if record.timer_ms else record.timer.label,
        }
        segments = []
        for column, width in self.shown_columns:
            spec = COLUMNS[column]
            style = base
            if spec.key == "owner":
                text, guessed = self.owner_text(record)
                if guessed:
                    style = base + self._style("muted")
            else:
                text = values[spec.key]
                if spec.key == "state" and tone:
                    style = base + self._style(tone)
            text = fmt.ellipsize(text if spec.key == "mark" else " " + text, width)
            segments.append(Segment(text.rjust(width) if spec.numeric else text.ljust(width), style))
        return Strip(segments)
