"""The layout and colours of the app (Textual CSS), kept in Python so every install ships it.

Text is never drawn in a theme's raw $warning, $error, $success or $accent: on textual-light the orange
reads at 1.3:1. `readable_variables` derives, for the theme in force, $socktop-warning (and error,
success, accent) moved away from the theme's backgrounds until they read at 4.5:1 on all of them, and
$socktop-on-warning (...) for text on a chip of that colour (tests/test_ui_contrast.py checks every style).
"""

from __future__ import annotations

from collections.abc import Mapping

from rich.style import Style
from textual.color import Color

TONES = ("warning", "error", "success", "accent")
BACKGROUNDS = ("background", "surface", "panel")
TEXT_CONTRAST = 4.6  # WCAG asks 4.5:1 for text; a little over it, for the blending of alpha colours


class CachedComponentStyles:
    """`component_style`: Textual's get_component_rich_style, kept until the widget's styles change (a
    theme switch, a focus change). A call costs about 0.3 ms and a refresh asks for hundreds. A mixin:
    it goes before the Widget class in the bases."""

    def component_style(self, name: str) -> Style:
        cache: dict[str, Style] = self.__dict__.setdefault("_socktop_rich_styles", {})
        style = cache.get(name)
        if style is None:
            style = cache[name] = self.get_component_rich_style(name)  # type: ignore[attr-defined]
        return style

    @property
    def base_style(self) -> Style:
        """Textual's `rich_style` (the widget's colours over its ancestors' backgrounds), kept likewise: it
        walks every ancestor each time, and each line a table draws asks for it."""
        cache: dict[str, Style] = self.__dict__.setdefault("_socktop_rich_styles", {})
        style = cache.get("")  # no component class is named ""
        if style is None:
            style = cache[""] = self.rich_style  # type: ignore[attr-defined]
        return style

    def notify_style_update(self) -> None:
        super().notify_style_update()  # type: ignore[misc]
        self.__dict__.setdefault("_socktop_rich_styles", {}).clear()


def luminance(color: Color) -> float:
    """WCAG 2 relative luminance."""

    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(color.r) + 0.7152 * channel(color.g) + 0.0722 * channel(color.b)


def contrast(foreground: Color, background: Color) -> float:
    """WCAG 2 contrast ratio, 1 to 21."""
    light, dark = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def readable_variables(variables: Mapping[str, str]) -> dict[str, str]:
    """$socktop-TONE and $socktop-on-TONE for the theme whose CSS ``variables`` are given."""
    backgrounds = [Color.parse(variables[name]) for name in BACKGROUNDS if name in variables]
    dark = sum(map(luminance, backgrounds)) / max(1, len(backgrounds)) < 0.18
    ink = [Color.parse("#000000"), Color.parse("#FFFFFF")]
    readable = {}
    for tone in TONES:
        base = color = Color.parse(variables[tone])
        for _ in range(40):  # bounded: 40 steps of 3% reach white or black from anything
            if min(contrast(color, background) for background in backgrounds) >= TEXT_CONTRAST:
                break
            color = color.lighten(0.03) if dark else color.darken(0.03)
        readable[f"socktop-{tone}"] = color.hex
        readable[f"socktop-on-{tone}"] = max(ink, key=lambda text: contrast(text, base)).hex
    cursor = Color.parse(variables.get("block-cursor-background", "#0178D4"))
    readable["socktop-on-cursor"] = max(ink, key=lambda text: contrast(text, cursor)).hex
    return readable


CSS = """
/* socktop layout. The app carries one size class, -wide (>= 140x34), -medium (>= 100x28), -small or
   -tiny (< 60x15), and -drawer (details open), -filtering (filter field open). In medium and small the
   app marks the panes (and rows) it shows with -shown, and sets the rows' heights (app._arrange). */

Screen {
    layout: vertical;
}

#tabline, #strip {
    display: none;
}

#body {
    height: 1fr;
}

#main {
    width: 1fr;
    height: 1fr;
}

.pane {
    height: 1fr;
    border: round $panel-lighten-2;
    border-title-color: $text-muted;
    border-subtitle-color: $text-muted;
    background: $surface;
    scrollbar-size: 1 1;
}

.pane:focus {
    border: round $accent;
    border-title-color: $accent;
    border-title-style: bold;
}

Pane > .pane--warning { color: $socktop-warning; text-style: bold; }
Pane > .pane--danger { color: $socktop-error; text-style: bold; }
Pane > .pane--muted { color: $text-muted; }
Pane > .pane--good { color: $socktop-success; }
Pane > .pane--accent { color: $socktop-accent; }

/* wide: the three aggregate panes side by side, the sockets and findings below */
#states { width: 45; }
.-drawer #states { width: 1fr; }  /* with the drawer open the three panes share what is left */
#ports { width: 1fr; }
#processes { width: 1.5fr; }
#sockets { width: 2fr; max-width: 110; }  /* every column, a 22-cell owner: the rest for findings */
#findings { width: 1fr; }

/* medium and small: the findings strip and the tab line; only the panes marked -shown */
.-medium #tabline, .-small #tabline, .-medium #strip, .-small #strip {
    display: block;
}

.-medium .row, .-medium .pane, .-small .row, .-small .pane {
    display: none;
}

.-medium .row.-shown, .-medium .pane.-shown, .-small .row.-shown, .-small .pane.-shown {
    display: block;
}

.-medium #ports, .-medium #processes, .-medium #sockets, .-medium #findings {
    width: 1fr;
    max-width: 100%;
}

/* small: one column, States above the other pane */
.-small #top-row {
    layout: vertical;
}

.-small #states, .-small #ports, .-small #processes, .-small #sockets, .-small #findings {
    width: 1fr;
    max-width: 100%;
}

.-small #trends {
    display: none;
}

#drawer {
    display: none;
    width: 36%;
    min-width: 44;
    max-width: 76;
    border: round $accent;
    border-title-color: $accent;
    background: $surface;
    padding: 0 1;
    scrollbar-size: 1 1;
}

#drawer > .drawer--title { text-style: bold; color: $text; }
#drawer > .drawer--heading { text-style: bold; color: $socktop-accent; }
#drawer > .drawer--muted { color: $text-muted; }
#drawer > .drawer--warning { color: $socktop-warning; text-style: bold; }
#drawer > .drawer--danger { color: $socktop-error; text-style: bold; }
#drawer > .drawer--command { color: $socktop-success; text-style: bold; }
#drawer > .drawer--key { background: $accent; color: $socktop-on-accent; text-style: bold; }

.-drawer #drawer {
    display: block;
}

.-small.-drawer #drawer {
    width: 1fr;
    max-width: 100%;
}

.-small.-drawer #main {
    display: none;
}

#filter {
    display: none;
    dock: bottom;
    margin-bottom: 1;
    height: 3;
}

#too-small {
    display: none;
    width: 1fr;
    height: 1fr;
    content-align: center middle;
    text-style: bold;
}

.-tiny #too-small {
    display: block;
}

.-tiny #topbar, .-tiny #strip, .-tiny #trends, .-tiny #filterline, .-tiny #tabline, .-tiny #body, .-tiny #keybar, .-tiny #filter {
    display: none;
}
"""
