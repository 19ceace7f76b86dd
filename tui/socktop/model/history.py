"""A bounded ring of per-refresh totals, for trends, sparklines and leak detection."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from ..collect.records import TcpState
from .aggregate import Aggregates, StateCounts
from .snapshot import HistoryPoint

DEFAULT_WINDOW_SECONDS = 600.0


def history_capacity(window_seconds: float, interval: float) -> int:
    """How many refreshes fit in the window at this interval (at least 2)."""
    return max(2, int(round(window_seconds / max(interval, 0.1))))


class History:
    """Owned by the poller; every snapshot carries an immutable copy (a tuple)."""

    def __init__(self, capacity: int) -> None:
        self._points: deque[HistoryPoint] = deque(maxlen=capacity)

    def record(self, seq: int, taken_at: float, monotonic: float, aggregates: Aggregates,
               counters: Mapping[str, int] | None = None,
               netns_counters: Mapping[int, dict[str, int]] | None = None) -> tuple[HistoryPoint, ...]:
        by_process: dict[str, StateCounts] = {}
        for key, group in aggregates.by_process.items():
            counts = dict(group.counts)
            for state, inferred in group.inferred.items():
                counts[state] = counts.get(state, 0) + inferred
            by_process[key] = counts
        self._points.append(HistoryPoint(seq, taken_at, monotonic, dict(aggregates.by_state), by_process,
                                         dict(counters or {}), dict(netns_counters or {})))
        return tuple(self._points)

    def resize(self, capacity: int) -> None:
        """Keep the most recent points when the interval (and so the capacity) changes."""
        self._points = deque(self._points, maxlen=capacity)


def state_series(points: Sequence[HistoryPoint], state: TcpState) -> list[int]:
    return [point.by_state.get(state, 0) for point in points]


def process_series(points: Sequence[HistoryPoint], key: str, state: TcpState) -> list[int]:
    return [point.by_process.get(key, {}).get(state, 0) for point in points]


def rate_per_second(points: Sequence[HistoryPoint], values: Sequence[int]) -> float:
    """Least-squares slope of ``values`` over the points' times; 0 with fewer than two points.

    A slope, not (last - first) / span, so that one noisy refresh at either
    end does not make a leak look faster or slower than it is.
    """
    if len(points) < 2 or len(values) != len(points):
        return 0.0
    times = [point.monotonic for point in points]
    mean_t = sum(times) / len(times)
    mean_v = sum(values) / len(values)
    spread = sum((t - mean_t) ** 2 for t in times)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values)) / spread


def span_seconds(points: Sequence[HistoryPoint]) -> float:
    return points[-1].monotonic - points[0].monotonic if len(points) >= 2 else 0.0
