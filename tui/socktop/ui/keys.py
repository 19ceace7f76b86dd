"""Every key socktop answers: one table for the bindings, the footer, the help screen and the palette.

Each entry has an id, so keys can be remapped in the config file
(``$XDG_CONFIG_HOME/socktop/config.toml``)::

    [keys]
    copy_kill = "K"
    pause = "p,space"

This module reads only the ``[keys]`` table of that file; the analysis
layer reads its own thresholds from the same file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from textual.binding import Binding

from ..analyze.config import config_path


@dataclass(frozen=True, slots=True)
class Key:
    """One binding: its id (for remapping), default keys, action, and what it does."""

    id: str
    keys: str  # Textual key names, comma-separated
    action: str
    description: str  # short: footer and help
    help: str  # one sentence: help screen and command palette
    group: str
    show: bool = False  # in the footer
    display: str = ""  # how the help screen writes the key, when not the key name itself


GENERAL, PANES, ACTIONS = "General", "Panes and drill-down", "Copy a command"

KEYS: tuple[Key, ...] = (
    Key("help", "question_mark", "help", "Help", "Show every key", GENERAL, show=True, display="?"),
    Key("quit", "q", "quit", "Quit", "Leave socktop", GENERAL, show=True),
    Key("pause", "space", "toggle_pause", "Pause", "Pause or resume the refresh", GENERAL, show=True),
    Key("slower", "plus", "change_interval(1)", "Slower", "Refresh less often (up to every 10 s)", GENERAL, display="+"),
    Key("faster", "minus", "change_interval(-1)", "Faster", "Refresh more often (down to every 0.5 s)", GENERAL,
        display="-"),
    Key("filter", "slash", "filter", "Filter",
        "Filter by text: port, pid, name, user, address, state; or state:close-wait port:8080 pid:42 proc:java",
        GENERAL, show=True, display="/"),
    Key("theme", "t", "toggle_theme", "Theme", "Switch between the dark and the light theme", GENERAL),
    Key("pane_states", "1", "focus_pane('states')", "States", "Go to the States pane", PANES),
    Key("pane_ports", "2", "focus_pane('ports')", "Ports", "Go to the Ports pane", PANES),
    Key("pane_processes", "3", "focus_pane('processes')", "Processes", "Go to the Processes pane", PANES),
    Key("pane_sockets", "4", "focus_pane('sockets')", "Sockets", "Go to the Sockets list", PANES),
    Key("pane_findings", "5", "focus_pane('findings')", "Findings", "Go to the Findings list", PANES),
    Key("next_pane", "tab", "next_pane(1)", "Next pane", "Go to the next pane", PANES, display="Tab"),
    Key("previous_pane", "shift+tab", "next_pane(-1)", "Previous pane", "Go to the previous pane", PANES,
        display="Shift+Tab"),
    Key("details", "d", "toggle_drawer", "Details",
        "Open or close the details drawer (opening it picks the row under the cursor, as Enter does)", PANES,
        show=True),
    Key("drawer_down", "ctrl+d", "scroll_drawer(1)", "Drawer down", "Scroll the details drawer down a page",
        PANES, display="Ctrl+D"),
    Key("drawer_up", "ctrl+u", "scroll_drawer(-1)", "Drawer up", "Scroll the details drawer up a page", PANES,
        display="Ctrl+U"),
    Key("back", "escape", "back", "Back", "Clear one drill-down level (or the filter, or close the drawer)", PANES,
        display="Esc"),
    Key("sort", "s", "sort(False)", "Sort", "Sort the pane by its next column", PANES, show=True),
    Key("sort_reverse", "S", "sort(True)", "Reverse", "Reverse the pane's sort order", PANES),
    Key("copy_kill", "k", "copy('kill')", "Copy kill", "Copy the kill command for the selected process", ACTIONS,
        show=True),
    Key("copy_sysctl", "y", "copy('sysctl')", "Copy sysctl",
        "Copy the sysctl suggestion for the selected state or finding", ACTIONS, show=True),
    Key("copy_ss", "c", "copy('ss')", "Copy ss", "Copy the ss command that lists exactly the sockets in view",
        ACTIONS, show=True),
    Key("copy_lsof", "l", "copy('lsof')", "Copy lsof", "Copy the lsof command for the selected process", ACTIONS,
        show=True),
)

#: Keys the panes and dialogs answer themselves; listed on the help screen, not remappable here.
BUILTIN_KEYS: tuple[tuple[str, str, str], ...] = (
    ("↑ ↓ PgUp PgDn Home End", "Move in a pane: the row you move to is the selection (Esc unpicks it)", PANES),
    ("Enter", "Pick the row under the cursor and open or close the details drawer", PANES),
    ("click a header", "Sort by that column (again: reverse)", PANES),
    ("Ctrl+P", "Command palette: every action by name", GENERAL),
    ("Ctrl+Q", "Quit", GENERAL),
)

BY_ID = {key.id: key for key in KEYS}

#: The footer's keys, most important first: on a narrow terminal the last ones give way.
FOOTER = ("help", "quit", "details", "copy_kill", "copy_sysctl", "copy_ss", "copy_lsof", "filter", "pause", "sort")


#: Keys that act before the focused widget sees them: Tab moves between panes, not widgets; "/" moves
#: the focus to the filter field at once, so that keys typed right after it (a paste, a fast typist)
#: land in the field rather than in the pane that had the focus when they arrived.
PRIORITY = frozenset({"next_pane", "previous_pane", "filter"})


def bindings() -> list[Binding]:
    return [Binding(key.keys, key.action, key.description, show=key.show, id=key.id,
                    key_display=key.display or None, tooltip=key.help, priority=key.id in PRIORITY)
            for key in KEYS]


def load_keymap(path: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """The ``[keys]`` table of the config file as {binding id: keys}, and what was wrong with it.

    A missing file is no error; an unreadable one, an unknown id or a
    non-string value is reported and skipped, never fatal.
    """
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, []
    except OSError as exc:
        return {}, [f"{path}: {exc.strerror or exc}"]
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            return {}, [f"{path}: reading it needs Python 3.11 or the tomli package"]
    try:
        table = tomllib.loads(text).get("keys", {})
    except tomllib.TOMLDecodeError as exc:
        return {}, [f"{path}: {exc}"]
    if not isinstance(table, dict):
        return {}, [f"{path}: [keys] must be a table of binding id = \"key\""]
    return validate_keymap(table.items(), str(path))


def validate_keymap(items: Iterable[tuple[object, object]], where: str) -> tuple[dict[str, str], list[str]]:
    keymap: dict[str, str] = {}
    errors: list[str] = []
    for binding_id, keys in items:
        if binding_id not in BY_ID:
            errors.append(f"{where}: unknown key binding {binding_id!r} (known: {', '.join(BY_ID)})")
        elif not isinstance(keys, str) or not keys.strip():
            errors.append(f"{where}: keys.{binding_id} must be a string such as \"k\" or \"ctrl+k,K\"")
        else:
            keymap[str(binding_id)] = keys.strip()
    return keymap, errors
