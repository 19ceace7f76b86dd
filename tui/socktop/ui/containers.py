"""The Containers view (``N``: namespaces): sockets by network namespace, container, pod and service.

One row per place of the snapshot's Containers grouping (`model.places`),
refreshed with the app's snapshots. Enter drills down: the main panes are
filtered to that place (``container:KEY`` in the `/` filter) and the view
closes; ``c`` copies ``ss`` run inside its namespace. Names come from the
containers' own files: shown through `printable`, never as markup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from ..analyze.commands import ss_sockets
from ..analyze.nscommands import inside
from ..collect.records import TcpState
from ..model.places import Place
from ..model.snapshot import Snapshot
from ..safetext import printable

STATE_COLUMNS = (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.TIME_WAIT, TcpState.LISTEN)


def place_cells(place: Place, snapshot: Snapshot) -> tuple[Any, ...]:
    """A row: the place, its namespace, totals by state, its top ports and processes (by name)."""
    ports = ", ".join(key for key, _ in place.ports[:3])
    names = []
    for key, _count in place.processes[:3]:
        process = snapshot.process(int(key[4:])) if key.startswith("pid:") else None
        names.append(f"{process.name} ({process.pid})" if process else key)
    return (Text(printable(place.label), style="bold"), str(place.netns), f"{place.total:,}",
            *(f"{place.counts.get(state, 0):,}" for state in STATE_COLUMNS),
            "" if place.closes is None else f"{place.closes:,}", ports, Text(printable(", ".join(names))))


def ordered(snapshot: Snapshot) -> list[Place]:
    """Socktop's own namespace first, then the most sockets first."""
    return sorted(snapshot.places.values(), key=lambda place: (place.kind != "host", -place.total, place.key))


class ContainersScreen(Screen[None]):
    """Every place with sockets; Enter filters the panes to one, c copies ss inside its namespace."""

    DEFAULT_CSS = """
    ContainersScreen #containers-top { height: 1; background: $panel; }
    ContainersScreen #containers-table { height: 1fr; border: round $primary; }
    ContainersScreen #containers-keys { height: 1; background: $panel; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[Any]] = [
        Binding("escape", "back", "Back", show=False),
        Binding("c", "copy_ss", "Copy ss", show=False),
        Binding("q", "app.quit", "Quit", show=False),
    ]

    def __init__(self, snapshot: Callable[[], Snapshot | None], drill: Callable[[str], None],
                 copy: Callable[[str, str], None], interval: float = 1.0) -> None:
        super().__init__()
        self.snapshot = snapshot
        self.drill = drill
        self.copy = copy
        self.interval = interval
        self.places: list[Place] = []

    def compose(self) -> ComposeResult:
        yield Static(id="containers-top")
        yield DataTable(id="containers-table", cursor_type="row", zebra_stripes=True)
        yield Static(Text("Enter show its sockets in the panes · c copy ss inside its namespace · Esc back · q quit"),
                     id="containers-keys")

    def on_mount(self) -> None:
        table = self.query_one("#containers-table", DataTable)
        table.border_title = "Containers: sockets by namespace, container, pod and service"
        table.add_columns("container", "netns", "total", *(state.label for state in STATE_COLUMNS), "closed",
                          "top ports", "processes")
        self.show()
        self.set_interval(self.interval, self.show)
        table.focus()

    def show(self) -> None:
        snapshot = self.snapshot()
        top = self.query_one("#containers-top", Static)
        if snapshot is None:
            top.update(Text("Containers · waiting for the first refresh…", style="dim"))
            return
        top.update(Text(f"Containers · netns {snapshot.source.netns} · {len(snapshot.places)} places"))
        table = self.query_one("#containers-table", DataTable)
        selected = self.selected()
        self.places = ordered(snapshot)
        table.clear()
        for place in self.places:
            table.add_row(*place_cells(place, snapshot), key=place.key)
        keys = [place.key for place in self.places]
        if selected is not None and selected.key in keys:
            table.move_cursor(row=keys.index(selected.key))

    def selected(self) -> Place | None:
        table = self.query_one("#containers-table", DataTable)
        row = table.cursor_row
        return self.places[row] if self.places and 0 <= row < len(self.places) else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_drill()

    def action_drill(self) -> None:
        place = self.selected()
        if place is not None:
            self.dismiss()
            self.drill(place.key)

    def action_copy_ss(self) -> None:
        place = self.selected()
        if place is None:
            return
        command = inside(ss_sockets(), place.namespace.namespace, place.label)
        self.copy(command.line, f"ss inside {printable(place.label)}")

    def action_back(self) -> None:
        self.dismiss()
