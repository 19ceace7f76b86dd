"""Pilot tests of the TUI over a frozen snapshot: every key and action, refresh behaviour, layout, hostile names."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from frozen import HOSTILE_NAME, frozen_snapshot, make_app, press, settle
from textual.command import CommandPalette

from socktop.collect.records import TcpState
from socktop.ui.app import SocktopApp
from socktop.ui.bars import FilterLine, TopBar
from socktop.analyze.config import load_config
from socktop.ui.keys import KEYS, validate_keymap
from socktop.ui.screens import CommandDialog, HelpScreen
from socktop.ui.sockets import SocketList
from socktop.ui.view import Level

WIDE = (160, 48)


@pytest.fixture(autouse=True)
def clean_environment(tmp_path, monkeypatch):
    """No user config, no desktop clipboard, not over SSH: every test sees the same machine."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY"):
        monkeypatch.delenv(name, raising=False)


def keys_of(pane) -> list[str]:
    return pane.keys


def plain(widget) -> str:
    return widget.render().plain


async def move_to(pilot, name: str, key: str) -> None:
    """Focus pane ``name`` and move its cursor with the arrow keys until it is on row ``key``."""
    pane = pilot.app.pane(name)
    await pilot.press(str(("states", "ports", "processes", "sockets", "findings").index(name) + 1))
    order = keys_of(pane)
    if pane.selected_key == key:  # on it already: step off, so that coming back picks it
        await pilot.press("down" if order.index(key) + 1 < len(order) else "up")
    step = "down" if order.index(key) > order.index(pane.selected_key) else "up"
    while pane.selected_key != key:
        await pilot.press(step)
    await settle(pilot)


async def test_first_refresh_fills_every_pane():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        assert keys_of(app.pane("states")) == ["TIME_WAIT", "CLOSE_WAIT", "ESTABLISHED", "FIN_WAIT2", "SYN_RECV",
                                               "LISTEN"]
        assert keys_of(app.pane("ports"))[:3] == ["out:443", "in:80", "in:8080"]
        assert keys_of(app.pane("processes"))[0] == "pid:5151"  # the crawler: 1,500 inferred TIME_WAIT
        assert len(app.query_one(SocketList).records) == app.snapshot.aggregates.total == 2992
        assert keys_of(app.pane("findings"))[0] == "close-wait-leak:pid:4242"  # critical first
        top = plain(app.query_one(TopBar))
        assert "2,992 sockets" in top and "CLOSE-WAIT 320" in top and "SYN-RECV 5" in top
        assert "1 critical, 3 warning" in top and "owners" in top
        assert "All sockets" in plain(app.query_one(FilterLine))


async def test_sort_keys_and_header_click():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        states = app.pane("states")
        assert (states.sort_column, states.sort_reverse) == ("count", True)
        await pilot.press("s")  # next column: Δ, largest first
        assert (states.sort_column, states.sort_reverse) == ("delta", True)
        assert keys_of(states)[0] == "TIME_WAIT"
        await pilot.press("S")  # reversed
        assert states.sort_reverse is False and "Δ ▲" in app.query_one(FilterLine).render().plain
        await pilot.press("s", "s", "s")  # share, trend, then back to state (alphabetical)
        assert states.sort_column == "state"
        sockets_order = list(dict.fromkeys(r.state.name for r in app.query_one(SocketList).records))  # State ▲
        assert keys_of(states) == [name for name in sockets_order if name in keys_of(states)]  # the same order
        assert keys_of(states)[0] == "SYN_RECV"  # the troubled states first
        await pilot.click("#ports", offset=(20, 1))  # the Total header
        assert app.pane("ports").sort_column == "total"
        await pilot.click("#ports", offset=(3, 1))  # Port header: ascending port numbers
        assert keys_of(app.pane("ports"))[0] == "in:22"
        await pilot.press("4", "s")  # the sockets list sorts by its next column (in the view thread)
        await settle(pilot)
        assert app.spec.socket_sort == "recv_q" and app.query_one(SocketList).sort_column == "recv_q"
        assert app.query_one(SocketList).records[0].recv_q == 9  # the slow acceptor's full queue


async def test_drill_down_filters_the_other_panes_and_escape_clears_one_level():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("down")  # TIME_WAIT -> CLOSE_WAIT
        await settle(pilot)
        assert app.spec.levels == (Level("state", "CLOSE_WAIT"),)
        assert keys_of(app.pane("ports")) == ["in:8080"]
        assert keys_of(app.pane("processes")) == ["pid:4242"]
        assert app.pane("states").row_count == 6  # its own pane is not filtered by itself
        sockets = app.query_one(SocketList).records
        assert len(sockets) == 320 and {r.state for r in sockets} == {TcpState.CLOSE_WAIT}
        assert "CLOSE-WAIT" in plain(app.query_one(FilterLine)) and "320 of 2,992" in plain(app.query_one(FilterLine))
        await pilot.press("escape")
        await settle(pilot)
        assert app.spec.levels == ()
        await move_to(pilot, "processes", "pid:4242")
        assert app.spec.levels == (Level("process", "pid:4242"),)
        assert keys_of(app.pane("ports")) == ["in:8080", "out:5432"]  # its ports
        assert sorted(keys_of(app.pane("states"))) == ["CLOSE_WAIT", "ESTABLISHED", "LISTEN"]
        await pilot.press("1", "down")  # now a state within that process: two levels
        await settle(pilot)
        assert [level.kind for level in app.spec.levels] == ["process", "state"]
        assert "pid 4242 › " in plain(app.query_one(FilterLine))
        await pilot.press("escape", "escape")
        await settle(pilot)
        assert app.spec.levels == ()
        assert len(app.query_one(SocketList).records) == 2992


TW_PORTS = "time-wait-ports:10.0.0.5>203.0.113.7:443"


async def test_a_finding_replaces_the_whole_drill_down():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await move_to(pilot, "findings", "close-wait-leak:pid:4242")
        assert app.spec.levels == (Level("process", "pid:4242"), Level("state", "CLOSE_WAIT"))
        await move_to(pilot, "findings", TW_PORTS)
        await settle(pilot)
        assert app.spec.levels == (Level("port", "out:443"), Level("state", "TIME_WAIT"))  # no pid carried over
        line = plain(app.query_one(FilterLine))
        assert ":443 out › TIME-WAIT" in line and "pid" not in line and "1,500 of 2,992" in line
        assert app.pane("ports").selected_key == "out:443" and app.pane("states").selected_key == "TIME_WAIT"
        assert keys_of(app.pane("processes")) == ["pid:5151"]


async def test_a_findings_levels_are_never_swapped_for_a_neighbour():
    from socktop.model.aggregate import aggregate

    first = frozen_snapshot()
    kept = [r for r in first.sockets if not (r.state is TcpState.TIME_WAIT and r.remote_port == 443)]
    second = replace(first, seq=first.seq + 1, sockets=kept,
                     aggregates=aggregate(kept, first.ownership, first.user_of, {}))
    app = make_app([first, second, second])
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await move_to(pilot, "findings", TW_PORTS)
        app.refresh_now()
        await settle(pilot)
        assert "out:443" not in keys_of(app.pane("ports"))  # the row is gone: the cursor is elsewhere
        assert app.spec.levels == (Level("port", "out:443"), Level("state", "TIME_WAIT"))  # the filter is not
        assert len(app.query_one(SocketList).records) == 0


async def test_filter_terms_and_free_text():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        assert app.has_class("-filtering") and app.focused.id == "filter"
        await pilot.press(*"proc:leaky state:close-wait", "enter")
        await settle(pilot)
        assert not app.has_class("-filtering")
        assert app.spec.query.terms == (("proc", "leaky"), ("state", "close-wait"))
        assert len(app.query_one(SocketList).records) == 320
        assert keys_of(app.pane("processes")) == ["pid:4242"]
        await pilot.press("escape")  # clears the text filter (no drill-down level left)
        await settle(pilot)
        assert not app.spec.query and len(app.query_one(SocketList).records) == 2992
        await pilot.press("slash", *"8080", "enter")  # a free word: a port (either end)
        await settle(pilot)
        assert {r.local_port for r in app.query_one(SocketList).records} == {8080}
        await pilot.press("slash", *"state:bogus", "enter")
        await settle(pilot)
        assert "unknown state" in plain(app.query_one(FilterLine))
        await pilot.press("slash", "x", "escape")  # Esc in the field: back to what it was
        await settle(pilot)
        assert app.spec.query.text == "state:bogus"


async def test_drawer_toggles_and_explains_the_selection():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("d")
        assert app.has_class("-drawer") and app.query_one("#drawer").display
        text = drawer_text(app)
        assert "TIME-WAIT" in text and "Meaning" in text and "net.ipv4.tcp_max_tw_buckets: 3200 → 6400" in text
        assert "sysctl -w net.ipv4.tcp_max_tw_buckets=6400" in text
        await pilot.press("ctrl+d")
        assert app.query_one("#drawer").scroll_y > 0
        await pilot.press("ctrl+u")
        assert app.query_one("#drawer").scroll_y == 0
        assert app.spec.levels == (Level("state", "TIME_WAIT"),)  # opening the drawer picked the cursor row
        await pilot.press("3")
        await settle(pilot)
        assert "crawler" in drawer_text(app) and "kill -TERM 5151" in drawer_text(app)  # the highlighted row
        await pilot.press("d")
        assert not app.has_class("-drawer")
        await pilot.press("enter")  # Enter on a row: select it and open the drawer
        await settle(pilot)
        assert app.has_class("-drawer")
        assert app.spec.levels == (Level("state", "TIME_WAIT"), Level("process", "pid:5151"))
        assert "crawler" in drawer_text(app) and "kill -TERM 5151" in drawer_text(app)
        await pilot.press("enter")
        assert not app.has_class("-drawer")


def drawer_text(app: SocktopApp) -> str:
    from io import StringIO

    from rich.console import Console

    console = Console(width=70, record=True, file=StringIO())
    console.print(app.query_one("#drawer-text").content)
    return console.export_text()


COPIES = [
    # (keys pressed after the first refresh, the exact text copied)
    (("3", "down", "down", "k"), "if [ \"$(sed 's/.*) //' /proc/4242/stat 2>/dev/null | cut -d' ' -f20)\" = 1001 ]; "
                                 "then kill -TERM 4242; else echo 'pid 4242 is no longer the process socktop saw: "
                                 "not signalled' >&2; fi  # comm=leaky-api"),
    (("down", "3", "down", "l"), "lsof -nP -a -p 4242 -iTCP -sTCP:CLOSE_WAIT"),  # Down picks a one-row pane's row
    (("down", "3", "enter", "enter", "c"), "ss -tanp state close-wait | grep -F pid=4242,"),
    (("2", "down", "down", "c"), "ss -tanp '( sport = :8080 )'"),
    (("enter", "y"), "sysctl -w net.ipv4.tcp_max_tw_buckets=6400"),
    (("5", "down", "down", "y"), "sysctl -w net.ipv4.tcp_tw_reuse=1"),
    (("c",), "ss -tanp"),
]


@pytest.mark.parametrize(("keys", "expected"), COPIES, ids=["kill", "lsof", "ss-drill", "ss-port", "sysctl-state",
                                                            "sysctl-finding", "ss-all"])
async def test_copy_actions_put_the_exact_command_on_the_clipboard(keys, expected):
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await press(pilot, *keys)
        assert app.clipboard == expected
        assert not isinstance(app.screen, CommandDialog)  # --clipboard osc52: trusted, no dialog


async def test_copy_ss_says_in_its_title_when_it_lists_more_than_the_view():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await press(pilot, "slash", *"crawler", "enter", "c")
        assert app.clipboard == "ss -tanp"
        assert any(n.title == "Copied ss: lists more than the 1,520 in view: ss cannot filter on crawler (OSC 52)"
                   for n in app._notifications)
        await press(pilot, "slash", "ctrl+u", *"port:443", "enter", "c")
        assert app.clipboard == "ss -tanp '( sport = :443 or dport = :443 )'"


def copied_titles(app) -> list[str]:
    return [n.title for n in app._notifications if n.title.startswith("Copied")]


async def test_copy_keys_act_on_the_highlighted_row_which_follows_its_item():
    """htop's model: the highlighted row of the focused pane is what k and l act on, picked or not; it
    follows its process when the rows re-sort; the notification names pid, name and its telling count."""
    from socktop.model.aggregate import aggregate

    first = frozen_snapshot()
    # in the second refresh leaky-api holds twice 320 more CLOSE_WAIT: it climbs to the top of "Total ▼"
    extra = [r._replace(remote_port=40000 + i, inode=900_000 + i) for i, r in enumerate(
        r for r in first.sockets if r.state is TcpState.CLOSE_WAIT)]
    ownership = replace(first.ownership, pids_by_inode={**first.ownership.pids_by_inode,
                                                        **{r.inode: (4242,) for r in extra}})
    sockets = [*first.sockets, *extra, *[r._replace(remote_port=50000 + i, inode=950_000 + i)
                                         for i, r in enumerate(extra)]]
    ownership = replace(ownership, pids_by_inode={**ownership.pids_by_inode,
                                                  **{950_000 + i: (4242,) for i in range(len(extra))}})
    second = replace(first, seq=first.seq + 1, sockets=sockets, ownership=ownership,
                     aggregates=aggregate(sockets, ownership, first.user_of, {}))
    app = make_app([first, second, first])
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        processes = app.pane("processes")
        await press(pilot, "3")
        assert processes.selected_key == "pid:5151" and not app.spec.levels  # highlighted, not drilled into
        await press(pilot, "k")
        assert "then kill -TERM 5151;" in app.clipboard
        assert copied_titles(app)[-1] == "Copied kill for pid 5151 crawler (1,500 TIME-WAIT of 1,520 sockets) (OSC 52)"
        app.refresh_now()
        await settle(pilot)
        # leaky-api climbed to the top; nobody chose a row in this pane yet, so the highlight stayed on top
        assert keys_of(processes)[0] == "pid:4242" and processes.selected_key == "pid:4242"
        await press(pilot, "k")
        assert "then kill -TERM 4242;" in app.clipboard
        assert "pid 4242 leaky-api (960 CLOSE-WAIT of 1,031 sockets)" in copied_titles(app)[-1]
        await press(pilot, "down", "up")  # now chosen: leaky-api, on top
        assert processes.selected_key == "pid:4242" and processes.cursor == 0
        app.refresh_now()
        await settle(pilot)
        assert keys_of(processes).index("pid:4242") == 2  # back below crawler and nginx...
        assert processes.cursor == 2 and processes.selected_key == "pid:4242"  # ...and the highlight followed it
        assert processes.cursor_on_screen()
        await press(pilot, "escape", "l")  # unpicked as a drill-down level, still highlighted: l acts on it
        assert not app.spec.levels and app.clipboard == "lsof -nP -a -p 4242 -iTCP"


async def test_after_a_sort_the_view_shows_the_top_of_the_new_order():
    app = make_app(frozen_snapshot(scale=8))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await press(pilot, "4", "end")
        sockets = app.query_one(SocketList)
        assert sockets.scroll_y > 0
        selected = sockets.selected
        await press(pilot, "s")
        assert sockets.scroll_y == 0 and sockets.selected == selected  # the top shown, the cursor on its socket
        await press(pilot, "3", "end")
        processes = app.pane("processes")
        key = processes.selected_key
        await press(pilot, "S")
        assert processes.scroll_y == 0 and processes.selected_key == key


async def test_copy_without_a_subject_says_why():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("k")  # States pane, no process picked
        await settle(pilot)
        assert app.clipboard == ""
        assert any("select a process first" in n.message for n in app._notifications)
        await pilot.press("down", "y")  # CLOSE_WAIT: no sysctl ends it
        assert app.clipboard == ""
        assert any("no setting ends CLOSE_WAIT" in n.message for n in app._notifications)


async def test_unconfirmed_clipboard_opens_a_dialog_with_the_command():
    app = make_app(clipboard="auto")  # no desktop here: OSC 52 only, which nothing confirms
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        assert app.clipboard == "ss -tanp"
        assert isinstance(app.screen, CommandDialog) and app.screen.command == "ss -tanp"
        assert not app._notifications  # none drawn over the dialog's instructions
        await pilot.press("escape")
        assert not isinstance(app.screen, CommandDialog)


async def test_system_clipboard_runs_in_a_thread_and_reports(monkeypatch):
    from socktop.ui import clipboard

    copied = []
    monkeypatch.setattr(clipboard, "system_copy", lambda text: copied.append(text) or "")
    app = make_app(clipboard="system")
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        assert copied == ["ss -tanp"] and not isinstance(app.screen, CommandDialog)
        monkeypatch.setattr(clipboard, "system_copy", lambda text: "no xclip")
        app.clear_notifications()
        await pilot.press("c")
        await settle(pilot)
        assert isinstance(app.screen, CommandDialog) and not app._notifications


async def until(pilot, condition, timeout: float = 30.0) -> None:
    """Let the app run until ``condition()`` (bounded): a loaded machine's poller keeps its pace only roughly."""
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        await pilot.pause(0.1)


async def test_pause_and_interval():
    app = make_app(interval=0.5)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await until(pilot, lambda: app.refresh_count >= 2)
        assert app.refresh_count >= 2
        await pilot.press("space")
        assert app.paused and "PAUSED" in plain(app.query_one(TopBar))
        await settle(pilot)
        count = app.refresh_count
        await pilot.pause(1.2)
        assert app.refresh_count == count
        await pilot.press("space")
        await settle(pilot)
        assert not app.paused and app.refresh_count >= count + 1  # at once (and on the interval after)
        await pilot.press("plus", "plus")
        assert app.interval == 2.0 and "every 2s" in plain(app.query_one(TopBar))
        await pilot.press("minus", "minus", "minus")
        assert app.interval == 0.5
        await pilot.press("minus")  # the floor
        assert app.interval == 0.5
        await until(pilot, lambda: app._source().interval == 0.5)
        assert app._source().interval == 0.5  # handed to the source by the poller, before a refresh


async def test_refresh_keeps_cursor_sort_and_selection_and_moves_off_vanished_rows():
    first = frozen_snapshot()
    second = frozen_snapshot(seq=first.seq + 1, drop=("half-closer",), scale=1.1)
    app = make_app([first, second, second])
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        processes = app.pane("processes")
        await pilot.press("3")
        while processes.sort_column != "name":  # processes sorted by name
            await pilot.press("s")
        order = keys_of(processes)
        index = order.index("pid:8181")
        await move_to(pilot, "processes", "pid:8181")
        assert app.spec.levels == (Level("process", "pid:8181"),)
        app.refresh_now()
        await settle(pilot)
        assert app.snapshot.seq == second.seq
        assert processes.sort_column == "name"  # sort kept
        assert "pid:8181" not in keys_of(processes)
        assert processes.selected_key == order[index + 1]  # the cursor: on its neighbour
        assert app.spec.levels == ()  # the drill-down is never swapped for another process
        assert any("pid 8181 exited" in n.message for n in app._notifications)
        await press(pilot, "k")  # the highlighted row is the neighbour now, and the copy names it
        assert f"Copied kill for pid {processes.selected_key[4:]} " in copied_titles(app)[-1]


async def test_new_sockets_are_marked_for_one_refresh():
    first = frozen_snapshot()
    extra = first.sockets[-1]._replace(remote_port=65000)
    second = replace(first, seq=first.seq + 1, sockets=[*first.sockets, extra])
    app = make_app([first, second])
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        sockets = app.query_one(SocketList)
        assert not any(map(sockets.is_new, range(len(sockets.records))))
        app.refresh_now()
        await settle(pilot)
        new = [r for index, r in enumerate(sockets.records) if sockets.is_new(index)]
        assert new == [extra]
        assert sockets._line(sockets.records.index(extra)).text.startswith("+ ")
        app.refresh_now()
        await settle(pilot)
        assert not any(map(sockets.is_new, range(len(sockets.records))))


async def test_collection_error_shows_in_the_top_bar_and_the_app_keeps_running():
    broken = {"now": False}
    app = make_app(fail=lambda call: OSError("netlink: permission denied") if broken["now"] else None)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        broken["now"] = True
        app.refresh_now()
        await settle(pilot)
        assert "netlink: permission denied" in plain(app.query_one(TopBar))
        assert len(app.query_one(SocketList).records) == 2992  # the last good snapshot stays on screen
        assert re.search(r"data \d+s old", plain(app.query_one(TopBar)))  # ...and says how old it is
        broken["now"] = False
        app.refresh_now()
        await settle(pilot)
        assert app.error == "" and "permission denied" not in plain(app.query_one(TopBar))


async def test_help_lists_every_key_and_palette_runs_actions():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        rows = app.screen.help_rows()
        assert {row[3] for row in rows if row[3]} == {key.id for key in KEYS}
        assert ("General", "? F1", "Show every key", "help") in rows and ("General", "q F10", "Leave socktop",
                                                                         "quit") in rows
        assert any("k is Copy kill" in row[2] for row in rows)
        assert not any(re.search(r"\d s\b", row[2]) for row in rows)  # "10 s)" wrapped, leaving "s)" alone
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        titles = [command.title for command in app.get_system_commands(app.screen)]
        for key in KEYS:
            assert key.description in titles
        assert len(titles) == len(set(titles)) and "Keys" not in titles  # no entry twice (Quit, Theme, Help)
        await pilot.press("ctrl+p")
        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*"Copy ss")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(pilot)
        assert app.clipboard == "ss -tanp"


def shown_panes(app) -> list[str]:
    return [name for name in ("states", "ports", "processes", "sockets", "findings")
            if app.pane(name).display and app.pane(name).parent.display and app.pane(name).region.height]


def strip_text(app) -> list[str]:
    from socktop.ui.bars import FindingsStrip

    strip = app.query_one(FindingsStrip)
    return plain(strip).splitlines() if strip.display else []


@pytest.mark.parametrize(("size", "mode", "panes", "strip_lines"), [
    ((80, 24), "small", ["states", "processes"], 2),
    ((120, 40), "medium", ["states", "processes", "sockets"], 3),
    ((200, 50), "wide", ["states", "ports", "processes", "sockets", "findings"], 0),
    ((60, 15), "small", ["states"], 2),
], ids=["80x24", "120x40", "200x50", "60x15"])
async def test_each_size_class_shows_what_is_wrong_first(size, mode, panes, strip_lines):
    """The most severe findings are on the first screen at every size (the strip, or the Findings pane),
    one line each and cut between words; the panes shown fill the height."""
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        assert app.layout_mode == mode and shown_panes(app) == panes
        lines = strip_text(app)
        assert len(lines) == strip_lines
        titles = [f.title for f in app.analysis.findings]
        for line in lines:
            assert len(line) <= size[0]
            chip, _, title = line.strip().partition("  ")
            assert chip in ("CRIT", "WARN", "INFO")
            title = title.split("  +")[0]
            shown = title.removesuffix("…")
            assert any(t == shown or (title.endswith("…") and t.startswith(shown) and t[len(shown)] in " ,;:(-")
                       for t in titles), line
        if lines:
            assert "320 CLOSE_WAIT leak +6.7/s in pid 4242 leaky-api" in lines[0]
            more = len(titles) - len(lines)  # the rest are one key away, and the strip says which
            assert lines[-1].endswith(f"+{more} more finding{'s' if more > 1 else ''} (5: Findings)")
        assert "findings" in plain(app.query_one(TopBar))  # the count stays, down to 60 columns
        states = app.pane("states")
        if "states" in panes and len(panes) > 1:  # fitted to its rows: no empty half pane
            assert states.region.height <= states.row_count + 3 or mode != "small"
        assert "▏" not in app.export_screenshot()  # no horizontal scrollbar stub in any pane
        main = app.query_one("#main").region
        used = sum(app.pane(name).region.height for name in panes if app.pane(name).region.x == main.x)
        assert used == main.height  # the panes in the first column fill the height


async def test_panes_switch_within_their_place_and_tabs_click():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("tab")
        assert app.active_pane == "ports" and app.focused.id == "ports" and app.pane("ports").region.width > 70
        assert shown_panes(app) == ["states", "ports"]
        await pilot.press("4")
        assert shown_panes(app) == ["states", "sockets"] and app.pane("sockets").region.height >= 7
        await pilot.press("d")  # the drawer takes the whole body
        assert app.query_one("#drawer").region.width >= 76 and not app.query_one("#main").display
        await pilot.press("escape")
        assert not app.has_class("-drawer")
        await pilot.click("#tabline", offset=(52, 0))  # "5 Findings"
        assert app.active_pane == "findings" and shown_panes(app) == ["states", "findings"]
        await pilot.resize_terminal(120, 40)
        await settle(pilot)
        assert shown_panes(app) == ["states", "ports", "findings"]  # the last shown in each place
        await pilot.press("3")
        assert shown_panes(app) == ["states", "processes", "findings"]


async def test_a_click_on_the_findings_strip_picks_that_finding():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.click("#strip", offset=(10, 0))
        await settle(pilot)
        assert app.spec.levels == (Level("process", "pid:4242"), Level("state", "CLOSE_WAIT"))


async def test_focus_comes_back_after_the_terminal_was_too_small():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("3")
        await pilot.resize_terminal(50, 12)
        await settle(pilot)
        assert app.has_class("-tiny") and app.query_one("#too-small").display
        await pilot.resize_terminal(*WIDE)
        await settle(pilot)
        assert app.has_class("-wide") and not app.has_class("-tiny")
        assert app.focused is app.pane("processes")  # the arrows work at once, no 1..5 or Tab needed
        await pilot.press("down")
        await settle(pilot)
        assert app.spec.levels and app.spec.levels[0].kind == "process"
        assert all(app.pane(name).region.width > 0 for name in ("states", "ports", "processes", "sockets"))


async def test_owner_coverage_stays_at_80_columns_and_never_rounds_up():
    snapshot = frozen_snapshot()
    rounded = replace(snapshot, source=replace(snapshot.source, owner_note="run as root for all"))  # the reason only
    app = make_app(rounded)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        top = plain(app.query_one(TopBar))
        coverage = app.snapshot.coverage
        assert 0.97 < coverage < 0.98 and f"{coverage:.0%}" == "98%"  # rounded up, the model's own note would say 98%
        assert "owners 97%" in top and "100%" not in top  # the bar shows the floor, never a rounded-up share
        assert "Linux" not in top and "netlink" not in top  # kernel and backend go first
        assert "findings: 1 critical, 3 warning" in top
        await pilot.resize_terminal(*WIDE)
        await settle(pilot)
        assert "owners 97%  run as root for all" in plain(app.query_one(TopBar))


async def test_theme_toggle():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        assert app.theme == "textual-light"
        await pilot.press("t")
        assert app.theme == "textual-dark"


async def test_keys_are_remapped_from_the_config_file(tmp_path):
    config = tmp_path / "socktop" / "config.toml"
    config.parent.mkdir()
    config.write_text('[thresholds]\nclose_wait_warning = 50\n[keys]\ncopy_ss = "C"\nnope = "x"\n')
    keymap, errors = validate_keymap(load_config(config).keys, str(config))
    assert keymap == {"copy_ss": "C"} and "unknown key binding 'nope'" in errors[0]
    app = make_app(keymap=keymap)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("c")
        assert app.clipboard == ""
        await pilot.press("C")
        assert app.clipboard == "ss -tanp"


async def test_hostile_process_names_stay_literal_text():
    app = make_app(frozen_snapshot(hostile=True))
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        escaped = 'x[bold]$(id)"q\'\\e[31mred'
        processes = app.pane("processes")
        names = [processes.cells_of(key)[1].plain.strip() for key in processes.keys]
        assert escaped in names
        await pilot.press("3")
        while processes.selected_key != "pid:6666":
            await pilot.press("down")
        await settle(pilot)
        await pilot.press("d", "k")
        await settle(pilot)
        assert "\x1b" not in app.clipboard and "then kill -TERM 6666; else" in app.clipboard
        assert escaped in drawer_text(app)
        screen = app.export_screenshot()
        assert "\x1b" not in screen and "[bold]$(id)" in screen.replace("&#160;", " ")
        assert HOSTILE_NAME not in screen


async def test_no_color_keeps_warnings_apart(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        assert app.no_color
        states = app.pane("states")
        close_wait, established = states.cells_of("CLOSE_WAIT")[0], states.cells_of("ESTABLISHED")[0]
        assert close_wait.style.bold and not established.style.bold  # bold survives the monochrome filter


async def test_a_failing_health_check_shows_and_the_app_keeps_running():
    from frozen import FrozenSource

    def check() -> None:
        raise RuntimeError("leaky-api (pid 4242) stopped: exit status 1")

    app = SocktopApp(FrozenSource(), interval=10, clipboard_mode="osc52", health=check)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        assert "leaky-api (pid 4242) stopped" in plain(app.query_one(TopBar))
        assert len(app.query_one(SocketList).records) == 2992


def test_cli_thresholds_reach_the_tui_analysis(tmp_path) -> None:
    """`socktop --config F --threshold K=V` must weigh findings in the TUI as in --once/--json."""
    from socktop.ui.analysis import Analyzer

    config = tmp_path / "config.toml"
    config.write_text("[thresholds]\nclose_wait_warning = 42\ntime_wait_group = 7\n")
    analyzer = Analyzer(load_config(config, [("time_wait_group", 9)]).thresholds)
    assert (analyzer.thresholds.close_wait_warning, analyzer.thresholds.time_wait_group) == (42, 9)


def test_command_line_filters_seed_the_tui() -> None:
    """`socktop --state close-wait --port 8080 --pid 42` starts filtered, as `--once` would print."""
    import argparse

    from socktop.collect.records import TcpState
    from socktop.ui.app import filter_from_options
    from socktop.ui.view import Query

    options = argparse.Namespace(state=TcpState.CLOSE_WAIT, port=8080, pid=42)
    text = filter_from_options(options)
    assert text == "state:close-wait port:8080 pid:42"
    assert Query.parse(text).terms == (("state", "close-wait"), ("port", "8080"), ("pid", "42"))
    assert filter_from_options(argparse.Namespace()) == ""


async def test_the_findings_pane_shows_its_titles_whole_or_visibly_cut():
    """At 200 columns the sockets pane stops at what its columns need and the findings pane has the rest;
    its title column ends at the pane's border, a long title cut between words with "…"."""
    from socktop.ui.bars import TrendStrip
    from socktop.ui.panes import FindingsPane

    app = make_app()
    async with app.run_test(size=(200, 50)) as pilot:
        await settle(pilot)
        findings: FindingsPane = app.pane("findings")
        assert findings.region.width >= 88 and app.query_one(SocketList).region.width <= 110
        for size in ((200, 50), (140, 40)):
            await pilot.resize_terminal(*size)
            await settle(pilot)
            width = findings.scrollable_content_region.width
            shown = [findings.render_line(y).text for y in range(1, findings.row_count + 1)]
            titles = [findings.cells_of(key)[1].plain for key in findings.keys]
            assert all(len(line) == width for line in shown)
            for line, title in zip(shown, titles):
                text = line[6:].rstrip()
                assert text == title or (text.endswith("…") and title.startswith(text[:-1])
                                         and title[len(text) - 1] in " ,:("), (text, title)
        assert any(line.rstrip().endswith("…") for line in shown)  # the frozen machine has long titles
        assert plain(app.query_one(TrendStrip)).startswith("last 39s ")  # 40 refreshes a second apart


QUIT_WHILE_REFRESHING = """
import sys, threading
sys.path.insert(0, {tests!r})
from frozen import FrozenSource
from socktop.ui.app import SocktopApp

blocked = threading.Event()

class Blocking(FrozenSource):
    def refresh(self):
        if self.calls:  # the second refresh never returns, as a slow dump of 200,000 sockets would not soon
            blocked.set()
            threading.Event().wait()
        return super().refresh()

class App(SocktopApp):
    def on_mount(self):
        self.set_interval(0.05, lambda: blocked.is_set() and self.action_quit())

print("exit", App(Blocking(), interval=0.5, clipboard_mode="osc52").run(headless=True, size=(120, 40)))
"""


def test_quit_never_waits_for_a_refresh_in_progress():
    """`q` ends the app at once: the refresh runs in a daemon thread that exiting leaves behind (a Textual
    thread worker runs in the loop's executor, which asyncio.run joins: this process would never end)."""
    import subprocess
    import sys
    from pathlib import Path

    script = QUIT_WHILE_REFRESHING.format(tests=str(Path(__file__).parent))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip().endswith("exit 0"), result.stderr[-2000:]


async def test_escape_closes_the_innermost_thing_first():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await press(pilot, "down", "d")  # CLOSE_WAIT picked, the drawer open on it
        assert app.drawer_open and app.spec.levels == (Level("state", "CLOSE_WAIT"),)
        await press(pilot, "slash", *"leaky")
        await press(pilot, "escape")  # the filter field first, as it was
        assert not app.has_class("-filtering") and app.drawer_open and not app.spec.query.text
        await press(pilot, "escape")  # then the drawer; the row under it stays picked
        assert not app.drawer_open and app.spec.levels == (Level("state", "CLOSE_WAIT"),)
        await press(pilot, "escape")  # then one drill-down level
        assert app.spec.levels == ()


async def test_an_unknown_state_is_explained_and_cleared_with_escape():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await press(pilot, "slash", *"state:tw", "enter")
        assert "unknown state 'tw': did you mean time-wait?" in plain(app.query_one(FilterLine))
        assert app.spec.query.text == "state:tw" and not app.spec.query.terms
        await press(pilot, "escape")
        assert app.spec.query.text == "" and "All sockets" in plain(app.query_one(FilterLine))


async def test_a_filter_that_matches_nothing_says_so_in_the_panes():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await press(pilot, "slash", *"proc:nosuchthing", "enter")
        for name in ("states", "ports", "processes", "sockets"):
            pane = app.pane(name)
            assert pane.row_total == 0 and "no match" in pane.render_line(1).text, name


async def test_a_picked_finding_and_a_filter_are_both_said_in_the_filter_line():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await move_to(pilot, "findings", "close-wait-leak:pid:4242")
        await press(pilot, "slash", *"198.51", "enter")
        line = plain(app.query_one(FilterLine))
        title = app.picked_finding().title
        assert f"finding «{title[:20]}" in line and "/198.51" in line and "pid 4242 › CLOSE-WAIT" in line


async def test_function_keys_and_vi_moves():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await press(pilot, "f1")
        assert isinstance(app.screen, HelpScreen)
        await press(pilot, "escape", "f3")
        assert app.has_class("-filtering")
        await press(pilot, "escape", "3", "j")
        processes = app.pane("processes")
        assert processes.cursor == 1 and app.spec.levels == (Level("process", processes.selected_key),)
        await press(pilot, "G")
        assert processes.cursor == processes.row_count - 1
        await press(pilot, "g")
        assert processes.cursor == 0
        await press(pilot, "f10")
        assert app.return_code == 0


async def test_the_inferred_legend_shows_only_while_a_row_has_one():
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        processes = app.pane("processes")
        assert "9*: 9 inferred" in processes.border_subtitle  # the crawler's and nginx's TIME_WAIT
        await press(pilot, "slash", *"proc:leaky", "enter")
        assert "inferred" not in processes.border_subtitle and keys_of(processes) == ["pid:4242"]


GUARD_CHILD = """
import os, sys, threading
from socktop.ui.app import ShutdownGuard
read, write = os.pipe()
guard = ShutdownGuard(0.05, fd=write)
guard.arm(3)
if sys.argv[1] == "disarm":
    guard.disarm()
    threading.Event().wait(0.5)
    sys.exit(0)
threading.Event().wait(60)  # a shutdown that never finishes
"""


@pytest.mark.parametrize("mode, status", [("hang", 3), ("disarm", 0)])
def test_a_signalled_shutdown_that_hangs_is_ended_by_the_guard(mode: str, status: int) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", GUARD_CHILD, mode], capture_output=True, timeout=30)
    assert result.returncode == status


async def test_at_80_columns_the_smallest_state_counts_drop_first():
    counts = {TcpState.ESTABLISHED: 252, TcpState.SYN_SENT: 2, TcpState.SYN_RECV: 5, TcpState.FIN_WAIT1: 1,
              TcpState.FIN_WAIT2: 115, TcpState.TIME_WAIT: 2400, TcpState.CLOSE_WAIT: 320, TcpState.LAST_ACK: 3,
              TcpState.LISTEN: 5, TcpState.CLOSING: 1}
    snapshot = frozen_snapshot()
    app = make_app(replace(snapshot, aggregates=replace(snapshot.aggregates, by_state=counts)))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        chips = plain(app.query_one(TopBar)).splitlines()[1]
        shown = re.findall(r"([A-Z][A-Z0-9-]+) [\d,]+", chips)
        assert shown == ["ESTAB", "SYN-RECV", "FIN-WAIT-2", "TIME-WAIT", "CLOSE-WAIT"]  # display order kept
        assert "…" not in chips


async def test_the_drawer_takes_the_vi_keys_where_it_has_the_focus():
    from socktop.ui.app import Drawer

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await press(pilot, "5", "d")  # small: the drawer takes the body and the keys
        drawer = app.query_one(Drawer)
        assert app.focused is drawer and drawer.max_scroll_y > 1
        await press(pilot, "j")
        assert drawer.scroll_y == 1
        await press(pilot, "G")
        assert drawer.scroll_y == drawer.max_scroll_y
        await press(pilot, "g")
        assert drawer.scroll_y == 0
