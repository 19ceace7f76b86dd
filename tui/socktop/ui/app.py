"""The socktop TUI: top bar, trends, three drill-down panes, sockets, findings, drawer, copy keys.

Threads:
- the poller: a thread (`JobThread`) that, for each refresh, calls ``source.refresh()``,
  the analysis and `build_view`, then posts `Refreshed`; the next refresh
  is scheduled by the UI thread once that one has been applied, so two
  never overlap, and a slow UI slows the refresh rather than queueing;
- the view builder: a thread that re-filters and re-sorts the current
  snapshot when the user changes the drill-down, filter or socket sort;
- pyperclip, when used, in a thread.
None of them touches a widget: they post messages.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

from rich.console import RenderableType
from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.events import Resize
from textual.filter import LineFilter, Monochrome, NoColor
from textual.message import Message
from textual.reactive import Reactive
from textual.screen import Screen
from textual.widgets import Input, Static

from ..analyze.config import DEFAULT_THRESHOLDS, Config, Thresholds
from ..collect.columns import ConnectionSet
from ..collect.netns import Selection as NetnsSelection
from ..collect.records import TcpState
from ..model.snapshot import Snapshot
from ..safetext import printable
from . import analysis as analysis_api
from . import clipboard, keys, style
from .bars import FilterLine, FindingsStrip, KeyBar, TabLine, TopBar, TrendStrip
from .details import COPY_ACTIONS, Copyable, Selection, Styles, commands_for, describe
from .containers import ContainersScreen
from .fleet import FleetScreen, FleetWatch
from .panes import FindingsPane, Pane, PortsPane, ProcessesPane, StatesPane
from .screens import CommandDialog, HelpScreen
from .sockets import SocketList
from .view import PORT, PROCESS, STATE, Level, Query, View, ViewSpec, build_view, with_cursor, with_level, with_new

PANE_ORDER = ("states", "ports", "processes", "sockets", "findings")
PANE_TITLES = {"states": "1 States", "ports": "2 Ports", "processes": "3 Processes", "sockets": "4 Sockets",
               "findings": "5 Findings"}
SIDE_PANES = frozenset({"ports", "processes"})  # beside (medium) or below (small) States, in the top row
BOTTOM_PANES = frozenset({"sockets", "findings"})
INTERVALS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
LAYOUTS = ("wide", "medium", "small", "tiny")
WIDE_SIZE, MEDIUM_SIZE, MIN_SIZE = (140, 34), (100, 28), (60, 15)
SMALL_STACK_HEIGHT = 22  # below it the small layout shows one pane, not States above another
#: lines outside the panes: top bar 2, findings strip, trends, filter line, tab line, key bar
STRIP_LINES = {"medium": 3, "small": 2}
FIXED_LINES = {"wide": 2 + 1 + 1 + 1, "medium": 2 + 3 + 1 + 1 + 1 + 1, "small": 2 + 2 + 1 + 1 + 1}
FILTER_DEBOUNCE = 0.25
LEVEL_PANES = {STATE: "states", PORT: "ports", PROCESS: "processes"}
MAIN_SCREEN_ACTIONS = frozenset({key.action.partition("(")[0] for key in keys.KEYS} | {"interrupt"})


def layout_class(width: int, height: int) -> str:
    """The size class of a terminal: "wide", "medium", "small" or "tiny" (too small to draw)."""
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        return "tiny"
    if width >= WIDE_SIZE[0] and height >= WIDE_SIZE[1]:
        return "wide"
    if width >= MEDIUM_SIZE[0] and height >= MEDIUM_SIZE[1]:
        return "medium"
    return "small"


class SnapshotSource(Protocol):
    """What the poller reads: `Engine`, or a frozen source in tests."""

    def refresh(self) -> Snapshot: ...

    def set_interval(self, interval: float) -> None: ...


class Refreshed(Message):
    """Posted by the poller thread: one refresh, analysed and viewed, or why it failed."""

    def __init__(self, snapshot: Snapshot | None, analysis: Any, view: View | None,
                 connections: ConnectionSet | None, error: str, started: float) -> None:
        super().__init__()
        self.snapshot = snapshot
        self.analysis = analysis
        self.view = view
        self.connections = connections
        self.error = error
        self.started = started
        self.posted = time.perf_counter()


class ViewBuilt(Message):
    """Posted by the view thread: the panes' rows for a new drill-down, filter or sort."""

    def __init__(self, view: View) -> None:
        super().__init__()
        self.view = view


class ClipboardDone(Message):
    def __init__(self, text: str, what: str, error: str) -> None:
        super().__init__()
        self.text = text
        self.what = what
        self.error = error


class JobThread:
    """A daemon thread that runs the jobs handed to it one after the other. A thread started per job made
    the UI thread wait at each refresh and each drill-down: `Thread.start` returns only once the new thread
    has run, milliseconds on a loaded machine, while a key waited behind it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the thread once the jobs handed to it so far are done."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # as an ended thread would report it; the next job still runs
                threading.excepthook(threading.ExceptHookArgs((*sys.exc_info(), threading.current_thread())))
            del job  # it holds the app: not until the next job comes


class Drawer(VerticalScroll):
    """The details drawer: on the right when wide, the whole body when narrow. With the focus (narrow) it
    takes the panes' vi keys too: j down, g and G top and bottom (k stays Copy kill)."""

    BINDINGS = [Binding("j", "scroll_down", "Down", show=False),
                Binding("g", "scroll_home", "Top", show=False),
                Binding("G", "scroll_end", "Bottom", show=False)]
    COMPONENT_CLASSES = {"drawer--muted", "drawer--warning", "drawer--danger", "drawer--command", "drawer--key",
                         "drawer--heading", "drawer--title"}

    def compose(self) -> ComposeResult:
        yield Static(id="drawer-text")

    def styles_for_text(self) -> Styles:
        get = self.get_component_rich_style  # full styles: theme colours blended (muted text has alpha)
        return Styles(title=get("drawer--title"), heading=get("drawer--heading"), muted=get("drawer--muted"),
                      warning=get("drawer--warning"), danger=get("drawer--danger"),
                      command=get("drawer--command"), key=get("drawer--key"))

    def show(self, text: RenderableType) -> None:
        self.query_one("#drawer-text", Static).update(text)


class MainScreen(Screen):
    """socktop's main screen. Textual's repaints the whole screen when the focus moves (its ``focused``
    repaints), 10 to 20 ms at 200x50 for each pane switch; the panes that gain and lose the focus are
    restyled, and repaint themselves, anyway."""

    focused: Reactive[Any] = Reactive(None, repaint=False)


RESTORE_TERMINAL = ("\x1b[?1049l"  # leave the alternate screen
                    "\x1b[?1000l\x1b[?1003l\x1b[?1015l\x1b[?1006l"  # mouse reporting off
                    "\x1b[?25h")  # cursor shown
SHUTDOWN_GRACE = 2.0  # seconds an orderly shutdown after SIGTERM/SIGHUP may take before the process is ended


class ShutdownGuard:
    """Ends the process if the orderly shutdown a signal asked for does not finish: with the terminal gone,
    Textual's writer thread can block for ever (`WriterThread.stop` waits on its queue) and socktop stays alive."""

    def __init__(self, grace: float = SHUTDOWN_GRACE, end: Callable[[int], object] = os._exit,
                 fd: int | None = None) -> None:
        self.grace = grace
        self.end = end
        self.fd = sys.__stderr__.fileno() if fd is None and sys.__stderr__ is not None else fd  # Textual's output
        self._termios: Any = None
        self._timer: threading.Timer | None = None
        try:
            import termios

            self._termios = termios.tcgetattr(self.fd) if self.fd is not None else None
        except Exception:  # no termios, or termios.error: not a terminal
            self._termios = None

    def arm(self, status: int) -> None:
        """Start the countdown (once): after `grace` seconds, restore what can be and end with `status`."""
        if self._timer is None:
            self._timer = threading.Timer(self.grace, self._expire, (status,))
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        """The shutdown finished: nothing to force."""
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self, status: int) -> None:
        if self.fd is not None:
            try:
                os.write(self.fd, RESTORE_TERMINAL.encode())
                if self._termios is not None:
                    import termios

                    termios.tcsetattr(self.fd, termios.TCSANOW, self._termios)
            except Exception:  # the terminal vanished: nothing left to restore
                pass
        self.end(status)


class SocktopApp(App[int]):
    """socktop's terminal UI over a snapshot source."""

    TITLE = "socktop"
    CSS = style.CSS + """
    App:nocolor LineTable > .table--cursor { text-style: reverse; }
    """  # under NO_COLOR the highlighted row is reversed, not coloured
    BINDINGS = keys.bindings() + [Binding("ctrl+c", "interrupt", "Quit", show=False, priority=True)]
    ENABLE_COMMAND_PALETTE = True

    def __init__(self, source: SnapshotSource | Callable[[], SnapshotSource], *, interval: float = 1.0,
                 clipboard_mode: str = "auto", keymap: dict[str, str] | None = None,
                 config_notes: Sequence[str] = (), analyze: bool = True,
                 thresholds: Thresholds = DEFAULT_THRESHOLDS,
                 initial_filter: str = "", health: Callable[[], None] | None = None,
                 fleet: FleetWatch | None = None, handle_signals: bool = False) -> None:
        super().__init__()
        self.fleet = fleet  # `--prometheus URL`: polls the fleet; its error shows in the top bar
        self.handle_signals = handle_signals  # the real terminal only: a test's event loop keeps its own
        self.shutdown_guard = ShutdownGuard() if handle_signals else None  # before Textual's raw mode: saves cooked
        self._source_or_factory = source
        self.source: SnapshotSource | None = None
        self.interval = interval
        self._pending_interval: float | None = interval
        self.clipboard_plan = clipboard.plan(clipboard_mode)
        self.clipboard_mode = clipboard_mode
        self.keymap_overrides = dict(keymap or {})
        self.config_notes = list(config_notes)
        self.analyzer = analysis_api.Analyzer(thresholds) if analyze else None
        self.health = health  # called by the poller after each refresh; what it raises shows in the top bar
        self.paused = False
        self.error = ""
        self.snapshot: Snapshot | None = None
        self.analysis: Any = None
        self.view: View | None = None
        self.spec = ViewSpec(query=Query.parse(initial_filter))  # `socktop --state/--port/--pid` start filtered
        self._finding_levels: frozenset[Level] = frozenset()  # levels a picked finding set: never swapped
        self.connections: ConnectionSet | None = None  # this refresh's 4-tuples, to mark new sockets
        self._before: tuple[int, ConnectionSet | None] = (-1, None)  # the snapshot's seq, the 4-tuples before it
        self.drawer_open = False
        self.active_pane = "states"
        self.layout_mode = ""
        self._side, self._bottom, self._flex = "processes", "sockets", "processes"  # last shown in each place
        self._refresh_timer: Any = None
        self._filter_timer: Any = None
        self._query_before_edit = Query()
        self._refreshing = False
        self._jobs_lock = threading.Lock()
        self.background_jobs = 0  # jobs not finished (poller, view builder, clipboard): tests wait for none
        self._poller, self._viewer = JobThread("socktop-poll"), JobThread("socktop-view")
        self._view_generation = 0
        self._sockets_widget: SocketList | None = None
        self.refresh_count = 0
        self.collect_failed = False
        self.snapshot_at = 0.0  # time.monotonic() of the snapshot shown: its age shows while collection fails
        self.last_apply_seconds = 0.0
        self.first_frame_at: float | None = None

    # --- composition -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield TopBar(id="topbar")
        yield FindingsStrip(id="strip")
        yield TrendStrip(id="trends")
        yield FilterLine(id="filterline")
        yield TabLine(PANE_TITLES, id="tabline")
        with Horizontal(id="body"):
            with Vertical(id="main"):
                with Horizontal(id="top-row", classes="row"):
                    yield StatesPane(id="states", classes="pane")
                    yield PortsPane(id="ports", classes="pane")
                    yield ProcessesPane(id="processes", classes="pane")
                with Horizontal(id="bottom-row", classes="row"):
                    yield SocketList(id="sockets", classes="pane")
                    yield FindingsPane(id="findings", classes="pane")
            yield Drawer(id="drawer")
        yield Input(placeholder="filter: words, or state:close-wait port:8080 pid:42 proc:java user:app addr:10.0",
                    id="filter")
        yield KeyBar(id="keybar")
        yield Static("socktop needs at least 60x15: please enlarge the terminal.", id="too-small")

    def get_default_screen(self) -> Screen:
        return MainScreen(id="_default")

    def get_css_variables(self) -> dict[str, str]:
        """The theme's variables, and socktop's readable tones for it (`style.readable_variables`)."""
        variables = super().get_css_variables()
        return {**variables, **style.readable_variables(variables)}

    def on_mount(self) -> None:
        self._sockets_widget = self.query_one(SocketList)
        if self.handle_signals:
            self._quit_on_signals()
        if self.keymap_overrides:
            self.set_keymap(self.keymap_overrides)
        self.theme = "textual-dark"
        self._layout(self.size.width, self.size.height)
        self.pane("states").focus()
        self._show_top()
        self.call_after_refresh(self._first_frame)
        for note in self.config_notes:
            self.notify(printable(note), title="config", severity="warning", markup=False, timeout=8)
        self._start_poll()
        if self.fleet is not None:
            self.fleet.listeners.append(lambda _view: self._show_top())
            self.fleet.start(self)
            self.action_fleet()

    def on_unmount(self) -> None:
        self._poller.stop()
        self._viewer.stop()

    def _first_frame(self) -> None:
        self.first_frame_at = time.perf_counter()

    def pane(self, name: str) -> Any:
        return self.query_one(f"#{name}")

    @property
    def aggregate_panes(self) -> tuple[Pane, ...]:
        return (self.pane("states"), self.pane("ports"), self.pane("processes"))

    # --- layout -------------------------------------------------------------------------------------

    def on_resize(self, event: Resize) -> None:
        self._layout(event.size.width, event.size.height)

    def _layout(self, width: int, height: int) -> None:
        """Pick the size class (`layout_class`), then which panes it shows (`_arrange`)."""
        mode = layout_class(width, height)
        self.layout_mode = mode
        for name in LAYOUTS:
            self.set_class(mode == name, f"-{name}")
        self._arrange()
        if mode != "tiny" and (self.focused is None or not self.focused.display):
            # back from "too small" (or the focused pane went off screen): the keys act on a pane again
            self.call_after_refresh(self._restore_focus)

    def _restore_focus(self) -> None:
        if self.layout_mode != "tiny" and not self.has_class("-filtering") and len(self.screen_stack) == 1:
            self.set_focus(self.pane(self.active_pane))

    def _arrange(self) -> None:
        """Show the panes of this size class, and size the rows so that none leaves most of its height empty.

        wide (>= 140x34): every pane, as before. medium (>= 100x28): States beside Processes (or Ports),
        and Sockets (or Findings) below. small: States, fitted to its rows, above the pane in focus (or the
        last other one); below 22 lines only the pane in focus. Medium and small add the findings strip."""
        mode, active = self.layout_mode, self.active_pane
        if mode in ("tiny", ""):
            return
        if active in SIDE_PANES:
            self._side = active
        elif active in BOTTOM_PANES:
            self._bottom = active
        if active != "states":
            self._flex = active
        body = self.size.height - FIXED_LINES[mode]
        states_fit = self.pane("states").row_count + 3  # header and borders
        if mode == "wide":  # the top row as tall as its longest pane needs, up to 2/5: the sockets get the rest
            shown = frozenset(PANE_ORDER)
            top_fit = max(self.pane(name).row_count for name in ("states", "ports", "processes")) + 3
            heights = {"top-row": str(max(8, min(top_fit, body * 2 // 5))), "bottom-row": "1fr", "states": "1fr"}
        elif mode == "medium":
            shown = frozenset({"states", self._side, self._bottom})
            side_fit = self.pane(self._side).row_count + 3
            heights = {"top-row": str(max(8, min(max(states_fit, side_fit), body // 2))), "bottom-row": "1fr",
                       "states": "1fr"}
        elif self.size.height < SMALL_STACK_HEIGHT:
            shown = frozenset({active})
            heights = {"top-row": "1fr", "bottom-row": "1fr", "states": "1fr"}
        else:
            shown = frozenset({"states", self._flex})
            states_height = str(max(4, min(states_fit, body - 7)))
            if self._flex in SIDE_PANES:
                heights = {"top-row": "1fr", "bottom-row": "1fr", "states": states_height}
            else:
                heights = {"top-row": states_height, "bottom-row": "1fr", "states": "1fr"}
        for name in PANE_ORDER:
            self.pane(name).set_class(name in shown, "-shown")
        self.query_one("#top-row").set_class(not shown.isdisjoint(SIDE_PANES | {"states"}), "-shown")
        self.query_one("#bottom-row").set_class(not shown.isdisjoint(BOTTOM_PANES), "-shown")
        for widget_id, value in heights.items():
            widget = self.query_one(f"#{widget_id}")
            if str(widget.styles.height) != value:
                widget.styles.height = value
        self.query_one(TabLine).show(active, shown)
        strip = self.query_one(FindingsStrip)
        strip_height = STRIP_LINES.get(mode, 0) or None
        inline = strip.styles.inline.height
        if (inline.value if inline is not None else None) != strip_height:
            strip.styles.height = strip_height  # assigning, even the same value, lays the screen out anew

    def on_descendant_focus(self, event: Any) -> None:
        widget = event.widget
        name = getattr(widget, "id", None)
        if name in PANE_ORDER and name != self.active_pane:
            self.active_pane = name
            self._arrange()
            self._refresh_drawer()

    def on_tab_line_clicked(self, event: TabLine.Clicked) -> None:
        if event.name in PANE_ORDER and event.name != self.active_pane:
            self.action_focus_pane(event.name)

    def on_findings_strip_picked(self, event: FindingsStrip.Picked) -> None:
        findings = self.pane("findings")
        if findings.select_key(event.finding_id):
            self._select_finding(event.finding_id)

    # --- the poller ---------------------------------------------------------------------------------

    def _source(self) -> SnapshotSource:
        if self.source is None:
            factory = self._source_or_factory
            self.source = factory() if callable(factory) and not hasattr(factory, "refresh") else factory  # type: ignore[assignment]
        return self.source  # type: ignore[return-value]

    def refresh_now(self) -> None:
        """Refresh at once (unless one is running or the app is paused), then on the interval again."""
        if self._refresh_timer is not None:
            self._refresh_timer.stop()
        self._start_poll()

    def _start_poll(self) -> None:
        self._refresh_timer = None
        if self._refreshing or self.paused:
            return
        self._refreshing = True
        self._poll(self.spec, self._pending_interval)
        self._pending_interval = None

    def _background(self, target: Callable[..., None], *args: Any, lane: JobThread | None = None) -> None:
        """Run ``target`` in ``lane`` (else a thread of its own: a clipboard tool may hang), counted in
        `background_jobs`. Not a Textual thread worker: those run in the event loop's executor, which
        asyncio.run joins on exit, so `q` waited for the refresh in progress (seconds at 50,000 sockets).
        Daemon threads are left behind; they only read."""

        def run() -> None:
            try:
                target(*args)
            finally:
                with self._jobs_lock:
                    self.background_jobs -= 1

        with self._jobs_lock:
            self.background_jobs += 1
        if lane is not None:
            lane.submit(run)
        else:
            threading.Thread(target=run, name=f"socktop-{target.__name__.strip('_')}", daemon=True).start()

    def _poll(self, spec: ViewSpec, new_interval: float | None) -> None:
        self._background(self._poll_thread, spec, new_interval, lane=self._poller)

    def _socket_cursor(self) -> tuple | None:
        """The Sockets cursor's 4-tuple, for the view threads (no DOM query there: the app may be closing)."""
        sockets = self._sockets_widget
        return sockets.cursor_connection if sockets is not None else None

    def _poll_thread(self, spec: ViewSpec, new_interval: float | None) -> None:
        """One refresh, analysed and viewed, posted as `Refreshed` (in the poller thread)."""
        started = time.perf_counter()
        prior = self.view
        try:
            source = self._source()
            if new_interval is not None:
                source.set_interval(new_interval)
            snapshot = source.refresh()
        except Exception as exc:  # CollectError, OSError, BackendUnavailable, anything: keep running
            message = f"collect error: {type(exc).__name__}: {exc}" if not str(exc) else f"collect error: {exc}"
            self.post_message(Refreshed(None, None, None, None, message, started))
            return
        errors = []
        if self.health is not None:
            try:
                self.health()
            except Exception as exc:  # e.g. a demo role that died
                errors.append(str(exc))
        analysis = None
        if self.analyzer is not None:
            try:
                analysis = self.analyzer.analyze(snapshot)
            except Exception as exc:
                errors.append(f"analysis error: {type(exc).__name__}: {exc}")
        error = "; ".join(errors)
        try:
            view = build_view(snapshot, spec, prior if prior is not None and prior.seq < snapshot.seq else None)
            connections = ConnectionSet.of(snapshot.columns)
            view = with_new(with_cursor(view, self._socket_cursor()), self.connections)  # the 4-tuples shown now
        except Exception as exc:  # a bug here must not stop the refreshes: say it, and try again next time
            self.post_message(Refreshed(None, None, None, None, f"view error: {type(exc).__name__}: {exc}", started))
            return
        self.post_message(Refreshed(snapshot, analysis, view, connections, error, started))

    def on_refreshed(self, message: Refreshed) -> None:
        try:
            self._apply_refresh(message)
        except NoMatches:  # a refresh that lands while the app closes: its widgets are gone
            pass

    def _apply_refresh(self, message: Refreshed) -> None:
        self._refreshing = False
        self.refresh_count += 1
        self.collect_failed = message.snapshot is None
        if message.snapshot is None:
            self.error = message.error
            self._show_top()
            self._schedule(message.started)
            return
        began = time.perf_counter()
        self.error = message.error
        self.snapshot_at = time.monotonic()
        self.snapshot = message.snapshot
        self.analysis = message.analysis
        self._before = (message.snapshot.seq, self.connections)  # one assignment: the view thread reads it
        self.connections = message.connections
        self._show_top()
        self.query_one(TrendStrip).show(message.snapshot)
        view = message.view
        if view is not None and view.spec == self.spec:
            self._apply_view(view)
        else:
            self._request_view()
        self._apply_findings()
        self.last_apply_seconds = time.perf_counter() - began
        self._schedule(message.started)

    def _schedule(self, started: float) -> None:
        if self.paused or self._refresh_timer is not None:
            return
        elapsed = time.perf_counter() - started
        self._refresh_timer = self.set_timer(max(0.05, self.interval - elapsed), self._start_poll)

    # --- views --------------------------------------------------------------------------------------

    def _set_spec(self, spec: ViewSpec) -> None:
        if spec != self.spec:
            self.spec = spec
            self._request_view()
            self._show_filter()

    def _request_view(self) -> None:
        if self.snapshot is not None:
            self._build_view()

    def _build_view(self) -> None:
        self._view_generation += 1
        self._background(self._build_view_thread, self._view_generation, lane=self._viewer)

    def _build_view_thread(self, generation: int) -> None:
        """The panes' rows for the current drill-down, filter and sort (in the view thread); a build that a
        newer one has overtaken posts nothing, or does not start."""
        if generation != self._view_generation:
            return
        snapshot, spec, prior = self.snapshot, self.spec, self.view  # immutable
        view = build_view(snapshot, spec, prior if prior is not None and prior.seq < snapshot.seq else None)
        seq, before = self._before
        if generation == self._view_generation:  # (a view of an older snapshot than the one before is dropped)
            self.post_message(ViewBuilt(with_new(with_cursor(view, self._socket_cursor()),
                                                 before if seq == snapshot.seq else None)))

    def on_view_built(self, message: ViewBuilt) -> None:
        view = message.view
        if view.spec == self.spec and self.snapshot is not None and view.seq == self.snapshot.seq:
            try:
                self._apply_view(view)
            except NoMatches:  # the app is closing
                pass

    def _apply_view(self, view: View) -> None:
        """Show ``view``. When a picked row has vanished, the cursor goes to its neighbour (`Pane.apply`);
        the drill-down follows it only for a state or port the user picked. A finding's levels stay what
        the finding named, and a process is never swapped for another (a kill target must not change
        behind the user's back): its level is dropped, and the user told."""
        self.view = view
        levels = self.spec.levels
        changed = False
        dropped: list[Level] = []
        for pane, rows in zip(self.aggregate_panes, (view.states, view.ports, view.processes)):
            key = pane.apply(rows)
            level = next((lvl for lvl in levels if lvl.kind == pane.LEVEL), None)
            if level is None or key == level.key or pane.select_key(level.key):
                continue
            if level.kind == PROCESS:
                levels = tuple(lvl for lvl in levels if lvl != level)
                dropped.append(level)
                changed = True
            elif key is not None and level not in self._finding_levels:
                levels = with_level(levels, Level(pane.LEVEL, key))
                changed = True
        for level in dropped:
            self.notify(self._vanished(level), title="Process selection dropped", severity="warning",
                        markup=False, timeout=8)
        self.query_one(SocketList).set_data(self.snapshot, view.sockets, view.new, view.cursor_hint,
                                            (view.spec.socket_sort, view.spec.socket_reverse))
        self._show_filter()
        self._refresh_drawer()
        self._arrange()  # row counts changed: the fitted heights follow
        if changed:
            self._set_spec(replace(self.spec, levels=levels))

    def _vanished(self, level: Level) -> str:
        """Why a picked process row is gone, for the notification that its level was dropped."""
        kind, _, number = level.key.partition(":")
        processes = self.snapshot.ownership.processes if self.snapshot is not None else {}
        if kind == "pid" and int(number) not in processes:
            return f"pid {number} exited: no process is selected now (k and l wait for a new pick)"
        return f"{kind} {number} has no sockets left in this view: no process is selected now"

    def _apply_findings(self) -> None:
        findings = analysis_api.findings_of(self.analysis)
        pane: FindingsPane = self.pane("findings")
        pane.apply(enumerate(findings))
        pane.border_subtitle = f"{len(findings)}" if findings else "none"
        self.query_one(FindingsStrip).show([(f.id, f.severity.value, f.title) for f in findings])

    # --- bars -------------------------------------------------------------------------------------

    def _show_keys(self) -> None:
        shown = []
        for key in map(keys.BY_ID.get, keys.FOOTER):
            mapped = self.keymap_overrides.get(key.id)
            first = (mapped or key.keys).split(",")[0].strip()
            shown.append((key.display if not mapped and key.display else self.get_key_display(Binding(first, "")),
                          key.description))
        self.query_one(KeyBar).show(shown, self.paused)

    def _show_top(self) -> None:
        self._show_keys()
        error = " · ".join(filter(None, (self.error, self.fleet.error if self.fleet else "")))
        age = time.monotonic() - self.snapshot_at if self.collect_failed and self.snapshot is not None else None
        self.query_one(TopBar).show(self.snapshot, interval=self.interval, paused=self.paused, error=error,
                                    findings=analysis_api.severity_counts(self.analysis), data_age=age)

    def _show_filter(self) -> None:
        total = self.snapshot.aggregates.total if self.snapshot else 0
        in_view = len(self.view.sockets) if self.view else total
        focused = self.pane(self.active_pane)
        sort = f"{PANE_TITLES[self.active_pane][2:]} by {focused.sort_text}" if hasattr(focused, "sort_text") else ""
        finding = self.picked_finding() if self.spec.levels else None
        self.query_one(FilterLine).show([level.label for level in self.spec.levels], self.spec.query.text,
                                        self.spec.query.error, in_view, total, sort,
                                        finding=finding.title if finding is not None else "")
        narrowed = bool(self.spec.levels or self.spec.query.terms)
        for name in PANE_ORDER:  # what an empty pane says
            self.pane(name).empty_text = "no match: Esc clears one level" if narrowed else (
                "no findings" if name == "findings" else "none")

    # --- selection ----------------------------------------------------------------------------------

    def on_pane_picked(self, message: Pane.Picked) -> None:
        pane = message.pane
        if pane.LEVEL is not None:
            self._set_spec(replace(self.spec, levels=with_level(self.spec.levels, Level(pane.LEVEL, message.key))))
        elif pane.KIND == "findings":
            self._select_finding(message.key)
        self._refresh_drawer()

    def on_pane_details_requested(self, message: Pane.DetailsRequested) -> None:
        """Enter: pick the row (also when closing the drawer), then open or close the drawer."""
        self._pick_cursor_row()
        self.action_toggle_drawer()

    def on_socket_list_details_requested(self, message: SocketList.DetailsRequested) -> None:
        self.action_toggle_drawer()

    def on_socket_list_moved(self, message: SocketList.Moved) -> None:
        self._refresh_drawer()

    def on_socket_list_sort_requested(self, message: SocketList.SortRequested) -> None:
        self._set_spec(replace(self.spec, socket_sort=message.column, socket_reverse=message.reverse))

    def _select_finding(self, finding_id: str) -> None:
        """A finding replaces the whole drill-down with what it concerns: its subject, and its state
        where it has one (levels and cursors). Those levels are never swapped for a neighbour."""
        finding = analysis_api.finding_by_id(self.analysis, finding_id)
        if finding is None:
            return
        levels = tuple(Level(kind, key) for kind, key in analysis_api.levels_of(finding))
        self._finding_levels = frozenset(levels)
        for level in levels:
            self.pane(LEVEL_PANES[level.kind]).select_key(level.key)
        self._set_spec(replace(self.spec, levels=levels))

    def picked_finding(self) -> Any:
        """The finding under the Findings cursor while the drill-down is still on its subject, else None."""
        finding = analysis_api.finding_by_id(self.analysis, self.pane("findings").selected_key)
        if finding is None or Level(*analysis_api.subject_of(finding)) not in self.spec.levels:
            return None
        return finding

    def selection(self) -> Selection:
        """What the drawer and the copy keys act on (htop's model): the highlighted row of the focused pane,
        in the context of the drill-down the filter line shows; in Sockets, the socket under the cursor."""
        snapshot, analysis, focus = self.snapshot, self.analysis, self.active_pane
        keys_by_kind: dict[str, str | None] = {kind: None for kind in (STATE, PORT, PROCESS)}
        keys_by_kind.update({level.kind: level.key for level in self.spec.levels})
        pane_kind = {"states": STATE, "ports": PORT, "processes": PROCESS}.get(focus)
        if pane_kind is not None and self.pane(focus).selected_key is not None:
            keys_by_kind[pane_kind] = self.pane(focus).selected_key
        finding = socket = None
        if focus == "findings":
            finding = analysis_api.finding_by_id(analysis, self.pane("findings").selected_key)
        elif focus == "sockets":
            socket = self.query_one(SocketList).selected
            if socket is not None and snapshot is not None:
                keys_by_kind[STATE] = socket.state.name
                owners = snapshot.owners_of(socket).processes
                if owners and keys_by_kind[PROCESS] is None:
                    keys_by_kind[PROCESS] = f"pid:{owners[0].pid}"
        port = process = None
        if snapshot is not None:
            port = snapshot.aggregates.by_port.get(keys_by_kind[PORT] or "")
            if focus == "ports" and keys_by_kind[PROCESS] is None and port is not None and len(port.pids) == 1:
                keys_by_kind[PROCESS] = f"pid:{port.pids[0]}"  # a port with one owner: k and l act on it
            process = snapshot.aggregates.by_process.get(keys_by_kind[PROCESS] or "")
        state = TcpState[keys_by_kind[STATE]] if keys_by_kind[STATE] else None
        if finding is not None:
            findings: tuple[Any, ...] = (finding,)
        elif focus in ("ports", "processes"):
            findings = analysis_api.related(analysis, pane_kind, keys_by_kind[pane_kind])
        else:
            findings = analysis_api.related(analysis, STATE, keys_by_kind[STATE], state)
        return Selection(focus=focus, levels=self.spec.levels, query=self.spec.query, state=state, port=port,
                         process=process, finding=finding, socket=socket,
                         in_view=len(self.view.sockets) if self.view else 0,
                         inferred_in_view=self.view.inferred if self.view else 0, findings=findings,
                         is_root=self.snapshot.source.is_root if self.snapshot else False)

    # --- drawer ------------------------------------------------------------------------------------

    def _key_names(self) -> dict[str, str]:
        names = {}
        for action, binding_id in (("kill", "copy_kill"), ("sysctl", "copy_sysctl"), ("ss", "copy_ss"),
                                   ("lsof", "copy_lsof")):
            keys_text = self.keymap_overrides.get(binding_id, keys.BY_ID[binding_id].keys)
            names[action] = self.get_key_display(Binding(keys_text.split(",")[0].strip(), ""))
        return names

    def copyables(self, selection: Selection | None = None) -> dict[str, Copyable]:
        return commands_for(selection or self.selection())

    def _refresh_drawer(self) -> None:
        if not self.drawer_open:
            return
        drawer = self.query_one(Drawer)
        selection = self.selection()
        text = describe(selection, self.snapshot, self.copyables(selection), drawer.styles_for_text(),
                        self._key_names())
        drawer.show(text)
        drawer.border_title = f"Details: {selection.subject}"

    def _pick_cursor_row(self) -> None:
        """Make the focused pane's cursor row its selection, when it is not already (`d`, Enter)."""
        pane = self.pane(self.active_pane)
        key = getattr(pane, "selected_key", None) if isinstance(pane, Pane) else None
        if key is None:
            return
        if pane.LEVEL is not None:
            self._set_spec(replace(self.spec, levels=with_level(self.spec.levels, Level(pane.LEVEL, key))))
        elif pane.KIND == "findings" and self.picked_finding() is None:
            self._select_finding(key)

    def action_containers(self) -> None:
        self.push_screen(ContainersScreen(lambda: self.snapshot, self.show_place, self.copy_command, self.interval))

    def show_place(self, key: str) -> None:
        """The Containers view's drill-down: the panes filtered to one place."""
        self._commit_filter(f"container:{key}")

    def action_fleet(self) -> None:
        if self.fleet is None:
            self.notify("start socktop with --prometheus URL to see the fleet", title="Fleet", timeout=6)
            return
        self.push_screen(FleetScreen(self.fleet))

    def action_toggle_drawer(self) -> None:
        if not self.drawer_open:
            self._pick_cursor_row()
        self.drawer_open = not self.drawer_open
        if self.layout_mode == "small":  # the drawer takes the body: it has the keys while open, the pane after
            self.set_focus(self.query_one(Drawer) if self.drawer_open else self.pane(self.active_pane))
        self.set_class(self.drawer_open, "-drawer")
        if self.drawer_open:
            self._refresh_drawer()
            self.query_one(Drawer).scroll_home(animate=False)

    def action_scroll_drawer(self, direction: int) -> None:
        if self.drawer_open:
            drawer = self.query_one(Drawer)
            drawer.scroll_page_down(animate=False) if direction > 0 else drawer.scroll_page_up(animate=False)

    # --- keys ---------------------------------------------------------------------------------------

    def action_focus_pane(self, name: str) -> None:
        if name not in PANE_ORDER:
            return
        if self.has_class("-filtering"):  # Tab out of the filter field keeps what was typed
            self._commit_filter(self.query_one("#filter", Input).value)
        self.active_pane = name
        self._arrange()
        if self.layout_mode == "small" and self.drawer_open:
            self.action_toggle_drawer()
        self.pane(name).focus()
        self._show_filter()
        self._refresh_drawer()

    def action_next_pane(self, step: int) -> None:
        index = PANE_ORDER.index(self.active_pane) if self.active_pane in PANE_ORDER else 0
        self.action_focus_pane(PANE_ORDER[(index + step) % len(PANE_ORDER)])

    def action_sort(self, reverse_only: bool) -> None:
        self.pane(self.active_pane).cycle_sort(reverse_only)
        self._show_filter()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if self.paused:
            if self._refresh_timer is not None:
                self._refresh_timer.stop()
                self._refresh_timer = None
        else:
            self.refresh_now()
        self._show_top()

    def action_change_interval(self, step: int) -> None:
        index = min(range(len(INTERVALS)), key=lambda i: abs(INTERVALS[i] - self.interval))
        new = INTERVALS[max(0, min(len(INTERVALS) - 1, index + step))]
        if new == self.interval:
            self.notify(f"The interval is already {new:g} s (0.5 s to 10 s).", timeout=2)
            return
        self.interval = new
        self._pending_interval = new
        if self._refresh_timer is not None:
            self._refresh_timer.stop()
            self._refresh_timer = None
            self._refresh_timer = self.set_timer(new, self._start_poll)
        self._show_top()

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def watch_theme(self, theme: str) -> None:
        # pane cells and bars carry rich styles resolved from the theme: re-resolve them
        self.call_after_refresh(self._restyle)

    def _restyle(self) -> None:
        for pane in (*self.aggregate_panes, self.pane("findings")):
            pane.restyle()
        self._show_top()
        self._show_filter()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.keymap_overrides, lambda key: self.get_key_display(Binding(key, ""))))

    def action_filter(self) -> None:
        field = self.query_one("#filter", Input)
        self._query_before_edit = self.spec.query
        self.add_class("-filtering")
        field.value = self.spec.query.text
        # shown and focused now, not after the next refresh: keys typed right after "/" must land in it
        field.display = True
        self.set_focus(field)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(FILTER_DEBOUNCE, partial(self._apply_query, event.value))

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self._commit_filter(event.value)

    def _commit_filter(self, text: str) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._apply_query(text)
        self._close_filter()

    def _apply_query(self, text: str) -> None:
        self._filter_timer = None
        self._set_spec(replace(self.spec, query=Query.parse(text)))

    def _close_filter(self) -> None:
        self.remove_class("-filtering")
        self.query_one("#filter", Input).display = False
        self.set_focus(self.pane(self.active_pane))

    def action_back(self) -> None:
        """Esc closes the innermost thing first: the filter field (as it was before), the drawer (the row
        under it stays picked), one drill-down level, then the text filter (also one that only holds an
        unknown term)."""
        if self.has_class("-filtering"):
            if self._filter_timer is not None:
                self._filter_timer.stop()
                self._filter_timer = None
            self._set_spec(replace(self.spec, query=self._query_before_edit))
            self._close_filter()
        elif self.drawer_open:
            self.action_toggle_drawer()
        elif self.spec.levels:
            self._set_spec(replace(self.spec, levels=self.spec.levels[:-1]))
        elif self.spec.query.text:
            self._set_spec(replace(self.spec, query=Query()))

    # --- copy actions --------------------------------------------------------------------------------

    def action_copy(self, action: str) -> None:
        if action not in COPY_ACTIONS:
            return
        copyable = self.copyables()[action]
        if copyable.command is None:
            self.notify(printable(copyable.why_not), title=f"Nothing to copy ({action})", severity="warning",
                        markup=False, timeout=4)
            return
        self.copy_command(copyable.command.line, copyable.what)

    def copy_command(self, text: str, what: str) -> None:
        """Send ``text`` where the clipboard mode says, tell the user, and show it when nothing confirms."""
        plan = self.clipboard_plan
        if plan.osc52:
            self.copy_to_clipboard(text)
        if plan.system:
            self._system_copy(text, what)
            return
        if plan.osc52 and plan.trust_osc52:
            self.notify(printable(text), title=f"Copied {printable(what)} (OSC 52)", markup=False, timeout=6)
            return
        # the dialog says it all: a notification would be drawn over its instructions
        why = ("Sent to the terminal by OSC 52, which cannot confirm it: your terminal may not have taken it"
               if plan.osc52 else "The clipboard is off (--clipboard off)")
        self.push_screen(CommandDialog(f"Copy by hand: {what}", text,
                                       f"{why}. Copy the line above with your terminal: Shift+drag selects it in "
                                       "most terminals. --clipboard osc52 trusts the terminal and skips this "
                                       "dialog."))

    def _system_copy(self, text: str, what: str) -> None:
        self._background(lambda: self.post_message(ClipboardDone(text, what, clipboard.system_copy(text))))

    def on_clipboard_done(self, message: ClipboardDone) -> None:
        if not message.error:
            self.notify(printable(message.text), title=f"Copied {printable(message.what)}", markup=False, timeout=6)
            return
        self.push_screen(CommandDialog(f"Copy by hand: {message.what}", message.text,
                                       f"{message.error}. Copy the line above with your terminal: Shift+drag "
                                       "selects it in most terminals."))

    # --- palette ------------------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """socktop's actions, and Textual's own where socktop has none of that name (its Quit, Theme and
        Keys would list Quit, Theme and Help twice)."""
        ours = {key.description for key in keys.KEYS} | {"Keys"}
        yield from (command for command in super().get_system_commands(screen) if command.title not in ours)
        for key in keys.KEYS:
            keys_text = self.keymap_overrides.get(key.id, key.keys)
            shown = " ".join(self.get_key_display(Binding(name.strip(), "")) for name in keys_text.split(","))
            yield SystemCommand(key.description, f"{key.help} (key: {shown})", partial(self.run_action, key.action))

    # --- exit ---------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """socktop's keys act on the main screen only: in help, a dialog or the palette they are theirs."""
        if action in MAIN_SCREEN_ACTIONS and len(self.screen_stack) > 1:
            return False
        if action == "filter" and self.has_class("-filtering"):
            return False  # "/" typed in the filter field is text
        return True

    def action_quit(self) -> None:
        self.exit(0)

    def _quit_on_signals(self) -> None:
        """SIGTERM and SIGHUP end socktop as q does, so that the terminal is restored (alternate screen,
        mouse reporting, cursor); without this the default action kills the process with them still on."""
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(number, self._quit_by_signal, 0)

    def _quit_by_signal(self, status: int) -> None:
        """Quit as q does, and arm the guard in case the terminal is gone and the shutdown hangs."""
        if self.shutdown_guard is not None:
            self.shutdown_guard.arm(status)
        self.exit(status)

    def get_line_filters(self) -> Sequence[LineFilter]:
        """Under NO_COLOR no colour at all: Textual's own choice there is 256-colour greys (Monochrome)."""
        return [NoColor() if isinstance(line_filter, Monochrome) else line_filter
                for line_filter in super().get_line_filters()]

    def action_interrupt(self) -> None:
        """Ctrl+C quits, as in top (in a dialog it copies the selected text instead)."""
        self.exit(0)


def filter_from_options(options: argparse.Namespace) -> str:
    """`--state/--port/--pid` as the `/` filter's terms, so the TUI starts as `--once` would."""
    state, port, pid = (getattr(options, name, None) for name in ("state", "port", "pid"))
    terms = [f"state:{state.slug}" if state else "", f"port:{port}" if port else "", f"pid:{pid}" if pid else ""]
    return " ".join(term for term in terms if term)


def run(options: argparse.Namespace, config: Config) -> int:
    """`socktop` (the TUI): open the engine, maybe start the demo, run the app; the exit status."""
    from ..collect.records import BackendUnavailable
    from ..model.engine import Engine

    interval = getattr(options, "interval", 1.0)
    keymap, notes = keys.validate_keymap(config.keys, str(config.path))
    notes = [*config.warnings, *notes]
    scenario = None
    if getattr(options, "demo", False):
        from ..demo.scenario import MAX_DURATION, DemoScenario

        scenario = DemoScenario(MAX_DURATION)  # runs until socktop quits (its roles also end with this process)
        scenario.start()
    try:
        engine = Engine(getattr(options, "backend", "auto"), interval=interval, netns=NetnsSelection.chosen(getattr(options, "netns", None)))
    except BackendUnavailable as exc:
        if scenario is not None:
            scenario.stop()
        print(f"socktop: error: {exc}", file=sys.stderr)
        return 1
    if engine.backend_note:
        notes.insert(0, engine.backend_note)
    app = SocktopApp(engine, interval=interval, clipboard_mode=getattr(options, "clipboard", "auto"),
                     keymap=keymap, config_notes=notes, thresholds=config.thresholds,
                     initial_filter=filter_from_options(options), health=scenario.check if scenario else None,
                     fleet=FleetWatch(options.prometheus) if getattr(options, "prometheus", None) else None,
                     handle_signals=True)
    try:
        result = app.run()
    finally:
        if scenario is not None:
            scenario.stop()
        if app.shutdown_guard is not None:
            app.shutdown_guard.disarm()
    return result if isinstance(result, int) else 0
