"""The non-interactive outputs: a Rich summary (`--once`) and a versioned JSON document (`--json`).

Both render the same snapshot the TUI shows, with the analysis of it
(findings most severe first, the sysctl context) when one is given;
neither imports Textual, and the JSON path does not import Rich.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import socket
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from itertools import repeat
from typing import Any, TextIO

import numpy as np

from .analyze.commands import Command
from .analyze.findings import Analysis, Finding
from .analyze.sysctl import Suggestion
from .collect.columns import ADDRESSES
from .collect.records import DISPLAY_STATES, STATE_BY_CODE, TcpState, TimerKind
from .model.aggregate import OwnerKind, ProcessGroup, RowKind, StateCounts
from .model.churn import ChurnGroup
from .collect.nswatch import NamespaceInfo
from .model.places import Place
from .model.snapshot import Snapshot, coverage_text, plural
from .safetext import printable

JSON_SCHEMA = "socktop/1"


def state_dict(counts: StateCounts) -> dict[str, int]:
    """Counts keyed by kernel state name, in reading order, zeros left out."""
    return {state.name: counts[state] for state in DISPLAY_STATES if counts.get(state)}


def process_dict(group: ProcessGroup) -> dict[str, Any]:
    process = group.process
    return {
        "key": group.key,
        "pid": group.pid,
        "name": process.name if process else None,
        "cmdline": process.cmdline if process else None,
        "user": group.user,
        "uid": group.uid,
        "total": group.total,
        "by_state": state_dict(group.counts),
        "inferred": state_dict(group.inferred),
        "inferred_time_wait": group.inferred_time_wait,
        "fds": process.fd_count if process else None,
        "tcp_fds": process.tcp_fds if process else None,
        "fd_limit": process.fd_limit if process else None,
    }


SOCKET_FIELDS = ("state", "family", "local", "local_port", "remote", "remote_port", "recv_q", "send_q", "timer",
                 "timer_ms", "retransmits", "uid", "inode", "lastack_ms", "cgroup_id", "netns", "container", "pids",
                 "owner")
SOCKET_BATCH = 4096  # sockets written at a time: memory stays flat however many there are
# One `sockets` row as the json module writes a dict of SOCKET_FIELDS (", " and ": " between items): the
# text fields come pre-encoded (addresses are inet_ntop's digits, dots and colons: nothing to escape).
SOCKET_ROW = "{" + ", ".join(f'"{name}": ' + ('"%s"' if name in ("local", "remote") else "%s")
                             for name in SOCKET_FIELDS) + "}"
_STATE_NAMES = [STATE_BY_CODE[code].name if code in STATE_BY_CODE else str(code) for code in range(256)]
_TIMER_LABELS = [TimerKind(code).label or None if code <= 4 else None for code in range(256)]
_FAMILY_NUMBERS = {socket.AF_INET: 4, socket.AF_INET6: 6}
_UNKNOWN_AS_NULL = ({-1: "null"}, {0: "null"})  # lastack_ms -1 and cgroup_id 0 mean "not known"


def socket_batches(snapshot: Snapshot) -> Iterator[str]:
    """The `sockets` field, `SOCKET_BATCH` rows at a time as JSON text (rows separated by ", "), made from
    the columns: no `SocketRecord` and no dict per socket, every repeated text encoded once.

    Owners as `Snapshot.owners_of` gives them: the pids of processes
    still known (any the cookie ledger names), and how they were tied.
    """
    columns = snapshot.columns
    owners = snapshot.row_owners()
    known = snapshot.ownership.processes
    pairs, index = np.unique(owners.kinds.astype(np.int64) << 32 | owners.codes, return_inverse=True)
    pid_lists, owner_kinds = [], []
    for pair in pairs.tolist():
        kind, pids = RowKind.OWNER_KINDS[pair >> 32], owners.pid_sets[pair & 0xFFFFFFFF]
        pid_lists.append(_encode([pid for pid in pids if pid in known or kind is OwnerKind.COOKIE]))
        owner_kinds.append(_encode(kind.value))
    index = index.reshape(-1)
    lastack, cgroup = _UNKNOWN_AS_NULL
    states, timers = list(map(_encode, _STATE_NAMES)), list(map(_encode, _TIMER_LABELS))
    place_keys = [_encode(slot.key) for slot in snapshot.place_slots] + ["null"]  # code -1: a namespace not read
    codes = snapshot.place_codes if snapshot.place_codes is not None else np.full(len(columns), -1, np.int64)
    for start in range(0, len(columns), SOCKET_BATCH):
        rows = slice(start, start + SOCKET_BATCH)
        pair = index[rows].tolist()
        lastack_ms, cgroup_id = columns.lastack_ms[rows].tolist(), columns.cgroup_id[rows].tolist()
        values = zip(
            map(states.__getitem__, columns.state[rows].tolist()),
            map(_FAMILY_NUMBERS.get, columns.family[rows].tolist(), repeat(6)),
            ADDRESSES.texts(columns.local_addr[rows].tolist()), columns.local_port[rows].tolist(),
            ADDRESSES.texts(columns.remote_addr[rows].tolist()), columns.remote_port[rows].tolist(),
            columns.recv_q[rows].tolist(), columns.send_q[rows].tolist(),
            map(timers.__getitem__, columns.timer[rows].tolist()), columns.timer_ms[rows].tolist(),
            columns.retransmits[rows].tolist(), columns.uid[rows].tolist(), columns.inode[rows].tolist(),
            map(lastack.get, lastack_ms, lastack_ms), map(cgroup.get, cgroup_id, cgroup_id),
            columns.netns[rows].tolist(), map(place_keys.__getitem__, codes[rows].tolist()),
            map(pid_lists.__getitem__, pair), map(owner_kinds.__getitem__, pair),
        )
        yield ", ".join(map(SOCKET_ROW.__mod__, values))


def place_dict(place: Place) -> dict[str, Any]:
    """One row of the Containers grouping (names are the containers' own: untrusted text)."""
    container = place.container
    return {
        "key": place.key, "label": place.label, "kind": place.kind, "netns": place.netns,
        "netns_label": place.namespace.label, "total": place.total, "by_state": state_dict(place.counts),
        "closes": place.closes,
        "ports": [{"key": key, "sockets": count} for key, count in place.ports],
        "processes": [{"key": key, "sockets": count} for key, count in place.processes],
        "container": None if container is None else {
            "kind": container.kind, "name": container.name, "runtime": container.runtime or None,
            "id": container.container_id or None, "pod_uid": container.pod_uid or None,
            "pod_namespace": container.pod_namespace or None},
    }


def namespace_dict(info: NamespaceInfo) -> dict[str, Any]:
    """One network namespace read (or not: ``note`` says why); its own settings when not socktop's."""
    namespace, kernel = info.namespace, info.kernel
    own_settings = kernel is not None and not namespace.own
    return {
        "inode": namespace.inode, "label": info.label, "own": namespace.own, "pid": namespace.pid,
        "names": list(namespace.names), "read": not info.note, "note": info.note or None,
        "settings": dict(kernel.sysctls) if own_settings else None,
        "host_wide_settings": sorted(kernel.host_wide) if own_settings else None,
    }


def _place_order(place: Place) -> tuple[bool, int, str]:
    return (place.kind != "host", -place.total, place.key)


def command_dict(command: Command) -> dict[str, str]:
    return {"command": command.line, "note": command.note}


def suggestion_dict(suggestion: Suggestion) -> dict[str, Any]:
    return {
        "key": suggestion.key, "current": suggestion.current, "suggested": suggestion.suggested,
        "why": suggestion.why, "risk": suggestion.risk,
        "runtime": suggestion.runtime.line, "persistent": suggestion.persistent.line,
    }


def finding_dict(finding: Finding) -> dict[str, Any]:
    key = finding.subject.key
    return {
        "id": finding.id,
        "kind": finding.kind,
        "severity": finding.severity.value,
        "title": finding.title,
        "subject": {"kind": finding.subject.kind, "key": key.name if isinstance(key, TcpState) else key},
        "state": finding.state.name,
        "evidence": list(finding.evidence),
        "metrics": dict(finding.metrics),
        "ss": finding.ss.line,
        "cause": finding.cause,
        "actions": [command_dict(command) for command in finding.actions],
        "suggestions": [suggestion_dict(suggestion) for suggestion in finding.suggestions],
    }


def analysis_fields(analysis: Analysis) -> dict[str, Any]:
    """The `--json` fields the analysis adds: findings, sysctl context, thresholds."""
    context = analysis.sysctl
    return {
        "findings": [finding_dict(finding) for finding in analysis.findings],
        "sysctl": {
            "settings": {reading.key: reading.value for reading in context.readings},
            "counter_rates": {rate.name: {"per_second": None if rate.per_second is None else round(rate.per_second, 3),
                                          "over_seconds": round(rate.over_seconds, 1), "meaning": rate.note}
                              for rate in context.rates},
            "suggestions": [suggestion_dict(suggestion) for suggestion in context.suggestions],
            "note": context.note or None,
        },
        "thresholds": dataclasses.asdict(analysis.thresholds),
    }


def snapshot_document(snapshot: Snapshot, filters: dict[str, Any], analysis: Analysis | None = None) -> dict[str, Any]:
    """The `--json` document but its `sockets` (see `write_json`); its fields are documented in the README
    (schema socktop/1)."""
    aggregates = snapshot.aggregates
    source = snapshot.source
    document: dict[str, Any] = {
        "schema": JSON_SCHEMA,
        "host": source.host,
        "kernel": source.kernel,
        "time": datetime.fromtimestamp(snapshot.taken_at, timezone.utc).isoformat(timespec="milliseconds"),
        "backend": source.backend,
        "backend_note": source.backend_note or None,
        "root": source.is_root,
        "netns": source.netns,
        "filters": filters,
        "coverage": {
            "sockets_with_inode": aggregates.with_inode,
            "owned": aggregates.owned,
            "ratio": round(aggregates.coverage, 4),
            "note": source.owner_note or None,
        },
        "totals": {"sockets": aggregates.total, "by_state": state_dict(aggregates.by_state)},
        "ports": [
            {"port": g.port, "direction": g.direction.value, "total": g.total,
             "by_state": state_dict(g.counts), "pids": list(g.pids)}
            for g in sorted(aggregates.by_port.values(), key=lambda g: (-g.total, g.port))
        ],
        "processes": [process_dict(g) for g in sorted(aggregates.by_process.values(), key=_process_order)],
        "remote_hosts": [
            {"address": g.address, "total": g.total, "by_state": state_dict(g.counts)}
            for g in sorted(aggregates.by_remote.values(), key=lambda g: (-g.total, g.address))
        ],
    }
    document["churn"] = churn_dict(snapshot)
    document["namespaces"] = [namespace_dict(info) for info in snapshot.namespaces]
    document["containers"] = [place_dict(place) for place in sorted(snapshot.places.values(), key=_place_order)]
    if analysis is not None:
        document.update(analysis_fields(analysis))
    return document


CHURN_ROWS = 50  # per kind of group in `--json`: the busiest


def churn_dict(snapshot: Snapshot) -> dict[str, Any]:
    """The `churn` field: closes and opens from the destroy feed, rates when refreshes were sampled."""
    churn = snapshot.churn
    if churn is None:
        return {"available": False, "note": snapshot.source.churn_note or None}

    def rate(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    def rows(groups: Mapping[str, ChurnGroup]) -> list[ChurnGroup]:
        return sorted(groups.values(), key=lambda g: (-g.closes, g.key))[:CHURN_ROWS]

    return {
        "available": True,
        "closes": churn.closes, "opens": churn.opens, "unseen": churn.unseen,
        "window_s": round(churn.seconds, 2),
        "closes_per_s": rate(churn.closes_per_second), "opens_per_s": rate(churn.opens_per_second),
        "overruns": churn.overruns,
        "ports": [{"port": int(g.key.partition(":")[2]), "direction": g.key.partition(":")[0], "closes": g.closes,
                   "per_s": rate(g.per_second if churn.seconds else None)} for g in rows(churn.by_port)],
        "remote_hosts": [{"address": g.key, "closes": g.closes, "per_s": rate(g.per_second if churn.seconds else None)}
                         for g in rows(churn.by_remote)],
        "processes": [{"key": g.key, "pid": int(g.key.partition(":")[2]), "closes": g.closes, "exact": g.exact,
                       "inferred": g.inferred, "per_s": rate(g.per_second if churn.seconds else None)}
                      for g in rows(churn.by_process)],
        "time_wait_by_cookie": len(churn.time_wait_owners),
    }


def churn_line(snapshot: Snapshot) -> str:
    """One line on connections closed and opened: rates and the busiest port groups, or why there are none."""
    churn = snapshot.churn
    if churn is None:
        return f"churn: {snapshot.source.churn_note or 'not counted'}"
    if not churn.seconds:
        return "churn: closes and opens need two refreshes (--sample SECONDS)"
    busiest = sorted(churn.by_port.values(), key=lambda g: (-g.closes, g.key))[:3]
    lost = f"; events lost {churn.overruns} times (lower bounds)" if churn.overruns else ""
    return (f"churn: {churn.closes_per_second or 0:.1f} closes/s, {churn.opens_per_second or 0:.1f} opens/s over "
            f"{churn.seconds:.0f} s" + (": " + ", ".join(f"{g.key} {g.per_second:.1f}/s" for g in busiest)
                                        if busiest else "") + lost)


def _process_order(group: ProcessGroup) -> tuple[int, str]:
    return (-group.total, group.key)  # total counts held and inferred sockets alike


def render_json(snapshot: Snapshot, filters: dict[str, Any], with_sockets: bool,
                analysis: Analysis | None = None) -> str:
    out = io.StringIO()
    write_json(out, snapshot, filters, with_sockets, analysis)
    return out.getvalue()


def write_json(out: TextIO, snapshot: Snapshot, filters: dict[str, Any], with_sockets: bool,
               analysis: Analysis | None = None) -> None:
    """The `--json` document, strict JSON (no NaN), written as it is made.

    The document is indented, one field per line; `sockets`, when asked
    for, comes last and is streamed in batches (compact, one line each),
    so 200,000 sockets never stand in memory as text or as dicts at once.
    Large parts go through the json module's C encoder, which it uses only
    without indentation.
    """
    document = snapshot_document(snapshot, filters, analysis)
    fields = iter(document.items())
    out.write("{")
    for number, (key, value) in enumerate(fields):
        out.write(f'{"," if number else ""}\n {_encode(key)}: {_encode_field(value)}')
    if with_sockets:
        out.write(f',\n {_encode("sockets")}: [')
        for number, batch in enumerate(socket_batches(snapshot)):
            out.write(("," if number else "") + "\n  " + batch)
        out.write("\n ]")
    out.write("\n}\n")


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _encode(value: Any) -> str:
    """Compact strict JSON through the C encoder; a NaN or an infinity (JSON has neither) becomes null."""
    try:
        return _ENCODER.encode(value)
    except ValueError:
        return _ENCODER.encode(finite(value))


def _encode_field(value: Any) -> str:
    """A top-level field: a list one item per line, anything else on one line."""
    if isinstance(value, list) and value:
        return "[\n  " + ",\n  ".join(map(_encode, value)) + "\n ]"
    return _encode(value)


def finite(value: Any) -> Any:
    """``value`` with every NaN and infinity (which JSON cannot hold) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def phrase_lines(phrases: Sequence[str], width: int, separator: str = "  ") -> list[str]:
    """Phrases joined on lines of at most ``width`` columns, broken between phrases, never inside one."""
    lines: list[str] = []
    for phrase in phrases:
        if lines and len(lines[-1]) + len(separator) + len(phrase) <= width:
            lines[-1] += separator + phrase
        else:
            lines.append(phrase if not lines else "  " + phrase)
    return lines


TOP_ROWS = 10


def render_summary(snapshot: Snapshot, width: int | None = None, analysis: Analysis | None = None,
                   filtered: bool = False) -> str:
    """The `--once` summary as plain text with Rich tables (untrusted names stay text); counts as the header
    writes them (1,486); no sockets at all is one line, not three empty tables."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=width, record=True, force_terminal=False, color_system=None, file=io.StringIO())
    aggregates = snapshot.aggregates
    source = snapshot.source
    for line in phrase_lines(("socktop", source.host, source.kernel, f"backend {source.backend}",
                              plural(aggregates.total, "socket"), f"netns {printable(source.netns)}",
                              f"owners {coverage_text(aggregates.coverage)}, {source.owner_note}"
                              if source.owner_note else "all owners visible"), console.width):
        console.print(Text(line), overflow="fold")
    if source.backend_note:
        console.print(Text(f"note: {source.backend_note}"))
    console.print(Text(churn_line(snapshot)))
    if not aggregates.total:
        console.print(Text("no TCP sockets match the filters" if filtered else
                           "no TCP sockets in this network namespace" if source.netns == "self" else
                           "no TCP sockets in the network namespaces read"))
        if analysis is not None:
            _print_analysis(console, analysis)
        return console.export_text()

    states = Table(title="By state", title_justify="left")
    states.add_column("state")
    states.add_column("count", justify="right")
    states.add_column("share", justify="right")
    for state in DISPLAY_STATES:
        count = aggregates.by_state.get(state, 0)
        if count:
            states.add_row(state.label, f"{count:,}", f"{count / aggregates.total:.0%}")
    console.print(states)

    ports = Table(title=f"Top ports (of {len(aggregates.by_port)})", title_justify="left")
    for column, justify in (("port", "right"), ("dir", "left"), ("total", "right"), ("states", "left"), ("processes", "left")):
        ports.add_column(column, justify=justify)  # type: ignore[arg-type]
    for group in sorted(aggregates.by_port.values(), key=lambda g: (-g.total, g.port))[:TOP_ROWS]:
        names = ", ".join(_process_label(snapshot, pid) for pid in group.pids[:3])
        ports.add_row(str(group.port), group.direction.value, f"{group.total:,}",
                      Text(_states_text(group.counts)), Text(names))
    console.print(ports)

    processes = Table(title=f"Top processes (of {len(aggregates.by_process)})", title_justify="left")
    for column, justify in (("pid", "right"), ("name", "left"), ("user", "left"), ("total", "right"),
                            ("states", "left"), ("inferred", "left"), ("fds/limit", "right")):
        processes.add_column(column, justify=justify)  # type: ignore[arg-type]
    for group in sorted(aggregates.by_process.values(), key=_process_order)[:TOP_ROWS]:
        process = group.process
        limit = f"{process.fd_limit:,}" if process and process.fd_limit else "∞"
        fds = f"{process.fd_count:,}/{limit}" if process and process.fd_count is not None else ""
        processes.add_row(
            str(group.pid or ""), Text(printable(group.name if process else f"(unknown, uid {group.uid})")),
            Text(printable(group.user)), f"{group.total:,}", Text(_states_text(group.counts)),
            Text(_states_text(group.inferred)), fds,
        )
    console.print(processes)
    if len(snapshot.places) > 1 or any(place.kind != "host" for place in snapshot.places.values()):
        console.print(_containers_table(snapshot))
    if analysis is not None:
        _print_analysis(console, analysis)
    return console.export_text()


def _containers_table(snapshot: Snapshot) -> Any:
    """The Containers grouping: one row per namespace, or per container, pod or service in socktop's own."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"Containers (of {len(snapshot.places)})", title_justify="left")
    for column, justify in (("container", "left"), ("netns", "right"), ("total", "right"), ("states", "left"),
                            ("top ports", "left"), ("processes", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for place in sorted(snapshot.places.values(), key=_place_order)[:TOP_ROWS]:
        names = ", ".join(_process_label(snapshot, int(key[4:])) for key, _ in place.processes[:3]
                          if key.startswith("pid:"))
        table.add_row(Text(printable(place.label)), str(place.netns), f"{place.total:,}",
                      Text(_states_text(place.counts)), ", ".join(key for key, _ in place.ports[:3]), Text(names))
    return table


def _print_analysis(console: Any, analysis: Analysis) -> None:
    """Findings most severe first, then the settings, counter rates and suggested changes.

    Command lines are never wrapped, so that a copied line is the whole command.
    """
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    def indented(line: str) -> None:
        console.print(Padding(Text(line), (0, 0, 0, 9)))

    def headed(head: str, line: str) -> None:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=8)
        grid.add_column()
        grid.add_row(head, Text(line))
        console.print(grid)

    def command(line: str) -> None:
        console.print(Text(f"         $ {line}"), soft_wrap=True)

    console.print(Text(f"Findings ({len(analysis.findings)}, most severe first; host-wide, filters do not apply)"
                       if analysis.findings else "Findings: none"))
    for finding in analysis.findings:
        headed(finding.severity.value.upper(), finding.title)
        for line in (*finding.evidence, f"cause: {finding.cause}"):
            indented(line)
        for action in (finding.ss, *finding.actions):
            command(action.line)
    settings = Table(title="Kernel settings", title_justify="left")
    settings.add_column("setting")
    settings.add_column("value")
    for reading in analysis.sysctl.readings:
        settings.add_row(reading.key, reading.value if reading.value is not None else f"({reading.note})")
    console.print(settings)
    rates = [rate for rate in analysis.sysctl.rates if rate.per_second is not None]
    console.print(Text("Counter rates: " + (", ".join(f"{r.name} {r.per_second:.1f}/s" for r in rates)
                                            if rates else "need two snapshots (use --sample SECONDS)")))
    for suggestion in analysis.sysctl.suggestions:
        headed("SUGGEST", f"{suggestion.key}: {suggestion.current} -> {suggestion.suggested}")
        for line in (f"why: {suggestion.why}", f"risk: {suggestion.risk}"):
            indented(line)
        command(suggestion.runtime.line)
        command(suggestion.persistent.line)


def _states_text(counts: StateCounts) -> str:
    return " ".join(f"{state.label} {counts[state]:,}" for state in DISPLAY_STATES if counts.get(state))


def _process_label(snapshot: Snapshot, pid: int) -> str:
    process = snapshot.process(pid)
    return printable(f"{process.name}[{pid}]" if process else str(pid))
