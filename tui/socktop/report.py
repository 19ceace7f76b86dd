"""The non-interactive outputs: a Rich summary (`--once`) and a versioned JSON document (`--json`).

Both render the same snapshot the TUI shows; neither imports Textual.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from .collect.records import DISPLAY_STATES, SocketRecord
from .model.aggregate import ProcessGroup, StateCounts
from .model.snapshot import Snapshot
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
        "inferred_time_wait": group.inferred_time_wait,
        "fds": process.fd_count if process else None,
        "fd_limit": process.fd_limit if process else None,
    }


def socket_dict(snapshot: Snapshot, record: SocketRecord) -> dict[str, Any]:
    attribution = snapshot.owners_of(record)
    return {
        "state": record.state.name,
        "family": 6 if record.family == 10 else 4,
        "local": record.local_addr,
        "local_port": record.local_port,
        "remote": record.remote_addr,
        "remote_port": record.remote_port,
        "recv_q": record.recv_q,
        "send_q": record.send_q,
        "timer": record.timer.label or None,
        "timer_ms": record.timer_ms,
        "retransmits": record.retransmits,
        "uid": record.uid,
        "inode": record.inode,
        "pids": [p.pid for p in attribution.processes],
        "owner": attribution.kind.value,
    }


def snapshot_document(snapshot: Snapshot, filters: dict[str, Any], with_sockets: bool) -> dict[str, Any]:
    """The `--json` document; its fields are documented in the README (schema socktop/1)."""
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
    if with_sockets:
        document["sockets"] = [socket_dict(snapshot, record) for record in snapshot.sockets]
    return document


def _process_order(group: ProcessGroup) -> tuple[int, str]:
    return (-(group.total + group.inferred_time_wait), group.key)


def render_json(snapshot: Snapshot, filters: dict[str, Any], with_sockets: bool) -> str:
    return json.dumps(snapshot_document(snapshot, filters, with_sockets), indent=1, ensure_ascii=False)


TOP_ROWS = 10


def render_summary(snapshot: Snapshot, width: int | None = None) -> str:
    """The `--once` summary as plain text with Rich tables (untrusted names stay text)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=width, record=True, force_terminal=False, color_system=None, file=_NullFile())
    aggregates = snapshot.aggregates
    source = snapshot.source
    console.print(Text(
        f"socktop  {source.host}  {source.kernel}  backend {source.backend}  "
        f"{aggregates.total} sockets  {source.owner_note or 'all owners visible'}"
    ))
    if source.backend_note:
        console.print(Text(f"note: {source.backend_note}"))

    states = Table(title="By state", title_justify="left")
    states.add_column("state")
    states.add_column("count", justify="right")
    states.add_column("share", justify="right")
    for state in DISPLAY_STATES:
        count = aggregates.by_state.get(state, 0)
        if count:
            states.add_row(state.label, str(count), f"{count / aggregates.total:.0%}")
    console.print(states)

    ports = Table(title=f"Top ports (of {len(aggregates.by_port)})", title_justify="left")
    for column, justify in (("port", "right"), ("dir", "left"), ("total", "right"), ("states", "left"), ("processes", "left")):
        ports.add_column(column, justify=justify)  # type: ignore[arg-type]
    for group in sorted(aggregates.by_port.values(), key=lambda g: (-g.total, g.port))[:TOP_ROWS]:
        names = ", ".join(_process_label(snapshot, pid) for pid in group.pids[:3])
        ports.add_row(str(group.port), group.direction.value, str(group.total),
                      Text(_states_text(group.counts)), Text(names))
    console.print(ports)

    processes = Table(title=f"Top processes (of {len(aggregates.by_process)})", title_justify="left")
    for column, justify in (("pid", "right"), ("name", "left"), ("user", "left"), ("total", "right"),
                            ("states", "left"), ("TW inferred", "right"), ("fds/limit", "right")):
        processes.add_column(column, justify=justify)  # type: ignore[arg-type]
    for group in sorted(aggregates.by_process.values(), key=_process_order)[:TOP_ROWS]:
        process = group.process
        fds = f"{process.fd_count}/{process.fd_limit or '∞'}" if process and process.fd_count is not None else ""
        processes.add_row(
            str(group.pid or ""), Text(printable(group.name if process else f"(unknown, uid {group.uid})")),
            Text(printable(group.user)), str(group.total), Text(_states_text(group.counts)),
            str(group.inferred_time_wait or ""), fds,
        )
    console.print(processes)
    return console.export_text()


class _NullFile:
    """Rich needs a file to print to; `export_text` gives us the text instead."""

    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def _states_text(counts: StateCounts) -> str:
    return " ".join(f"{state.label} {counts[state]}" for state in DISPLAY_STATES if counts.get(state))


def _process_label(snapshot: Snapshot, pid: int) -> str:
    process = snapshot.process(pid)
    return printable(f"{process.name}[{pid}]" if process else str(pid))
