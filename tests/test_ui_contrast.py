"""Every text colour socktop draws, against the background it is drawn on, in the dark and the light theme:
WCAG 2 contrast at least 4.5:1 for text, 3:1 for chips and bars (the state chips, tabs, key caps).

The styles are read from the running app (`get_component_rich_style`: theme colours with alpha blended
over the widget's background), so a change of theme or CSS that makes any of them unreadable fails here.
"""

from __future__ import annotations

import pytest
from frozen import make_app, press, settle
from rich.style import Style
from textual.color import Color

from socktop.ui.style import contrast

TEXT, CHIP = 4.5, 3.0
CHIPS = {"bar--chip", "bar--chip-warning", "bar--chip-danger", "bar--paused", "bar--tab-active", "drawer--key"}


def styles_in_use(app) -> list[tuple[str, Style, Style]]:
    """(name, style, the widget's own style) of every component style and every widget's plain text."""
    found = []
    for widget in app.screen.walk_children(with_self=False):
        if not widget.display:
            continue
        base = widget.rich_style
        found.append((f"{type(widget).__name__}#{widget.id}", base, base))
        for name in sorted(getattr(widget, "COMPONENT_CLASSES", ())):
            if name.startswith(("scrollbar", "datatable", "toggle", "input--", "text-area", "footer", "tab")):
                continue
            found.append((f"{type(widget).__name__}#{widget.id} .{name}", widget.get_component_rich_style(name),
                          base))
        if "table--cursor" in getattr(widget, "COMPONENT_CLASSES", ()):  # each tone on the highlighted row too
            cursor = base + widget.get_component_rich_style("table--cursor")
            for name in sorted(widget.COMPONENT_CLASSES):
                if name.startswith(("pane--", "sockets--")):
                    tone = widget.get_component_rich_style(name)
                    found.append((f"{type(widget).__name__}#{widget.id} cursor .{name}",
                                  Style(color=cursor.color if widget.has_focus else tone.color, bgcolor=cursor.bgcolor),
                                  base))
    return found


def check(app) -> list[str]:
    poor = []
    for name, style, base in styles_in_use(app):
        foreground = style.color or base.color
        background = style.bgcolor or base.bgcolor
        if foreground is None or background is None:
            continue
        need = CHIP if name.split(".")[-1] in CHIPS else TEXT
        ratio = contrast(Color.from_rich_color(foreground), Color.from_rich_color(background))
        if ratio < need:
            poor.append(f"{name}: {foreground.name} on {background.name} {ratio:.2f}:1 < {need}:1")
    return poor


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
async def test_every_style_reads_in_both_themes(theme):
    app = make_app()
    async with app.run_test(size=(200, 50)) as pilot:
        await settle(pilot)
        app.theme = theme
        await press(pilot, "d")  # the drawer too
        await settle(pilot)
        poor = check(app)
        assert not poor, "\n".join(poor)


def test_contrast_is_computed_as_wcag_says():
    assert contrast(Color.parse("#000000"), Color.parse("#ffffff")) == pytest.approx(21.0)
    assert contrast(Color.parse("#777777"), Color.parse("#ffffff")) == pytest.approx(4.48, abs=0.01)  # WCAG's example
    assert contrast(Color.parse("#FEA62B"), Color.parse("#D0D0D0")) == pytest.approx(1.27, abs=0.02)  # the 1.25:1
