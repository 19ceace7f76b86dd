"""The per-socket list: a Line-API virtual list that stays smooth at 50,000 rows.

Only the lines on screen are ever formatted (`render_line`), from the
already filtered and sorted list the view thread hands over; owners are
looked up for those lines only. A header line stays at the top. Sockets
new since the previous refresh carry a ``+`` and the "new" colour for one
refresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..collect.records import SocketRecord
from ..model.aggregate import OwnerKind
from ..model.snapshot import Snapshot
from ..safetext import printable
from . import format as fmt
from .view import CONNECTION, DESCENDING, SOCKET_SORT_COLUMNS, index_of

#: (sort key, header, width; 0 = the rest, right-aligned)
COLUMNS: tuple[tuple[str, str, int, bool], ...] = (
    ("local", "Local", 22, False),
    ("remote", "Remote", 22, False),
    ("state", "State", 10, False),
    ("recv_q", "Recv-Q", 7, True),
    ("send_q", "Send-Q", 7, True),
    ("timer", "Timer", 9, True),
    ("owner", "Owner (~ inferred)", 0, False),
)
MIN_OWNER_WIDTH = 20
MARK_WIDTH = 2  # "+ " for a new socket


class SocketList(ScrollView, can_focus=True):
    """Every socket behind the current selection, one line each."""

    KIND = "sockets"
    DEFAULT_CSS = """
    SocketList { height: 1fr; }
    SocketList > .sockets--header { text-style: bold; color: $text-muted; }
    SocketList > .sockets--cursor { background: $block-cursor-blurred-background; }
    SocketList:focus > .sockets--cursor { background: $block-cursor-background; color: $block-cursor-foreground;
                                         text-style: bold; }
    SocketList > .sockets--new { color: $success; text-style: bold; }
    SocketList > .sockets--warning { color: $warning; }
    SocketList > .sockets--danger { color: $error; text-style: bold; }
    SocketList > .sockets--muted { color: $text-muted; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "sockets--header", "sockets--cursor", "sockets--new", "sockets--warning", "sockets--danger", "sockets--muted",
    }
    BINDINGS: ClassVar[list[Any]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "edge(False)", "First", show=False),
        Binding("end", "edge(True)", "Last", show=False),
        Binding("enter", "details", "Details", show=False),
    ]

    cursor: reactive[int] = reactive(0, always_update=False, repaint=False)

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
        self.is_new: Callable[[SocketRecord], bool] = lambda record: False
        self.sort_column, self.sort_reverse = "state", False
        self._cursor_connection: tuple | None = None
        self._lines: dict[int, Strip] = {}
        self._width = 0
        self.border_title = "4 Sockets"

    # --- data -----------------------------------------------------------------------------------

    def set_data(self, snapshot: Snapshot, records: Sequence[SocketRecord],
                 is_new: Callable[[SocketRecord], bool], sort: tuple[str, bool]) -> None:
        """Show ``records`` (already filtered and sorted); the cursor stays on its socket, or its neighbour."""
        hint = self.cursor
        self.snapshot, self.records, self.is_new = snapshot, records, is_new
        self.sort_column, self.sort_reverse = sort
        index = index_of(records, self._cursor_connection, hint) if self._cursor_connection else None
        self._lines.clear()
        self._update_virtual_size()
        self.set_reactive(SocketList.cursor, min(hint if index is None else index, max(0, len(records) - 1)))
        self._remember_cursor()
        self._scroll_cursor_into_view()
        self.refresh()

    @property
    def selected(self) -> SocketRecord | None:
        return self.records[self.cursor] if 0 <= self.cursor < len(self.records) else None

    def _remember_cursor(self) -> None:
        record = self.selected
        self._cursor_connection = CONNECTION(record) if record is not None else None

    def _update_virtual_size(self) -> None:
        # the virtual width is what the columns need, not the region's: a region one cell narrower once
        # the vertical scrollbar shows must not grow a horizontal one (lines are cropped to the region)
        fixed = MARK_WIDTH + sum(width + 1 for _, _, width, _ in COLUMNS if width) + MIN_OWNER_WIDTH
        self._width = max(fixed, self.scrollable_content_region.width)
        self.virtual_size = Size(fixed, len(self.records) + 1)

    def on_resize(self, event: events.Resize) -> None:
        self._lines.clear()
        self._update_virtual_size()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()

    # --- cursor -----------------------------------------------------------------------------------

    def watch_cursor(self, old: int, new: int) -> None:
        self._lines.pop(old, None)
        self._lines.pop(new, None)
        self._remember_cursor()
        self._scroll_cursor_into_view()
        self.refresh()

    def _scroll_cursor_into_view(self) -> None:
        rows_visible = max(1, self.scrollable_content_region.height - 1)
        top = int(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + rows_visible:
            self.scroll_to(y=self.cursor - rows_visible + 1, animate=False, immediate=True)

    def _move(self, index: int) -> None:
        index = max(0, min(index, len(self.records) - 1))
        if index != self.cursor:
            self.cursor = index
            self.post_message(self.Moved(self))

    def action_cursor(self, step: int) -> None:
        self._move(self.cursor + step)

    def action_page(self, direction: int) -> None:
        self._move(self.cursor + direction * max(1, self.scrollable_content_region.height - 2))

    def action_edge(self, last: bool) -> None:
        self._move(len(self.records) - 1 if last else 0)

    def action_details(self) -> None:
        self.post_message(self.DetailsRequested(self))

    def on_click(self, event: events.Click) -> None:
        y = event.get_content_offset(self)
        if y is None:
            return
        if y.y == 0:
            self._header_click(y.x + int(self.scroll_x))
        else:
            self._move(int(self.scroll_y) + y.y - 1)

    def _header_click(self, x: int) -> None:
        start = MARK_WIDTH
        for key, _, width, _ in COLUMNS:
            if x < start + (width or 10_000) + 1:
                reverse = (not self.sort_reverse) if key == self.sort_column else key in DESCENDING
                self.post_message(self.SortRequested(self, key, reverse))
                return
            start += width + 1

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
        label = next(label for key, label, _, _ in COLUMNS if key == self.sort_column).split(" (")[0]
        return f"{label} {'▼' if self.sort_reverse else '▲'}"

    # --- rendering --------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        if max(self._width, width) != self._width or (width >= self.virtual_size.width and width != self._width):
            self._lines.clear()  # the region changed (a scrollbar came or went): lines fit the new width
            self._width = max(self.virtual_size.width, width)
        if y == 0:
            strip = self._header()
        else:
            index = scroll_y + y - 1
            if index >= len(self.records):
                return Strip.blank(width, self.rich_style)
            strip = self._lines.get(index)
            if strip is None:
                strip = self._lines[index] = self._line(index)
        return strip.crop_extend(scroll_x, scroll_x + width, self.rich_style)

    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(f"sockets--{name}")  # full: alpha colours blended

    def _header(self) -> Strip:
        style = self.rich_style + self._style("header")
        parts = [" " * MARK_WIDTH]
        for key, label, width, right in COLUMNS:
            if key == self.sort_column:
                label += " ▼" if self.sort_reverse else " ▲"
            cell = self._fit(label, width or self._owner_width(), right)
            parts.append(cell + " ")
        return Strip([Segment("".join(parts), style)])

    def _owner_width(self) -> int:
        return max(MIN_OWNER_WIDTH, self._width - MARK_WIDTH - sum(width + 1 for _, _, width, _ in COLUMNS if width))

    @staticmethod
    def _fit(text: str, width: int, right: bool = False) -> str:
        text = fmt.ellipsize(text, width)
        return text.rjust(width) if right else text.ljust(width)

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

    def _line(self, index: int) -> Strip:
        record = self.records[index]
        base = self.rich_style
        new = self.is_new(record)
        if new:
            base = base + self._style("new")
        owner, guessed = self.owner_text(record)
        tone = fmt.tone_of_state(record.state)
        values = (
            fmt.endpoint(record.local_addr, record.local_port),
            fmt.endpoint(record.remote_addr, record.remote_port),
            record.state.label,
            str(record.recv_q),
            str(record.send_q),
            fmt.timer(record.timer_ms) if record.timer_ms else record.timer.label,
            owner,
        )
        segments = [Segment("+ " if new else "  ", base)]
        for (key, _, width, right), value in zip(COLUMNS, values):
            style = base
            if key == "state" and tone:
                style = base + self._style(tone)
            elif key == "owner" and guessed:
                style = base + self._style("muted")
            segments.append(Segment(self._fit(value, width or self._owner_width(), right) + " ", style))
        if index == self.cursor:
            cursor = self._style("cursor")
            segments = [Segment(text, style + cursor) for text, style, _ in segments]
        return Strip(segments)
