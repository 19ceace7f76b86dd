"""The socket table as columns: one numpy array per `SocketRecord` field.

A refresh reads up to 200,000 sockets; a Python object per socket costs
more than the kernel takes to list them. Backends fill these arrays, the
aggregates group over them, and `SocketRecord`s are made only for the rows
something shows (`SocketTable`).

Addresses are kept as their 16 raw bytes, IPv4 as IPv4-mapped IPv6
(``::ffff:a.b.c.d``), so that a peer reached over both families is one key
and is shown as IPv4 either way; text is made only when a record is built.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from itertools import repeat
from typing import Any, overload

import numpy as np

from .records import STATE_BY_CODE, SocketRecord, TcpState, TimerKind

ADDRESS = np.dtype("V16")
V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"

#: The dtype of each column, in `SocketRecord` field order.
DTYPES: dict[str, np.dtype] = {
    "family": np.dtype(np.uint8), "state": np.dtype(np.uint8),
    "local_addr": ADDRESS, "local_port": np.dtype(np.uint16),
    "remote_addr": ADDRESS, "remote_port": np.dtype(np.uint16),
    "recv_q": np.dtype(np.uint32), "send_q": np.dtype(np.uint32),
    "timer": np.dtype(np.uint8), "timer_ms": np.dtype(np.uint32), "retransmits": np.dtype(np.uint8),
    "uid": np.dtype(np.int64), "inode": np.dtype(np.uint64), "cookie": np.dtype(np.uint64),
    "lastack_ms": np.dtype(np.int64), "cgroup_id": np.dtype(np.uint64), "netns": np.dtype(np.uint64),
}
assert tuple(DTYPES) == SocketRecord._fields

_STATES: list[TcpState | None] = [STATE_BY_CODE.get(code) for code in range(256)]  # codes as stored
_TIMERS: list[TimerKind] = [TimerKind(code) if code <= 4 else TimerKind.NONE for code in range(256)]
_FAMILIES: list[int] = [socket.AF_INET if code == socket.AF_INET else socket.AF_INET6 if code == socket.AF_INET6
                        else code for code in range(256)]  # records carry socket.AddressFamily members


class AddressText:
    """Raw 16-byte addresses → text, cached: a busy host talks to a few thousand peers,
    and converting 50,000 addresses anew would cost more than the whole parse."""

    __slots__ = ("cache", "raw_cache")

    MAX_ENTRIES = 200_000  # bounds memory on a host that talks to every address

    def __init__(self) -> None:
        self.cache: dict[bytes, str] = {}
        self.raw_cache: dict[str, bytes] = {}

    def raws(self, texts: Sequence[str]) -> list[bytes]:
        """The 16-byte keys of addresses given as text (the backends that read text)."""
        return _converted(self.raw_cache, texts, address_raw, self.MAX_ENTRIES)

    def text(self, raw: bytes) -> str:
        """The text of one 16-byte address."""
        found = self.cache.get(raw)
        return found if found is not None else self.texts([raw])[0]

    def texts(self, raw: Sequence[bytes]) -> list[str]:
        """The text of each 16-byte address."""
        return _converted(self.cache, raw, address_text, self.MAX_ENTRIES)


def _converted(cache: dict[Any, Any], keys: Sequence[Any], convert: Callable[[Any], Any], bound: int) -> list[Any]:
    """``convert`` of each key, through ``cache``: only keys not seen yet cost a Python step each."""
    found = list(map(cache.get, keys))
    if None in found:
        if len(cache) > bound:
            cache.clear()
        for index, value in enumerate(found):
            if value is None:
                found[index] = cache[keys[index]] = convert(keys[index])
    return found


def address_text(raw: bytes) -> str:
    """An address as `ss` shows it: IPv4-mapped IPv6 as IPv4."""
    if raw[:12] == V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def address_raw(text: str) -> bytes:
    """The 16-byte key of an address given as text (IPv4 as IPv4-mapped)."""
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    return V4_MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, text)


ADDRESSES = AddressText()  # shared by every table: addresses repeat across refreshes


@dataclass(frozen=True, slots=True)
class SocketColumns:
    """One array per `SocketRecord` field, all of one length (see `DTYPES`)."""

    family: np.ndarray
    state: np.ndarray
    local_addr: np.ndarray
    local_port: np.ndarray
    remote_addr: np.ndarray
    remote_port: np.ndarray
    recv_q: np.ndarray
    send_q: np.ndarray
    timer: np.ndarray
    timer_ms: np.ndarray
    retransmits: np.ndarray
    uid: np.ndarray
    inode: np.ndarray
    cookie: np.ndarray
    lastack_ms: np.ndarray
    cgroup_id: np.ndarray
    netns: np.ndarray

    def __len__(self) -> int:
        return len(self.state)

    @classmethod
    def empty(cls, size: int = 0) -> SocketColumns:
        """Zeroed columns (``lastack_ms`` -1, unknown) for a backend to fill."""
        columns = cls(**{name: np.zeros(size, dtype) for name, dtype in DTYPES.items()})
        columns.lastack_ms.fill(-1)
        return columns

    @classmethod
    def concat(cls, parts: Sequence[SocketColumns]) -> SocketColumns:
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls.empty()
        return cls(**{name: np.concatenate([getattr(part, name) for part in parts]) for name in DTYPES})

    @classmethod
    def from_records(cls, records: Sequence[SocketRecord]) -> SocketColumns:
        """The columns of records a backend built one by one (/proc, psutil), or a test."""
        if isinstance(records, SocketTable):
            return records.columns
        columns = cls.empty(len(records))
        for (name, dtype), column in zip(DTYPES.items(), zip(*records)):  # a tuple built short keeps the defaults
            if dtype == ADDRESS:
                getattr(columns, name)[:] = ADDRESSES.raws(column)
            else:
                getattr(columns, name)[:] = np.fromiter(column, dtype, len(column))
        return columns

    def take(self, rows: np.ndarray | slice) -> SocketColumns:
        """The rows picked by an index array, a boolean mask or a slice."""
        if isinstance(rows, np.ndarray) and rows.dtype == bool:  # a mask is searched again by every column
            rows = np.flatnonzero(rows)
        return SocketColumns(**{name: getattr(self, name)[rows] for name in DTYPES})

    def records(self, rows: np.ndarray | slice | None = None) -> list[SocketRecord]:
        """`SocketRecord`s for the rows asked (all by default), made column by column in C."""
        picked = self if rows is None else self.take(rows)
        if not len(picked):
            return []
        columns = [getattr(picked, field.name) for field in fields(SocketColumns)]
        lists: list[Iterable[Any]] = []
        for name, column in zip(DTYPES, columns):
            if name in ("local_addr", "remote_addr"):
                lists.append(ADDRESSES.texts(column.tolist()))
            elif name == "state":
                lists.append(map(_STATES.__getitem__, column.tolist()))
            elif name == "timer":
                lists.append(map(_TIMERS.__getitem__, column.tolist()))
            elif name == "family":
                lists.append(map(_FAMILIES.__getitem__, column.tolist()))
            else:
                lists.append(column.tolist())
        return list(map(tuple.__new__, repeat(SocketRecord), zip(*lists)))


def v4_mapped(words: np.ndarray) -> np.ndarray:
    """IPv4 addresses (one native uint32 of network-order bytes each) as 16-byte IPv4-mapped keys."""
    out = np.zeros((len(words), 4), np.uint32)
    out[:, 2] = np.frombuffer(b"\x00\x00\xff\xff", np.uint32)[0]
    out[:, 3] = words
    return out.view(ADDRESS).reshape(-1)


def sorted_slots(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Per query, where it is (or would go) in ``keys`` (sorted, not empty), clipped to the last
    index: ``keys[slot] == queries`` tells the matches. Many queries are sorted first: binary
    searches in random order miss the cache at every step (6 ms for 50k queries into 50k keys
    here, under 2 ms with the sort; under 1 ms for queries given sorted)."""
    if len(queries) > 512 and not (queries[1:] >= queries[:-1]).all():
        order = np.argsort(queries)
        slot = np.empty(len(queries), np.int64)
        slot[order] = np.searchsorted(keys, queries[order])
    else:
        slot = np.searchsorted(keys, queries)
    return np.minimum(slot, len(keys) - 1)


def found_in(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per value whether the sorted ``keys`` hold it: `np.isin` without the `np.unique` it runs
    on its arguments (slow on numpy 2.3 and later, and it imports numpy.ma)."""
    if not len(keys):
        return np.zeros(len(values), bool)
    if 8 * len(keys) < len(values) and (values[1:] >= values[:-1]).all():  # a few keys in many sorted values:
        # each key's run among the values, marked by a running sum (one search per key, not per value)
        edges = np.zeros(len(values) + 1, np.int64)
        np.add.at(edges, np.searchsorted(values, keys, "left"), 1)
        np.add.at(edges, np.searchsorted(values, keys, "right"), -1)
        return np.cumsum(edges[:-1]) > 0
    return keys[sorted_slots(keys, values)] == values


def distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted: `np.unique` without its hash path (numpy 2.3 and later),
    which is several times slower than a sort on the tables here."""
    ordered = np.sort(values)
    if len(ordered) > 1:
        ordered = ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]
    return ordered


_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15))


def _mixed(words: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit (a plain weighted sum of
    the words would collide for addresses that differ in a pattern)."""
    words = (words ^ (words >> np.uint64(30))) * _MIX[0]
    words = (words ^ (words >> np.uint64(27))) * _MIX[1]
    return words ^ (words >> np.uint64(31))


def hashes_of(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """A 64-bit hash of each row of equal-length columns (a 16-byte address as its two words):
    equal rows hash alike, and different ones differently but for a 2**-64 chance, which the
    callers check."""
    hashes = np.full(len(arrays[0]) if arrays else 0, _MIX[2], np.uint64)
    for column in arrays:
        column = np.ascontiguousarray(column)
        words = column.view(np.uint64).reshape(-1, 2).T if column.dtype == ADDRESS else [column.astype(np.uint64)]
        for word in words:
            hashes = _mixed(hashes ^ word)
    return hashes


def connection_hashes(local_addr: np.ndarray, local_port: np.ndarray, remote_addr: np.ndarray,
                      remote_port: np.ndarray) -> np.ndarray:
    """`hashes_of` the 4-tuples: joins by connection sort these and check the matches field by field,
    with no 36-byte key built."""
    return hashes_of((local_addr, local_port, remote_addr, remote_port))


def group_rows(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by equal values in ``arrays`` (columns of one length): per row its group, per group
    its first row and its size; groups in no particular order. Grouped by `hashes_of` (sorting the
    packed values is several times slower), then every row is checked against its group's first
    row: should a hash collision have joined two keys, the packed values are sorted instead."""
    size = len(arrays[0]) if arrays else 0
    if not size:
        empty = np.zeros(0, np.intp)
        return empty, empty, empty
    hashes = hashes_of(arrays)
    order = np.argsort(hashes)
    ordered = hashes[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    sizes = np.diff(np.append(starts, size))
    first = np.minimum.reduceat(order, starts)
    inverse = np.empty(size, np.intp)
    inverse[order] = np.repeat(np.arange(len(starts)), sizes)
    leaders = first[inverse]
    if all(np.array_equal(column, column[leaders]) for column in arrays):
        return inverse, first, sizes
    parts = [np.ascontiguousarray(column).view(np.uint8).reshape(size, -1) for column in arrays]
    packed = np.ascontiguousarray(np.concatenate(parts, axis=1))
    keys = packed.view(np.dtype(f"V{packed.shape[1]}")).reshape(-1)
    _, first, inverse, sizes = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), first, sizes


CONNECTION_KEY = np.dtype("V36")


def connection_keys(columns: SocketColumns, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """The 4-tuple (local address and port, remote address and port) of each row as one
    36-byte value, for sorting, `np.unique` and joins."""
    local_addr, remote_addr = columns.local_addr[rows], columns.remote_addr[rows]
    keys = np.empty((len(local_addr), 36), np.uint8)
    keys[:, :16] = local_addr.view(np.uint8).reshape(-1, 16)
    keys[:, 16:18] = columns.local_port[rows].view(np.uint8).reshape(-1, 2)
    keys[:, 18:34] = remote_addr.view(np.uint8).reshape(-1, 16)
    keys[:, 34:] = columns.remote_port[rows].view(np.uint8).reshape(-1, 2)
    return keys.view(CONNECTION_KEY).reshape(-1)


def connection_key(connection: tuple[str, int, str, int]) -> bytes:
    """`connection_keys` of one 4-tuple given as text."""
    local, local_port, remote, remote_port = connection
    return (address_raw(local) + np.array(local_port, np.uint16).tobytes()
            + address_raw(remote) + np.array(remote_port, np.uint16).tobytes())


@dataclass(frozen=True, slots=True)
class ConnectionSet:
    """The 4-tuples of one refresh: their hashes sorted, and the 4-tuples in that order to check a
    match field by field. Asked about a whole view at once (which sockets are new since then)."""

    hashes: np.ndarray
    fields: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # local address and port, remote ones

    @classmethod
    def of(cls, columns: SocketColumns) -> ConnectionSet:
        fields = (columns.local_addr, columns.local_port, columns.remote_addr, columns.remote_port)
        if not len(columns):
            return cls(np.zeros(0, np.uint64), fields)
        hashes = connection_hashes(*fields)
        order = np.argsort(hashes)
        return cls(hashes[order], (fields[0][order], fields[1][order], fields[2][order], fields[3][order]))

    def __len__(self) -> int:
        return len(self.hashes)

    def holds(self, columns: SocketColumns) -> np.ndarray:
        """Per row of ``columns``, whether its 4-tuple is in the set."""
        theirs = (columns.local_addr, columns.local_port, columns.remote_addr, columns.remote_port)
        if not len(self.hashes) or not len(columns):
            return np.zeros(len(columns), bool)
        hashes = connection_hashes(*theirs)
        slot = sorted_slots(self.hashes, hashes)
        found = self.hashes[slot] == hashes
        for mine, field in zip(self.fields, theirs):
            found &= mine[slot] == field
        return found


class SocketTable(Sequence[SocketRecord]):
    """A snapshot's sockets: a `Sequence[SocketRecord]` over columns.

    Indexing or slicing builds only the records asked for; iterating builds
    them all once and keeps them (the code that walks every socket, old UI
    paths, pays once per snapshot). Code that can use arrays reads
    ``columns``.
    """

    __slots__ = ("columns", "_records")

    def __init__(self, columns: SocketColumns) -> None:
        self.columns = columns
        self._records: list[SocketRecord] | None = None

    def __len__(self) -> int:
        return len(self.columns)

    @overload
    def __getitem__(self, index: int) -> SocketRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[SocketRecord]: ...

    def __getitem__(self, index: int | slice) -> SocketRecord | list[SocketRecord]:
        if self._records is not None:
            return self._records[index]
        if isinstance(index, slice):
            return self.columns.records(index)
        size = len(self)
        if not -size <= index < size:
            raise IndexError("socket index out of range")
        return self.columns.records(np.array([index % size]))[0]

    def __iter__(self) -> Iterator[SocketRecord]:
        return iter(self.all())

    def all(self) -> list[SocketRecord]:
        """Every record, built once per table."""
        records = self._records
        if records is None:
            records = self._records = self.columns.records()
        return records

    def take(self, rows: np.ndarray) -> SocketTable:
        """The table of the rows picked (indices or a boolean mask), in that order; records
        already built are shared, not built again."""
        picked = SocketTable(self.columns.take(rows))
        if self._records is not None:
            indices = np.flatnonzero(rows) if rows.dtype == bool else rows
            picked._records = list(map(self._records.__getitem__, indices.tolist()))
        return picked

    def sorted_by(self, keys: Sequence[np.ndarray], reverse: bool = False) -> SocketTable:
        """The table sorted on ``keys`` (most significant first), stably, as `sorted` would sort
        records on the tuple of those keys: an argsort over columns, no record built."""
        size = len(self)
        if reverse:  # descending, equal rows kept in table order: sort the reversed table ascending
            order = size - 1 - np.lexsort([key[::-1] for key in reversed(keys)])[::-1]
        else:
            order = np.lexsort(list(reversed(keys)))
        return self.take(order)


    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SocketTable({len(self)} sockets)"


def address_order(column: np.ndarray) -> np.ndarray:
    """Per row, the rank of its address's text among the column's addresses: sorting on it
    sorts as the text does ("10.0.0.10" before "10.0.0.9"), converting each address once."""
    if not len(column):
        return np.zeros(0, np.int64)
    addresses, inverse = np.unique(column, return_inverse=True)
    texts = ADDRESSES.texts(addresses.tolist())
    rank = np.empty(len(texts), np.int64)
    rank[sorted(range(len(texts)), key=texts.__getitem__)] = np.arange(len(texts))
    return rank[inverse.reshape(-1)]


def table_of(records: Sequence[SocketRecord]) -> SocketTable:
    """``records`` as a table (itself when it is one)."""
    return records if isinstance(records, SocketTable) else SocketTable(SocketColumns.from_records(records))
