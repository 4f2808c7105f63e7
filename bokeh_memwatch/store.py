""" A bounded, thread-safe history of samples, kept in columns.

Each sample is a flat record of numbers: process-wide fields (``rss_bytes``,
``documents`` ...) and the same small set of fields per application.  The
history is a ring of ``array('d')`` columns, so 24 hours of samples at the
default interval cost about a megabyte per application instead of the tens
of megabytes a list of dicts would.

Readers get fresh dicts built from the columns: the store never hands out
anything that it later mutates.
"""
from __future__ import annotations

import logging
import math
import threading
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

__all__ = (
    "APP_FIELDS",
    "PROCESS_FIELDS",
    "SampleStore",
)

#: Fields recorded once per sample for the whole process.
PROCESS_FIELDS: tuple[str, ...] = (
    "t",
    "rss_bytes",
    "traced_bytes",
    "traced_peak_bytes",
    "gc_gen0",
    "gc_gen1",
    "gc_gen2",
    "gc_collections_gen2",
    "sessions",
    "connections",
    "documents",
    "models",
    "data_bytes",
    "orphans",
    "pending_orphans",
    "models_retained",
    "sessions_created_total",
    "sessions_destroyed_total",
    "tick_ms",
    "errors",
)

#: Fields recorded for every application at every sample.
APP_FIELDS: tuple[str, ...] = (
    "sessions",
    "connected",
    "unused",
    "connections",
    "documents",
    "models",
    "data_bytes",
    "orphans",
    "models_retained",
)

_NAN = float("nan")


class _Ring:
    """ Columns of doubles that grow to ``capacity`` and are then written
    round-robin (so a long history costs memory only once it is filled). """

    __slots__ = ("capacity", "columns")

    def __init__(self, fields: Sequence[str], capacity: int, filled: int = 0) -> None:
        self.capacity = capacity
        self.columns = {name: array("d", [_NAN]) * filled for name in fields}

    def put(self, slot: int, values: Mapping[str, float]) -> None:
        for name, column in self.columns.items():
            value = values.get(name)
            number = _NAN if value is None else float(value)
            if slot == len(column):
                column.append(number)
            else:
                column[slot] = number

    def get(self, slot: int) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, column in self.columns.items():
            value = column[slot]
            out[name] = None if math.isnan(value) else value
        return out

    def nbytes(self) -> int:
        return sum(column.itemsize * len(column) for column in self.columns.values())


class SampleStore:
    """ Ring buffer of the last ``capacity`` samples.

    Args:
        capacity: how many samples to keep; older ones are overwritten.
        max_apps: how many applications get columns of their own; samples
            for further applications are counted in the process totals only.
    """

    def __init__(self, capacity: int, *, max_apps: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._max_apps = max_apps
        self._lock = threading.Lock()
        self._process = _Ring(PROCESS_FIELDS, capacity)
        self._apps: dict[str, _Ring] = {}
        self._app_seen: dict[str, array[int]] = {}
        self._count = 0  # samples ever appended

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        with self._lock:
            return min(self._count, self._capacity)

    @property
    def total_appended(self) -> int:
        with self._lock:
            return self._count

    def append(self, process: Mapping[str, float], apps: Mapping[str, Mapping[str, float]]) -> None:
        """ Record one sample; ``process["t"]`` is its unix time in seconds. """
        with self._lock:
            slot = self._count % self._capacity
            self._process.put(slot, process)
            for name, ring in self._apps.items():
                ring.put(slot, apps.get(name, {}))
                seen = self._app_seen[name]
                if slot == len(seen):
                    seen.append(1 if name in apps else 0)
                else:
                    seen[slot] = 1 if name in apps else 0
            for name, values in apps.items():
                if name in self._apps:
                    continue
                if len(self._apps) >= self._max_apps:
                    continue
                filled = min(self._count, self._capacity)
                ring = self._apps[name] = _Ring(APP_FIELDS, self._capacity, filled)
                self._app_seen[name] = array("b", [0]) * filled
                ring.put(slot, values)
                if slot == len(self._app_seen[name]):
                    self._app_seen[name].append(1)
                else:
                    self._app_seen[name][slot] = 1
            self._count += 1

    def latest(self) -> dict[str, Any] | None:
        """ The most recent sample, or None before the first one. """
        rows = self.query(limit=1)
        return rows[-1] if rows else None

    def query(self, *, since: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """ Samples with ``t > since``, oldest first, at most the newest ``limit``. """
        with self._lock:
            n = min(self._count, self._capacity)
            start = self._count - n
            t_column = self._process.columns["t"]
            first = start
            if since is not None:
                # Times are appended in order: binary search the ring for the
                # first sample after ``since`` instead of walking the history.
                lo, hi = start, self._count
                while lo < hi:
                    mid = (lo + hi) // 2
                    if t_column[mid % self._capacity] > since:
                        hi = mid
                    else:
                        lo = mid + 1
                first = lo
            if limit is not None:
                first = max(first, self._count - limit) if limit > 0 else self._count
            picked: Iterable[int] = (i % self._capacity for i in range(first, self._count))
            rows: list[dict[str, Any]] = []
            for slot in picked:
                row: dict[str, Any] = self._process.get(slot)
                row["apps"] = {
                    name: ring.get(slot)
                    for name, ring in self._apps.items()
                    if self._app_seen[name][slot]
                }
                rows.append(row)
            return rows

    def nbytes(self) -> int:
        """ Bytes held by the columns (the store's own memory, roughly). """
        with self._lock:
            total = self._process.nbytes()
            total += sum(ring.nbytes() for ring in self._apps.values())
            total += sum(len(seen) for seen in self._app_seen.values())
            return total
