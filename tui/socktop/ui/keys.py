"""Every key socktop answers: one table for the bindings, the footer, the help screen and the palette.

Each entry has an id, so keys can be remapped in the config file
(``$XDG_CONFIG_HOME/socktop/config.toml``)::

    [keys]
    copy_kill = "K"
    pause = "p,space"

`socktop.analyze.config` reads the file once and hands this module its
``[keys]`` table; `validate_keymap` checks every name against Textual's key
names and rejects two actions on one key, keeping the defaults for those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from textual.binding import Binding
from textual.keys import Keys, _character_to_key

from ..safetext import printable


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
    Key("help", "question_mark,f1", "help", "Help", "Show every key", GENERAL, show=True, display="?"),
    Key("quit", "q,f10", "quit", "Quit", "Leave socktop", GENERAL, show=True),
    Key("pause", "space", "toggle_pause", "Pause", "Pause or resume the refresh", GENERAL, show=True),
    Key("slower", "plus", "change_interval(1)", "Slower", "Refresh less often (up to 10s)", GENERAL, display="+"),
    Key("faster", "minus", "change_interval(-1)", "Faster", "Refresh more often (down to 0.5s)", GENERAL,
        display="-"),
    Key("filter", "slash,f3", "filter", "Filter",
        "Filter by text: port, pid, name, user, address, state; or state:close-wait port:8080 pid:42 proc:java",
        GENERAL, show=True, display="/"),
    Key("theme", "t", "toggle_theme", "Theme", "Switch between the dark and the light theme", GENERAL),
    Key("pane_states", "1", "focus_pane('states')", "States", "Go to the States pane", PANES),
    Key("pane_ports", "2", "focus_pane('ports')", "Ports", "Go to the Ports pane", PANES),
    Key("pane_processes", "3", "focus_pane('processes')", "Processes", "Go to the Processes pane", PANES),
    Key("pane_sockets", "4", "focus_pane('sockets')", "Sockets", "Go to the Sockets list", PANES),
    Key("pane_findings", "5", "focus_pane('findings')", "Findings", "Go to the Findings list", PANES),
    Key("containers", "N", "containers", "Containers",
        "Open the Containers view: sockets by network namespace, container, pod and service (Enter filters to one)",
        PANES),
    Key("fleet", "F", "fleet", "Fleet",
        "Open the Fleet view: every host Prometheus has from socktop serve (start with --prometheus URL)", PANES),
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
    ("↑ ↓ j PgUp PgDn", "Move in a pane: the highlighted row is the selection, for the drawer and the copy keys; "
                        "it follows its row when the pane re-sorts (j is down; k is Copy kill, so up is ↑)", PANES),
    ("Home End g G", "First and last row", PANES),
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


MODIFIERS = ("ctrl", "alt", "meta", "super", "hyper", "shift")
#: What answers a key besides the remappable table: Ctrl+C quits, the panes and dialogs take the rest.
RESERVED = {"ctrl+c": "interrupt (Ctrl+C)", "ctrl+p": "the command palette (Ctrl+P)", "ctrl+q": "quit (Ctrl+Q)",
            "enter": "Enter in a pane", "up": "moving in a pane", "down": "moving in a pane",
            "pageup": "moving in a pane", "pagedown": "moving in a pane", "home": "moving in a pane",
            "end": "moving in a pane"}


@lru_cache(maxsize=1)
def _base_names() -> frozenset[str]:
    """Every key name Textual reports without a modifier: named keys and printable characters."""
    named = {key.value for key in Keys if not key.value.startswith("<") and "+" not in key.value}
    named.discard("ctrl-at")
    return frozenset(named | {_character_to_key(chr(code)) for code in range(33, 127)})


def key_name(text: str) -> str | None:
    """The name Textual gives the key ``text`` stands for ("?" → "question_mark"), or None if it is none."""
    text = text.strip()
    if len(text) == 1:
        return _character_to_key(text) if text.isprintable() and not text.isspace() else None
    *modifiers, base = text.split("+")
    if len(base) == 1:
        base = _character_to_key(base)
    if base not in _base_names() or len(set(modifiers)) != len(modifiers) or not set(modifiers) <= set(MODIFIERS):
        return None
    return "+".join([*sorted(modifiers, key=MODIFIERS.index), base])


def validate_keymap(table: Mapping[object, object], where: str) -> tuple[dict[str, str], list[str]]:
    """The ``[keys]`` table as {binding id: Textual key names}, and one line per thing rejected.

    An unknown id, a value that is not a string of key names, or a key name
    Textual does not know rejects that entry; a key that two actions would
    share (``pause = "q"`` while q quits) rejects the remapping that causes
    it. Rejected entries keep their default keys.
    """
    keymap: dict[str, str] = {}
    errors: list[str] = []
    for binding_id, value in table.items():
        shown = printable(str(binding_id))
        if binding_id not in BY_ID:
            errors.append(f"{where}: unknown key binding {shown!r} (known: {', '.join(BY_ID)})")
            continue
        names = [key_name(part) for part in value.split(",")] if isinstance(value, str) else [None]
        if not names or None in names:
            errors.append(f"{where}: keys.{shown} = {printable(repr(value))[:40]} is not a list of key names "
                          "Textual knows, such as \"k\", \"K\", \"ctrl+k\", \"f2\" or \"k,ctrl+k\"")
            continue
        keymap[str(binding_id)] = ",".join(dict.fromkeys(name for name in names if name))
    for _ in range(len(keymap) + 1):  # each pass drops at least one remapping, or stops
        clashes = _clashes(keymap)
        if not clashes:
            break
        for key, owners in clashes.items():
            remapped = [owner for owner in owners if owner in keymap]
            errors.append(f"{where}: key {key!r} would be {' and '.join(_describe(owner) for owner in owners)}: "
                          f"{', '.join(f'keys.{owner}' for owner in remapped)} ignored, "
                          + ("its default kept" if len(remapped) == 1 else "their defaults kept"))
            for owner in remapped:
                keymap.pop(owner, None)
    return keymap, errors


def _clashes(keymap: Mapping[str, str]) -> dict[str, list[str]]:
    """Key name → the actions (binding ids, or a RESERVED description) that it would trigger, when several."""
    owners: dict[str, list[str]] = {key: [what] for key, what in RESERVED.items()}
    for key in KEYS:
        for name in keymap.get(key.id, key.keys).split(","):
            owners.setdefault(key_name(name) or name, []).append(key.id)
    return {key: found for key, found in owners.items()
            if len(found) > 1 and any(owner in keymap for owner in found)}


def _describe(owner: str) -> str:
    return f"{BY_ID[owner].description.lower()} (keys.{owner})" if owner in BY_ID else owner
