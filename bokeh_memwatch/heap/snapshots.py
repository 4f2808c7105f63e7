""" Heap snapshots: tracemalloc and type summaries on demand, growth since a
baseline, snapshot files to download (the bug report that uses them is
:mod:`bokeh_memwatch.report.bug_report`).

Over 400 lines: :class:`SnapshotManager` is one state machine (the private
directory, the files and their bounds, the baseline, the cached type
summary, tracing on and off), and its errors and answer types go with it;
the jobs it runs live in :mod:`.allocations` and :mod:`.types`.

Everything heavy (``tracemalloc.take_snapshot``, ``Snapshot.dump``,
``Snapshot.statistics``, ``Snapshot.compare_to``, the type summary) runs in
the heap worker: a forked child working on a copy-on-write image of
the heap (see :mod:`bokeh_memwatch.heap.worker`).  The child writes the snapshot
file itself and sends back only small plain data; the server process does
constant-time work (a fork, a ``stat``, a rename, reading a small JSON
answer), so its IOLoop keeps serving.  Where ``fork`` is missing, or the
fork policy will not fork (a busy native thread pool could hang it; see
:func:`bokeh_memwatch.heap.worker.fork_policy`), the work runs in a thread
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
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..saferepr import (
    json_array,
    render_json,
)
from .allocations import GROUPS, Group, _allocators_job, _dump_job
from .types import _baseline_job, _have_pympler, _split_types, _types_job
from .worker import HeapWorker

log = logging.getLogger(__name__)

__all__ = (
    "Answer",
    "BaselineMissing",
    "NotTracing",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotManager",
    "SnapshotTooLarge",
    "UnknownSnapshot",
)

#: Snapshot ids: ``YYYYmmddTHHMMSS-`` and 8 hex digits, or ``baseline``.
#: Ids never become paths; the regex only turns junk away early.
SNAPSHOT_ID_RE = re.compile(r"\A(?:[0-9]{8}T[0-9]{6}-[0-9a-f]{8}|baseline)\Z")

BASELINE_ID = "baseline"


_SUFFIX = ".tracemalloc"

#: A pause between two pieces of work on the event loop, so that what came
#: due in between (timers, I/O) runs before the second piece.
_YIELD_S = 0.002

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


@dataclass(frozen=True)
class Answer:
    """ An API answer: ``data``, built by the server, then ``rendered``,
    members a heap worker already encoded, which the event loop sends on
    without decoding (see :class:`~bokeh_memwatch.heap.worker.Rendered`). """

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
        #: The wall clock (injectable).
        self.clock = clock
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
            self._traced_since = self.clock()

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

    def require_dir(self) -> str:
        if self._dir is None:
            raise SnapshotError("memwatch has not started in this process")
        return self._dir

    # -- tracemalloc ---------------------------------------------------------------

    def baseline_paths(self) -> tuple[str | None, str | None]:
        """ The baseline's tracemalloc snapshot file and type summary file (None: none). """
        snapshot = self._baseline_file.path if self._baseline_file is not None else None
        types = self._baseline["types_path"] if self._baseline is not None else None
        return snapshot, types

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
            self._traced_since = self.clock()
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
        now = self.clock()
        return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(4)

    async def take(self) -> dict[str, Any]:
        """ Take a tracemalloc snapshot and keep its file. """
        directory = self.require_dir()
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
            id=snapshot_id, path=path, created_at=self.clock(), size_bytes=int(value["size_bytes"]),
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
        directory = self.require_dir()
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
        now = self.clock()
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
            "age_s": round(self.clock() - self._baseline["created_at"], 3),
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
                "monotonic": time.monotonic(), "created_at": self.clock(),
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


def _unlink(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
