"""Modal screens: the help screen (every key) and the dialog that shows a command to copy by hand."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static, TextArea

from ..safetext import printable
from .keys import ACTIONS, BUILTIN_KEYS, GENERAL, KEYS, PANES


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
            scroll.border_subtitle = "Esc closes · keys can be remapped in [keys] of config.toml"
            yield Static(self.help_text(), id="help-text")

    def help_text(self) -> Text:
        text = Text(end="")
        for group in (GENERAL, PANES, ACTIONS):
            if text:
                text.append("\n")
            text.append(group + "\n", style="bold underline")
            for key in KEYS:
                if key.group != group:
                    continue
                keys = self.keymap.get(key.id, key.keys)
                shown = " ".join(self.key_display(name.strip()) for name in keys.split(","))
                if key.id == "details":
                    shown += " Enter"
                text.append(f"  {shown:<14}", style="bold")
                text.append(f"{key.help}")
                text.append(f"  ({key.id})\n", style="dim")
            for keys_text, description, builtin_group in BUILTIN_KEYS:
                if builtin_group == group:
                    text.append(f"  {keys_text:<14}", style="bold")
                    text.append(description + "\n")
        text.append("\nCopy keys send the command to the clipboard; socktop never runs it and never kills "
                    "anything itself. Over SSH the copy goes by OSC 52 (tmux: set -g set-clipboard on).",
                    style="dim")
        return text

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
            box.border_title = printable(self.title_text)
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
