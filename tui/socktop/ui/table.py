"""The one table widget under every pane: a Line-API list with a fixed header, a cursor and whole columns.

Only the lines on screen are ever drawn (`render_line`), and the subclasses cache a row's strip until the
row changes, so a refresh costs the rows that changed and the rows on screen, not the rows in the table.
Columns that do not fit the pane are left out whole, the least important first (`fit_columns`), never cut
to stubs; a flexible column takes what is left. There is no horizontal scrolling.

The cursor row is the selection (htop's model): it is drawn highlighted, it follows its row when the rows
re-sort, and when it was on screen before a refresh it stays on screen after it. Until the user moves in a
pane, its highlight stays on the top row, whatever comes to the top: a row nobody chose is never followed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from . import format as fmt
from .style import CachedComponentStyles

SORT_MARK = {False: " ▲", True: " ▼"}


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    key: str
    label: str
    width: int  # cells, with the one-space gutter every cell starts with
    numeric: bool = False  # right-aligned, largest first when sorted
    drop: int = 0  # 0: always shown; else, when the pane is too narrow, the highest leaves first
    flex: bool = False  # takes the width the other columns leave (never less than ``width``)


def fit_columns(columns: Sequence[ColumnSpec], width: int) -> list[tuple[int, int]]:
    """(column index, width) of the columns shown in ``width`` cells: whole columns, the highest ``drop``
    (the rightmost of equals) left out first, the spare width given to the flexible column."""
    shown = list(range(len(columns)))

    def need() -> int:
        return sum(columns[index].width for index in shown)

    while need() > width and any(columns[index].drop for index in shown):
        shown.remove(max((index for index in shown if columns[index].drop),
                         key=lambda index: (columns[index].drop, index)))
    widths = {index: columns[index].width for index in shown}
    flex = next((index for index in shown if columns[index].flex), None)
    if flex is not None and width > need():
        widths[flex] += width - need()
    return [(index, widths[index]) for index in shown]


def header_cell(spec: ColumnSpec, width: int, mark: str) -> str:
    text = fmt.ellipsize(" " + spec.label + mark, width)
    return text.rjust(width) if spec.numeric else text.ljust(width)


class LineTable(CachedComponentStyles, ScrollView, can_focus=True):
    """Header, rows and cursor; the subclass says how many rows there are and draws one (`row_strip`)."""

    COLUMNS: ClassVar[tuple[ColumnSpec, ...]] = ()
    DEFAULT_CSS = """
    LineTable { height: 1fr; overflow-x: hidden; }
    LineTable > .table--header { text-style: bold; color: $text-muted; }
    /* out of focus the highlighted row keeps its colours (all readable on $panel), underlined */
    LineTable > .table--cursor { background: $panel; text-style: underline; }
    LineTable:focus > .table--cursor { background: $block-cursor-background; color: $socktop-on-cursor;
                                       text-style: bold; }
    LineTable > .table--empty { color: $text-muted; text-style: italic; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"table--header", "table--cursor", "table--empty"}
    BINDINGS: ClassVar[list[Any]] = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down,j", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,g", "edge(False)", "First", show=False),
        Binding("end,G", "edge(True)", "Last", show=False),
        Binding("enter", "details", "Details", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cursor = 0
        self.chosen = False  # the user has moved in this pane: until then the highlight stays on the top row
        self.empty_text = "none"  # what an empty table says (the app: "no match" under a filter)
        self._columns: list[tuple[int, int]] = []
        self._fitted_width = -1

    # --- what the subclass provides ----------------------------------------------------------------

    @property
    def row_total(self) -> int:
        raise NotImplementedError

    def row_strip(self, index: int) -> Strip:
        """Row ``index`` drawn over the shown columns (`self.shown_columns`), without the cursor."""
        raise NotImplementedError

    def sort_mark(self, spec: ColumnSpec) -> str:
        return ""

    def moved(self) -> None:
        """The user moved the cursor (or pressed a cursor key where it could not move)."""

    def header_clicked(self, spec: ColumnSpec) -> None:
        """The user clicked a column's header."""

    def action_details(self) -> None:
        """Enter."""

    def forget_lines(self) -> None:
        """Drop every cached strip (the columns or the styles changed)."""

    # --- geometry ------------------------------------------------------------------------------------

    @property
    def shown_columns(self) -> list[tuple[int, int]]:
        width = self.scrollable_content_region.width
        if width != self._fitted_width:
            self._fitted_width = width
            self._columns = fit_columns(self.COLUMNS, width)
            self.forget_lines()
        return self._columns

    @property
    def rows_visible(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)  # less the header

    def update_size(self) -> None:
        """The virtual size follows the row count. Only the scrollbars depend on it (the lines are this
        widget's own), so it is set without the layout of the whole screen that assigning it asks for
        (10 to 25 ms at 200x50, once a refresh as counts change); a scrollbar that comes or goes still
        gets one (`_refresh_scrollbars`)."""
        size = Size(self.scrollable_content_region.width, self.row_total + 1)
        if size != self.virtual_size:
            self.set_reactive(LineTable.virtual_size, size)
            self._scroll_update(size)
            self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        self.update_size()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self.forget_lines()

    def cursor_on_screen(self) -> bool:
        top = int(self.scroll_y)
        return top <= self.cursor < top + self.rows_visible

    def scroll_to_cursor(self) -> None:
        top, rows = int(self.scroll_y), self.rows_visible
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + rows:
            self.scroll_to(y=self.cursor - rows + 1, animate=False, immediate=True)

    # --- keys and mouse ----------------------------------------------------------------------------

    def move_to(self, index: int) -> None:
        self.chosen = True
        self.cursor = max(0, min(index, self.row_total - 1))
        self.scroll_to_cursor()
        self.refresh()
        self.moved()

    def action_move(self, step: int) -> None:
        self.move_to(self.cursor + step)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor + direction * max(1, self.rows_visible - 1))

    def action_edge(self, last: bool) -> None:
        self.move_to(self.row_total - 1 if last else 0)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            x = 0
            for index, width in self.shown_columns:
                if x <= offset.x < x + width:
                    self.header_clicked(self.COLUMNS[index])
                    return
                x += width
        elif int(self.scroll_y) + offset.y - 1 < self.row_total:
            self.move_to(int(self.scroll_y) + offset.y - 1)

    # --- drawing -----------------------------------------------------------------------------------

    def style_of(self, name: str) -> Style:
        return self.component_style(name)  # full: colours with alpha blended over the background

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        columns = self.shown_columns
        if y == 0:
            text = "".join(header_cell(self.COLUMNS[index], size, self.sort_mark(self.COLUMNS[index]))
                           for index, size in columns)
            return Strip([Segment(text, self.base_style + self.style_of("table--header"))]).crop_extend(
                0, width, self.base_style)
        index = int(self.scroll_y) + y - 1
        if index >= self.row_total:
            if index == 0 and self.empty_text:
                return Strip([Segment(" " + self.empty_text, self.base_style + self.style_of("table--empty"))]
                             ).crop_extend(0, width, self.base_style)
            return Strip.blank(width, self.base_style)
        strip = self.row_strip(index)
        if index == self.cursor:
            cursor = self.style_of("table--cursor")
            strip = Strip([Segment(text, (style or Style()) + cursor) for text, style, _ in strip])
        return strip.crop_extend(0, width, self.base_style)
