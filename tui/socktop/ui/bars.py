"""The one-line-high widgets: top bar (source, counts, state chips), trend strip, filter line.

Each renders a `rich.text.Text` assembled from parts; untrusted parts
(host name, error messages) are `printable` plain text, never markup.
Parts have priorities: on a narrow terminal the least useful ones go first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual import events
from textual.message import Message
from textual.widget import Widget

from ..collect.records import DISPLAY_STATES, TcpState
from ..model.history import rate_per_second, state_series
from ..model.snapshot import Snapshot, coverage_text, plural
from ..safetext import printable
from . import format as fmt
from .style import CachedComponentStyles
from .view import bucket_max, trend_groups, trend_span

Part = tuple[str, Style, int]  # text, style, priority (0 = never dropped; higher goes first)


def keep(parts: Sequence[Part], width: int, separator: str = "") -> list[Part]:
    """The ``parts`` that fit in ``width`` cells once joined, dropping the highest priorities first."""
    kept = list(parts)

    def length(items: Sequence[Part]) -> int:
        return sum(len(text) for text, _, _ in items) + len(separator) * max(0, len(items) - 1)

    while length(kept) > width and any(priority for _, _, priority in kept):
        worst = max(priority for _, _, priority in kept)
        index = max(i for i, (_, _, priority) in enumerate(kept) if priority == worst)
        kept.pop(index)
    return kept


def fit(parts: Sequence[Part], width: int, separator: str = "", separator_style: Style | None = None) -> Text:
    """Join ``parts`` into one line of at most ``width`` cells, dropping the highest priorities first."""
    kept = keep(parts, width, separator)
    line = Text(no_wrap=True, overflow="ellipsis", end="")
    for index, (text, style, _) in enumerate(kept):
        if index and separator:
            line.append(separator, separator_style or Style())
        line.append(text, style)
    line.truncate(width, overflow="ellipsis")
    return line


class Bar(CachedComponentStyles, Widget):
    """A widget drawn from a list of `Part`s, refitted when its width changes."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "bar--warning", "bar--danger", "bar--muted", "bar--accent", "bar--good",
        "bar--chip", "bar--chip-warning", "bar--chip-danger", "bar--paused", "bar--tab-active",
    }
    DEFAULT_CSS = """
    Bar { height: 1; }
    Bar > .bar--muted { color: $text-muted; }
    Bar > .bar--accent { color: $socktop-accent; text-style: bold; }
    Bar > .bar--good { color: $socktop-success; }
    Bar > .bar--warning { color: $socktop-warning; text-style: bold; }
    Bar > .bar--danger { color: $socktop-error; text-style: bold; }
    Bar > .bar--chip { background: $panel-lighten-2; color: $foreground; }
    Bar > .bar--chip-warning { background: $warning; color: $socktop-on-warning; text-style: bold; }
    Bar > .bar--chip-danger { background: $error; color: $socktop-on-error; text-style: bold; }
    Bar > .bar--paused { background: $warning; color: $socktop-on-warning; text-style: bold; }
    Bar > .bar--tab-active { background: $accent; color: $socktop-on-accent; text-style: bold; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lines: list[list[Part]] = []

    def style(self, name: str) -> Style:
        # the full style (not partial): colours with alpha, such as $text-muted, blended over the background
        return self.component_style(f"bar--{name}") if name else Style()

    def set_lines(self, lines: list[list[Part]]) -> None:
        if lines != self._lines:
            self._lines = lines
            self.refresh()

    def render(self) -> Text:
        width = self.size.width
        lines = [fit(parts, width, "  ") for parts in self._lines] or [Text("")]
        return Text("\n", end="").join(lines)


class TopBar(Bar):
    """Host, kernel, backend, interval (PAUSED), totals, owner coverage, findings, state chips."""

    DEFAULT_CSS = "TopBar { height: 2; background: $panel; }"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._short: Part | None = None  # the findings count's short form ("findings 1C 3W")

    def render(self) -> Text:
        if self._lines and self._short is not None:
            first = self._lines[0]
            long = next((part for part in first if part[0].startswith("findings: ")), None)
            if long is not None and long not in keep(first, self.size.width, "  "):
                self._lines = [[self._short if part is long else part for part in first], *self._lines[1:]]
        return super().render()

    def show(self, snapshot: Snapshot | None, *, interval: float, paused: bool, error: str,
             findings: dict[str, int], note: str = "", data_age: float | None = None) -> None:
        """``data_age``: seconds since the snapshot shown was taken, while collection fails."""
        muted, accent = self.style("muted"), self.style("accent")
        self._short = None
        first: list[Part] = [("socktop", accent, 0)]
        if paused:
            first.append((" PAUSED ", self.style("paused"), 0))
        if error:
            first.append((f" {printable(error)} ", self.style("chip-danger"), 0))
        if data_age is not None:  # the panes still show the last good refresh: say how old it is
            first.append((f"data {fmt.duration(data_age)} old", self.style("warning"), 0))
        if snapshot is None:
            first.append(("waiting for the first refresh…", muted, 0))
            self.set_lines([first, []])
            return
        source = snapshot.source
        # what socktop cannot see is never dropped before the kernel or the backend: the coverage stays at
        # 80 columns, the reason ("run as root for all") goes first
        owners_tone = self.style("warning") if source.owner_note else muted
        first += [
            (printable(source.host), Style(bold=True), 1),
            (printable(source.kernel), muted, 7),
            (source.backend, muted, 6),
            (f"every {fmt.seconds(interval)}", Style(), 4),
            (plural(snapshot.aggregates.total, "socket"), Style(bold=True), 0),
            (f"owners {coverage_text(snapshot.coverage)}", owners_tone, 2),
        ]
        if source.netns != "self":  # several namespaces read, or why only socktop's own
            first.insert(-1, (f"netns {printable(source.netns)}",
                              self.style("warning") if "not root" in source.netns else muted, 3))
        if source.owner_note:
            first.append((printable(source.owner_note), owners_tone, 5))
        churn = snapshot.churn
        if churn is not None and churn.seconds:
            # closes and opens over the last refreshes; "≥" when the kernel dropped events since the last one
            at_least = "≥" if churn.lost else ""
            first.append((f"closes {at_least}{fmt.count(round(churn.closes_per_second or 0))}/s "
                          f"opens {at_least}{fmt.count(round(churn.opens_per_second or 0))}/s",
                          self.style("warning") if churn.lost else Style(), 3))
        severity_parts = [(n, name) for name, n in findings.items() if n]
        if severity_parts:
            tone = self.style("danger" if findings.get("critical") else "warning" if findings.get("warning") else "")
            # the count never leaves the bar: where the phrase does not fit, its short form stays (render)
            first.append(("findings: " + ", ".join(f"{n} {name}" for n, name in severity_parts), tone, 2))
            self._short = ("findings " + " ".join(f"{n}{name[0].upper()}" for n, name in severity_parts), tone, 0)
        elif findings is not None:
            first.append(("no findings", self.style("good"), 2))
        if note:
            first.append((printable(note), muted, 8))
        self.set_lines([first, self._state_chips(snapshot.aggregates.by_state)])

    def _state_chips(self, by_state: Mapping[TcpState, int]) -> list[Part]:
        """One chip per state present, in display order; where they do not all fit the smallest counts go
        first (a FIN-WAIT-2 of 115 outlives a FIN-WAIT-1 of 1), on equal counts the untoned ones."""
        present = [state for state in DISPLAY_STATES if by_state.get(state, 0)]
        # sorted is stable: equal counts of equal tone drop from the end of the display order
        by_size = sorted(present, key=lambda state: (-by_state[state], not fmt.tone_of_state(state)))
        priority = {state: 1 + index for index, state in enumerate(by_size)}
        chips: list[Part] = []
        for state in present:
            tone = fmt.tone_of_state(state)
            chips.append((f" {state.label} {fmt.count(by_state[state])} ",
                          self.style(f"chip-{tone}" if tone else "chip"), priority[state]))
        return chips


TREND_STATES = (TcpState.TIME_WAIT, TcpState.CLOSE_WAIT, TcpState.ESTABLISHED)


class TrendStrip(Bar):
    """Sparklines of TIME_WAIT, CLOSE_WAIT and ESTABLISHED over the whole history window.

    Each cell is the largest count of a group of refreshes (`view.trend_groups`, `view.bucket_max`),
    the height a share of the window's largest (`format.sparkline`), the label the span really
    covered. Cheap enough to redraw every refresh: three passes over at most 1,200 points.
    """

    DEFAULT_CSS = "TrendStrip { height: 1; }"
    MAX_CELLS = 60

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._snapshot: Snapshot | None = None

    def show(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self.refresh()

    def on_resize(self) -> None:
        self.refresh()

    def render(self) -> Text:
        snapshot = self._snapshot
        if snapshot is None or not snapshot.history:
            return Text("")
        points = snapshot.history
        width = self.size.width
        labels = []
        recent = points[-30:]
        for state in TREND_STATES:
            rate = rate_per_second(recent, state_series(recent, state))
            rate_text = f" {rate:+.1f}/s" if abs(rate) >= 0.05 else ""
            now = points[-1].by_state.get(state, 0)
            labels.append((state, f"{state.label} ", f" {fmt.count(now)}{rate_text}"))
        fixed = sum(len(a) + len(b) for _, a, b in labels) + 3 * 3 + len("last 00m00s") + 1
        groups = trend_groups(points, max(4, min(self.MAX_CELLS, (width - fixed) // 3)))
        line = Text(no_wrap=True, overflow="ellipsis", end="")
        line.append(f"last {fmt.duration(trend_span(groups))} ", self.style("muted"))
        for state, head, tail in labels:
            tone = fmt.tone_of_state(state)
            line.append(" " + head, self.style("muted"))
            values = bucket_max(groups, lambda point, state=state: point.by_state.get(state, 0))
            line.append(fmt.sparkline(values, len(values)), self.style(tone) if tone else self.style("accent"))
            line.append(tail + " ")
        line.truncate(width, overflow="ellipsis")
        return line


class FilterLine(Bar):
    """What narrows the view: drill-down levels, text filter, how many sockets remain, the sort."""

    DEFAULT_CSS = "FilterLine { height: 1; background: $boost; }"

    def show(self, levels: Sequence[str], query: str, query_error: str, in_view: int, total: int,
             sort: str, finding: str = "") -> None:
        """``finding``: the title of the finding the drill-down stands for, when one is picked."""
        muted, accent = self.style("muted"), self.style("accent")
        parts: list[Part] = []
        if levels or query:
            parts.append(("Filter:", muted, 0))
            if finding:
                parts.append((f"finding «{fmt.fit_tokens(printable(finding), 36)}» +" if query else
                               f"finding «{fmt.fit_tokens(printable(finding), 36)}»", accent, 2))
            chain = " › ".join(levels)
            if chain:
                parts.append((chain, accent, 0))
            if query:
                parts.append((f"/{printable(query)}", accent, 0))
            if query_error:
                parts.append((printable(query_error), self.style("danger"), 0))
            parts.append((f"{in_view:,} of {plural(total, 'socket')}", Style(bold=True), 1))
            parts.append(("Esc clears one level", muted, 3))
        else:
            parts.append(("All sockets", accent, 0))
            parts.append((f"{total:,}", Style(bold=True), 1))
            parts.append(("move in a pane to drill down, / to filter, ? for keys", muted, 3))
        if sort:
            parts.append((f"sort: {sort}", muted, 2))
        self.set_lines([parts])



SEVERITY_CHIP = {"critical": "chip-danger", "warning": "chip-warning", "info": "chip"}


class FindingsStrip(Bar):
    """The most severe findings, one line each, on terminals too small for the Findings pane: what is
    wrong is on screen from the first refresh. Titles are cut between words, never inside a name or a
    number. A click on a line picks that finding."""

    DEFAULT_CSS = "FindingsStrip { height: 2; background: $surface; }"

    class Picked(Message):
        def __init__(self, finding_id: str) -> None:
            super().__init__()
            self.finding_id = finding_id

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._findings: tuple[tuple[str, str, str], ...] = ()  # (id, severity, title), most severe first
        self._ids: list[str] = []

    def show(self, findings: Sequence[tuple[str, str, str]]) -> None:
        self._findings = tuple(findings)
        self.refresh()

    def render(self) -> Text:
        width, rows = self.size.width, max(1, self.size.height)
        if not self._findings:
            self._ids = []
            return Text(" no findings", self.style("good"), no_wrap=True, end="")
        shown = self._findings[:rows]
        more = len(self._findings) - len(shown)
        lines = []
        self._ids = [finding_id for finding_id, _, _ in shown]
        for index, (_, severity, title) in enumerate(shown):
            chip, tone = f" {fmt.SEVERITY_SHORT.get(severity, 'INFO')} ", SEVERITY_CHIP.get(severity, "chip")
            tail = f"  +{more} more: 5" if more and index == len(shown) - 1 else ""
            line = Text(no_wrap=True, end="")
            line.append(chip, self.style(tone))
            line.append(" " + fmt.fit_tokens(printable(title), max(1, width - len(chip) - 1 - len(tail))))
            line.append(tail, self.style("muted"))
            lines.append(line)
        return Text("\n", end="").join(lines)

    def on_click(self, event: events.Click) -> None:
        if 0 <= event.y < len(self._ids):
            self.post_message(self.Picked(self._ids[event.y]))


class TabLine(Bar):
    """One line naming every pane with its key; the panes on screen in bold, the focused one highlighted.
    A click on a name goes to that pane."""

    DEFAULT_CSS = "TabLine { height: 1; background: $panel; }"
    class Clicked(Message):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    def __init__(self, titles: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.titles = titles
        self.active = ""
        self.shown: frozenset[str] = frozenset()

    def show(self, active: str, shown: frozenset[str]) -> None:
        if (active, shown) != (self.active, self.shown):
            self.active, self.shown = active, shown
            self.refresh()

    def _spans(self) -> list[tuple[str, int, int]]:
        spans, x = [], 1
        for name, title in self.titles.items():
            spans.append((name, x, x + len(title) + 2))
            x += len(title) + 3
        return spans

    def render(self) -> Text:
        line = Text(" ", no_wrap=True, overflow="ellipsis", end="")
        for name, _, _ in self._spans():
            tone = "tab-active" if name == self.active else "" if name in self.shown else "muted"
            style = self.style(tone) + (Style(bold=True) if name in self.shown else Style())
            line.append(f" {self.titles[name]} ", style)
            line.append(" ")
        return line

    def on_click(self, event: events.Click) -> None:
        for name, start, end in self._spans():
            if start <= event.x < end:
                self.post_message(self.Clicked(name))


class KeyBar(Bar):
    """The footer: the core keys as currently mapped, the least important dropped first when narrow.

    Static text: switching panes costs nothing (Textual's Footer recomposes itself on every focus change).
    """

    DEFAULT_CSS = "KeyBar { height: 1; background: $panel; }"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keys: list[tuple[str, str]] = []

    def show(self, keys: Sequence[tuple[str, str]], paused: bool) -> None:
        """``keys``: (key as displayed, description), most important first."""
        shown = [(key, "Resume" if paused and description == "Pause" else description) for key, description in keys]
        if shown != self._keys:
            self._keys = shown
            self.refresh()

    def render(self) -> Text:
        key_style = self.style("accent")
        palette = ("^p", "palette")
        parts = [(f"{key} {description}", Style(), rank) for rank, (key, description) in enumerate(self._keys, 1)]
        kept = keep(parts, self.size.width - 2 - len(" ".join(palette)) - 2, "  ")
        line = Text(" ", no_wrap=True, overflow="ellipsis", end="")
        for key, description in [*(self._keys[rank - 1] for _, _, rank in kept), palette]:
            line.append(key, key_style)
            line.append(f" {description}  ")
        return line
