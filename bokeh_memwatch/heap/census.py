""" The census: live objects by type, and the types that grow with closed sessions.

Leaks in Panel and HoloViews apps often keep no Document and no Model (Panel
detaches its Models at session cleanup) but Panel components, param
watchers, DataFrames and arrays.  The census finds them by growth:

* :func:`census_job` runs in the forked heap worker child (never on the
  loop, never in the server process: it needs a frozen heap).  It scans the
  heap with :func:`bokeh_memwatch.heap.reachability.scan_heap`, which decides what
  a full collection would keep *without collecting* (no finalizer, no
  weakref callback, no application code runs), and counts the survivors by
  type, plus the untracked objects they refer to directly (numpy arrays,
  strings: the collector does not track them), with their shallow sizes;
* :func:`growing_types` compares censuses taken after different numbers of
  closed sessions: a type whose count grew by at least ``min_per_session``
  per closed session (and never shrank in between) is retained per session.
  A cache that one session fills once and every later session shares does
  not grow between censuses: bounded, not a leak;
* for the largest growing types the job names the holder chain of one
  instance, new since the census compared with (:class:`IdFilter`), so
  the chain explains the growth
  (:func:`bokeh_memwatch.heap.chains.find_chain`), and the bytes
  reachable from it (pympler ``asizeof``, an upper bound: shared objects are
  included).

:class:`CensusManager` keeps a few censuses of a live server (on demand, and
every ``interval_s`` when sessions were closed since the last one, at most
one per ``min_interval_s``) and answers the API, the metrics and the advice.

This module imports neither tornado nor bokeh at import time.

Over 400 lines: the census job (run in the heap worker), the growth analysis
across censuses and the manager that schedules them share the census' row
format; they change together.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gc
import itertools
import logging
import os
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import chains, referents
from .worker import ForkRefused, HeapWorkBusy, HeapWorker

log = logging.getLogger(__name__)

__all__ = (
    "BUILTIN_MODULES",
    "CensusManager",
    "CensusUnavailable",
    "IdFilter",
    "census_job",
    "growing_types",
    "is_generic",
    "type_key",
)

#: Modules whose types are generic containers: every kind of object is made
#: of them, so their growth names no holder.  Reported, never a verdict.
BUILTIN_MODULES = frozenset({"builtins", "collections", "weakref", "_weakrefset", "types", "functools",
                             "_collections", "abc", "typing", "inspect", "contextvars", "_thread"})

#: Packages of the server's own input/output machinery: event-loop handles,
#: futures, contexts, sockets, HTTP headers in flight.  Their counts move with
#: the requests running at the moment of a census (the check's own clients
#: included), not with closed sessions.  Reported, never a verdict.
INFRASTRUCTURE_PACKAGES = ("asyncio", "_asyncio", "_contextvars", "selectors", "socket", "_socket", "ssl",
                           "_ssl", "threading", "queue", "_queue", "concurrent", "tornado", "bokeh_memwatch",
                           "urllib", "http", "email")

#: Our own types are not the application's.
_OWN_PREFIX = "bokeh_memwatch."

#: Types whose growth is explained (chain, bytes) per census, at most.
MAX_EXPLAINED = 4

#: Growing types reported at most.
MAX_GROWING = 60

#: Censuses a live server keeps.
MAX_POINTS = 8

#: Untracked atoms: generic (never a verdict), too many to count one by one.
_ATOMS = frozenset({str, int, float, bool, bytes, complex, type(None), type(Ellipsis), range, slice})

#: Bits of the filter of the ids a census saw (:class:`IdFilter`), per
#: object counted, and at most (256 KiB: a few per kept census).
ID_FILTER_BITS_PER_OBJECT = 32
ID_FILTER_MAX_BITS = 1 << 21

#: Niceness added to the census child (a lower CPU priority than the server).
CHILD_NICENESS = 10

#: Longest wait for the heap worker to finish another job, in seconds.
BUSY_WAIT_S = 30.0


class CensusUnavailable(RuntimeError):
    """ No census can run here (no ``fork``: the scan needs a frozen heap),
    or one ran too recently (``retry_after_s``). """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def type_key(kind: type) -> str:
    """ ``module.QualName`` of a type. """
    module = getattr(kind, "__module__", None) or "?"
    name = getattr(kind, "__qualname__", None) or getattr(kind, "__name__", "?")
    return f"{module}.{name}" if module != "builtins" else str(name)


def is_generic(key: str) -> bool:
    """ Whether a type (``module.QualName``) is a generic container or the
    server's I/O machinery (see :data:`BUILTIN_MODULES`,
    :data:`INFRASTRUCTURE_PACKAGES`): its growth is no verdict. """
    module = _module_of(key)
    return not module or module in BUILTIN_MODULES or module.split(".")[0] in INFRASTRUCTURE_PACKAGES


def _module_of(key: str) -> str:
    # QualNames may hold dots (Outer.Inner): the module is the longest
    # dotted prefix made of lower-case-led names, good enough for packages.
    parts = key.split(".")
    module = parts[:-1]
    while module and module[-1][:1].isupper():
        module.pop()
    return ".".join(module)


def _shallow_size(obj: object, python_sizeof: dict[type, bool] | None = None) -> int:
    """ ``sys.getsizeof`` when the type's ``__sizeof__`` is C code; the
    object's base size otherwise (a Python ``__sizeof__`` is application
    code, which the child must not run).  ``python_sizeof`` caches the
    answer per type. """
    kind = type(obj)
    try:
        cached = None if python_sizeof is None else python_sizeof.get(kind)
        if cached is None:
            cached = isinstance(kind.__sizeof__, types.FunctionType)
            if python_sizeof is not None:
                python_sizeof[kind] = cached
        if cached:
            return int(object.__sizeof__(obj))
        return int(sys.getsizeof(obj))
    except Exception:
        return 0


class IdFilter:
    """ The ids of the application objects one census counted, as a
    one-hash Bloom filter (a bitmap of ``bits`` bits): ``id in filter`` is
    False for an object that was not alive then (unless its address is
    reused or hashes like one that was: a few percent at most), True for one
    that was.  The next census picks the instance that explains a growing
    type among objects absent from it: new since then, so made by the
    sessions closed since (see :func:`_pick_instances`).  JSON form:
    ``{"bits": int, "data": base64}``. """

    __slots__ = ("bits", "data")

    def __init__(self, bits: int, data: bytearray | None = None) -> None:
        self.bits = max(64, int(bits))
        self.data = data if data is not None else bytearray((self.bits + 7) // 8)

    @classmethod
    def for_count(cls, count: int) -> IdFilter:
        return cls(min(ID_FILTER_MAX_BITS, max(1024, count * ID_FILTER_BITS_PER_OBJECT)))

    def _slot(self, ident: int) -> int:
        # Addresses are 16-byte aligned: drop the constant bits, then mix.
        return ((ident >> 4) * 0x9E3779B97F4A7C15 >> 17) % self.bits

    def add(self, ident: int) -> None:
        slot = self._slot(ident)
        self.data[slot >> 3] |= 1 << (slot & 7)

    def __contains__(self, ident: object) -> bool:
        if not isinstance(ident, int):
            return False
        slot = self._slot(ident)
        return bool(self.data[slot >> 3] & (1 << (slot & 7)))

    def to_json(self) -> dict[str, Any]:
        return {"bits": self.bits, "data": base64.b64encode(bytes(self.data)).decode("ascii")}

    @classmethod
    def from_json(cls, value: Any) -> IdFilter | None:
        """ The filter, or None for anything else (an older census). """
        try:
            return cls(int(value["bits"]), bytearray(base64.b64decode(value["data"])))
        except Exception:
            return None


# -- growth (pure) ------------------------------------------------------------------


def growing_types(
    points: Sequence[Mapping[str, Any]], *, min_per_session: float = 1.0, min_closed: int = 1,
    include_generic: bool = False,
) -> list[dict[str, Any]]:
    """ Types whose count grows in proportion to closed sessions.

    Args:
        points: censuses, oldest first, each ``{"closed": sessions closed
            so far, "counts": {type: [count, bytes]}}``.
        min_per_session: least growth per closed session, in instances.
        min_closed: least sessions closed between the first and last point.
        include_generic: also report generic containers (dict, list...) and
            I/O machinery (see :func:`is_generic`).

    Returns:
        rows ``{"type", "count", "bytes", "growth", "growth_per_session",
        "bytes_per_session", "generic"}``, most bytes per session first.
        A type qualifies when its count grew from the first to the last
        point by ``min_per_session`` per closed session and never shrank
        from one point to the next (a cache filled once does not grow).
    """
    if len(points) < 2:
        return []
    first, last = points[0], points[-1]
    closed = int(last["closed"]) - int(first["closed"])
    if closed < max(1, min_closed):
        return []
    rows: list[dict[str, Any]] = []
    first_counts: Mapping[str, Sequence[int]] = first["counts"]
    for key, (count, size) in last["counts"].items():
        generic = is_generic(key)
        if generic and not include_generic:
            continue
        old_count, old_size = first_counts.get(key, (0, 0))
        growth = int(count) - int(old_count)
        if growth < min_per_session * closed:
            continue
        series = [int(p["counts"].get(key, (0, 0))[0]) for p in points]
        if any(b < a for a, b in itertools.pairwise(series)):
            continue
        rows.append({
            "type": key, "count": int(count), "bytes": int(size), "growth": growth,
            "growth_per_session": round(growth / closed, 3),
            "bytes_per_session": round((int(size) - int(old_size)) / closed, 1),
            "generic": generic,
        })
    rows.sort(key=lambda r: (r["bytes_per_session"], r["growth_per_session"]), reverse=True)
    return rows[:MAX_GROWING]


# -- the job (in the forked child) -----------------------------------------------


def census_job(
    *,
    previous: Mapping[str, Any] | None,
    closed: int,
    roots: chains.Roots | None,
    parent_pid: int,
    explain: int = MAX_EXPLAINED,
    chain_depth: int = 25,
    chain_deadline_s: float = 10.0,
) -> dict[str, Any]:
    """ Count what a full collection would keep, by type; explain growth.

    Runs in the heap worker's forked child only (raises
    :class:`bokeh_memwatch.heap.reachability.NotFrozen` elsewhere).

    Args:
        previous: an earlier census ``{"closed", "counts", "ids"}`` to
            compare with (its growing types get a chain and a size; the
            instance chosen to explain one is new since it when ``ids``, its
            :class:`IdFilter`, allows), or None.
        closed: sessions closed so far (the server's counter).
        roots: :func:`chains.capture_roots`, taken just before the fork.
        explain: growing types to explain at most.

    Returns:
        ``{"closed", "counts": {type: [count, bytes]}`` (application types
        only, see :func:`is_generic`), ``"ids"`` (:meth:`IdFilter.to_json` of
        the application objects counted), ``"generic_types", "objects",
        "tracked", "garbage", "scan_s", "count_s", "explained": {type:
        {"chain", "root", "complete", "reason", "text", "instance_bytes",
        "new"}}}`` (``new``: the instance was not alive at ``previous``).
    """
    from .reachability import NotFrozen, scan_heap

    if os.getpid() == parent_pid:
        raise NotFrozen("the census must run in a forked child, not in the server process")
    # Seconds of CPU: let the server's own process have the CPU first.
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICENESS)
    started = time.perf_counter()
    counts: dict[str, list[int]] = {}
    untracked_seen: set[int] = set()
    key_of: dict[type, str] = {}
    own: dict[type, bool] = {}
    samples: dict[str, Any] = {}
    wanted: set[str] = set()
    explained: dict[str, Any] = {}
    # The collector lists generation 0, then 1, then 2: positions below
    # ``young`` are objects made since the last collections.
    young = len(gc.get_objects(0)) + len(gc.get_objects(1))

    def key_for(kind: type) -> str:
        key = key_of.get(kind)
        if key is None:
            key = key_of[kind] = type_key(kind)
            own[kind] = key.startswith(_OWN_PREFIX)
        return key

    python_sizeof: dict[type, bool] = {}
    is_tracked = gc.is_tracked
    get_referents = referents.get_referents  # safe on 3.12 (gh-122695)
    getsizeof = sys.getsizeof
    object_sizeof = object.__sizeof__
    # Per tracked type: [count, bytes, 1 if its __sizeof__ is Python code
    # (then the base size is taken), 0 if C, -1 if memwatch's own type].
    by_type: dict[type, list[int]] = {}

    # The ids of the application objects counted (for :class:`IdFilter`).
    app_ids: list[int] = []
    app_key: dict[str, bool] = {}

    def new_row(kind: type) -> list[int]:
        key = key_for(kind)  # (sets own[kind])
        if own[kind]:
            return [0, 0, -1, 0]
        return [0, 0, 1 if isinstance(getattr(kind, "__sizeof__", None), types.FunctionType) else 0,
                0 if is_generic(key) else 1]

    def add(key: str, obj: object) -> None:
        row = counts.get(key)
        if row is None:
            row = counts[key] = [0, 0]
            app_key[key] = not is_generic(key)
        row[0] += 1
        row[1] += _shallow_size(obj, python_sizeof)
        if app_key[key]:
            app_ids.append(id(obj))

    with scan_heap() as heap:
        scan_s = heap.elapsed_s
        tracked = 0
        objects, reachable = heap.objects, heap.reachable
        for i in range(len(objects)):
            if not reachable[i]:
                continue
            obj = objects[i]
            kind = type(obj)
            row = by_type.get(kind)
            if row is None:
                row = by_type[kind] = new_row(kind)
            if row[2] < 0:  # memwatch's own
                continue
            tracked += 1
            row[0] += 1
            row[1] += object_sizeof(obj) if row[2] else getsizeof(obj)
            if row[3]:
                app_ids.append(id(obj))
            # Untracked objects (arrays, extension objects) are counted once,
            # through the survivors that refer to them; atoms (str, int...)
            # are generic and skipped without bookkeeping.
            for ref in get_referents(obj):
                rkind = type(ref)
                if rkind in _ATOMS or is_tracked(ref) or id(ref) in untracked_seen:
                    continue
                untracked_seen.add(id(ref))
                add(key_for(rkind), ref)
                if rkind is dict or rkind is tuple or rkind.__name__ == "ndarray":
                    for inner in _inner_untracked(ref):  # untracked containers, a view's base
                        ikind = type(inner)
                        if ikind not in _ATOMS and id(inner) not in untracked_seen:
                            untracked_seen.add(id(inner))
                            add(key_for(ikind), inner)
        for kind, row in by_type.items():
            if row[2] >= 0 and row[0]:
                merged = counts.setdefault(key_for(kind), [0, 0])
                merged[0] += row[0]
                merged[1] += row[1]
        by_type.clear()
        obj = ref = inner = row = None
        count_s = time.perf_counter() - started - scan_s
        if previous is not None and explain > 0:
            growing = growing_types([previous, {"closed": closed, "counts": counts}])
            wanted = {row["type"] for row in growing[:explain]}
        if wanted:
            before = IdFilter.from_json(previous.get("ids")) if previous is not None else None
            samples = _pick_instances(objects, reachable, wanted, young=young, key_of=key_of, before=before)
        objects = reachable = None  # type: ignore[assignment]
        n_objects = len(heap)
        garbage = heap.garbage_count()
    untracked_seen.clear()
    seen_ids = IdFilter.for_count(len(app_ids))
    for ident in app_ids:
        seen_ids.add(ident)
    app_ids.clear()
    try:
        share_s = chain_deadline_s / max(1, len(samples))
        for key in sorted(samples):
            instance, target, new = samples.pop(key)
            found = chains.find_chain(target, roots=roots, max_depth=chain_depth, deadline_s=share_s)
            explained[key] = {
                "chain": found["chain"], "root": found["root"], "complete": found["complete"],
                "reason": found["reason"], "text": chains.format_chain(found),
                "instance_bytes": _asizeof(instance), "new": new,
            }
            del instance, target
    finally:
        samples.clear()
    # Generic types are never a verdict: leave them out of the answer (the
    # server decodes it on its loop, and keeps a few censuses).
    generic = [key for key in counts if is_generic(key)]
    for key in generic:
        del counts[key]
    return {
        "closed": closed, "counts": counts, "ids": seen_ids.to_json(), "generic_types": len(generic),
        "objects": n_objects,
        "tracked": tracked, "garbage": garbage,
        "scan_s": round(scan_s, 3), "count_s": round(count_s, 3), "explained": explained,
    }


def _inner_untracked(ref: object) -> list[Any]:
    """ What an untracked object holds that the collector cannot see: the
    contents of an untracked dict or tuple, the base arrays of an array. """
    kind = type(ref)
    if kind is dict or kind is tuple:
        return _untracked_referents(ref)
    out = []
    array: Any = ref
    for _ in range(8):
        if not (type(array).__name__ == "ndarray" and type(array).__module__ == "numpy"):
            break
        array = array.base
        if array is None or gc.is_tracked(array):
            break
        out.append(array)
    return out


def _untracked_referents(obj: object) -> list[Any]:
    return [counted for counted, _ in _untracked_pairs(obj)]


def _untracked_pairs(obj: object) -> list[tuple[Any, Any]]:
    """ Pairs ``(counted, reachable)``: the untracked objects ``obj`` refers
    to, and the ``base`` arrays of
    numpy arrays among them (a view's data lives in its base, which the
    collector cannot see: arrays have no ``tp_traverse``).  Reads C slots
    only (``.base`` of the exact ``numpy.ndarray`` type). """
    is_tracked = gc.is_tracked
    out = []
    # Untracked dicts and tuples (CPython untracks those holding only
    # untracked objects) are opened, a few levels deep.
    pending = [(ref, 0) for ref in referents.get_referents(obj)]
    while pending:
        ref, level = pending.pop()
        if is_tracked(ref):
            continue
        # (object counted, object a chain search can reach: the collector
        # sees ``obj -> ref`` but not ``view -> base``)
        out.append((ref, ref))
        if type(ref) in (dict, tuple) and level < 3:
            pending.extend((inner, level + 1) for inner in referents.get_referents(ref))
            continue
        array = ref
        for _ in range(8):
            if not (type(array).__name__ == "ndarray" and type(array).__module__ == "numpy"):
                break
            array = array.base
            if array is None or is_tracked(array):
                break
            out.append((array, ref))
    return out


def _pick_instances(
    objects: list[Any], reachable: bytearray, wanted: set[str], *, young: int, key_of: Mapping[type, str],
    before: IdFilter | None = None,
) -> dict[str, Any]:
    """ One instance per wanted type, as ``(instance, object whose chain is
    searched, new)``  (a view for a base array), the one most likely to
    belong to a closed session rather than to the process: first among
    those whose id the earlier census (``before``) did not see (``new``:
    made since, as the growth is), then among those made since the last
    collections, then the largest (shallow size), the latest on ties (an
    old shared instance sits early in the oldest generation).  Without
    ``before``, ``new`` is None. """
    best: dict[str, tuple[int, int, int, int, Any, Any]] = {}
    for i in range(len(objects)):
        if not reachable[i]:
            continue
        obj = objects[i]
        candidates = [(obj, obj), *_untracked_pairs(obj)]
        for counted, target in candidates:
            key = key_of.get(type(counted), "")
            if key in wanted:
                rank = (0 if before is None or id(counted) in before else 1, 1 if i < young else 0,
                        _shallow_size(counted), i)
                if key not in best or rank >= best[key][:4]:
                    best[key] = (*rank, counted, target)
        candidates.clear()
    obj = counted = target = None
    return {key: (entry[4], entry[5], None if before is None else bool(entry[0])) for key, entry in best.items()}


def _asizeof(obj: object) -> int | None:
    """ Bytes reachable from ``obj`` (pympler; shared objects included). """
    try:
        from pympler import asizeof
    except ImportError:
        return None
    try:
        return int(asizeof.asizeof(obj))  # type: ignore[no-untyped-call]
    except Exception:
        return None


# -- the live server's censuses -------------------------------------------------------


class CensusManager:
    """ Censuses of one server process: on demand and every ``interval_s``
    when sessions were closed since the last one; at most one per
    ``min_interval_s``.  Use from the server's event loop only.

    Args:
        heap_worker: the server's heap worker (the census is one fork).
        closed: sessions closed so far (the tracker's counter).
        interval_s: period of the scheduled census (0: on demand only).
        min_interval_s: least time between two censuses.
        timeout_s: longest a census may run.
        chain_depth / chain_timeout_s: of the holder chain searches.
    """

    def __init__(
        self, heap_worker: HeapWorker, closed: Callable[[], int], *, interval_s: float = 600.0,
        min_interval_s: float = 60.0, timeout_s: float = 120.0, chain_depth: int = 25,
        chain_timeout_s: float = 20.0, live: Callable[[], int] | None = None,
    ) -> None:
        self.heap_worker = heap_worker
        self._closed = closed
        self._live = live or (lambda: 0)
        self.interval_s = interval_s
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self.chain_depth = chain_depth
        self.chain_timeout_s = chain_timeout_s
        #: Censuses kept, oldest first: ``{"time", "closed", "live", "counts", ...}``.
        self.points: list[dict[str, Any]] = []
        self.explained: dict[str, Any] = {}
        self.runs_total = 0
        self.errors_total = 0
        self.last_error: str | None = None
        self.last_costs: dict[str, Any] = {}
        self._last_started = float("-inf")
        self._running: asyncio.Future[dict[str, Any]] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- scheduling -------------------------------------------------------------

    def start(self) -> None:
        """ Schedule the periodic census on the running loop (idempotent). """
        if self.interval_s > 0 and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)
        # Only once sessions have closed (a census before the first session
        # would count what the first session fills once as growth), and only
        # when more closed since the last census.
        closed = self._closed()
        if closed > 0 and (not self.points or closed > int(self.points[-1]["closed"])):
            task = asyncio.ensure_future(self._scheduled())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _scheduled(self) -> None:
        try:
            await self.run()
        except (CensusUnavailable, HeapWorkBusy):
            pass  # a census is running or ran recently; the next tick tries again
        except Exception as e:
            log.warning("memwatch census failed: %s", e)

    # -- running ----------------------------------------------------------------

    async def run(self, *, force: bool = False) -> dict[str, Any]:
        """ Take a census now; the :meth:`state` after it.  A request while
        one runs shares it.

        Raises:
            CensusUnavailable: no fork here, or within ``min_interval_s`` of
                the last one (``retry_after_s``) unless ``force``.
            ForkRefused: the fork policy will not fork now (an unsafe native
                thread pool, or ``heap_fork="never"``).
            HeapWorkBusy, HeapWorkError: from the heap worker.
        """
        if self._running is not None:
            return await asyncio.shield(self._running)
        plan = self.heap_worker.plan()
        if plan.technique != "fork":
            if not hasattr(os, "fork") or plan.refused is None:  # no fork here, or a thread-only worker
                raise CensusUnavailable("the census needs os.fork (a frozen copy of the heap); not available here")
            # The fork policy (an unsafe native thread pool, or heap_fork
            # "never"): a thread cannot take an exact census; say why and how.
            raise ForkRefused(
                f"the census needs a forked copy of the heap and the fork policy will not fork now: {plan.refused}",
                plan=plan,
            )
        wait_s = self._last_started + self.min_interval_s - time.monotonic()
        if wait_s > 0 and not force:
            raise CensusUnavailable(f"a census ran {self.min_interval_s - wait_s:.0f} s ago",
                                    retry_after_s=round(wait_s, 3))
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._running = done
        self._last_started = time.monotonic()
        try:
            result = await self._take()
            done.set_result(result)
            return result
        except BaseException as e:
            self.errors_total += 1
            self.last_error = f"{type(e).__name__}: {e}"
            done.set_exception(e)
            done.exception()
            raise
        finally:
            self._running = None

    async def _take(self) -> dict[str, Any]:
        previous = self._baseline()
        closed = int(self._closed())
        live = int(self._live())
        # The heap worker runs one job at a time (verifications, chains,
        # snapshots): wait for a short one to finish rather than fail.
        deadline = time.monotonic() + BUSY_WAIT_S
        pause_s = 0.02
        while True:
            roots = chains.capture_roots()
            job = functools.partial(
                census_job, previous=previous, closed=closed, roots=roots, parent_pid=os.getpid(),
                chain_depth=self.chain_depth, chain_deadline_s=self.chain_timeout_s,
            )
            try:
                outcome = await self.heap_worker.run(job, timeout_s=self.timeout_s)
                break
            except HeapWorkBusy:
                if time.monotonic() + pause_s > deadline:
                    raise
            finally:
                del job, roots
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 0.5)
        value = outcome.value
        self.runs_total += 1
        self.last_costs = {**outcome.costs(), "scan_s": value.get("scan_s"), "count_s": value.get("count_s")}
        point = {
            "time": time.time(), "closed": closed, "live": live, "counts": value["counts"],
            "objects": value.get("objects"), "tracked": value.get("tracked"), "garbage": value.get("garbage"),
            "ids": value.get("ids"),
        }
        self.points.append(point)
        del self.points[:-MAX_POINTS]
        if value.get("explained"):
            self.explained.update(value["explained"])
        return self.state()

    def _baseline(self) -> dict[str, Any] | None:
        """ The census to compare the next one with: the oldest kept. """
        points = self._after_sessions()
        return ({"closed": points[0]["closed"], "counts": points[0]["counts"], "ids": points[0].get("ids")}
                if points else None)

    def _after_sessions(self) -> list[dict[str, Any]]:
        """ The censuses taken after at least one session closed: growth is
        measured among them only (what the first session fills once is no
        growth). """
        return [p for p in self.points if int(p["closed"]) > 0]

    # -- answers ------------------------------------------------------------------

    def growing(self) -> list[dict[str, Any]]:
        """ Types growing with closed sessions across the kept censuses
        (application types only), each with its holder chain and size when
        a census explained it. """
        rows = growing_types(self._after_sessions())
        for row in rows:
            info = self.explained.get(row["type"])
            row["holder"] = info.get("text") if info else None
            row["holder_complete"] = bool(info.get("complete")) if info else False
            row["instance_bytes"] = info.get("instance_bytes") if info else None
            row["holder_instance_new"] = info.get("new") if info else None
        return rows

    def state(self) -> dict[str, Any]:
        """ For the API: whether a census ran, its costs, and the growing types. """
        measured = self._after_sessions()
        last = measured[-1] if measured else None
        first = measured[0] if measured else None
        return {
            "available": self.heap_worker.forks,
            "censuses": len(self.points),
            "runs_total": self.runs_total,
            "errors_total": self.errors_total,
            "last_error": self.last_error,
            "interval_s": self.interval_s,
            "min_interval_s": self.min_interval_s,
            "last_time": self.points[-1]["time"] if self.points else None,
            "first_time": first["time"] if first else None,
            "closed_between": (int(last["closed"]) - int(first["closed"])) if last and first else 0,
            "objects": self.points[-1].get("objects") if self.points else None,
            "costs": self.last_costs,
            "growing": self.growing(),
        }
