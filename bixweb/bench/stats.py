"""Latency statistics: a fixed-bucket histogram that merges across processes.

Buckets are 0.1 ms wide below one second and 10 ms wide up to two
minutes; anything later is counted as over. Percentiles are nearest-rank
and report a bucket's upper edge, so they never understate. The exact
function :func:`percentile` is for small lists of plain values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Final, TypedDict

FINE_MS: Final = 0.1
FINE_BUCKETS: Final = 10_000
COARSE_MS: Final = 10.0
COARSE_BUCKETS: Final = 12_000
SUMMARY_POINTS: Final = (50.0, 90.0, 99.0, 99.9)


class WireHistogram(TypedDict):
    """A :class:`Histogram` as sent between processes: only the buckets that were hit."""

    hit: dict[int, int]
    over: int
    negative: int
    max_ms: float


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank ``p``-th percentile (0 < p <= 100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    if not 0.0 < p <= 100.0:
        raise ValueError(f"percentile {p} is not in (0, 100]")
    ordered = sorted(values)
    rank = math.ceil(p / 100.0 * len(ordered))
    return float(ordered[max(rank, 1) - 1])


class Histogram:
    """Counts of latencies in ms; ``add`` is cheap enough for every frame."""

    __slots__ = ("counts", "over", "negative", "total", "max_ms")

    def __init__(self) -> None:
        self.counts = [0] * (FINE_BUCKETS + COARSE_BUCKETS)
        self.over = 0
        self.negative = 0
        """Samples below zero (clock skew, or the ms truncation of ``ts``), counted as zero."""
        self.total = 0
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        if ms < 0.0:
            self.negative += 1
            ms = 0.0
        if ms < 1000.0:
            self.counts[int(ms * 10.0)] += 1
        elif ms < 120_000.0:
            self.counts[FINE_BUCKETS + int((ms - 1000.0) / COARSE_MS)] += 1
        else:
            self.over += 1
        if ms > self.max_ms:
            self.max_ms = ms
        self.total += 1

    def extend(self, values: Iterable[float]) -> None:
        for value in values:
            self.add(value)

    def percentile(self, p: float) -> float:
        """Upper edge of the bucket holding the nearest-rank ``p``-th percentile; NaN when empty."""
        if not self.total:
            return math.nan
        rank = max(math.ceil(p / 100.0 * self.total), 1)
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(upper_edge(index), self.max_ms)
        return self.max_ms

    def summary(self) -> dict[str, float | int]:
        """``samples``, ``p50``, ``p90``, ``p99``, ``p99_9``, ``max`` and ``negative`` (ms)."""
        out: dict[str, float | int] = {"samples": self.total}
        for p in SUMMARY_POINTS:
            out["p" + f"{p:g}".replace(".", "_")] = round(self.percentile(p), 3)
        out["max"] = round(self.max_ms, 3) if self.total else math.nan
        out["negative"] = self.negative
        return out

    def to_wire(self) -> WireHistogram:
        """A compact picklable form for the pipe to the parent."""
        hit = {i: c for i, c in enumerate(self.counts) if c}
        return {"hit": hit, "over": self.over, "negative": self.negative, "max_ms": self.max_ms}

    def merge_wire(self, wire: WireHistogram) -> None:
        """Add a histogram sent by :meth:`to_wire` (from another process)."""
        for index, count in wire["hit"].items():
            self.counts[index] += count
            self.total += count
        self.over += wire["over"]
        self.total += wire["over"]
        self.negative += wire["negative"]
        self.max_ms = max(self.max_ms, wire["max_ms"])


def upper_edge(index: int) -> float:
    """The upper edge (ms) of bucket ``index``."""
    if index < FINE_BUCKETS:
        return (index + 1) * FINE_MS
    return 1000.0 + (index - FINE_BUCKETS + 1) * COARSE_MS
