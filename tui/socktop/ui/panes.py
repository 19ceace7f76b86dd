"""The aggregate panes: States, Ports, Processes and Findings, keyed tables updated in place.

Each is a `LineTable` (ui/table.py) whose rows are matched by stable keys (``CLOSE_WAIT``, ``in:8080``,
``pid:4242``, a finding id). A refresh compares each row's data with what the pane holds and builds
cells only for the rows that changed; it re-sorts only when something changed, and draws only the lines
on screen. The cursor follows its row's key across re-sorts (htop's model), onto a neighbour when its
row is gone; the sort and the scroll position are kept.

Untrusted strings (process names, users) only ever become `Cell` text,
never markup, after `printable` has escaped their control characters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.message import Message
from textual.strip import Strip

from ..collect.records import TcpState
from ..safetext import printable
from . import format as fmt
from .table import SORT_MARK, ColumnSpec, LineTable
from .view import PORT, PROCESS, STATE, STATE_RANK, TREND_CELLS, PortRow, ProcessRow, StateRow

_MISSING = object()
PLAIN = Style()


class Cell:
    """A table cell: one line of plain text (never markup), its style, and the value it sorts by."""

    __slots__ = ("plain", "style", "right", "sort")

    def __init__(self, text: str, sort: Any = None, style: Style | str = "", right: bool = False) -> None:
        # tables have no cell padding: every cell starts with a one-space gutter instead, which
        # saves a column per cell (three panes must fit side by side on 140 columns)
        self.plain = " " + text
        self.style = (Style.parse(style) if style else PLAIN) if isinstance(style, str) else style
        self.right = right
        self.sort = (text.lower(),) if sort is None else sort

    def fitted(self, width: int) -> str:
        """The text cut (with an ellipsis) or padded to ``width`` cells, on its side."""
        text = self.plain
        length = cell_len(text)
        if length > width:
            return set_cell_size(text, max(0, width - 1)) + "…" if width else ""
        padding = " " * (width - length)
        return padding + text if self.right else text + padding


class Pane(LineTable):
    """A keyed table whose rows come from `apply`, with a sort the user picks and keeps."""

    KIND: ClassVar[str] = ""  # the pane's name: "states", "ports", ...
    LEVEL: ClassVar[str | None] = None  # the drill-down kind its selection sets
    TITLE: ClassVar[str] = ""
    SUBTITLE: ClassVar[str] = ""
    DEFAULT_SORT: ClassVar[tuple[str, bool]] = ("", False)

    COMPONENT_CLASSES: ClassVar[set[str]] = LineTable.COMPONENT_CLASSES | {
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
        super().__init__(**kwargs)
        self.sort_column, self.sort_reverse = self.DEFAULT_SORT
        self._data: dict[str, Any] = {}  # key → the row's data, as last applied
        self._cells: dict[str, Sequence[Cell]] = {}
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        self._strips: dict[str, Strip] = {}
        self.border_title = self.TITLE
        self.border_subtitle = self.SUBTITLE

    # --- rows ---------------------------------------------------------------------------------

    def row_of(self, item: Any) -> tuple[str, Any]:
        """An item handed to `apply` as (key, data); `cells` turns the data into the row's cells."""
        return item.key, item

    def cells(self, data: Any) -> Sequence[Cell]:
        raise NotImplementedError

    @property
    def row_total(self) -> int:
        return len(self._order)

    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def keys(self) -> list[str]:
        """The row keys, in the order shown."""
        return list(self._order)

    def cells_of(self, key: str) -> Sequence[Cell]:
        return self._cells[key]

    def apply(self, items: Iterable[Any], rebuild: bool = False) -> str | None:
        """Show exactly ``items``, in place; return the key under the cursor afterwards. Cells are built
        only for rows whose data changed (all of them with ``rebuild``: the theme changed)."""
        before, on_screen, old_order = self.selected_key, self.cursor_on_screen(), self._order
        new: dict[str, Any] = {}
        changed = rebuild or len(self._data) == 0
        for item in items:
            key, data = self.row_of(item)
            new[key] = data
            if rebuild or self._data.get(key, _MISSING) != data:
                self._cells[key] = self.cells(data)
                self._strips.pop(key, None)
                changed = True
        for key in [key for key in self._data if key not in new]:
            del self._cells[key]
            self._strips.pop(key, None)
            changed = True
        self._data = new
        if changed:
            self._resort([key for key in dict.fromkeys([*old_order, *new]) if key in new])
        if not self.chosen:  # nobody chose a row here yet: the highlight stays on top
            before = self._order[0] if self._order else None
        target = before if before in self._index else self._neighbour(before, old_order)
        self.cursor = self._index.get(target, 0) if target is not None else min(self.cursor, max(0, self.row_total - 1))
        self.update_size()
        if on_screen:
            self.scroll_to_cursor()
        if changed:
            self.refresh()
        return self.selected_key

    def restyle(self) -> None:
        """The theme changed: every row's cells again, with the new colours."""
        self.apply(list(self._data.values()), rebuild=True)

    def _neighbour(self, key: str | None, order: list[str]) -> str | None:
        """The row after ``key`` in ``order`` that is still shown, else the one before it."""
        if key is None or key not in order:
            return None
        index = order.index(key)
        return next((other for other in order[index + 1:] if other in self._index), None) or next(
            (other for other in reversed(order[:index]) if other in self._index), None)

    # --- selection --------------------------------------------------------------------------

    @property
    def selected_key(self) -> str | None:
        return self._order[self.cursor] if 0 <= self.cursor < len(self._order) else None

    def select_key(self, key: str) -> bool:
        """Put the cursor on ``key`` (no Picked message); False when there is no such row."""
        index = self._index.get(key)
        if index is None:
            return False
        self.chosen = True
        if index != self.cursor:
            self.cursor = index
            self.scroll_to_cursor()
            self.refresh()
        return True

    def moved(self) -> None:
        """A cursor key or a click: the row under the cursor is the user's pick, even when the cursor
        could not move (a one-row pane, the first row and Up, a row Esc unpicked)."""
        key = self.selected_key
        if key is not None:
            self.post_message(self.Picked(self, key))

    def action_details(self) -> None:
        self.post_message(self.DetailsRequested(self, self.selected_key))

    # --- sorting ------------------------------------------------------------------------------

    def _spec(self, key: str) -> ColumnSpec:
        return next(spec for spec in self.COLUMNS if spec.key == key)

    def sort_mark(self, spec: ColumnSpec) -> str:
        return SORT_MARK[self.sort_reverse] if spec.key == self.sort_column else ""

    def header_clicked(self, spec: ColumnSpec) -> None:
        self.set_sort(spec.key, not self.sort_reverse if spec.key == self.sort_column else spec.numeric)

    def cycle_sort(self, reverse_only: bool = False) -> None:
        """``s``: sort by the next column (its natural direction); ``S``: reverse the order."""
        if reverse_only:
            self.set_sort(self.sort_column, not self.sort_reverse)
            return
        keys = [spec.key for spec in self.COLUMNS]
        key = keys[(keys.index(self.sort_column) + 1) % len(keys)] if self.sort_column in keys else keys[0]
        self.set_sort(key, self._spec(key).numeric)

    def set_sort(self, key: str, reverse: bool) -> None:
        """Sort anew: the cursor stays on its row, and the view shows the top of the new order."""
        self.sort_column, self.sort_reverse = key, reverse
        selected = self.selected_key
        self._resort(self._order)
        if selected is not None:
            self.cursor = self._index[selected]
        self.scroll_to(y=0, animate=False, immediate=True)
        self.refresh()

    def _resort(self, order: list[str]) -> None:
        column = next((index for index, spec in enumerate(self.COLUMNS) if spec.key == self.sort_column), None)
        if column is not None:
            cells = self._cells
            order = sorted(order, key=lambda key: cells[key][column].sort, reverse=self.sort_reverse)
        self._order = order
        self._index = {key: index for index, key in enumerate(order)}

    @property
    def sort_text(self) -> str:
        spec = self._spec(self.sort_column)
        return f"{spec.label.strip()} {'▼' if self.sort_reverse else '▲'}"

    # --- drawing ------------------------------------------------------------------------------

    def forget_lines(self) -> None:
        self._strips.clear()

    def row_strip(self, index: int) -> Strip:
        key = self._order[index]
        strip = self._strips.get(key)
        if strip is None:
            base, cells = self.base_style, self._cells[key]
            strip = self._strips[key] = Strip([Segment(cells[column].fitted(width), base + cells[column].style)
                                              for column, width in self.shown_columns])
        return strip

    def tone(self, name: str) -> Style:
        """A cell's colour and weight, blended for this theme (a partial style would drop the alpha of
        $text-muted), without a background, which would hide the cursor row."""
        if not name:
            return PLAIN
        full = self.component_style(f"pane--{name}")
        return Style(color=full.color, bold=full.bold, dim=full.dim, italic=full.italic)


def _num(value: int | None, style: Style | str = "") -> Cell:
    return Cell(fmt.count(value), (value if value is not None else -1,), style, right=True)


def _rate(per_second: float | None) -> Cell:
    """Closes per second: "-" while not counted, "·" for none, else one decimal below 10."""
    if per_second is None:
        return Cell("-", (-1.0,), right=True)
    text = "·" if not per_second else f"{per_second:.1f}" if per_second < 10 else fmt.count(round(per_second))
    return Cell(text, (per_second,), right=True)


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
        ColumnSpec("delta", "Δ", 6, numeric=True, drop=2),
        ColumnSpec("share", "Share", 8, numeric=True, drop=1),
        ColumnSpec("trend", "Trend", 9, drop=3, flex=True),
    )
    DEFAULT_SORT = ("count", True)

    def cells(self, row: StateRow) -> list[Cell]:
        tone = self.tone(fmt.tone_of_state(row.state))
        delta_tone = self.tone("warning" if (row.delta or 0) > 0 and fmt.tone_of_state(row.state) else "muted")
        return [
            Cell(row.state.label, (_STATE_ORDER[row.state],), tone),
            _num(row.count, tone),
            Cell(fmt.delta(row.delta), (row.delta if row.delta is not None else 0,), delta_tone, right=True),
            Cell(fmt.share(row.share), (row.share,), right=True),
            Cell(fmt.sparkline(row.trend, TREND_CELLS), (row.trend[-1] - row.trend[0] if row.trend else 0,),
                 self.tone("accent")),
        ]


#: "State ▲" sorts the states in the same order in States and in Sockets (view.STATE_RANK: the troubled first)
_STATE_ORDER = STATE_RANK


class PortsPane(Pane):
    KIND, LEVEL, TITLE = "ports", PORT, "2 Ports"
    COLUMNS = (
        ColumnSpec("port", "Port", 8),
        ColumnSpec("dir", "Dir", 5),
        ColumnSpec("total", "Total", 8, numeric=True),
        ColumnSpec("cw", "CL-W", 7, numeric=True, drop=2),
        ColumnSpec("tw", "TI-W", 7, numeric=True, drop=2),
        ColumnSpec("est", "EST", 7, numeric=True, drop=4),  # leaves before the close rate: churn tells more
        ColumnSpec("closes", "Cls/s", 7, numeric=True, drop=3),
        ColumnSpec("owner", "Process", 18, flex=True),
    )
    DEFAULT_SORT = ("total", True)

    def cells(self, row: PortRow) -> list[Cell]:
        owners = ", ".join(printable(name) for name in row.owners) or "-"
        return [
            Cell(f":{row.port}", (row.port,)),
            Cell(row.direction.value, (row.direction.value, row.port), self.tone("muted")),
            _num(row.total),
            _num(row.count(TcpState.CLOSE_WAIT), self.tone("warning") if row.count(TcpState.CLOSE_WAIT) else ""),
            _num(row.count(TcpState.TIME_WAIT)),
            _num(row.count(TcpState.ESTABLISHED)),
            _rate(row.closes),
            Cell(owners, (owners.lower(),)),
        ]


INFERRED_LEGEND = "9*: 9 inferred for it (no descriptor)"


class ProcessesPane(Pane):
    KIND, LEVEL, TITLE = "processes", PROCESS, "3 Processes"
    COLUMNS = (
        ColumnSpec("pid", "PID", 9, numeric=True),
        ColumnSpec("name", "Name", 16, flex=True),
        ColumnSpec("total", "Total", 8, numeric=True),
        ColumnSpec("cw", "CL-W", 7, numeric=True, drop=2),
        ColumnSpec("tw", "TI-W", 8, numeric=True, drop=3),
        ColumnSpec("est", "EST", 7, numeric=True, drop=4),
        ColumnSpec("closes", "Cls/s", 7, numeric=True, drop=5),
        ColumnSpec("user", "User", 10, drop=5),
        ColumnSpec("fds", "FDs/limit", 12, numeric=True, drop=6),
        ColumnSpec("trend", "Trend", 10, drop=7),
    )
    DEFAULT_SORT = ("total", True)

    def apply(self, items: Iterable[Any], rebuild: bool = False) -> str | None:
        """As `Pane.apply`; the legend of the inferred mark shows only while a row carries one."""
        items = list(items)
        key = super().apply(items, rebuild)
        inferred = any(row.group.inferred for row in items)
        self.border_subtitle = f"{INFERRED_LEGEND} · trend: its total" if inferred else "trend: its total"
        return key

    def cells(self, row: ProcessRow) -> list[Cell]:
        group = row.group
        process = group.process
        kind, _, number = row.key.partition(":")
        pid = number if kind == "pid" else f"uid {number}"
        name = printable(process.name) if process else "(exited)" if kind == "pid" else "(not visible)"
        fds, limit = (process.fd_count, process.fd_limit) if process else (None, None)
        fd_text = f"{fds}/{limit}" if fds is not None and limit else ("-" if fds is None else str(fds))
        fd_ratio = fds / limit if fds is not None and limit else 0.0
        return [
            Cell(pid, (int(number) if kind == "pid" else -1,), right=True),
            Cell(name, None, "" if process else self.tone("muted")),
            _num(row.total),
            _held_inferred(row.close_wait, row.inferred(TcpState.CLOSE_WAIT),
                           self.tone("warning") if row.close_wait else ""),
            _held_inferred(row.time_wait, row.inferred(TcpState.TIME_WAIT)),
            _held_inferred(row.established, row.inferred(TcpState.ESTABLISHED)),
            _rate(row.closes),
            Cell(printable(group.user), None),
            Cell(fd_text, (fd_ratio, fds or 0), self.tone("danger") if fd_ratio >= 0.8 else "", right=True),
            Cell(fmt.sparkline(row.trend, TREND_CELLS), (row.trend[-1] - row.trend[0] if row.trend else 0,),
                 self.tone("accent")),
        ]


SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
SEVERITY_TONE = {"critical": "danger", "warning": "warning", "info": "muted"}


class ProseCell(Cell):
    """A cell of prose (a finding's title): cut between words, the cut marked with "…" (`fmt.fit_tokens`)."""

    __slots__ = ()

    def fitted(self, width: int) -> str:
        return super().fitted(width) if width < 2 else " " + fmt.fit_tokens(self.plain[1:], width - 1).ljust(
            width - 1)


class FindingsPane(Pane):
    """Items are (rank, finding): the rank is the finding's place in the analysis's order (most urgent
    first), kept within a severity."""

    KIND, LEVEL, TITLE = "findings", None, "5 Findings"
    COLUMNS = (
        ColumnSpec("severity", "Sev", 6),
        ColumnSpec("title", "Finding", 24, flex=True),
    )
    DEFAULT_SORT = ("severity", False)

    def row_of(self, item: tuple[int, Any]) -> tuple[str, Any]:
        return item[1].id, item

    def cells(self, item: tuple[int, Any]) -> list[Cell]:
        rank, finding = item
        severity = finding.severity.value
        return [
            Cell(fmt.SEVERITY_SHORT.get(severity, severity.upper()), (SEVERITY_RANK.get(severity, 9), rank),
                 self.tone(SEVERITY_TONE.get(severity, ""))),
            ProseCell(printable(finding.title), None),
        ]


AGGREGATE_PANES: tuple[type[Pane], ...] = (StatesPane, PortsPane, ProcessesPane)
