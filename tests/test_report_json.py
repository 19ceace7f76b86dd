"""`--json --sockets`: the streamed socket rows, made from columns, say what `Snapshot.owners_of` says."""

from __future__ import annotations

import io
import json

import pytest
from test_aggregate import random_case

from socktop import report
from socktop.collect.records import SocketRecord
from socktop.model.snapshot import Snapshot, SourceInfo


def snapshot_of(seed: int) -> Snapshot:
    case = random_case(seed)
    return Snapshot(1, 0.0, 0.0, 0.0, SourceInfo("h", "k", "netlink", "", True, ""), case.records, case.ownership,
                    case.aggregate())


def expected_row(snapshot: Snapshot, record: SocketRecord) -> dict:
    """One socket as the JSON schema describes it, one record at a time."""
    attribution = snapshot.owners_of(record)
    return {
        "state": record.state.name, "family": 6 if record.family == 10 else 4,
        "local": record.local_addr, "local_port": record.local_port,
        "remote": record.remote_addr, "remote_port": record.remote_port,
        "recv_q": record.recv_q, "send_q": record.send_q, "timer": record.timer.label or None,
        "timer_ms": record.timer_ms, "retransmits": record.retransmits, "uid": record.uid, "inode": record.inode,
        "lastack_ms": None if record.lastack_ms < 0 else record.lastack_ms, "cgroup_id": record.cgroup_id or None,
        "netns": record.netns, "container": None,  # no Containers grouping in a constructed snapshot
        "pids": [process.pid for process in attribution.processes], "owner": attribution.kind.value,
    }


@pytest.mark.parametrize("seed", range(40))
def test_streamed_rows_match_one_record_at_a_time(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "SOCKET_BATCH", 7)  # many batches
    snapshot = snapshot_of(seed)
    out = io.StringIO()
    report.write_json(out, snapshot, {}, True)
    document = json.loads(out.getvalue(), parse_constant=pytest.fail)  # strict: NaN and Infinity fail
    repeated = {record.four_tuple for record in snapshot.sockets
                if sum(other.four_tuple == record.four_tuple for other in snapshot.sockets) > 1}
    assert len(document["sockets"]) == len(snapshot.sockets)
    for row, record in zip(document["sockets"], snapshot.sockets):
        if record.four_tuple not in repeated:  # owners_of looks a 4-tuple up in the table, held twins included
            assert row == expected_row(snapshot, record)


@pytest.mark.parametrize("seed", range(10))
def test_socket_rows_are_the_text_the_json_module_writes(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are formatted from pre-encoded pieces, not encoded as dicts: byte for byte what json would write."""
    monkeypatch.setattr(report, "SOCKET_BATCH", 5)
    batches = list(report.socket_batches(snapshot_of(seed)))
    assert batches
    for batch in batches:
        rows = json.loads(f"[{batch}]", parse_constant=pytest.fail)
        assert all(list(row) == list(report.SOCKET_FIELDS) for row in rows)
        assert json.dumps(rows, ensure_ascii=False, allow_nan=False) == f"[{batch}]"


def test_without_sockets_the_document_has_none() -> None:
    document = json.loads(report.render_json(snapshot_of(1), {}, False))
    assert "sockets" not in document and document["schema"] == report.JSON_SCHEMA
