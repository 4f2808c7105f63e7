""" Heap snapshots: tracemalloc and type summaries on demand, growth since a
baseline, snapshot files to download, and the JSON bug report.

Everything heavy (``tracemalloc.take_snapshot``, ``Snapshot.dump``,
``Snapshot.statistics``, ``Snapshot.compare_to``, the type summary) runs in
the heap worker: a forked child working on a copy-on-write image of
the heap (see :mod:`bokeh_memwatch.heapwork`).  The child writes the snapshot
file itself and sends back only small plain data; the server process does
constant-time work (a fork, a ``stat``, a rename, reading a small JSON
answer), so its IOLoop keeps serving.  Where ``fork`` is missing, or the
fork policy will not fork (a busy native thread pool could hang it; see
:func:`bokeh_memwatch.heapwork.fork_policy`), the work runs in a thread
(``"technique": "thread"``), which holds the GIL for the C parts of
tracemalloc and stalls the loop for that long.

Snapshot files live in a private temporary directory (mode 0700), bounded in
number and bytes, and are removed when the :class:`SnapshotManager` stops or
the process exits.  Every snapshot is filtered: allocations whose most
recent frame is in memwatch's own files or in ``tracemalloc`` are left out.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import gc
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import tracemalloc
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from . import chains as chain_search
from .heapwork import HeapWorker, Rendered
from .referents import get_referents
from .saferepr import (
    class_name,
    error_section,
    json_array,
    json_lines,
    merge_json_objects,
    render_json,
    safe_sizeof,
)

log = logging.getLogger(__name__)

__all__ = (
    "GROUPS",
    "REPORT_FORMAT",
    "BaselineMissing",
    "NotTracing",
    "ReportSource",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotManager",
    "SnapshotTooLarge",
    "UnknownSnapshot",
    "diff_summaries",
    "format_allocators",
    "format_report",
    "memwatch_filters",
    "snapshot_rows",
    "top_growth",
)

Group = Literal["lineno", "filename", "traceback"]

#: Ways to group allocations, as ``tracemalloc.Snapshot.statistics`` names them.
GROUPS: tuple[Group, ...] = ("lineno", "filename", "traceback")

#: Snapshot ids: ``YYYYmmddTHHMMSS-`` and 8 hex digits, or ``baseline``.
#: Ids never become paths; the regex only turns junk away early.
SNAPSHOT_ID_RE = re.compile(r"\A(?:[0-9]{8}T[0-9]{6}-[0-9a-f]{8}|baseline)\Z")

BASELINE_ID = "baseline"

#: ``"format"`` of the JSON report.
REPORT_FORMAT = "bokeh-memwatch-report"
REPORT_VERSION = 1

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

_SUFFIX = ".tracemalloc"

#: A pause between two pieces of work on the event loop, so that what came
#: due in between (timers, I/O) runs before the second piece.
_YIELD_S = 0.002

#: Most type rows (largest first) and type growth rows a summary keeps.
MAX_TYPE_ROWS = 300


class SnapshotError(RuntimeError):
    """ Base of this module's errors; the message is meant for the client. """


class NotTracing(SnapshotError):
    """ tracemalloc is not tracing, and the request needs it. """


class UnknownSnapshot(SnapshotError, LookupError):
    """ No stored snapshot has that id (or the id is malformed). """


class BaselineMissing(SnapshotError, LookupError):
    """ A comparison with the baseline was asked for, and there is none. """


class SnapshotTooLarge(SnapshotError):
    """ One snapshot is larger than ``max_snapshot_bytes`` on its own. """


class ReportSource(Protocol):
    """ What :meth:`SnapshotManager.report` reads (a :class:`~bokeh_memwatch.core.MemWatch`). """

    def summary(self) -> dict[str, Any]: ...

    def sessions(self, app: str | None = None) -> list[dict[str, Any]]: ...

    def orphans(self) -> dict[str, list[dict[str, Any]]]: ...

    def prepare_chain(
        self, session_id: str, roots: chain_search.Roots,
    ) -> tuple[Callable[[], dict[str, Any]], dict[str, Any]]: ...

    def report_settings(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Answer:
    """ An API answer: ``data``, built by the server, then ``rendered``,
    members a heap worker already encoded, which the event loop sends on
    without decoding (see :class:`~bokeh_memwatch.heapwork.Rendered`). """

    data: dict[str, Any]
    rendered: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        """ Both parts in one dict.  Decodes ``rendered``: for reports written
        in the background and for tests, not for answering requests. """
        return {**self.data, **(json.loads(self.rendered) if self.rendered else {})}


@dataclass(frozen=True)
class SnapshotInfo:
    """ A snapshot file kept by the server. """

    id: str
    path: str
    created_at: float
    size_bytes: int
    traced_bytes: int
    traces: int
    frames: int

    def row(self) -> dict[str, Any]:
        """ What the API shows (never the path). """
        return {
            "id": self.id,
            "created_at": self.created_at,
            "size_bytes": self.size_bytes,
            "traced_bytes": self.traced_bytes,
            "traces": self.traces,
            "frames": self.frames,
        }


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


def _type_summary() -> list[list[Any]]:
    """ A per-type summary of every object: ``[type, count, size_bytes]`` rows,
    largest first, in pympler's row format (``module.QualName``, builtins
    bare, ``function (name)``, ``module(name)``; frames left out).

    Unlike pympler's ``muppy.get_objects()`` and ``summary.summarize()``
    this runs no code of the app's: no ``gc.collect()`` (which would run
    finalizers and weakref callbacks of pending garbage; unreachable cycles
    not yet collected are counted, as they are in memory), no
    ``isinstance`` (which consults ``__class__``), no metaclass ``__repr__``
    for the name, and ``__sizeof__`` only where it is C code
    (:func:`~bokeh_memwatch.saferepr.safe_sizeof`).
    """
    objects = _heap_objects()
    counts: dict[str, list[int]] = {}
    names: dict[type, str] = {}
    try:
        for obj in objects:
            kind = type(obj)
            if kind is types.FunctionType or kind is types.ModuleType:
                name = _callable_row_name(obj, kind)
            else:
                name = names.get(kind) or names.setdefault(kind, class_name(kind))
            row = counts.get(name)
            if row is None:
                row = counts[name] = [0, 0]
            row[0] += 1
            row[1] += safe_sizeof(obj)
    finally:
        del objects
    rows = [[name, count, size] for name, (count, size) in counts.items()]
    rows.sort(key=lambda r: (r[2], r[1]), reverse=True)
    return rows


def _heap_objects() -> list[object]:
    """ Every object the garbage collector tracks (frames left out) and the
    untracked objects they refer to, once each; what pympler's
    ``muppy.get_objects()`` returns, without its ``gc.collect()``. """
    objects = [o for o in gc.get_objects() if type(o) is not types.FrameType]
    seen = {id(o) for o in objects}
    untracked: list[object] = []
    for obj in objects:
        for ref in get_referents(obj):  # gc.get_referents, safe on 3.12 (gh-122695)
            if not gc.is_tracked(ref) and id(ref) not in seen:
                seen.add(id(ref))
                untracked.append(ref)
    objects.extend(untracked)
    del untracked
    return objects


def _callable_row_name(obj: object, kind: type) -> str:
    """ pympler's row of a function (``function (name)``) or a module
    (``module(name)``), read through the types' own descriptors. """
    try:
        if kind is types.FunctionType:
            name = _FUNCTION_NAME.__get__(obj)
            return f"function ({name})" if type(name) is str else "function"
        namespace = _MODULE_DICT.__get__(obj)
        name = namespace.get("__name__") if type(namespace) is dict else None
        return f"module({name})" if type(name) is str else "module(nameless)"
    except Exception:
        return class_name(kind)


_FUNCTION_NAME: Any = vars(types.FunctionType)["__name__"]
_MODULE_DICT: Any = vars(types.ModuleType)["__dict__"]


def _types_answer(rows: list[list[Any]], baseline_types_path: str | None) -> dict[str, Any]:
    """ The largest types, totals, and the largest growth since the
    baseline's summary (read from its file, so the server never holds or
    diffs whole summaries). """
    out: dict[str, Any] = {
        "types": _type_rows(rows, MAX_TYPE_ROWS),
        "types_total": len(rows),
        "size_bytes_total": sum(r[2] for r in rows),
        "growth": None,
    }
    if baseline_types_path is not None:
        with open(baseline_types_path, encoding="utf-8") as f:
            out["growth"] = diff_summaries(json.load(f), rows)[:MAX_TYPE_ROWS]
    return out


def _types_rendered(rows: list[list[Any]], baseline_types_path: str | None) -> tuple[dict[str, Any], bytes]:
    """ What the server keeps of a summary: small totals, and the rows
    encoded one per line (types, then growth from ``growth_offset``), so a
    request cuts ``limit`` rows without decoding any. """
    answer = _types_answer(rows, baseline_types_path)
    types_lines = json_lines(answer["types"])
    meta = {"types_total": answer["types_total"], "size_bytes_total": answer["size_bytes_total"],
            "growth_offset": None}
    if answer["growth"] is None:
        return meta, types_lines
    meta["growth_offset"] = len(types_lines) + 1
    return meta, types_lines + b"\n" + json_lines(answer["growth"])


def _split_types(meta: Mapping[str, Any], body: bytes) -> dict[str, Any]:
    """ What the server caches of a rendered summary: its totals, and its
    type rows and growth rows (``None`` without a comparison) as encoded lines. """
    offset = meta["growth_offset"]
    return {
        "types_total": meta["types_total"],
        "size_bytes_total": meta["size_bytes_total"],
        "types_lines": body if offset is None else body[:offset - 1],
        "growth_lines": None if offset is None else body[offset:],
    }


def _types_job(baseline_types_path: str | None, parent_pid: int) -> Rendered:
    """ Heap worker: the type summary, and its growth since the baseline. """
    _stop_tracing_in_child(parent_pid)
    meta, body = _types_rendered(_type_summary(), baseline_types_path)
    return Rendered(meta, body)


def _baseline_job(path: str | None, types_path: str | None, parent_pid: int) -> Rendered:
    """ Heap worker: the baseline: a snapshot file (when tracing) and a type
    summary file (when pympler is there); the summary comes back rendered. """
    out: dict[str, Any] = {}
    body = b""
    if path is not None:
        out["tracemalloc"] = _dump_job(path, parent_pid)
    _stop_tracing_in_child(parent_pid)
    if types_path is not None:
        rows = _type_summary()
        with open(types_path, "w", encoding="utf-8") as f:
            json.dump(rows, f)
        out["types"], body = _types_rendered(rows, None)
    return Rendered(out, body)


def diff_summaries(old: Sequence[Sequence[Any]], new: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """ Per-type growth between two type summaries, largest growth first. """
    before = {str(r[0]): (int(r[1]), int(r[2])) for r in old}
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name, count, size in new:
        seen.add(name)
        old_count, old_size = before.get(name, (0, 0))
        if count != old_count or size != old_size:
            rows.append({"type": name, "count": count, "size_bytes": size,
                         "count_diff": count - old_count, "size_diff_bytes": size - old_size})
    for name, (old_count, old_size) in before.items():
        if name not in seen:
            rows.append({"type": name, "count": 0, "size_bytes": 0,
                         "count_diff": -old_count, "size_diff_bytes": -old_size})
    rows.sort(key=lambda r: (r["size_diff_bytes"], r["count_diff"]), reverse=True)
    return rows


def _type_rows(rows: Sequence[Sequence[Any]], limit: int) -> list[dict[str, Any]]:
    return [{"type": r[0], "count": r[1], "size_bytes": r[2]} for r in rows[:limit]]


def _pympler_version() -> str | None:
    try:
        from pympler import __version__
    except ImportError:
        return None
    return str(__version__)


@functools.lru_cache(maxsize=1)
def _have_pympler() -> bool:
    """ Import pympler (once: the import takes tens of ms, so
    :meth:`SnapshotManager.start` does it before serving, and forked
    children inherit it). """
    try:
        import pympler.muppy
        import pympler.summary  # noqa: F401
    except ImportError:
        log.warning("pympler is not installed: type summaries are disabled")
        return False
    return True


# --- the manager ---------------------------------------------------------------


class SnapshotManager:
    """ Snapshots, baseline and type summaries of one server process.

    Construct and :meth:`start` in the process that serves (after any
    ``--num-procs`` fork), on its event loop; :meth:`stop` removes the files.

    Args:
        heap_worker: runs the heavy jobs (one at a time; busy -> HeapWorkBusy).
        max_snapshots: most snapshot files kept (the oldest go first).
        max_snapshot_bytes: most bytes of snapshot files kept.
        types_min_interval_s: a type summary younger than this is reused.
        timeout_s: longest one heavy job may run.
        clock: wall clock (injectable).
    """

    def __init__(
        self,
        heap_worker: HeapWorker,
        *,
        max_snapshots: int = 5,
        max_snapshot_bytes: int = 512 * 1024 * 1024,
        types_min_interval_s: float = 30.0,
        timeout_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_snapshots < 1:
            raise ValueError(f"max_snapshots must be >= 1, got {max_snapshots}")
        if max_snapshot_bytes < 1:
            raise ValueError(f"max_snapshot_bytes must be >= 1, got {max_snapshot_bytes}")
        if types_min_interval_s < 0:
            raise ValueError(f"types_min_interval_s must be >= 0, got {types_min_interval_s}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.heap_worker = heap_worker
        self.max_snapshots = max_snapshots
        self.max_snapshot_bytes = max_snapshot_bytes
        self.types_min_interval_s = types_min_interval_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._dir: str | None = None
        self._pid: int | None = None
        self._snapshots: OrderedDict[str, SnapshotInfo] = OrderedDict()
        #: ``created_at`` and ``types_path`` (pympler summary as JSON, or None).
        self._baseline: dict[str, Any] | None = None
        self._baseline_file: SnapshotInfo | None = None
        #: The last type summary: the child's answer, when, against which baseline.
        self._types: dict[str, Any] | None = None
        self._types_running: asyncio.Future[None] | None = None
        self._traced_since: float | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """ Make the private directory (idempotent per process). """
        if self._dir is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._dir = tempfile.mkdtemp(prefix=f"memwatch-{self._pid}-")  # mode 0700
        self._snapshots.clear()
        self._baseline = self._baseline_file = self._types = None
        atexit.register(self.stop)
        _have_pympler()
        if tracemalloc.is_tracing():
            self._traced_since = self._clock()

    def stop(self) -> None:
        """ Remove every file (idempotent).  Safe from ``atexit``. """
        directory, self._dir = self._dir, None
        if directory is None or self._pid != os.getpid():
            return
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        self._snapshots.clear()
        self._baseline = self._baseline_file = None
        shutil.rmtree(directory, ignore_errors=True)

    @property
    def directory(self) -> str | None:
        return self._dir

    def _require_dir(self) -> str:
        if self._dir is None:
            raise SnapshotError("memwatch has not started in this process")
        return self._dir

    # -- tracemalloc ---------------------------------------------------------------

    def tracing_state(self) -> dict[str, Any]:
        tracing = tracemalloc.is_tracing()
        current, peak = tracemalloc.get_traced_memory() if tracing else (0, 0)
        return {
            "tracing": tracing,
            "frames": tracemalloc.get_traceback_limit() if tracing else None,
            "traced_bytes": current,
            "traced_peak_bytes": peak,
            "tracing_since": self._traced_since if tracing else None,
            "overhead_bytes": tracemalloc.get_tracemalloc_memory() if tracing else 0,
        }

    def start_tracing(self, frames: int) -> dict[str, Any]:
        """ Start tracemalloc with ``frames`` frames per traceback.  Already
        tracing with another depth is a :class:`SnapshotError` (stopping
        drops every trace, so that must be asked for). """
        if not 1 <= frames <= 1000:
            raise ValueError(f"frames must be between 1 and 1000, got {frames}")
        changed = False
        if tracemalloc.is_tracing():
            if tracemalloc.get_traceback_limit() != frames:
                raise SnapshotError(
                    f"tracemalloc is already tracing with {tracemalloc.get_traceback_limit()} frame(s); "
                    "stop it first (stopping drops every trace)"
                )
        else:
            tracemalloc.start(frames)
            self._traced_since = self._clock()
            changed = True
        log.info("memwatch: tracemalloc tracing with %d frame(s)", frames)
        return {"changed": changed, **self.tracing_state()}

    def stop_tracing(self) -> dict[str, Any]:
        """ Stop tracemalloc.  It frees every trace on the loop: O(traces),
        ~30 ms per 600k traces of one frame, ~100 ms with 200 sessions.
        Stored snapshots and the baseline stay. """
        changed = tracemalloc.is_tracing()
        started = time.perf_counter()
        tracemalloc.stop()
        self._traced_since = None
        return {"changed": changed, "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
                **self.tracing_state()}

    # -- snapshots ---------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        return [info.row() for info in self._snapshots.values()]

    def total_bytes(self) -> int:
        return sum(info.size_bytes for info in self._snapshots.values())

    def path_of(self, snapshot_id: str) -> str:
        """ The file of a stored snapshot (``baseline`` is the baseline's). """
        return self.info(snapshot_id).path

    def info(self, snapshot_id: str) -> SnapshotInfo:
        if not SNAPSHOT_ID_RE.match(snapshot_id):
            raise UnknownSnapshot(f"no snapshot {snapshot_id[:80]!r}")
        if snapshot_id == BASELINE_ID:
            if self._baseline_file is None:
                raise UnknownSnapshot("there is no baseline tracemalloc snapshot")
            return self._baseline_file
        info = self._snapshots.get(snapshot_id)
        if info is None:
            raise UnknownSnapshot(f"no snapshot {snapshot_id!r} (it may have been evicted)")
        return info

    def _new_id(self) -> str:
        now = self._clock()
        return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(4)

    async def take(self) -> dict[str, Any]:
        """ Take a tracemalloc snapshot and keep its file. """
        directory = self._require_dir()
        if not tracemalloc.is_tracing():
            raise NotTracing("tracemalloc is not tracing")
        snapshot_id = self._new_id()
        path = os.path.join(directory, snapshot_id + _SUFFIX)
        try:
            outcome = await self.heap_worker.run(
                functools.partial(_dump_job, path, os.getpid()), timeout_s=self.timeout_s,
            )
        except BaseException:
            _unlink(path)
            raise
        if self._dir != directory:  # stopped meanwhile
            _unlink(path)
            raise SnapshotError("memwatch stopped while the snapshot was taken")
        value = outcome.value
        info = SnapshotInfo(
            id=snapshot_id, path=path, created_at=self._clock(), size_bytes=int(value["size_bytes"]),
            traced_bytes=int(value["traced_bytes"]), traces=int(value["traces"]), frames=int(value["frames"]),
        )
        if info.size_bytes > self.max_snapshot_bytes:
            _unlink(path)
            raise SnapshotTooLarge(
                f"the snapshot is {info.size_bytes} bytes, more than max_snapshot_bytes ({self.max_snapshot_bytes})"
            )
        self._snapshots[snapshot_id] = info
        evicted = self._evict()
        return {**info.row(), "evicted": evicted, **outcome.costs()}

    def _evict(self) -> list[str]:
        evicted: list[str] = []
        while len(self._snapshots) > self.max_snapshots or (
            len(self._snapshots) > 1 and self.total_bytes() > self.max_snapshot_bytes
        ):
            _, oldest = self._snapshots.popitem(last=False)
            _unlink(oldest.path)
            evicted.append(oldest.id)
        return evicted

    def delete(self, snapshot_id: str) -> None:
        info = self.info(snapshot_id)
        if info.id == BASELINE_ID:
            raise SnapshotError("the baseline is replaced by POST baseline, not deleted")
        del self._snapshots[snapshot_id]
        _unlink(info.path)

    # -- baseline ----------------------------------------------------------------

    async def set_baseline(self) -> dict[str, Any]:
        """ Replace the baseline: a tracemalloc snapshot file (when tracing)
        and a pympler type summary (when pympler is installed). """
        directory = self._require_dir()
        tracing = tracemalloc.is_tracing()
        with_types = _have_pympler()
        if not tracing and not with_types:
            raise NotTracing("a baseline needs tracemalloc tracing or pympler installed")
        stem = os.path.join(directory, f"baseline-{secrets.token_hex(4)}")
        path = stem + _SUFFIX if tracing else None
        types_path = stem + ".types.json" if with_types else None
        new_files = [p for p in (path, types_path) if p is not None]
        try:
            outcome = await self.heap_worker.run(
                functools.partial(_baseline_job, path, types_path, os.getpid()), timeout_s=self.timeout_s,
            )
        except BaseException:
            _unlink(*new_files)
            raise
        if self._dir != directory:
            _unlink(*new_files)
            raise SnapshotError("memwatch stopped while the baseline was taken")
        value = outcome.value
        now = self._clock()
        old_file = self._baseline_file
        self._baseline_file = None
        if self._baseline is not None and self._baseline["types_path"] is not None:
            _unlink(self._baseline["types_path"])
        if path is not None:
            tm = value["tracemalloc"]
            self._baseline_file = SnapshotInfo(
                id=BASELINE_ID, path=path, created_at=now, size_bytes=int(tm["size_bytes"]),
                traced_bytes=int(tm["traced_bytes"]), traces=int(tm["traces"]), frames=int(tm["frames"]),
            )
        if old_file is not None:
            _unlink(old_file.path)
        self._baseline = {"created_at": now, "types_path": types_path}
        if types_path is not None and outcome.body is not None:
            # The baseline's summary is also the freshest type summary there is.
            self._types = {"monotonic": time.monotonic(), "created_at": now,
                           **_split_types(value["types"], outcome.body), "baseline_at": now,
                           "is_baseline": True, "costs": outcome.costs()}
        return {**self.baseline_state(), **outcome.costs()}

    def baseline_state(self) -> dict[str, Any]:
        if self._baseline is None:
            return {"baseline": None}
        return {"baseline": {
            "created_at": self._baseline["created_at"],
            "age_s": round(self._clock() - self._baseline["created_at"], 3),
            "tracemalloc": self._baseline_file.row() if self._baseline_file is not None else None,
            "types": self._baseline["types_path"] is not None,
        }}

    # -- allocators ----------------------------------------------------------------

    async def allocators(
        self, *, group: Group = "lineno", limit: int = 25, compare: str | None = None,
        snapshot: str | None = None,
    ) -> Answer:
        """ Top allocators of a fresh snapshot (or the stored ``snapshot``),
        or their growth since ``compare`` (``"baseline"`` or a snapshot id). """
        if group not in GROUPS:
            raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
        source_path = self.path_of(snapshot) if snapshot is not None else None
        compare_path: str | None = None
        if compare is not None:
            if compare == BASELINE_ID and self._baseline_file is None:
                raise BaselineMissing(
                    "there is no tracemalloc baseline: POST baseline while tracing first"
                )
            compare_path = self.path_of(compare)
        if source_path is None and not tracemalloc.is_tracing():
            raise NotTracing("tracemalloc is not tracing")
        outcome = await self.heap_worker.run(
            functools.partial(_allocators_job, group, limit, source_path, compare_path, os.getpid()),
            timeout_s=self.timeout_s,
        )
        return Answer(
            {"group": group, "limit": limit, "compare": compare, "snapshot": snapshot, **outcome.costs()},
            outcome.body,
        )

    # -- pympler type summary -------------------------------------------------------

    async def types(self, *, limit: int = 50, compare: str | None = None) -> Answer:
        """ pympler's type summary, at most one per ``types_min_interval_s``
        (a younger one is reused; ``age_s`` says how old it is), and the
        per-type growth since the baseline with ``compare="baseline"``. """
        if compare is not None and compare != BASELINE_ID:
            raise ValueError("types can only be compared with the baseline")
        baseline_at = self._baseline["created_at"] if self._baseline is not None else None
        if compare is not None and (self._baseline is None or self._baseline["types_path"] is None):
            raise BaselineMissing("there is no type summary baseline: POST baseline first")
        if not _have_pympler():
            raise SnapshotError("pympler is not installed: pip install pympler")
        cached = self._types
        # A comparison is refreshed, whatever its age, when the summary at
        # hand is the baseline's own or was compared with an older baseline.
        if (cached is None or time.monotonic() - cached["monotonic"] >= self.types_min_interval_s
                or (compare is not None and (cached["baseline_at"] != baseline_at or cached["is_baseline"]))):
            await self._refresh_types()
            cached = self._types
        assert cached is not None
        data: dict[str, Any] = {
            "types_total": cached["types_total"],
            "size_bytes_total": cached["size_bytes_total"],
            "created_at": cached["created_at"],
            "age_s": round(time.monotonic() - cached["monotonic"], 3),
            "min_interval_s": self.types_min_interval_s,
            **cached["costs"],
        }
        growth_lines = cached["growth_lines"]
        rendered = b'{"types": ' + json_array(cached["types_lines"], limit)
        if compare is None or growth_lines is None:
            data["compare"] = None
        else:
            rendered += (b', "compare": {"baseline_created_at": ' + render_json(baseline_at)
                         + b', "types": ' + json_array(growth_lines, limit) + b"}")
        return Answer(data, rendered + b"}")

    async def _refresh_types(self) -> None:
        running = self._types_running
        if running is not None:  # share the summary another request is waiting for
            await asyncio.shield(running)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._types_running = done
        baseline = self._baseline
        types_path = baseline["types_path"] if baseline is not None else None
        try:
            outcome = await self.heap_worker.run(
                functools.partial(_types_job, types_path, os.getpid()), timeout_s=self.timeout_s,
            )
            self._types = {
                "monotonic": time.monotonic(), "created_at": self._clock(),
                **_split_types(outcome.value, outcome.body or b""),
                "baseline_at": baseline["created_at"] if types_path is not None and baseline else None,
                "is_baseline": False,
                "costs": outcome.costs(),
            }
            done.set_result(None)
        except BaseException as e:
            done.set_exception(e)
            done.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._types_running = None

    # -- the report -------------------------------------------------------------------

    async def report(
        self, source: ReportSource, *, max_chains: int = 5, allocators_limit: int = 25, types_limit: int = 50,
    ) -> bytes:
        """ Everything for a bug report, encoded (indented JSON).  A section
        that fails holds ``{"error": ...}``; the report itself always comes
        back.

        The whole report is one heap job: the worker reads the sessions,
        searches the chains, takes the snapshot and the type summary, and
        encodes the report, which the event loop sends on undecoded.  The
        loop only picks the orphans to explain and prepares their searches.
        """
        self._require_dir()
        orphans = source.orphans()
        held = [*orphans.get("orphans", []), *orphans.get("retained_models", [])]
        roots = chain_search.capture_roots()
        chain_jobs: list[tuple[str, Any]] = []
        for row in held[:max_chains]:
            session_id = str(row["session_id"])
            try:
                chain_jobs.append((session_id, source.prepare_chain(session_id, roots)))
            except Exception as e:
                chain_jobs.append((session_id, error_section(e)))
        tracing = tracemalloc.is_tracing()
        baseline_types = self._baseline["types_path"] if self._baseline is not None else None
        head: dict[str, Any] = {
            "format": REPORT_FORMAT,
            "format_version": REPORT_VERSION,
            "created_at": self._clock(),
            "pid": os.getpid(),
            "orphans": orphans,
            "chains_omitted": max(0, len(held) - max_chains),
            "tracemalloc": self.tracing_state(),
            "baseline": self.baseline_state()["baseline"],
            "snapshots": self.rows(),
        }
        settings = {
            **source.report_settings(),
            "snapshots": {
                "max_snapshots": self.max_snapshots,
                "max_snapshot_bytes": self.max_snapshot_bytes,
                "types_min_interval_s": self.types_min_interval_s,
                "timeout_s": self.timeout_s,
            },
        }

        def read_sessions() -> dict[str, Any]:
            try:
                return {"sessions": source.sessions()}
            except Exception as e:
                return {"sessions": error_section(e)}

        # A forked worker reads the sessions (the bulk of the report) from its
        # copy of the heap; a thread must not read them while the loop changes them.
        plan = self.heap_worker.plan()
        sections = read_sessions if plan.technique == "fork" else functools.partial(dict, read_sessions())
        job = functools.partial(
            _report_job, head, sections, chain_jobs, settings,
            tracing=tracing,
            baseline_path=self._baseline_file.path if self._baseline_file is not None else None,
            with_types=_have_pympler(),
            baseline_types_path=baseline_types,
            allocators_limit=allocators_limit,
            types_limit=types_limit,
            parent_pid=os.getpid(),
        )
        running = asyncio.ensure_future(self.heap_worker.run(job, timeout_s=self.timeout_s, plan=plan))
        try:
            # The fork runs first; a timer sleep lets every callback that came
            # due meanwhile run before the summary, so the two stalls never add up.
            await asyncio.sleep(_YIELD_S)
            # In the server: the summary reads other threads' state (the
            # history writer's queue), whose locks a forked child cannot take.
            try:
                summary = render_json({"summary": source.summary()}, indent=1)
            except Exception as e:
                summary = render_json({"summary": error_section(e)}, indent=1)
            outcome = await running
        finally:
            if not running.done():
                running.cancel()  # kills and reaps a forked child
            del job, chain_jobs, roots  # the roots keep threads alive
        return merge_json_objects(summary, outcome.body or b"{}")


def _report_job(
    head: dict[str, Any],
    read_sections: Callable[[], dict[str, Any]],
    chain_jobs: list[tuple[str, Any]],
    settings: dict[str, Any],
    *,
    tracing: bool,
    baseline_path: str | None,
    with_types: bool,
    baseline_types_path: str | None,
    allocators_limit: int,
    types_limit: int,
    parent_pid: int,
) -> Rendered:
    """ Heap worker: the whole report (see :meth:`SnapshotManager.report`). """
    report: dict[str, Any] = {**head, **read_sections()}
    # The snapshot first, while tracing and before the searches allocate.
    if tracing:
        try:
            snapshot = _take_filtered(parent_pid)
            report["allocators"] = _allocators(snapshot, "lineno", allocators_limit, None)
            if baseline_path is not None:
                report["growth"] = _allocators(
                    snapshot, "lineno", allocators_limit, tracemalloc.Snapshot.load(baseline_path),
                )
            del snapshot
        except Exception as e:
            report["allocators"] = error_section(e)
    else:
        report["allocators"] = {"error": "tracemalloc was not tracing"}
    _stop_tracing_in_child(parent_pid)
    explained: dict[str, Any] = {}
    for session_id, prepared in chain_jobs:
        if isinstance(prepared, dict):  # the error of preparing it
            explained[session_id] = prepared
            continue
        search, fields = prepared
        try:
            found = search()
            explained[session_id] = {**fields, **found, "text": chain_search.format_chain(found)}
        except Exception as e:
            explained[session_id] = error_section(e)
    report["chains"] = explained
    if with_types:
        try:
            answer = _types_answer(_type_summary(), baseline_types_path)
            report["types"] = {
                "types": answer["types"][:types_limit],
                "types_total": answer["types_total"],
                "size_bytes_total": answer["size_bytes_total"],
                "compare": None if answer["growth"] is None else {"types": answer["growth"][:types_limit]},
            }
        except Exception as e:
            report["types"] = error_section(e)
    else:
        report["types"] = {"error": "pympler is not installed: pip install pympler"}
    report["settings"] = {name: settings[name] for name in ("options", "server", "snapshots")}
    report["versions"] = {**settings["versions"], "pympler": _pympler_version(), "platform": sys.platform}
    return Rendered({}, render_json(report, indent=1))


def _unlink(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# --- renderers (the CLI) ------------------------------------------------------------


def _fmt_bytes(n: float) -> str:
    # One set of rules with the dashboard and the advice (units.py).
    from .units import format_bytes

    return format_bytes(n)


def format_allocators(rows: Sequence[Mapping[str, Any]]) -> str:
    """ Allocator rows as a text table (growth columns when present). """
    if not rows:
        return "(nothing)"
    diff = "size_diff_bytes" in rows[0]
    lines = []
    for i, row in enumerate(rows, 1):
        if diff:
            head = (f"{i:>3}. {_fmt_bytes(row['size_diff_bytes']):>11} ({row['count_diff']:+d} blocks)"
                    f"  now {_fmt_bytes(row['size_bytes'])} in {row['count']}")
        else:
            head = f"{i:>3}. {_fmt_bytes(row['size_bytes']):>11} in {row['count']} blocks"
        lines.append(f"{head}  {row['where']}")
        for frame in row.get("traceback") or []:
            lines.append(f"       {frame}")
    return "\n".join(lines)


def format_report(report: Mapping[str, Any], *, limit: int = 15) -> str:
    """ A JSON report, readable. """
    if report.get("format") != REPORT_FORMAT:
        raise ValueError(f"not a memwatch report (format {report.get('format')!r})")
    out: list[str] = []

    def section(title: str) -> None:
        out.extend(["", title, "-" * len(title)])

    summary = report.get("summary") or {}
    out.append(f"bokeh-memwatch report, pid {report.get('pid')}, "
               f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(report.get('created_at', 0)))}")
    section("Summary")
    for key in ("rss_bytes", "traced_bytes", "sessions", "documents", "models", "data_bytes",
                "orphans", "pending_orphans", "models_retained", "sessions_created_total",
                "sessions_destroyed_total", "uptime_s"):
        if key in summary:
            value = summary[key]
            text = _fmt_bytes(value) if key.endswith("_bytes") and isinstance(value, (int, float)) else value
            if key == "uptime_s" and isinstance(value, (int, float)):  # as the dashboard writes it (units.py)
                from .units import format_duration

                text = format_duration(value)
            out.append(f"  {key:<26} {text}")
    sessions = report.get("sessions") or []
    section(f"Sessions ({len(sessions)})")
    for row in sessions[:limit]:
        out.append(f"  {row.get('id')}  {row.get('app')}  models={row.get('models')} "
                   f"data={_fmt_bytes(row.get('data_bytes') or 0)}")
    orphans = report.get("orphans") or {}
    chains = report.get("chains") or {}
    held = [*orphans.get("orphans", []), *orphans.get("retained_models", [])]
    section(f"Orphans and retained Models ({len(held)})")
    for row in held[:limit]:
        out.append(f"  {row.get('session_id')}  {row.get('app')}  {row.get('status')}  "
                   f"models={row.get('models')} data={_fmt_bytes(row.get('data_bytes') or 0)}")
        chain = chains.get(str(row.get("session_id")))
        if chain:
            out.append("      " + str(chain.get("text") or chain.get("error") or ""))
    for key, title in (("growth", "Growth since the baseline"), ("allocators", "Top allocators")):
        data = report.get(key)
        if data is None:
            continue
        section(title)
        if "error" in data:
            out.append(f"  ({data['error']})")
        else:
            out.append(format_allocators(data.get("allocators", [])[:limit]))
    memray = report.get("memray")  # issue 18: the memray backend's section (memray_backend.py)
    if memray is not None:
        allocators = memray.get("allocators") or {}
        capture = allocators.get("capture") or {}
        section(f"memray: alive at the end of a {capture.get('window_s', '?')} s window, by line")
        if "error" in allocators:
            out.append(f"  ({allocators['error']})")
        else:
            out.append(format_allocators(allocators.get("allocators", [])[:limit]))
    types = report.get("types") or {}
    section("Types (pympler)")
    if "error" in types:
        out.append(f"  ({types['error']})")
    else:
        compare = types.get("compare")
        rows = compare["types"] if compare else types.get("types", [])
        for row in rows[:limit]:
            growth = (f"{_fmt_bytes(row['size_diff_bytes']):>11} {row['count_diff']:+d}  "
                      if "size_diff_bytes" in row else "")
            out.append(f"  {growth}{_fmt_bytes(row['size_bytes']):>11} {row['count']:>9}  {row['type']}")
    section("Versions")
    for key, value in (report.get("versions") or {}).items():
        out.append(f"  {key:<10} {value}")
    settings = report.get("settings") or {}
    section("Settings")
    out.append("  " + json.dumps(settings, sort_keys=True))
    return "\n".join(out).lstrip("\n") + "\n"
