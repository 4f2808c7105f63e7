""" tracemalloc, run in the heap worker: memwatch's filters, statistics as
rows, growth between two snapshots, and the jobs that take, dump and compare
snapshots.  Functions that compute return plain data.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import itertools
import logging
import os
import tracemalloc
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from ..saferepr import (
    render_json,
)
from .worker import Rendered

log = logging.getLogger(__name__)

__all__ = (
    "GROUPS",
    "Group",
    "memwatch_filters",
    "snapshot_rows",
    "top_growth",
)

Group = Literal["lineno", "filename", "traceback"]

#: Ways to group allocations, as ``tracemalloc.Snapshot.statistics`` names them.
GROUPS: tuple[Group, ...] = ("lineno", "filename", "traceback")


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def memwatch_filters() -> list[tracemalloc.Filter]:
    """ Leave out allocations made by memwatch itself or by tracemalloc.

    Only the most recent frame is matched (``all_frames=False``): memwatch's
    own entry points (``bokeh-memwatch serve``) are at the bottom of every
    stack, and must not hide the apps' allocations.
    """
    return [
        tracemalloc.Filter(False, os.path.join(_PACKAGE_DIR, "*")),
        tracemalloc.Filter(False, tracemalloc.__file__),
    ]


# --- pure functions over snapshots (run in the heap worker, or the CLI) ------


def _frame_text(frame: tracemalloc.Frame) -> str:
    return f"{frame.filename}:{frame.lineno}"


def _where(traceback: tracemalloc.Traceback, group: Group) -> str:
    # A Traceback is ordered oldest first; the allocation site is the last frame.
    if not len(traceback):
        return "<unknown>"
    frame = traceback[-1]
    if group == "filename":
        return str(frame.filename)
    return _frame_text(frame)


def snapshot_rows(
    stats: Iterable[tracemalloc.Statistic | tracemalloc.StatisticDiff], group: Group, limit: int,
) -> list[dict[str, Any]]:
    """ The dashboard's allocator rows: ``where``, ``size_bytes``, ``count``,
    and ``size_diff_bytes``/``count_diff`` for a comparison and ``traceback``
    (oldest frame first) for the traceback grouping. """
    rows: list[dict[str, Any]] = []
    for stat in itertools.islice(stats, limit):
        row: dict[str, Any] = {
            "where": _where(stat.traceback, group),
            "size_bytes": int(stat.size),
            "count": int(stat.count),
        }
        if isinstance(stat, tracemalloc.StatisticDiff):
            row["size_diff_bytes"] = int(stat.size_diff)
            row["count_diff"] = int(stat.count_diff)
        if group == "traceback":
            row["traceback"] = [_frame_text(f) for f in stat.traceback]
        rows.append(row)
    return rows


def _growth(new: tracemalloc.Snapshot, old: tracemalloc.Snapshot, group: Group) -> list[tracemalloc.StatisticDiff]:
    diffs = new.compare_to(old, group)
    # Growth first (compare_to sorts by the absolute change).
    diffs.sort(key=lambda d: (d.size_diff, d.count_diff, d.size), reverse=True)
    return diffs


def top_growth(old_path: str, new_path: str, *, group: Group = "lineno", limit: int = 10) -> dict[str, Any]:
    """ What grew between two snapshot files (``bokeh-memwatch diff``). """
    old = tracemalloc.Snapshot.load(old_path)
    new = tracemalloc.Snapshot.load(new_path)
    diffs = _growth(new, old, group)
    return {
        "group": group,
        "old_traced_bytes": _traced_bytes(old),
        "new_traced_bytes": _traced_bytes(new),
        "allocators": snapshot_rows(diffs, group, limit),
        "rows_total": len(diffs),
    }


def _traced_bytes(snapshot: tracemalloc.Snapshot) -> int:
    return sum(trace.size for trace in snapshot.traces)


def _take_filtered(parent_pid: int) -> tracemalloc.Snapshot:
    snapshot = tracemalloc.take_snapshot()
    _stop_tracing_in_child(parent_pid)
    return snapshot.filter_traces(memwatch_filters())


def _stop_tracing_in_child(parent_pid: int) -> None:
    """ In a forked child, stop tracing: what the child allocates is of no
    interest, and tracing it makes statistics and pympler twice as slow.
    Never in the server process (the thread fallback). """
    if os.getpid() != parent_pid:
        tracemalloc.stop()


def _dump_job(path: str, parent_pid: int) -> dict[str, Any]:
    """ Heap worker: take a snapshot and write it to ``path``. """
    snapshot = _take_filtered(parent_pid)
    snapshot.dump(path)
    return {
        "size_bytes": os.path.getsize(path),
        "traced_bytes": _traced_bytes(snapshot),
        "traces": len(snapshot.traces),
        "frames": snapshot.traceback_limit,
    }


def _allocators_job(
    group: Group, limit: int, source_path: str | None, compare_path: str | None, parent_pid: int,
) -> Rendered:
    """ Heap worker: top allocators of a fresh (or stored) snapshot, or its
    growth since another one. """
    if source_path:
        _stop_tracing_in_child(parent_pid)
        snapshot = tracemalloc.Snapshot.load(source_path)
    else:
        snapshot = _take_filtered(parent_pid)
    compare = tracemalloc.Snapshot.load(compare_path) if compare_path is not None else None
    return Rendered({}, render_json(_allocators(snapshot, group, limit, compare)))


def _allocators(
    snapshot: tracemalloc.Snapshot, group: Group, limit: int, compare: tracemalloc.Snapshot | None,
) -> dict[str, Any]:
    stats: Sequence[tracemalloc.Statistic | tracemalloc.StatisticDiff]
    stats = _growth(snapshot, compare, group) if compare is not None else snapshot.statistics(group)
    return {
        "allocators": snapshot_rows(stats, group, limit),
        "rows_total": len(stats),
        "traced_bytes": _traced_bytes(snapshot),
        "frames": snapshot.traceback_limit,
    }
