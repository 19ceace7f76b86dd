"""The Fleet view (`socktop --prometheus URL`): hosts ranked by their worst finding, their trends, drill-down.

`FleetWatch` polls Prometheus from a thread worker every `POLL_SECONDS`
(through `socktop.analyze.fleet`, which never raises for a Prometheus that
does not answer) and hands each `FleetView` to the UI thread: the app shows
its error in the top bar, the `FleetScreen` shows the hosts. Enter asks for
one host's ports and processes, also from a thread; `c` copies
``ssh -t -- HOST socktop``, `k` a ``kubectl exec`` into the node's socktop pod. Every label from Prometheus is untrusted text:
shown through `printable`, never as markup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Static

from ..analyze.fleet import (
    FleetView, GroupRow, HostDetail, HostRow, Prometheus, fleet_view, host_detail, kubectl_command, ssh_command,
)
from ..safetext import printable

POLL_SECONDS = 15.0
SPARKS = "▁▂▃▄▅▆▇█"
SEVERITY_STYLES = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
DETAIL_ROWS = 30
STATE_COLUMNS = ("ESTABLISHED", "CLOSE_WAIT", "TIME_WAIT", "LISTEN")


def sparkline(values: Sequence[float], width: int = 12) -> str:
    """The whole window in at most ``width`` cells (each the maximum of its share of the values, so a
    spike is never averaged away), scaled from 0 to the maximum: a steady count draws flat."""
    values = list(values)
    if len(values) > width:
        values = [max(values[i * len(values) // width:(i + 1) * len(values) // width]) for i in range(width)]
    top = max(values, default=0.0)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int(value / top * (len(SPARKS) - 1) + 0.5))] for value in values)


def worst_text(host: HostRow) -> Text:
    """The host's worst finding (severity, kind, subject, name), or "down" / "no findings"."""
    text = Text()
    if not host.up:
        text.append("DOWN ", style="bold red")
    finding = host.worst
    if finding is None:
        text.append("no findings" if host.up else "not scraped", style="dim")
        return text
    text.append(finding.severity.value.upper(), style=SEVERITY_STYLES.get(finding.severity.value, ""))
    subject = f"{finding.subject} {finding.name}".strip()
    text.append(printable(f" {finding.kind} {subject}"))
    if host.findings > 1:
        text.append(f" (+{host.findings - 1})", style="dim")
    return text


def top_line(view: FleetView | None) -> Text:
    """What the Fleet screen's top bar says: the source and count, or the error."""
    if view is None:
        return Text("Fleet · waiting for Prometheus…", style="dim")
    line = Text("Fleet ", style="bold")
    line.append(printable(view.url), style="dim")
    if view.error:
        line.append(f"  {printable(view.error)} ", style="bold white on red")
        return line
    with_findings = sum(1 for host in view.hosts if host.worst is not None or not host.up)
    polled = time.strftime("%H:%M:%S", time.localtime(view.taken_at))
    line.append(f"  {len(view.hosts)} hosts, {with_findings} need a look · polled at {polled}, every {POLL_SECONDS:g} s")
    return line


class FleetWatch:
    """Polls Prometheus for the app (a thread worker per poll, never two at once) and keeps the last view."""

    def __init__(self, url: str, poll: Callable[[], FleetView] | None = None,
                 detail: Callable[[str], HostDetail] | None = None) -> None:
        prometheus = Prometheus(url)
        self.url = prometheus.url
        self.poll = poll or (lambda: fleet_view(prometheus))
        self.detail = detail or (lambda instance: host_detail(prometheus, instance))
        self.view: FleetView | None = None
        self.listeners: list[Callable[[FleetView], None]] = []
        self._app: App[Any] | None = None
        self._busy = False

    @property
    def error(self) -> str:
        return self.view.error if self.view is not None else ""

    def start(self, app: App[Any]) -> None:
        self._app = app
        self.poll_now()
        app.set_interval(POLL_SECONDS, self.poll_now)

    def poll_now(self) -> None:
        if self._app is None or self._busy:
            return
        self._busy = True
        self._app.run_worker(self._fetch, thread=True, group="fleet", exit_on_error=False, description="fleet")

    def _fetch(self) -> None:
        view = self.poll()
        if self._app is not None:
            self._app.call_from_thread(self._apply, view)

    def _apply(self, view: FleetView) -> None:
        self._busy = False
        self.view = view
        for listener in list(self.listeners):
            listener(view)


class FleetScreen(Screen[None]):
    """Hosts ranked by their worst finding, CLOSE_WAIT and TIME_WAIT; Enter drills into one host."""

    DEFAULT_CSS = """
    FleetScreen #fleet-top { height: 1; background: $panel; }
    FleetScreen #fleet-hosts { height: 1fr; border: round $primary; }
    FleetScreen #fleet-findings { height: auto; max-height: 8; border: round $primary; padding: 0 1; }
    FleetScreen #fleet-detail { height: 1fr; display: none; }
    FleetScreen.-drilled #fleet-detail { display: block; }
    FleetScreen.-drilled #fleet-findings { display: none; }
    FleetScreen #fleet-detail DataTable { width: 1fr; border: round $primary; }
    FleetScreen #fleet-keys { height: 1; background: $panel; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[Any]] = [
        Binding("escape", "back", "Back", show=False),
        Binding("c", "copy('ssh')", "Copy ssh", show=False),
        Binding("k", "copy('kubectl')", "Copy kubectl", show=False),
        Binding("r", "poll", "Refresh", show=False),
        Binding("q", "app.quit", "Quit", show=False),
    ]

    def __init__(self, watch: FleetWatch) -> None:
        super().__init__()
        self.watch = watch
        self.hosts: tuple[HostRow, ...] = ()
        self.drilled: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="fleet-top")
        yield DataTable(id="fleet-hosts", cursor_type="row", zebra_stripes=True)
        yield Static(id="fleet-findings")
        with Horizontal(id="fleet-detail"):
            yield DataTable(id="fleet-ports", cursor_type="row")
            yield DataTable(id="fleet-processes", cursor_type="row")
        yield Static(Text("Enter host's ports and processes · c copy ssh · k copy kubectl exec · r refresh · "
                          "Esc back · q quit"), id="fleet-keys")

    def on_mount(self) -> None:
        table = self.query_one("#fleet-hosts", DataTable)
        table.border_title = "Fleet: hosts by worst finding, then CLOSE_WAIT, TIME_WAIT"
        table.add_columns("host", "CLOSE_WAIT", "TIME_WAIT", "worst finding", "CLOSE_WAIT trend", "TIME_WAIT trend",
                          "sockets")
        for name in ("fleet-ports", "fleet-processes"):
            self.query_one(f"#{name}", DataTable).add_columns(
                "port" if name == "fleet-ports" else "process", "total", *STATE_COLUMNS)
        self.query_one("#fleet-findings", Static).border_title = "Fleet findings"
        self.watch.listeners.append(self.show)
        if self.watch.view is not None:
            self.show(self.watch.view)
        else:
            self.query_one("#fleet-top", Static).update(top_line(None))
        table.focus()

    def on_unmount(self) -> None:
        if self.show in self.watch.listeners:
            self.watch.listeners.remove(self.show)

    def show(self, view: FleetView) -> None:
        """Apply one poll: the top line always; the hosts unless the poll failed (the last ones stay)."""
        self.query_one("#fleet-top", Static).update(top_line(view))
        if view.error:
            return
        table = self.query_one("#fleet-hosts", DataTable)
        selected = self._cursor_instance()
        self.hosts = view.hosts
        table.clear()
        for host in view.hosts:
            table.add_row(Text(printable(host.instance), style="bold"), f"{host.close_wait:,}",
                          f"{host.time_wait:,}", worst_text(host), sparkline(host.trends.get("CLOSE_WAIT", ())),
                          sparkline(host.trends.get("TIME_WAIT", ())), f"{host.total:,}", key=host.instance)
        if selected is not None and any(host.instance == selected for host in view.hosts):
            table.move_cursor(row=table.get_row_index(selected))
        findings = Text()
        for finding in view.findings[:6]:
            findings.append(f"{finding.severity.value.upper():8}", style=SEVERITY_STYLES.get(finding.severity.value, ""))
            findings.append(printable(f" {finding.instance}  {finding.kind} {finding.subject} {finding.name}".rstrip()))
            findings.append(f"  {finding.metric} {finding.value:g}\n", style="dim")
        findings.rstrip()
        self.query_one("#fleet-findings", Static).update(findings if findings.plain else Text("no findings", style="dim"))

    def _cursor_instance(self) -> str | None:
        table = self.query_one("#fleet-hosts", DataTable)
        if not self.hosts or table.cursor_row is None or not 0 <= table.cursor_row < len(self.hosts):
            return None
        return self.hosts[table.cursor_row].instance

    @on(DataTable.RowSelected, "#fleet-hosts")
    def _host_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a host row (the table takes Enter before the screen's binding does)."""
        self.action_drill()

    def action_drill(self) -> None:
        instance = self._cursor_instance()
        if instance is None or self.drilled is not None:
            return
        self.drilled = instance
        self.add_class("-drilled")
        for name in ("fleet-ports", "fleet-processes"):
            self.query_one(f"#{name}", DataTable).border_title = Text(f"{printable(instance)}: loading…")
        self.run_worker(lambda: self.app.call_from_thread(self.show_detail, self.watch.detail(instance)),
                        thread=True, group="fleet-detail", exit_on_error=False, description="fleet host")

    def show_detail(self, detail: HostDetail) -> None:
        if detail.instance != self.drilled:
            return  # the user went back (or elsewhere) while it loaded
        for name, rows, what in (("fleet-ports", detail.ports, "ports"), ("fleet-processes", detail.processes,
                                                                          "processes")):
            table = self.query_one(f"#{name}", DataTable)
            table.clear()
            title = f"{detail.instance}: {what}" + (f" · {detail.error}" if detail.error else "")
            table.border_title = Text(printable(title))  # a str title is markup: a "[/x]" in it would raise
            for row in rows[:DETAIL_ROWS]:
                table.add_row(*self._group_cells(row))

    @staticmethod
    def _group_cells(row: GroupRow) -> tuple[Any, ...]:
        return (Text(printable(row.key)), f"{row.total:,}",
                *(f"{row.counts[state]:,}" if row.counts.get(state) else "" for state in STATE_COLUMNS))

    def action_back(self) -> None:
        if self.drilled is not None:
            self.drilled = None
            self.remove_class("-drilled")
            self.query_one("#fleet-hosts", DataTable).focus()
            return
        self.dismiss()

    def action_copy(self, how: str) -> None:
        """``ssh -t -- HOST socktop``, or ``kubectl exec`` into the node's socktop pod, for the host in view."""
        instance = self.drilled or self._cursor_instance()
        if instance is None:
            self.notify("no host selected", severity="warning")
            return
        command = ssh_command(instance) if how == "ssh" else kubectl_command(instance)
        copy = getattr(self.app, "copy_command", None)
        if copy is not None:
            copy(command.line, f"{how} to {printable(instance)}")

    def action_poll(self) -> None:
        self.watch.poll_now()

