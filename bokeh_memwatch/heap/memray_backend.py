""" memray as an allocation-tracking backend beside tracemalloc.

memray (Bloomberg's profiler, ``pip install bokeh-memwatch[memray]``) hooks
``malloc``/``mmap`` and their kin: it sees native allocations (numpy,
pandas, Arrow buffers) with the Python stack that made them, and Python's own
allocator where it asks the system for memory (pymalloc arenas; each small
object only with ``trace_python_allocators``).  Its tracker keeps the
process within 1.2-1.45x on allocation-heavy code where tracemalloc costs
14-47x, which is what lets it stay on in production.

The mechanism: a :class:`memray.Tracker` writing
``FileFormat.AGGREGATED_ALLOCATIONS`` to a file in a private directory.  Such
a tracker keeps, in memory, only per-stack totals and the live allocations
of its own run, and writes them when it stops.  Reading "what is alive"
therefore *closes a window*: the event loop stops the tracker (the file is
written) and starts a fresh one at once (16-34 ms on the loop at 200
sessions, mostly memray patching and unpatching the loaded libraries' symbols;
``python -m bench.memray_cost``); the closed file is read, off the loop, by a
fresh isolated interpreter running this file (it imports only memray: no fork
of the server, so no app code and no fork-policy hazard).  A
window's file answers, exactly, "which stacks allocated, during the window,
memory still alive at its end" (memray's ``--leaks``), and the peak within
it (memray's high-water mark).  It is memray's own capture file: ``memray
flamegraph``, ``memray table`` and ``memray stats`` read it offline, and
memray's reporter makes the HTML flame graph (also in a fresh interpreter).

What a window cannot say: an allocation made in an earlier window and freed
in this one is unknown to this window's tracker (memray drops frees of
addresses it did not see), so windows cannot be summed into "alive since
start".  The baseline is the start of a window; reading the growth since it
closes that window, and the next answer covers the time since that read.

Only one memray Tracker may be active in a process: when something else
(``memray run``, an app) already tracks, starting fails with
:class:`MemrayBusy`.

This module imports neither tornado nor ``bokeh.server``.

Over 400 lines: this file is also the helper's script (a fresh interpreter
runs it to read memray's files), so the tracker's lifecycle, the window
rotation and the helper's protocol, both of its ends, stay in one place.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import functools
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

__all__ = (
    "BACKENDS",
    "GROUPS",
    "KINDS",
    "CaptureInfo",
    "HelperFailed",
    "MemrayBackend",
    "MemrayBusy",
    "MemrayError",
    "MemrayReadBusy",
    "MemrayUnavailable",
    "UnknownCapture",
    "capture_rows",
    "have_memray",
)

#: Values of the ``allocations`` option (``--memwatch-allocations``).
BACKENDS = ("tracemalloc", "memray")

Group = Literal["lineno", "filename", "stack"]

#: Ways to group a window's allocations: by the allocating line (the most
#: recent Python frame), by its file, or by the whole stack.
GROUPS: tuple[Group, ...] = ("lineno", "filename", "stack")

Kind = Literal["leaked", "high_watermark"]

#: ``leaked``: allocated during the window and alive at its end;
#: ``high_watermark``: alive at the window's peak.
KINDS: tuple[Kind, ...] = ("leaked", "high_watermark")

#: Capture ids: ``YYYYmmddTHHMMSS-`` and 8 hex digits.  Ids never become paths.
_CAPTURE_ID_CHARS = frozenset("0123456789abcdefT-")

_SUFFIX = ".memray"

#: How often memray's background thread records RSS into the window (it keeps
#: every record in memory until the window closes: 24 bytes each).
MEMORY_INTERVAL_MS = 1000

#: Frames kept per stack in an answer (memray keeps them all in the file).
MAX_STACK_FRAMES = 64

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class MemrayError(RuntimeError):
    """ Base of this module's errors; the message is meant for the client. """


class MemrayUnavailable(MemrayError):
    """ memray is not installed (or not on this platform). """


class MemrayBusy(MemrayError):
    """ Another memray Tracker is active in this process (memray allows one). """


class MemrayReadBusy(MemrayError):
    """ Another read (or flame graph) of a capture is running; retry shortly. """


class NotTrackingMemray(MemrayError):
    """ The request needs memwatch's memray tracker running. """


class HelperFailed(MemrayError):
    """ The helper process failed or ran out of time (``timed_out``). """

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class UnknownCapture(MemrayError, LookupError):
    """ No kept capture has that id. """


@functools.lru_cache(maxsize=1)
def have_memray() -> bool:
    """ Import memray once; without it, one warning and the backend is off. """
    try:
        import memray  # noqa: F401
    except ImportError as e:
        log.warning("memray is not installed (%s): the memray allocation backend is disabled; "
                    "pip install bokeh-memwatch[memray]", e)
        return False
    return True


def _memray_version() -> str | None:
    try:
        from memray import _version
    except ImportError:
        return None
    return str(getattr(_version, "__version__", None))


@dataclass(frozen=True)
class CaptureInfo:
    """ A closed window: memray's capture file and when it covers. """

    id: str
    path: str
    started_at: float
    ended_at: float
    size_bytes: int
    native_traces: bool
    trace_python_allocators: bool
    baseline: bool

    def row(self) -> dict[str, Any]:
        """ What the API shows (never the path). """
        return {
            "id": self.id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "window_s": round(self.ended_at - self.started_at, 3),
            "size_bytes": self.size_bytes,
            "native_traces": self.native_traces,
            "trace_python_allocators": self.trace_python_allocators,
            "since_baseline": self.baseline,
        }


# --- reading a capture (runs in a fresh interpreter, or the CLI) ------------------


def _frame_text(frame: Sequence[Any]) -> str:
    function, filename, lineno = frame[0], frame[1], frame[2]
    return f"{filename}:{lineno} ({function})"


def capture_rows(
    path: str, *, group: Group = "lineno", kind: Kind = "leaked", limit: int = 25, native: bool = False,
) -> dict[str, Any]:
    """ The top allocators of a capture file, largest first.

    Returns ``{"allocators": [{"where", "size_bytes", "count", "allocators",
    "native": bool, "stack"?: [...]}], "rows_total", "size_bytes_total",
    "peak_memory_bytes", "started_at", "ended_at", "native_traces"}``.  A
    row's ``where`` is the most recent Python frame (``file:line
    (function)``) or its file; ``stack`` (group ``stack``) lists frames most
    recent first, native ones too when the capture has native traces.
    ``native`` is true when the memory came from ``malloc``/``mmap`` and kin
    rather than Python's object allocator.
    """
    import memray

    reader = memray.FileReader(path)
    try:
        meta = reader.metadata
        records = (reader.get_leaked_allocation_records(merge_threads=True) if kind == "leaked"
                   else reader.get_high_watermark_allocation_records(merge_threads=True))
        hybrid = bool(meta.has_native_traces) and (native or group == "stack")
        rows = _group_records(records, group, hybrid)
    finally:
        reader.close()
    ordered = sorted(rows.values(), key=lambda r: (r["size_bytes"], r["count"]), reverse=True)
    for row in ordered:
        row["allocators"] = sorted(row["allocators"])
    return {
        "allocators": ordered[:limit],
        "rows_total": len(ordered),
        "size_bytes_total": sum(r["size_bytes"] for r in ordered),
        "peak_memory_bytes": int(meta.peak_memory),
        "started_at": meta.start_time.timestamp(),
        "ended_at": meta.end_time.timestamp(),
        "native_traces": bool(meta.has_native_traces),
        "trace_python_allocators": bool(meta.trace_python_allocators),
        "kind": kind,
        "group": group,
    }


_PYTHON_ALLOCATORS = frozenset({"PYMALLOC_MALLOC", "PYMALLOC_CALLOC", "PYMALLOC_REALLOC"})


def _group_records(records: Iterable[Any], group: Group, hybrid: bool) -> dict[str, dict[str, Any]]:
    import memray

    rows: dict[str, dict[str, Any]] = {}
    for record in records:
        python_stack = record.stack_trace(MAX_STACK_FRAMES)
        top = python_stack[0] if python_stack else None
        if top is not None and str(top[1]).startswith(_PACKAGE_DIR):
            continue  # memwatch's own allocations, as tracemalloc's filters leave them out
        if group == "stack":
            stack = record.hybrid_stack_trace(MAX_STACK_FRAMES) if hybrid else python_stack
            frames = [_frame_text(f) for f in stack]
            key = "\n".join(frames) or "<unknown>"
        elif top is None:
            key = "<unknown>"
        elif group == "filename":
            key = str(top[1])
        else:
            key = _frame_text(top)
        row = rows.get(key)
        if row is None:
            row = rows[key] = {"where": key.split("\n", 1)[0], "size_bytes": 0, "count": 0,
                               "allocators": [], "native": False}
            if group == "stack":
                row["stack"] = frames
        row["size_bytes"] += int(record.size)
        row["count"] += int(record.n_allocations)
        name = memray.AllocatorType(record.allocator).name
        if name not in row["allocators"]:
            row["allocators"].append(name)
        if name not in _PYTHON_ALLOCATORS:
            row["native"] = True
    return rows


# --- the backend ------------------------------------------------------------------------


class MemrayBackend:
    """ memwatch's memray tracker in one server process, and its captures.

    Construct and :meth:`start` in the process that serves (after any
    ``--num-procs`` fork), on its event loop: the tracker follows the Python
    stacks of the thread that starts it and of threads started later.
    :meth:`stop` stops tracking and removes the files.

    Args:
        max_captures: most closed windows kept (the oldest go first).
        max_capture_bytes: most bytes of capture files kept.
        timeout_s: longest one read (or flame graph) may run.
        python: the interpreter that reads captures (default: this one).
        clock: wall clock (injectable).
    """

    def __init__(
        self,
        *,
        max_captures: int = 5,
        max_capture_bytes: int = 512 * 1024 * 1024,
        timeout_s: float = 300.0,
        python: str = sys.executable,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_captures < 1:
            raise ValueError(f"max_captures must be >= 1, got {max_captures}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.max_captures = max_captures
        self.max_capture_bytes = max_capture_bytes
        self.timeout_s = timeout_s
        self.python = python
        self._clock = clock
        self._dir: str | None = None
        self._pid: int | None = None
        self._tracker: Any = None
        self._window_path: str | None = None
        self._window_started: float | None = None
        self._window_is_baseline = False
        self._baseline_at: float | None = None
        self._settings = {"native_traces": False, "trace_python_allocators": False}
        self._captures: OrderedDict[str, CaptureInfo] = OrderedDict()
        self._reading = False
        self.last_rotation_ms: float | None = None
        #: How long starting the last helper process took on the loop.
        self.last_spawn_ms: float | None = None
        self.rotations = 0

    # -- lifecycle --------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return have_memray()

    def start(self) -> None:
        """ Make the private directory (idempotent per process). """
        if self._dir is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._dir = tempfile.mkdtemp(prefix=f"memwatch-memray-{self._pid}-")  # mode 0700
        self._captures.clear()
        self._tracker = None
        atexit.register(self.stop)

    def stop(self) -> None:
        """ Stop tracking and remove every file (idempotent; safe from ``atexit``). """
        if self._pid != os.getpid():
            return
        with contextlib.suppress(Exception):
            self._stop_tracker()
        directory, self._dir = self._dir, None
        if directory is None:
            return
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        self._captures.clear()
        shutil.rmtree(directory, ignore_errors=True)

    @property
    def directory(self) -> str | None:
        return self._dir

    @property
    def tracking(self) -> bool:
        return self._tracker is not None

    def _require_dir(self) -> str:
        if self._dir is None or self._pid != os.getpid():
            raise MemrayError("memwatch has not started in this process")
        return self._dir

    def _require_memray(self) -> None:
        if not have_memray():
            raise MemrayUnavailable("memray is not installed: pip install bokeh-memwatch[memray] "
                                    "(Linux and macOS); tracemalloc stays available")

    # -- the tracker -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "available": have_memray(),
            "version": _memray_version() if have_memray() else None,
            "tracking": self.tracking,
            **self._settings,
            "window_started_at": self._window_started if self.tracking else None,
            "baseline_at": self._baseline_at,
            "window_is_baseline": self._window_is_baseline and self.tracking,
            "rotations": self.rotations,
            "last_rotation_ms": self.last_rotation_ms,
            "last_spawn_ms": self.last_spawn_ms,
            "captures": [c.row() for c in self._captures.values()],
            "max_captures": self.max_captures,
        }

    def start_tracking(self, *, native_traces: bool = False, trace_python_allocators: bool = False) -> dict[str, Any]:
        """ Start memwatch's tracker.  Already tracking with the same settings
        changes nothing; with others it is a :class:`MemrayError` (stop first).

        Raises:
            MemrayUnavailable: memray is not installed.
            MemrayBusy: another memray Tracker is active in this process.
        """
        self._require_dir()
        self._require_memray()
        wanted = {"native_traces": bool(native_traces), "trace_python_allocators": bool(trace_python_allocators)}
        if self.tracking:
            if wanted != self._settings:
                raise MemrayError(f"memray is already tracking with {self._settings}; stop it first")
            return {"changed": False, **self.state()}
        self._settings = wanted
        started = time.perf_counter()
        self._open_window(baseline=False)
        log.info("memwatch: memray tracking (native_traces=%s, trace_python_allocators=%s)",
                 wanted["native_traces"], wanted["trace_python_allocators"])
        return {"changed": True, "elapsed_ms": round((time.perf_counter() - started) * 1000, 3), **self.state()}

    def stop_tracking(self) -> dict[str, Any]:
        """ Stop the tracker; the last window is kept as a capture. """
        changed = self.tracking
        started = time.perf_counter()
        if changed:
            self._close_window()
        return {"changed": changed, "elapsed_ms": round((time.perf_counter() - started) * 1000, 3), **self.state()}

    def _open_window(self, *, baseline: bool) -> None:
        import memray

        directory = self._require_dir()
        capture_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock())) + "-" + secrets.token_hex(4)
        path = os.path.join(directory, capture_id + _SUFFIX)
        tracker = memray.Tracker(
            destination=memray.FileDestination(path, overwrite=False, compress_on_exit=False),
            native_traces=self._settings["native_traces"],
            trace_python_allocators=self._settings["trace_python_allocators"],
            memory_interval_ms=MEMORY_INTERVAL_MS,
            follow_fork=False,
            file_format=memray.FileFormat.AGGREGATED_ALLOCATIONS,
        )
        try:
            tracker.__enter__()
        except RuntimeError as e:
            _unlink(path)
            if "one Tracker" in str(e):
                raise MemrayBusy(
                    "another memray Tracker is already active in this process (memray run, or the app's own); "
                    "memray allows one at a time: stop it, or use tracemalloc"
                ) from None
            raise MemrayError(f"memray could not start: {e}") from None
        self._tracker = tracker
        self._window_path = path
        self._window_started = self._clock()
        self._window_is_baseline = baseline

    def _stop_tracker(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.__exit__(None, None, None)

    def _close_window(self) -> CaptureInfo | None:
        """ Stop the tracker (memray writes the window's file) and keep the file. """
        path, started, baseline = self._window_path, self._window_started, self._window_is_baseline
        self._stop_tracker()
        self._window_path = None
        if path is None or started is None or not os.path.exists(path):
            return None
        capture_id = os.path.basename(path)[: -len(_SUFFIX)]
        info = CaptureInfo(
            id=capture_id, path=path, started_at=started, ended_at=self._clock(),
            size_bytes=os.path.getsize(path), baseline=baseline, **self._settings,
        )
        self._captures[capture_id] = info
        self._evict(keep=capture_id)
        return info

    def rotate(self, *, baseline: bool = False) -> CaptureInfo | None:
        """ Close the current window (its capture is kept) and open the next,
        on the event loop; ``baseline`` marks the new window as starting at
        the baseline.  Returns the closed capture. """
        self._require_dir()
        if not self.tracking:
            raise NotTrackingMemray("memray is not tracking: POST api/memray {\"action\": \"start\"} "
                                    "or start the server with --memwatch-allocations memray")
        started = time.perf_counter()
        info = self._close_window()
        try:
            self._open_window(baseline=baseline)
        finally:
            self.last_rotation_ms = round((time.perf_counter() - started) * 1000, 3)
            self.rotations += 1
        if baseline:
            self._baseline_at = self._window_started
        return info

    def set_baseline(self) -> dict[str, Any]:
        """ Start a new window now; growth since the baseline is that window. """
        closed = self.rotate(baseline=True)
        return {"baseline_at": self._baseline_at, "closed": closed.row() if closed else None,
                "rotation_ms": self.last_rotation_ms}

    # -- captures ------------------------------------------------------------------------

    def info(self, capture_id: str) -> CaptureInfo:
        if not capture_id or len(capture_id) > 40 or not set(capture_id) <= _CAPTURE_ID_CHARS:
            raise UnknownCapture(f"no capture {capture_id[:80]!r}")
        info = self._captures.get(capture_id)
        if info is None:
            raise UnknownCapture(f"no capture {capture_id!r} (it may have been evicted)")
        return info

    def delete(self, capture_id: str) -> None:
        info = self.info(capture_id)
        del self._captures[capture_id]
        _unlink(info.path)

    def _evict(self, *, keep: str) -> list[str]:
        evicted: list[str] = []
        while len(self._captures) > self.max_captures or (
            len(self._captures) > 1 and sum(c.size_bytes for c in self._captures.values()) > self.max_capture_bytes
        ):
            oldest_id = next(iter(self._captures))
            if oldest_id == keep:
                break
            oldest = self._captures.pop(oldest_id)
            _unlink(oldest.path)
            evicted.append(oldest_id)
        return evicted

    # -- reading (a fresh interpreter) ------------------------------------------------

    async def allocators(
        self, *, group: Group = "lineno", kind: Kind = "leaked", limit: int = 25,
        compare: str | None = None, capture: str | None = None, native: bool = False,
    ) -> dict[str, Any]:
        """ Top allocators of a window.  Without ``capture`` the current window
        is closed first (growth since the baseline, or since the last read).

        ``compare="baseline"`` requires the current window to start at the
        baseline (409 otherwise: it was read already, or there is none).
        """
        if group not in GROUPS:
            raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self._require_memray()
        if capture is not None and compare is not None:
            raise ValueError("give capture or compare, not both")
        if capture is not None:
            info = self.info(capture)
        else:
            if compare is not None and compare != "baseline":
                raise ValueError("compare must be 'baseline' (or read a kept capture with capture=<id>)")
            if compare == "baseline" and not (self.tracking and self._window_is_baseline):
                raise MemrayError(
                    "the current memray window does not start at a baseline (none was set, or it was read "
                    "already: each read closes the window); POST api/memray/baseline first"
                )
            self._begin_read()
            try:
                closed = self.rotate()
            except BaseException:
                self._reading = False
                raise
            if closed is None:
                self._reading = False
                raise MemrayError("the memray window produced no file")
            info = closed
            return await self._read(info, group, kind, limit, native, begun=True)
        return await self._read(info, group, kind, limit, native, begun=False)

    def _begin_read(self) -> None:
        if self._reading:
            raise MemrayReadBusy("another memray read is running; retry shortly")
        self._reading = True

    async def _read(
        self, info: CaptureInfo, group: Group, kind: Kind, limit: int, native: bool, *, begun: bool,
    ) -> dict[str, Any]:
        if not begun:
            self._begin_read()
        started = time.perf_counter()
        try:
            args = ["read", info.path, "--group", group, "--kind", kind, "--limit", str(limit)]
            if native:
                args.append("--native")
            out = await self._run_helper(*args)
        finally:
            self._reading = False
        answer: dict[str, Any] = json.loads(out)
        answer["capture"] = info.row()
        answer["read_s"] = round(time.perf_counter() - started, 3)
        answer["rotation_ms"] = self.last_rotation_ms
        answer["spawn_ms"] = self.last_spawn_ms
        answer["technique"] = "subprocess"
        return answer

    async def flamegraph(self, capture_id: str, *, kind: Kind = "leaked") -> str:
        """ memray's HTML flame graph of a kept capture (made by memray's own
        reporter in a fresh interpreter, its scripts inline: ``--no-web``).
        Returns the file's path, in the private directory. """
        self._require_memray()
        info = self.info(capture_id)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        out = info.path[: -len(_SUFFIX)] + f".{kind}.html"
        self._begin_read()
        try:
            if not os.path.exists(out):
                flags = ["--leaks"] if kind == "leaked" else []
                await self._run_helper("flamegraph", *flags, "--no-web", "-f", "-o", out, info.path)
        finally:
            self._reading = False
        return out

    async def _run_helper(self, *args: str) -> bytes:
        # This file run as a script in an isolated interpreter (-I: no PYTHONPATH,
        # no user site, no script directory): it imports only the standard library
        # and memray, never memwatch's package, Bokeh or the app (0.13 s instead of 1.3 s).
        code = f"import runpy, sys; sys.argv[0] = {__file__!r}; runpy.run_path({__file__!r}, run_name='__main__')"
        return await self._run_process(self.python, "-I", "-c", code, *args)

    async def _run_process(self, *argv: str) -> bytes:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOKEH_MEMWATCH_TOKEN")}
        spawn_started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env,
        )
        self.last_spawn_ms = round((time.perf_counter() - spawn_started) * 1000, 3)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
            if isinstance(sys.exc_info()[1], asyncio.TimeoutError):
                raise HelperFailed(f"reading the memray capture took over {self.timeout_s:g} s",
                                   timed_out=True) from None
            raise
        if proc.returncode != 0:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(no output)"]
            log.warning("memwatch: the memray helper failed: %s", tail[0][:300])
            raise HelperFailed(f"reading the memray capture failed: {tail[0][:300]}")
        return out

    # -- the report -------------------------------------------------------------------

    async def report_section(self, *, limit: int = 25) -> dict[str, Any]:
        """ The report's ``memray`` section: the state, and the top
        allocators of the window closed now (when tracking). """
        section: dict[str, Any] = {"state": self.state()}
        if not self.tracking:
            section["allocators"] = {"error": "memray was not tracking"}
            return section
        try:
            section["allocators"] = await self.allocators(limit=limit)
        except Exception as e:
            section["allocators"] = {"error": str(e)[:300]}
        return section


def _unlink(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _main(argv: Sequence[str] | None = None) -> None:
    """ ``python -m bokeh_memwatch.memray_backend read FILE``: the rows as JSON;
    ``... flamegraph ARGS``: memray's own ``memray flamegraph ARGS``.  Either
    runs at a lower CPU priority (nice 10), so that on a busy machine the
    server's loop goes first. """
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["flamegraph"]:
        from memray.commands import main as memray_main

        sys.exit(memray_main(args_list))
    parser = argparse.ArgumentParser(prog="python -m bokeh_memwatch.memray_backend")
    sub = parser.add_subparsers(dest="command", required=True)
    read = sub.add_parser("read", help="top allocators of a memray capture file, as JSON")
    read.add_argument("path")
    read.add_argument("--group", choices=GROUPS, default="lineno")
    read.add_argument("--kind", choices=KINDS, default="leaked")
    read.add_argument("--limit", type=int, default=25)
    read.add_argument("--native", action="store_true")
    args = parser.parse_args(args_list)
    rows = capture_rows(args.path, group=args.group, kind=args.kind, limit=args.limit, native=args.native)
    sys.stdout.write(json.dumps(rows))


if __name__ == "__main__":  # pragma: no cover - run as a helper process
    _main()
