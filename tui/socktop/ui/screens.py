"""Modal screens: the help screen (every key) and the dialog that shows a command to copy by hand."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static, TextArea

from ..safetext import printable
from .keys import ACTIONS, BUILTIN_KEYS, GENERAL, KEYS, PANES


def function_key(name: str) -> str:
    """``f10`` as the keyboard writes it, ``F10``."""
    return name.upper() if name[:1] == "f" and name[1:].isdigit() else name


class HelpScreen(ModalScreen[None]):
    """Every key socktop answers, with the keys as currently mapped."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 96; max-width: 100%; height: auto; max-height: 100%;
                                  border: round $accent; background: $surface; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[Any]] = [
        Binding("escape,q,question_mark", "dismiss", "Close", show=False),
    ]

    def __init__(self, keymap: dict[str, str], key_display: Any) -> None:
        super().__init__()
        self.keymap = keymap
        self.key_display = key_display

    def compose(self) -> ComposeResult:
        with VerticalScroll() as scroll:
            scroll.border_title = "socktop keys"
            scroll.border_subtitle = "Esc closes · remap keys in config.toml, table keys"
            yield Static(self.help_table(), id="help-text")

    def help_rows(self) -> list[tuple[str, str, str, str]]:
        """(group, keys as mapped now, what they do, binding id or "") for every key."""
        rows = []
        for group in (GENERAL, PANES, ACTIONS):
            for key in KEYS:
                if key.group == group:
                    mapped = self.keymap.get(key.id)
                    names = [name.strip() for name in (mapped or key.keys).split(",")]
                    shown = " ".join(key.display if index == 0 and key.display and not mapped
                                     else function_key(self.key_display(name)) for index, name in enumerate(names))
                    rows.append((group, shown + (" Enter" if key.id == "details" else ""), key.help, key.id))
            rows += [(group, keys_text, text, "") for keys_text, text, builtin in BUILTIN_KEYS if builtin == group]
        return rows

    def help_table(self) -> Group:
        grid = Table.grid(padding=(0, 2, 0, 0))
        grid.add_column(no_wrap=True, style="bold")
        grid.add_column(ratio=1)
        grid.add_column(no_wrap=True, style="dim")
        group = ""
        for row_group, keys_text, text, binding_id in self.help_rows():
            if row_group != group:
                if group:
                    grid.add_row("", "", "")
                grid.add_row(Text(row_group, style="bold underline"), "", "")
                group = row_group
            grid.add_row(keys_text, text, binding_id)
        return Group(grid, Text(""), Text(
            "Copy keys put a command on the clipboard; socktop never runs it and never kills anything itself. "
            "Over SSH the copy goes by OSC 52 (in tmux: set -g set-clipboard on).", style="dim"))

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)


class CommandDialog(ModalScreen[None]):
    """The command as selectable text, when no clipboard could confirm the copy."""

    DEFAULT_CSS = """
    CommandDialog { align: center middle; }
    CommandDialog > Vertical { width: 90; max-width: 100%; height: auto; max-height: 100%;
                               border: round $warning; background: $surface; padding: 0 1; }
    CommandDialog TextArea { height: auto; max-height: 8; min-height: 3; }
    CommandDialog #dialog-note { color: $text-muted; margin: 1 0 0 0; }
    CommandDialog Button { margin: 1 0 0 0; }
    """
    BINDINGS: ClassVar[list[Any]] = [Binding("escape,enter", "close", "Close", show=False)]

    def __init__(self, title: str, command: str, note: str) -> None:
        super().__init__()
        self.title_text = title
        self.command = command
        self.note = note

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = Text(printable(self.title_text))  # Text: never markup
            box.border_subtitle = "Esc closes"
            yield TextArea(self.command, read_only=True, soft_wrap=True, show_line_numbers=False, id="dialog-command")
            yield Static(Text(printable(self.note)), id="dialog-note")
            yield Button("Close", id="dialog-close")

    def on_mount(self) -> None:
        area = self.query_one(TextArea)
        area.focus()
        area.select_all()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()

    def action_close(self) -> None:
        self.dismiss()
