"""What the details drawer says about the selection, and which command each copy key copies.

`Selection` is everything the user has picked, resolved from the panes by
the app; `commands_for` decides, for each copy key, the exact command (or
why there is none); `describe` turns the selection into the drawer's text.
Both are pure (no Textual): knowledge, findings, sysctl advice and command
lines all come from the analysis layer, never from here.

Untrusted strings go through `printable` and are only ever plain text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ..analyze import commands as cmd
from ..analyze.findings import Analysis, Finding
from ..analyze.knowledge import knowledge_for, on_this_kernel
from ..collect.records import DISPLAY_STATES, SocketRecord, TcpState
from ..model.aggregate import OwnerKind, PortGroup, ProcessGroup
from ..model.snapshot import Snapshot
from ..safetext import printable
from . import analysis as glue
from . import format as fmt
from .view import PORT, PROCESS, STATE, Level, Query, full_address

COPY_ACTIONS = ("kill", "sysctl", "ss", "lsof")
PANE_NUMBERS = {"states": 1, "ports": 2, "processes": 3, "sockets": 4, "findings": 5}
SUBJECTS = {"states": "state", "ports": "port", "processes": "process", "sockets": "socket", "findings": "finding"}


@dataclass(frozen=True, slots=True)
class Selection:
    """What is picked where, resolved by the app from the panes and the drill-down."""

    focus: str  # the pane with focus: "states", "ports", "processes", "sockets", "findings"
    levels: tuple[Level, ...] = ()
    query: Query = Query()
    state: TcpState | None = None
    port: PortGroup | None = None
    process: ProcessGroup | None = None
    finding: Finding | None = None
    socket: SocketRecord | None = None
    in_view: int = 0  # sockets in the Sockets view
    inferred_in_view: int = 0  # of those, when a pid narrows the view: without a descriptor (owner inferred)
    findings: tuple[Finding, ...] = ()  # those about the subject (the finding itself when one is focused)
    is_root: bool = False  # whether socktop reads as root: "run as root" is advice only when it does not

    @property
    def subject(self) -> str:
        """What the drawer is about: the focused pane's selection."""
        return SUBJECTS.get(self.focus, "state")


@dataclass(frozen=True, slots=True)
class Copyable:
    """A copy key's command, or why it has none here."""

    command: cmd.Command | None
    what: str  # e.g. "kill for pid 4242 leaky-api"
    why_not: str = ""
    extra: tuple[cmd.Command, ...] = field(default=())  # shown after it in the drawer (e.g. kill -KILL)


def level_value(levels: Sequence[Level], kind: str) -> str | None:
    return next((level.key for level in levels if level.kind == kind), None)


def _process_label(group: ProcessGroup) -> str:
    return f"pid {group.pid} {printable(group.name)}" if group.pid is not None else f"uid {group.uid}"


def _no_process(selection: Selection, action: str) -> Copyable | None:
    """Why ``action`` (kill, lsof) has nothing to act on, or None when a visible process is selected."""
    group = selection.process
    if group is None:
        return Copyable(None, action, "select a process first (pane 3)")
    if group.process is None:
        return Copyable(None, action, _not_visible(group, selection.is_root))
    return None


def _not_visible(group: ProcessGroup, is_root: bool) -> str:
    """Why a process row has no process to act on, saying only what is known: it exited, or no process
    visible here holds the sockets (as root permissions are not the reason, so root is not advised)."""
    kind, _, number = group.key.partition(":")
    if kind == "pid":
        return f"pid {number} has exited: there is no process to act on"
    if is_root:
        return f"no process visible here holds these sockets of uid {group.uid}, even as root"
    return f"the process of uid {group.uid} is not visible: run socktop as root"


def kill_command(selection: Selection) -> Copyable:
    group = selection.process
    if group is None or group.process is None:
        return _no_process(selection, "kill")  # type: ignore[return-value]
    term, kill = cmd.kill_commands(group.process.pid, group.process.name)
    return Copyable(term, f"kill for {_process_label(group)}", extra=(kill,))


def lsof_command(selection: Selection) -> Copyable:
    group = selection.process
    if group is None or group.process is None:
        return _no_process(selection, "lsof")  # type: ignore[return-value]
    state_key = level_value(selection.levels, STATE)
    return Copyable(cmd.lsof_sockets(group.process.pid, TcpState[state_key] if state_key else None),
                    f"lsof for {_process_label(group)}")


def ss_command(selection: Selection) -> Copyable:
    """`ss` for the sockets in view: the drill-down, and the text filter where ss can say it. When it
    cannot list exactly those, its title says so (the notification and the dialog show that title)."""
    state_key = level_value(selection.levels, STATE)
    state = TcpState[state_key] if state_key else None
    kwargs: dict[str, Any] = {}
    port_key = level_value(selection.levels, PORT)
    if port_key:
        direction, _, port = port_key.partition(":")
        kwargs["local_port" if direction == "in" else "remote_port"] = int(port)
    inexact: list[str] = []
    either_ports: list[int] = []
    either_addrs: list[str] = []
    process_key = level_value(selection.levels, PROCESS)
    if process_key:
        prefix, _, number = process_key.partition(":")
        if prefix == "pid":
            kwargs["pid"] = int(number)
        else:
            inexact.append(f"uid {number}")
    for prefix, value in selection.query.terms:
        if prefix == "state" and state is None:
            state = TcpState.parse(value)
        elif prefix == "pid" and "pid" not in kwargs:
            kwargs["pid"] = int(value)
        elif prefix == "port":
            either_ports.append(int(value))
        elif prefix == "addr" and full_address(value) is not None:
            either_addrs.append(value)
        else:
            inexact.append(f"{prefix}:{value}" if prefix else value)
    command = cmd.ss_sockets(state, either_ports=either_ports, either_addrs=either_addrs, **kwargs)
    in_view = f"{selection.in_view:,}"
    cannot = "ss cannot filter on " + ", ".join(printable(word) for word in inexact) if inexact else ""
    missed = selection.inferred_in_view if "pid" in kwargs else 0
    dropped = f"grep -F pid={kwargs.get('pid')}, drops the {missed:,} inferred (no pid in ss)" if missed else ""
    if cannot and dropped:
        what = f"ss: not the {in_view} in view: {cannot}; {dropped}"
    elif cannot:
        what = f"ss: lists more than the {in_view} in view: {cannot}"
    elif dropped:
        what = f"ss: lists fewer than the {in_view} in view: {dropped}"
    else:
        what = f"ss for the {in_view} sockets in view"
    if cannot or dropped:
        command = cmd.Command(command.line, f"{command.note}; " + "; ".join(filter(None, (cannot, dropped))))
    return Copyable(command, what)


def sysctl_command(selection: Selection) -> Copyable:
    """The first sysctl suggestion of the findings about the selection (runtime form; persistent after)."""
    if selection.subject == "state" and selection.state is None or (
            selection.subject == "finding" and selection.finding is None):
        return Copyable(None, "sysctl", f"select a {selection.subject} first (pane {PANE_NUMBERS[selection.focus]})")
    suggested = glue.suggestions(selection.findings)
    subject = "this finding" if selection.subject == "finding" else (
        selection.state.label if selection.subject == "state" and selection.state else "this selection")
    if not suggested:
        reason = f"no sysctl change suggested for {subject}"
        if selection.state is TcpState.CLOSE_WAIT and selection.subject == "state":
            reason += ": no setting ends CLOSE_WAIT, the owner must close()"
        elif not selection.findings:
            reason += ": nothing in this snapshot calls for one"
        return Copyable(None, "sysctl", reason)
    first = suggested[0]
    extra = [first.persistent] + [s.runtime for s in suggested[1:]]
    return Copyable(first.runtime, f"sysctl {first.key} {first.current} → {first.suggested}", extra=tuple(extra))


def commands_for(selection: Selection) -> dict[str, Copyable]:
    return {
        "kill": kill_command(selection),
        "sysctl": sysctl_command(selection),
        "ss": ss_command(selection),
        "lsof": lsof_command(selection),
    }


# --- the drawer's text ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Styles:
    title: Style = Style(bold=True)
    heading: Style = Style(bold=True)
    muted: Style = Style(dim=True)
    warning: Style = Style(bold=True)
    danger: Style = Style(bold=True)
    command: Style = Style(bold=True)
    key: Style = Style(bold=True, reverse=True)


class Doc:
    """The drawer being written: titles, labelled fields and bullets with hanging indents, commands."""

    def __init__(self, styles: Styles) -> None:
        self.parts: list[RenderableType] = []
        self.styles = styles

    def _grid(self, left: int) -> Table:
        grid = Table.grid(padding=(0, 1, 0, 0))
        grid.add_column(width=left, no_wrap=True)
        grid.add_column(ratio=1)
        return grid

    def title(self, text: str, style: Style | None = None) -> None:
        self.parts.append(Text(text, style or self.styles.title))

    def line(self, text: str, style: Style | str = "") -> None:
        self.parts.append(Text(text, style))

    def heading(self, text: str) -> None:
        self.parts.append(Text("\n" + text, self.styles.heading))

    def field(self, label: str, value: str | Text, style: Style | str = "") -> None:
        grid = self._grid(9)
        grid.add_row(Text(label, self.styles.muted), value if isinstance(value, Text) else Text(value, style))
        self.parts.append(grid)

    def bullet(self, text: str, mark: str = "•", style: Style | str = "") -> None:
        grid = self._grid(len(mark) + 1)
        grid.add_row(Text(" " + mark), Text(text, style))
        self.parts.append(grid)

    def bullets(self, heading: str, items: Iterable[str]) -> None:
        """A heading over plain bullets; nothing at all when there are no items."""
        items = list(items)
        if items:
            self.heading(heading)
            for item in items:
                self.bullet(item)

    def command(self, command: cmd.Command | str, indent: int = 3) -> None:
        line, note = (command.line, command.note) if isinstance(command, cmd.Command) else (command, "")
        grid = Table.grid(padding=(0, 1, 0, 0))
        grid.add_column(width=indent + 1, no_wrap=True, justify="right")
        grid.add_column(ratio=1)
        grid.add_row(Text("$", self.styles.muted), Text(line, self.styles.command))
        if note:
            grid.add_row("", Text(note, self.styles.muted))
        self.parts.append(grid)

    def key_line(self, key: str, text: str, style: Style | str = "") -> None:
        grid = Table.grid(padding=(0, 1, 0, 0))
        grid.add_column(no_wrap=True)
        grid.add_column(ratio=1)
        grid.add_row(Text(f" {key} ", self.styles.key), Text(text, style))
        self.parts.append(grid)

    def render(self) -> Group:
        return Group(*self.parts)


ACTION_KEYS = {"kill": "k", "sysctl": "y", "ss": "c", "lsof": "l"}


def _actions(doc: Doc, copyables: dict[str, Copyable], keys: dict[str, str], order: Sequence[str]) -> None:
    doc.heading("Copy (socktop never runs these)")
    for action in order:
        copyable = copyables[action]
        key = keys.get(action, ACTION_KEYS[action])
        if copyable.command is None:
            doc.key_line(key, f"{action}: {copyable.why_not}", doc.styles.muted)
            continue
        doc.key_line(key, copyable.what)
        doc.command(copyable.command)
        for extra in copyable.extra:
            doc.command(extra)


def _knowledge(doc: Doc, state: TcpState, snapshot: Snapshot, brief: bool = False) -> None:
    knowledge = knowledge_for(state)
    doc.field("Meaning", knowledge.meaning)
    if brief:
        return
    doc.field("Who", knowledge.side)
    doc.field("Lasts", knowledge.lifetime)
    doc.field("Normal", knowledge.normal_when)
    doc.field("Symptom", knowledge.symptom_when, doc.styles.warning)
    doc.bullets("Usual causes", knowledge.causes)
    if knowledge.remedies:
        doc.heading("What to do, most effective first")
        for number, remedy in enumerate(knowledge.remedies, 1):
            doc.bullet(remedy.action, f"{number}.")
            for line in remedy.commands:
                doc.command(line, indent=4)
    doc.bullets("What does not help", knowledge.not_fixes)
    doc.bullets("On this kernel", on_this_kernel(state, snapshot.kernel))
    if knowledge.sysctls:
        doc.heading("Settings now (socktop explain NAME)")
        kernel = snapshot.kernel
        for key in knowledge.sysctls:
            value = kernel.sysctls.get(key) if kernel else None
            doc.bullet(f"{key} = {value}" if value is not None else
                       f"{key}: {kernel.scope_note(key) if kernel else 'not read'}", "·")


def _suggestions(doc: Doc, findings: Sequence[Finding]) -> None:
    suggested = glue.suggestions(findings)
    if not suggested:
        return
    doc.heading("Suggested sysctls (from the findings)")
    for suggestion in suggested:
        doc.bullet(f"{suggestion.key}: {suggestion.current} → {suggestion.suggested}", "·", doc.styles.warning)
        doc.field("  why", suggestion.why)
        doc.field("  risk", suggestion.risk, doc.styles.muted)
        doc.command(suggestion.runtime)
        doc.command(suggestion.persistent)


def _findings_list(doc: Doc, findings: Sequence[Finding]) -> None:
    if not findings:
        return
    doc.heading("Findings")
    for finding in findings:
        doc.bullet(f"{finding.severity.value.upper()}  {printable(finding.title)}", "!",
                   doc.styles.danger if finding.severity.value == "critical" else doc.styles.warning)


def _finding(doc: Doc, finding: Finding, snapshot: Snapshot) -> None:
    tone = doc.styles.danger if finding.severity.value == "critical" else doc.styles.warning
    doc.title(f"{finding.severity.value.upper()}  {printable(finding.title)}", tone)
    doc.field("About", f"{finding.subject.kind} {printable(str(finding.subject))} · {finding.state.label}")
    doc.bullets("Evidence", map(printable, finding.evidence))
    doc.heading("Why")
    doc.line(printable(finding.cause))
    doc.heading("The sockets")
    doc.command(finding.ss)
    if finding.actions:
        doc.heading("What to run")
        for action in finding.actions:
            doc.command(action)
    _suggestions(doc, (finding,))


def describe(selection: Selection, snapshot: Snapshot | None, copyables: dict[str, Copyable], styles: Styles,
             keys: dict[str, str]) -> Group:
    """The drawer's content for the focused pane's selection."""
    doc = Doc(styles)
    if snapshot is None:
        doc.line("Waiting for the first refresh…", styles.muted)
        return doc.render()
    subject = selection.subject
    if subject == "finding" and selection.finding is not None:
        _finding(doc, selection.finding, snapshot)
        _actions(doc, copyables, keys, ("sysctl", "ss", "kill", "lsof"))
    elif subject == "process" and selection.process is not None:
        _process(doc, selection.process, snapshot)
        _findings_list(doc, selection.findings)
        _suggestions(doc, selection.findings)
        _actions(doc, copyables, keys, ("kill", "lsof", "ss", "sysctl"))
    elif subject == "port" and selection.port is not None:
        _port(doc, selection.port, snapshot)
        _findings_list(doc, selection.findings)
        _suggestions(doc, selection.findings)
        _actions(doc, copyables, keys, ("ss", "kill", "lsof", "sysctl"))
    elif subject == "socket" and selection.socket is not None:
        _socket(doc, selection.socket, snapshot)
        _actions(doc, copyables, keys, ("ss", "kill", "lsof", "sysctl"))
    elif subject == "state" and selection.state is not None:
        state = selection.state
        count = snapshot.aggregates.by_state.get(state, 0)
        total = snapshot.aggregates.total or 1
        tone = fmt.tone_of_state(state)
        doc.title(f"{state.label}  ·  {count:,} sockets ({fmt.share(count / total)})",
                  styles.warning if tone == "warning" else styles.danger if tone == "danger" else None)
        _findings_list(doc, selection.findings)
        _suggestions(doc, selection.findings)
        _knowledge(doc, state, snapshot)
        _actions(doc, copyables, keys, ("sysctl", "ss", "kill", "lsof"))
    else:
        doc.line("Nothing picked in this pane: move to a row, or press Enter on the row under the cursor.",
                 styles.muted)
    return doc.render()


def _counts(doc: Doc, counts: dict[TcpState, int], inferred: dict[TcpState, int] | None = None) -> None:
    inferred = inferred or {}
    parts = []
    for state in DISPLAY_STATES:
        held, guessed = counts.get(state, 0), inferred.get(state, 0)
        if held and guessed:
            parts.append(f"{state.label} {held:,} + {guessed:,} inferred")
        elif held or guessed:
            parts.append(f"{state.label} {held or guessed:,}" + (" (inferred)" if guessed else ""))
    doc.field("Sockets", ", ".join(parts) or "none")


def _process(doc: Doc, group: ProcessGroup, snapshot: Snapshot) -> None:
    process = group.process
    if process is None:
        doc.title(f"uid {group.uid} ({printable(group.user)}): process not visible")
        doc.line("socktop cannot see which process holds these sockets: run it as root to name it.",
                 doc.styles.muted)
        _counts(doc, group.counts)
        return
    doc.title(f"{printable(process.name)}  ·  pid {process.pid}")
    doc.field("Command", printable(process.cmdline) or "-")
    doc.field("User", f"{printable(process.user)} (uid {process.uid})")
    if process.fd_count is not None:
        limit = f" of {process.fd_limit:,}" if process.fd_limit else ""
        near = bool(process.fd_limit) and process.fd_count >= 0.8 * process.fd_limit
        doc.field("FDs", f"{process.fd_count:,}{limit} open", doc.styles.danger if near else "")
    _counts(doc, group.counts, group.inferred)
    if any(group.inferred.values()):
        doc.line("Inferred sockets have no descriptor, so no owner in the kernel (TIME-WAIT, connections "
                 "still in the accept queue, orphans): they are tied to this process by their port (its "
                 "listener) or their 4-tuple (it held the connection).", doc.styles.muted)
    if group.counts.get(TcpState.CLOSE_WAIT):
        doc.heading("Where is the missing close()?")
        doc.command(cmd.stack_dump(process))


def _port(doc: Doc, group: PortGroup, snapshot: Snapshot) -> None:
    where = "served here (local port)" if group.direction.value == "in" else "called out to (remote port)"
    doc.title(f":{group.port} {group.direction.value}  ·  {group.total:,} sockets")
    doc.field("Port", f"{group.port}, {where}")
    _counts(doc, group.counts)
    processes = snapshot.ownership.processes
    owners = [f"{pid} {printable(processes[pid].name)}" for pid in group.pids if pid in processes]
    doc.field("Owners", ", ".join(owners) or "none visible")


def _socket(doc: Doc, record: SocketRecord, snapshot: Snapshot) -> None:
    doc.title(f"{fmt.endpoint(record.local_addr, record.local_port)} → "
              f"{fmt.endpoint(record.remote_addr, record.remote_port)}")
    doc.field("State", record.state.label)
    doc.field("Queues", f"Recv-Q {record.recv_q}, Send-Q {record.send_q}")
    if record.timer.label:
        doc.field("Timer", f"{record.timer.label} {fmt.timer(record.timer_ms)}".strip())
    if record.retransmits:
        doc.field("Retrans", str(record.retransmits))
    doc.field("Inode", str(record.inode) if record.inode else "0 (no descriptor)")
    doc.field("Owner", owner_text(record, snapshot))
    _knowledge(doc, record.state, snapshot, brief=True)
    doc.heading("Abort this one connection")
    abort = cmd.ss_kill(record)
    if abort is None:
        doc.line(cmd.ss_kill_refusal(record), doc.styles.muted)
    else:
        doc.command(abort)


def owner_text(record: SocketRecord, snapshot: Snapshot) -> str:
    """Who holds ``record``, worded by how sure socktop is (`OwnerKind`): never a bare "nobody",
    which reads like the Unix user of that name."""
    attribution = snapshot.owners_of(record)
    names = ", ".join(f"{printable(p.name)} (pid {p.pid})" for p in attribution.processes)
    if attribution.kind is OwnerKind.DIRECT:
        return f"{names}, which holds its descriptor"
    if attribution.kind is OwnerKind.COOKIE:
        return f"{names}, which held it before it closed (exact: a refresh saw that process hold this socket cookie)"
    if attribution.kind is OwnerKind.INFERRED:
        if record.state is not TcpState.LISTEN and record.local_port in snapshot.aggregates.listening_ports:
            why = f"it listens on :{record.local_port}"
        else:
            why = "it held this connection before"
        return f"~{names}, inferred: the socket has no descriptor, {why}"
    if attribution.kind is OwnerKind.UNKNOWN:
        who = f"uid {record.uid}, user {printable(snapshot.user_of(record.uid))}"
        if snapshot.source.is_root:
            return f"no process visible here holds its descriptor, even as root ({who})"
        return f"a process socktop may not see ({who}): run as root to name it"
    return "no process (a TIME_WAIT or orphaned socket has none)"
