"""The TUI's Containers view (N): one row per place, Enter filters the panes to it, c copies ss inside it."""

from __future__ import annotations

from textual.widgets import DataTable

from frozen import make_app, press, settle
from frozen_places import CHECKOUT, containers_snapshot

from socktop.ui.containers import ContainersScreen

SIZE = (200, 50)


async def test_rows_are_the_places_and_enter_filters_the_panes_to_one() -> None:
    snapshot = containers_snapshot()
    app = make_app(snapshot)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await press(pilot, "N")
        screen = app.screen
        assert isinstance(screen, ContainersScreen)
        table = screen.query_one("#containers-table", DataTable)
        keys = [place.key for place in screen.places]
        assert keys[0] == "netns:4026531840" and set(keys) == set(snapshot.places)
        assert table.row_count == len(snapshot.places)
        table.move_cursor(row=keys.index(CHECKOUT.key))
        await press(pilot, "enter")
        assert not isinstance(app.screen, ContainersScreen)
        assert app.spec.query.text == f"container:{CHECKOUT.key}"
        assert app.view is not None and len(app.view.sockets) == snapshot.places[CHECKOUT.key].total


async def test_c_copies_ss_for_the_place_and_escape_goes_back() -> None:
    app = make_app(containers_snapshot())
    copied: list[tuple[str, str]] = []
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.copy_command = lambda text, what: copied.append((text, what))  # the clipboard is the boundary
        await press(pilot, "N")
        await press(pilot, "c")
        assert copied and copied[0][0].startswith("ss -tanp")  # socktop's own namespace: no nsenter
        await press(pilot, "escape")
        assert not isinstance(app.screen, ContainersScreen)
