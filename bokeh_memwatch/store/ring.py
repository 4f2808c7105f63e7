""" A bounded, thread-safe history of samples, kept in columns.

Each sample is a flat record of numbers: process-wide fields (``rss_bytes``,
``documents`` ...) and the same small set of fields per application.  The
history is a ring of ``array`` columns: doubles for times, bytes and running
totals, single-precision floats for the small counts (exact up to 2**24), so
24 hours at the default 5 s interval cost 1.9 MB for the process and 0.7 MB
per application (at most :data:`DEFAULT_MAX_APPS` of them) instead of the
tens of megabytes a list of dicts would.

Readers get fresh dicts built from the columns: the store never hands out
anything that it later mutates.
"""
from __future__ import annotations

import logging
import math
import threading
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from ..schema import APP_FIELDS, COUNT_FIELDS, PROCESS_FIELDS

log = logging.getLogger(__name__)

__all__ = (
    "DEFAULT_MAX_APPS",
    "SampleStore",
)

#: Applications with history columns of their own; more are counted in the
#: process totals only.  Keeps a day of history under 10 MB.
DEFAULT_MAX_APPS = 10

_NAN = float("nan")


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


class _Ring:
    """ Columns (doubles, or 4-byte floats for :data:`COUNT_FIELDS`) that
    grow to ``capacity`` and are then written round-robin (so a long history
    costs memory only once it is filled). """

    __slots__ = ("capacity", "columns")

    def __init__(self, fields: Sequence[str], capacity: int, filled: int = 0) -> None:
        self.capacity = capacity
        self.columns = {name: array("f" if name in COUNT_FIELDS else "d", [_NAN]) * filled for name in fields}

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

    def __init__(self, capacity: int, *, max_apps: int = DEFAULT_MAX_APPS) -> None:
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

    def _first(self, since: float | None, limit: int | None) -> int:
        """ Index (in append order) of the first sample with ``t > since``
        among the newest ``limit``.  Times are appended in order, so this is
        a binary search, not a walk over the history.  Call with the lock. """
        first = self._count - min(self._count, self._capacity)
        if since is not None:
            t_column = self._process.columns["t"]
            lo, hi = first, self._count
            while lo < hi:
                mid = (lo + hi) // 2
                if t_column[mid % self._capacity] > since:
                    hi = mid
                else:
                    lo = mid + 1
            first = lo
        if limit is not None:
            first = max(first, self._count - limit) if limit > 0 else self._count
        return first

    def _slice(self, column: Sequence[float], first: int) -> list[float]:
        """ ``column``'s values from append index ``first`` on, in order. """
        a, b = first % self._capacity, self._count % self._capacity
        if first >= self._count:
            return []
        if a < b or self._count <= self._capacity:
            return list(column[a:b or None] if b else column[a:])
        return list(column[a:]) + list(column[:b])

    def query(self, *, since: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """ Samples with ``t > since``, oldest first, at most the newest ``limit``. """
        with self._lock:
            first = self._first(since, limit)
            process = {name: self._slice(col, first) for name, col in self._process.columns.items()}
            apps = {
                name: ({f: self._slice(col, first) for f, col in ring.columns.items()},
                       self._slice(self._app_seen[name], first))
                for name, ring in self._apps.items()
            }
        names = list(process)
        rows: list[dict[str, Any]] = []
        for i, values in enumerate(zip(*process.values(), strict=True)):
            row: dict[str, Any] = {k: _none_if_nan(v) for k, v in zip(names, values, strict=True)}
            row["apps"] = {
                name: {f: _none_if_nan(col[i]) for f, col in cols.items()}
                for name, (cols, seen) in apps.items()
                if seen[i]
            }
            rows.append(row)
        return rows

    def count(self, *, since: float | None = None) -> int:
        """ How many stored samples have ``t > since``. """
        with self._lock:
            return self._count - self._first(since, None)

    def columns(self, fields: Sequence[str], *, since: float | None = None, max_points: int = 1500,
                peak_fields: frozenset[str] = frozenset()) -> dict[str, list[float | None]]:
        """ Process fields after ``since`` as columns of at most ``max_points``
        values: consecutive samples are bucketed; a bucket keeps the largest
        value of the ``peak_fields`` (a spike stays visible) and the last
        value of the others.  Reads the arrays directly: a day of samples
        costs milliseconds, not the rows-of-dicts path of :meth:`query`. """
        with self._lock:
            first = self._first(since, None)
            raw = {name: self._slice(self._process.columns[name], first) for name in fields}
        n = len(raw[fields[0]]) if fields else 0
        size = max(1, -(-n // max(1, max_points)))
        out: dict[str, list[float | None]] = {}
        for name, values in raw.items():
            column: list[float | None] = []
            for start in range(0, n, size):
                bucket = values[start:start + size]
                if name in peak_fields:
                    present = [v for v in bucket if not math.isnan(v)]
                    column.append(max(present) if present else None)
                else:
                    last = bucket[-1]
                    column.append(_none_if_nan(last))
            out[name] = column
        return out

    def nbytes(self) -> int:
        """ Bytes held by the columns (the store's own memory, roughly). """
        with self._lock:
            total = self._process.nbytes()
            total += sum(ring.nbytes() for ring in self._apps.values())
            total += sum(len(seen) for seen in self._app_seen.values())
            return total
