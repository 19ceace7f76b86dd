"""The columnar table: records built on demand equal the records it was made of; sorts are argsorts
that agree with `sorted` on records."""

from __future__ import annotations

import numpy as np
import pytest
from test_aggregate import random_case

import socktop.collect.columns as columns_module
from socktop.collect.columns import SocketColumns, SocketTable, table_of
from socktop.model.snapshot import Snapshot, SourceInfo
from socktop.ui.view import SOCKET_SORTS, sort_sockets


@pytest.mark.parametrize("seed", range(30))
def test_a_table_gives_back_the_records_it_was_made_of(seed: int) -> None:
    records = random_case(seed).records
    table = SocketTable(SocketColumns.from_records(records))
    assert table[:] == records and list(table) == records
    if records:
        assert table[len(records) // 2] == records[len(records) // 2] and table[-1] == records[-1]
    picked = [index for index in range(len(records)) if index % 3 == 0]
    assert list(table.take(np.array(picked, np.int64))) == [records[index] for index in picked]


@pytest.mark.parametrize("seed", range(60))
def test_sorting_the_columns_sorts_as_the_records_sort(seed: int) -> None:
    case = random_case(seed)
    snapshot = Snapshot(1, 0.0, 0.0, 0.0, SourceInfo("h", "k", "netlink", "", True, ""), table_of(case.records),
                        case.ownership, case.aggregate())
    for column in [*SOCKET_SORTS, "unknown"]:
        for reverse in (False, True):
            expected = sorted(case.records, key=SOCKET_SORTS.get(column, SOCKET_SORTS["state"]), reverse=reverse)
            assert list(sort_sockets(snapshot, snapshot.sockets, column, reverse)) == expected, (column, reverse)


def test_rows_are_grouped_by_their_values_even_when_hashes_collide(monkeypatch) -> None:
    """`group_rows` groups by a 64-bit hash and checks every row against its group's first: when
    hashes collide (forced here: one hash for all), the packed values are sorted instead."""
    addresses = np.array([columns_module.address_raw(text) for text in ("10.0.0.1", "10.0.0.2", "10.0.0.1", "::1")],
                         columns_module.ADDRESS)
    ports = np.array([80, 80, 80, 80], np.uint16)

    def groups() -> list[list[int]]:
        inverse, first, sizes = columns_module.group_rows([addresses, ports])
        assert sorted(sizes.tolist()) == [1, 1, 2] and all(inverse[first] == np.arange(len(first)))
        return sorted(np.flatnonzero(inverse == group).tolist() for group in range(len(first)))

    assert groups() == [[0, 2], [1], [3]]
    monkeypatch.setattr(columns_module, "hashes_of", lambda arrays: np.zeros(len(arrays[0]), np.uint64))
    assert groups() == [[0, 2], [1], [3]]
    empty = columns_module.group_rows([addresses[:0], ports[:0]])
    assert all(len(part) == 0 for part in empty)
    assert len(columns_module.hashes_of([addresses[:0], ports[:0]])) == 0  # an empty view hashes to nothing
