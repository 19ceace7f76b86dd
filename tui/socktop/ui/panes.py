"""The small aggregate panes: States, Ports, Processes and Findings, as DataTables updated in place.

A refresh never clears a table: rows are matched by their stable keys
(``CLOSE_WAIT``, ``in:8080``, ``pid:4242``, a finding id), changed cells are
updated, vanished rows removed, new ones added, then the pane's own sort
is applied again and the cursor put back on the row it was on (or, when
that row is gone, on its neighbour). So the cursor, the sort and the
scroll position survive every refresh.

Untrusted strings (process names, users) only ever become `Cell` text,
never markup, after `printable` has escaped their control characters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from ..collect.records import TcpState
from ..safetext import printable
from . import format as fmt
from .view import PORT, PROCESS, STATE, TREND_CELLS, PortRow, ProcessRow, StateRow

SORT_MARK = {False: " ▲", True: " ▼"}


class Cell:
    """A table cell: one line of plain text (never markup), its style, and the value it sorts by.

    It renders itself as one segment cut or padded to the column: no wrapping, no justification
    pass. DataTable re-renders every cell of a table whenever any cell changes, and with Rich
    `Text` cells that was most of the cost of painting a refresh.
    """

    __slots__ = ("plain", "style", "right", "sort")

    def __init__(self, text: str, sort: Any = None, style: Style | str = "", right: bool = False) -> None:
        # tables have no cell padding: every cell starts with a one-space gutter instead, which
        # saves a column per cell (three panes must fit side by side on 140 columns)
        self.plain = " " + text
        self.style = Style.parse(style) if isinstance(style, str) else style
        self.right = right
        self.sort = (text.lower(),) if sort is None else sort

    @property
    def signature(self) -> tuple[str, str, bool, Any]:
        return (self.plain, str(self.style), self.right, self.sort)

    def fitted(self, width: int) -> str:
        """The text cut (with an ellipsis) or padded to ``width`` cells, on its side."""
        text = self.plain
        length = cell_len(text)
        if length > width:
            return set_cell_size(text, max(0, width - 1)) + "…" if width else ""
        padding = " " * (width - length)
        return padding + text if self.right else text + padding

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Segment(self.fitted(options.max_width), self.style)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        length = cell_len(self.plain)
        return Measurement(length, length)


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    key: str
    label: str
    width: int
    numeric: bool = False  # right-aligned, largest first when sorted


class Pane(DataTable):
    """A DataTable whose rows come from `apply`, with a sort the user picks and keeps."""

    KIND: ClassVar[str] = ""  # the pane's name: "states", "ports", ...
    LEVEL: ClassVar[str | None] = None  # the drill-down kind its selection sets
    TITLE: ClassVar[str] = ""
    SUBTITLE: ClassVar[str] = ""
    COLUMNS: ClassVar[tuple[ColumnSpec, ...]] = ()
    DEFAULT_SORT: ClassVar[tuple[str, bool]] = ("", False)

    BINDINGS: ClassVar[list[Any]] = [
        Binding("enter", "details", "Details", show=False),
        *(Binding(key, f"move('{action}')", description, show=False) for key, action, description in (
            ("up", "cursor_up", "Up"), ("down", "cursor_down", "Down"), ("pageup", "page_up", "Page up"),
            ("pagedown", "page_down", "Page down"), ("home,ctrl+home", "scroll_top", "First"),
            ("end,ctrl+end", "scroll_bottom", "Last"))),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "pane--warning", "pane--danger", "pane--muted", "pane--good", "pane--accent",
    }

    class Picked(Message):
        """The user moved the cursor to (or clicked) a row: it is now this pane's selection."""

        def __init__(self, pane: Pane, key: str) -> None:
            super().__init__()
            self.pane = pane
            self.key = key

    class DetailsRequested(Message):
        """Enter on a row: select it and toggle the drawer."""

        def __init__(self, pane: Pane, key: str | None) -> None:
            super().__init__()
            self.pane = pane
            self.key = key

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", cell_padding=0, **kwargs)
        self.sort_column, self.sort_reverse = self.DEFAULT_SORT
        self._signatures: dict[str, tuple] = {}
        self.border_title = self.TITLE
        self.border_subtitle = self.SUBTITLE

    def on_mount(self) -> None:
        for spec in self.COLUMNS:
            self.add_column(self._label(spec), width=spec.width, key=spec.key)

    # --- selection --------------------------------------------------------------------------

    @property
    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:  # the cursor is past the rows for a moment
            return None

    def select_key(self, key: str) -> bool:
        """Put the cursor on ``key`` (no Picked message); False when there is no such row."""
        if key not in self._signatures:
            return False
        index = self.get_row_index(key)
        if index != self.cursor_row:
            self.move_cursor(row=index)
        return True

    def _picked_if_moved(self, before: str | None) -> None:
        key = self.selected_key
        if key is not None and key != before:
            self.post_message(self.Picked(self, key))

    def action_move(self, action: str) -> None:
        """A cursor key: DataTable's own action, then Picked, even when the cursor could not move (a
        one-row pane, the first row and Up, a row Esc unpicked): the row under it is the user's pick."""
        getattr(super(), f"action_{action}")()
        self._picked_if_moved(None)

    def action_details(self) -> None:
        self.post_message(self.DetailsRequested(self, self.selected_key))

    def on_click(self, event: events.Click) -> None:
        """A click on a row picks it, even the row the cursor is already on (a header click sorts)."""
        offset = event.get_content_offset(self)
        if offset is not None and offset.y >= (self.header_height if self.show_header else 0):
            self.call_later(self._picked_if_moved, None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()  # a second click on the same row: it is already the selection
        self.post_message(self.Picked(self, event.row_key.value))

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        key = event.column_key.value
        if key == self.sort_column:
            self.set_sort(key, not self.sort_reverse)
        else:
            self.set_sort(key, self._spec(key).numeric)

    # --- sorting ------------------------------------------------------------------------------

    def _spec(self, key: str) -> ColumnSpec:
        return next(spec for spec in self.COLUMNS if spec.key == key)

    def _label(self, spec: ColumnSpec) -> Text:
        mark = SORT_MARK[self.sort_reverse] if spec.key == self.sort_column else "  "
        return Text(" " + spec.label + mark, justify="right" if spec.numeric else "left", no_wrap=True)

    def cycle_sort(self, reverse_only: bool = False) -> None:
        """``s``: sort by the next column (its natural direction); ``S``: reverse the order."""
        if reverse_only:
            self.set_sort(self.sort_column, not self.sort_reverse)
            return
        keys = [spec.key for spec in self.COLUMNS]
        key = keys[(keys.index(self.sort_column) + 1) % len(keys)] if self.sort_column in keys else keys[0]
        self.set_sort(key, self._spec(key).numeric)

    def set_sort(self, key: str, reverse: bool) -> None:
        self.sort_column, self.sort_reverse = key, reverse
        for spec in self.COLUMNS:
            self.columns[ColumnKey(spec.key)].label = self._label(spec)
        selected = self.selected_key
        self._resort()
        if selected is not None:
            self.select_key(selected)
        self.refresh()

    def _resort(self) -> None:
        if self.row_count and self.sort_column:
            self.sort(self.sort_column, key=attrgetter("sort"), reverse=self.sort_reverse)

    @property
    def sort_text(self) -> str:
        spec = self._spec(self.sort_column)
        return f"{spec.label.strip()} {'▼' if self.sort_reverse else '▲'}"

    # --- rows ---------------------------------------------------------------------------------

    def apply(self, rows: Iterable[tuple[str, Sequence[Cell]]]) -> str | None:
        """Show exactly ``rows`` (key, cells), in place; return the key under the cursor afterwards."""
        before = self.selected_key
        new = dict(rows)
        neighbour = None
        if before is not None and before not in new:
            order = [row.key.value for row in self.ordered_rows]
            index = order.index(before) if before in order else self.cursor_row
            neighbour = next((key for key in order[index + 1:] if key in new), None) or next(
                (key for key in reversed(order[:index]) if key in new), None)
        changed = False
        for key in [key for key in self._signatures if key not in new]:
            self.remove_row(key)
            del self._signatures[key]
            changed = True
        column_keys = [spec.key for spec in self.COLUMNS]
        for key, cells in new.items():
            signature = tuple(cell.signature for cell in cells)
            old = self._signatures.get(key)
            if old == signature:
                continue
            changed = True
            if old is None:
                self.add_row(*cells, key=key)
            else:
                for column, cell, was in zip(column_keys, cells, old):
                    if cell.signature != was:
                        self.update_cell(RowKey(key), ColumnKey(column), cell)
            self._signatures[key] = signature
        if changed:
            self._resort()
        target = before if before in new else neighbour
        if target is not None:
            self.select_key(target)
        return self.selected_key

    # --- rendering ------------------------------------------------------------------------------

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False) -> list[list[Segment]]:
        """DataTable's cell rendering, short-cut for our one-line `Cell`s.

        DataTable renders each cell through Rich (padding, styling, line splitting) and re-renders
        every cell of a table when any one changes; at 50,000 sockets that was most of the time spent
        painting a refresh. This produces the same segment (tests/test_ui.py compares the two) and
        hands anything else (headers, other cells, a DataTable whose internals moved) to DataTable.
        """
        try:
            if row_index < 0 or column_index < 0 or self.cell_padding or self.fixed_rows or self.fixed_columns:
                raise LookupError
            row_key = self._row_locations.get_key(row_index)
            column_key = self._column_locations.get_key(column_index)
            cell = self._data[row_key][column_key]
            if not isinstance(cell, Cell) or self.rows[row_key].height != 1:
                raise LookupError
            cache_key = (row_key, column_key, base_style, cursor, hover, self._show_hover_cursor,
                         self._update_count, self._pseudo_class_state)
            lines = self._cell_render_cache.get(cache_key)
            if lines is None:
                component, post = self._get_styles_to_render_cell(
                    False, False, False, hover, cursor, self.show_cursor, self._show_hover_cursor,
                    self.cursor_foreground_priority == "css", self.cursor_background_priority == "css")
                style = (base_style + Style.from_meta({"row": row_index, "column": column_index}) + component
                         + cell.style + post)
                lines = self._cell_render_cache[cache_key] = [[Segment(cell.fitted(width), style)]]
            return lines
        except (LookupError, AttributeError, TypeError):
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)

    # --- styles ---------------------------------------------------------------------------------

    def tone(self, name: str) -> Style:
        """A cell's colour and weight, blended for this theme (a partial style would drop the alpha of
        $text-muted), without a background, which would hide the cursor row."""
        if not name:
            return Style()
        full = self.get_component_rich_style(f"pane--{name}")
        return Style(color=full.color, bold=full.bold, dim=full.dim, italic=full.italic)


def _num(value: int | None, style: Style | str = "") -> Cell:
    return Cell(fmt.count(value), (value if value is not None else -1,), style, right=True)


def _held_inferred(total: int, inferred: int, style: Style | str = "") -> Cell:
    """A process's count in one state, held and inferred, the inferred part marked: ``40+9*``, ``1,500*``."""
    if not inferred:
        return _num(total, style)
    held = total - inferred
    text = f"{fmt.count(held)}+{fmt.count(inferred)}*" if held else f"{fmt.count(inferred)}*"
    return Cell(text, (total,), style, right=True)


class StatesPane(Pane):
    KIND, LEVEL, TITLE = "states", STATE, "1 States"
    COLUMNS = (
        ColumnSpec("state", "State", 11),
        ColumnSpec("count", "Count", 8, numeric=True),
        ColumnSpec("delta", "Δ", 6, numeric=True),
        ColumnSpec("share", "Share", 8, numeric=True),
        ColumnSpec("trend", "Trend", 9),
    )
    DEFAULT_SORT = ("count", True)

    def cells(self, row: StateRow) -> tuple[str, list[Cell]]:
        tone = self.tone(fmt.tone_of_state(row.state))
        delta_tone = self.tone("warning" if (row.delta or 0) > 0 and fmt.tone_of_state(row.state) else "muted")
        return row.key, [
            Cell(row.state.label, (_STATE_ORDER[row.state],), tone),
            _num(row.count, tone),
            Cell(fmt.delta(row.delta), (row.delta if row.delta is not None else 0,), delta_tone, right=True),
            Cell(fmt.share(row.share), (row.share,), right=True),
            Cell(fmt.sparkline(row.trend, TREND_CELLS), (row.trend[-1] - row.trend[0] if row.trend else 0,), self.tone("accent")),
        ]


_STATE_ORDER = {state: index for index, state in enumerate(TcpState)}


class PortsPane(Pane):
    KIND, LEVEL, TITLE = "ports", PORT, "2 Ports"
    COLUMNS = (
        ColumnSpec("port", "Port", 8),
        ColumnSpec("dir", "Dir", 6),
        ColumnSpec("total", "Total", 8, numeric=True),
        ColumnSpec("cw", "CL-W", 7, numeric=True),
        ColumnSpec("tw", "TI-W", 7, numeric=True),
        ColumnSpec("est", "EST", 7, numeric=True),
        ColumnSpec("owner", "Process", 18),
    )
    DEFAULT_SORT = ("total", True)

    def cells(self, row: PortRow) -> tuple[str, list[Cell]]:
        owners = ", ".join(printable(name) for name in row.owners) or "-"
        return row.key, [
            Cell(f":{row.port}", (row.port,)),
            Cell(row.direction.value, (row.direction.value, row.port), self.tone("muted")),
            _num(row.total),
            _num(row.count(TcpState.CLOSE_WAIT), self.tone("warning") if row.count(TcpState.CLOSE_WAIT) else ""),
            _num(row.count(TcpState.TIME_WAIT)),
            _num(row.count(TcpState.ESTABLISHED)),
            Cell(owners, (owners.lower(),)),
        ]


class ProcessesPane(Pane):
    KIND, LEVEL, TITLE = "processes", PROCESS, "3 Processes"
    COLUMNS = (
        ColumnSpec("pid", "PID", 9, numeric=True),
        ColumnSpec("name", "Name", 16),
        ColumnSpec("total", "Total", 8, numeric=True),
        ColumnSpec("cw", "CL-W", 7, numeric=True),
        ColumnSpec("tw", "TI-W*", 8, numeric=True),
        ColumnSpec("est", "EST", 7, numeric=True),
        ColumnSpec("user", "User", 10),
        ColumnSpec("fds", "FDs/limit", 12, numeric=True),
        ColumnSpec("trend", "Trend", 10),
    )
    DEFAULT_SORT = ("total", True)
    SUBTITLE = "9*: 9 inferred for it (no descriptor) · trend: its total"

    def cells(self, row: ProcessRow) -> tuple[str, list[Cell]]:
        group = row.group
        process = group.process
        kind, _, number = row.key.partition(":")
        pid = number if kind == "pid" else f"uid {number}"
        name = printable(process.name) if process else "(exited)" if kind == "pid" else "(not visible)"
        fds, limit = (process.fd_count, process.fd_limit) if process else (None, None)
        fd_text = f"{fds}/{limit}" if fds is not None and limit else ("-" if fds is None else str(fds))
        fd_ratio = fds / limit if fds is not None and limit else 0.0
        return row.key, [
            Cell(pid, (int(number) if kind == "pid" else -1,), right=True),
            Cell(name, None, "" if process else self.tone("muted")),
            _num(row.total),
            _held_inferred(row.close_wait, row.inferred(TcpState.CLOSE_WAIT),
                           self.tone("warning") if row.close_wait else ""),
            _held_inferred(row.time_wait, row.inferred(TcpState.TIME_WAIT)),
            _held_inferred(row.established, row.inferred(TcpState.ESTABLISHED)),
            Cell(printable(group.user), None),
            Cell(fd_text, (fd_ratio, fds or 0), self.tone("danger") if fd_ratio >= 0.8 else "", right=True),
            Cell(fmt.sparkline(row.trend, TREND_CELLS), (row.trend[-1] - row.trend[0] if row.trend else 0,), self.tone("accent")),
        ]


SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
SEVERITY_TONE = {"critical": "danger", "warning": "warning", "info": "muted"}


class ProseCell(Cell):
    """A cell of prose (a finding's title): cut at a word boundary, the cut marked with "…"."""

    __slots__ = ()

    def fitted(self, width: int) -> str:
        return super().fitted(width) if width < 2 else " " + fmt.ellipsize_words(self.plain[1:], width - 1).ljust(
            width - 1)


class FindingsPane(Pane):
    KIND, LEVEL, TITLE = "findings", None, "5 Findings"
    COLUMNS = (
        ColumnSpec("severity", "Severity", 10),
        ColumnSpec("title", "Finding", 72),
    )
    DEFAULT_SORT = ("severity", False)
    MIN_TITLE_WIDTH = 24

    def on_resize(self) -> None:
        """The title column takes the pane's width (less a scrollbar's), so that a long title is cut,
        visibly, where the pane ends rather than scrolled out of sight past its border."""
        column = self.columns.get(ColumnKey("title"))
        width = max(self.MIN_TITLE_WIDTH, self.content_region.width - self.COLUMNS[0].width - 1)
        if column is not None and column.width != width:
            column.width = width
            self._require_update_dimensions = True
            self._clear_caches()
            self.refresh()

    def cells(self, finding: Any, rank: int = 0) -> tuple[str, list[Cell]]:
        """``rank``: the finding's place in the analysis's order (most urgent first), kept within a severity."""
        severity = finding.severity.value
        return finding.id, [
            Cell(severity.upper(), (SEVERITY_RANK.get(severity, 9), rank), self.tone(SEVERITY_TONE.get(severity, ""))),
            ProseCell(printable(finding.title), None),
        ]


AGGREGATE_PANES: tuple[type[Pane], ...] = (StatesPane, PortsPane, ProcessesPane)
