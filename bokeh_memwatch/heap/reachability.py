""" What Python's cycle collector would free, decided without collecting.

A full collection of CPython's garbage collector (``Modules/gcmodule.c``,
``deduce_unreachable``) frees the tracked objects it cannot reach from a
*root*, where a root is a tracked object with a reference from outside the
tracked set:

1. ``gc_refs = ob_refcnt`` for every tracked object (``update_refs``);
2. for every tracked object, each reference its ``tp_traverse`` visits to
   another tracked object decrements that object's ``gc_refs``
   (``subtract_refs``); what is left counts references from C statics, the
   interpreter state, thread stacks, untracked holders and frozen objects;
3. objects with ``gc_refs > 0`` are roots; everything reachable from them
   through ``tp_traverse`` survives (``move_unreachable``); the rest is
   garbage that the next full collection frees (barring a ``__del__`` that
   resurrects it).

:func:`scan_heap` does the same from Python: ``sys.getrefcount`` for step 1,
``gc.get_referents`` (which calls ``tp_traverse``) for steps 2 and 3.  It
never collects, so it runs no ``__del__``, no weakref callback and no other
code of the application: it only reads reference counts, calls
``tp_traverse`` and ``type()``.  Weak references are not references
(``tp_traverse`` of a weakref visits its callback only), and immortal objects
(3.12+) have huge reference counts, so they are roots, as in CPython.

The answer is exact only on a frozen heap: run it in a forked child (see
:mod:`bokeh_memwatch.heap.worker`), where one thread runs and nothing else
changes a reference count.  In a thread of the live process other threads
change counts under it; :func:`scan_heap` refuses that unless told
``frozen=False`` knowingly (tests).

Timers.  The event loop's scheduled callbacks (asyncio ``Handle`` and
``TimerHandle``; tornado's ``call_later``/``add_timeout``/``PeriodicCallback``
and Bokeh's periodic callbacks are ``TimerHandle`` objects underneath) are
roots only until they run.  The scan marks twice in one sweep: first without
following references out of a handle (``reachable_without_timers``), then on
from the handles, latest due first, so every object reachable only through
handles is labelled with the latest due time of the handles that reach it
(``held_until``, unix seconds).  An object held only by a timer may be freed
once that timer has run (a stopped Bokeh periodic callback's last sleep) or
may be held again (a tornado ``PeriodicCallback`` re-arms itself): check again
after the due time.

API (stable; other modules build on it)::

    with scan_heap() as heap:          # in a forked child
        fate = heap.fate(target_id)    # Fate(state, held_until)
        for obj in heap.survivors():   # what a full collection would keep
            ...
    # leaving the block releases every reference the scan held

    verify_groups({"7": [weakref, ...]})   # the job the tracker runs

This module imports neither tornado nor bokeh.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from . import referents

log = logging.getLogger(__name__)

__all__ = (
    "Fate",
    "FateState",
    "Heap",
    "NotFrozen",
    "resolve",
    "scan_heap",
    "timer_types",
    "verify_groups",
)

#: What a full collection would do to an object:
#: ``"garbage"``: unreachable, freed by the next full collection;
#: ``"reachable"``: reachable from a root without passing through a
#: scheduled loop callback, so a collection keeps it;
#: ``"held_by_timer"``: reachable only through scheduled loop callbacks
#: (``held_until`` says when the last of them is due);
#: ``"untracked"``: not tracked by the collector (freed by reference counting
#: only; the scan cannot tell who holds it);
#: ``"freed"``: not alive when the scan started.
FateState = Literal["garbage", "reachable", "held_by_timer", "untracked", "freed"]


@dataclass(frozen=True, slots=True)
class Fate:
    """ One object's fate.  ``held_until``: unix time (seconds) at which the
    last scheduled callback holding it is due, for ``"held_by_timer"`` only
    (``None`` when a holder's due time is unknown, e.g. uvloop handles). """

    state: FateState
    held_until: float | None = None

    def as_json(self) -> list[Any]:
        return [self.state, self.held_until]


class NotFrozen(RuntimeError):
    """ :func:`scan_heap` was asked to run in the process it was imported
    by (``frozen=True``) where other threads can change reference counts. """


def timer_types() -> frozenset[type]:
    """ Exact types of scheduled event-loop callbacks: asyncio's ``Handle``
    and ``TimerHandle`` and, when uvloop is already imported, its handle
    types (never imported here). """
    import asyncio.events

    types: set[type] = {asyncio.events.Handle, asyncio.events.TimerHandle}
    uvloop_loop = sys.modules.get("uvloop.loop")
    for name in ("Handle", "TimerHandle"):
        candidate = getattr(uvloop_loop, name, None) if uvloop_loop is not None else None
        if isinstance(candidate, type):
            types.add(candidate)
    return frozenset(types)


def _refcounts(objs: list[Any]) -> list[int]:
    """ ``sys.getrefcount`` of every item, in one fixed code path (so the
    references the path itself adds are the same for every item). """
    getrefcount = sys.getrefcount
    return [getrefcount(o) for o in objs]


def _refcount_bias() -> int:
    """ What :func:`_refcounts` reports for an object whose only reference
    is the list it is in: the references the scan itself adds. """
    probe = [object()]
    return _refcounts(probe)[0]


class Heap:
    """ The result of one scan: every tracked object at the scan, where a
    full collection would leave it, and the due times of timer holders.

    Attributes:
        objects: ``gc.get_objects()`` at the scan (strong references: use
            only inside the ``with scan_heap()`` block).
        index: ``id(obj) -> position`` in ``objects``.
        reachable: per position, 1 when a full collection keeps the object.
        reachable_without_timers: per position, 1 when reachable from a root
            without passing through a scheduled loop callback.
        held_until: position -> latest due time (unix s, or None if unknown)
            of the callbacks holding an object reachable only through them.
        roots: how many objects had references from outside the tracked set.
        elapsed_s: how long the scan took.
    """

    __slots__ = (
        "elapsed_s", "held_until", "index", "objects", "reachable",
        "reachable_without_timers", "roots", "timers",
    )

    def __init__(self) -> None:
        self.objects: list[Any] = []
        self.index: dict[int, int] = {}
        self.reachable = bytearray()
        self.reachable_without_timers = bytearray()
        self.held_until: dict[int, float | None] = {}
        self.roots = 0
        self.timers = 0
        self.elapsed_s = 0.0

    def __len__(self) -> int:
        return len(self.objects)

    def fate(self, obj_id: int) -> Fate:
        """ The fate of the object with this ``id`` (alive at the scan). """
        i = self.index.get(obj_id)
        if i is None:
            return Fate("untracked")
        if self.reachable_without_timers[i]:
            return Fate("reachable")
        if self.reachable[i]:
            return Fate("held_by_timer", self.held_until.get(i))
        return Fate("garbage")

    def survivors(self) -> Iterator[Any]:
        """ The tracked objects a full collection would keep (a generator
        over ``objects``; do not keep what it yields). """
        reachable = self.reachable
        objects = self.objects
        for i in range(len(objects)):
            if reachable[i]:
                yield objects[i]

    def garbage_count(self) -> int:
        """ How many tracked objects the next full collection would free. """
        return len(self.reachable) - sum(self.reachable)

    def release(self) -> None:
        """ Drop every reference the scan holds. """
        self.objects = []
        self.index = {}


@contextmanager
def scan_heap(*, frozen: bool = True, timers: Iterable[type] | None = None) -> Iterator[Heap]:
    """ Scan the heap as a full collection would, without collecting.

    Args:
        frozen: require a heap nothing else changes: a forked child with the
            collector disabled (the heap worker's child).  ``False`` lets
            tests scan their own process: exact only while no other thread
            runs Python code.
        timers: exact types of scheduled loop callbacks (default
            :func:`timer_types`); their references are followed only in the
            second stage (see the module docstring).

    Yields:
        :class:`Heap`; its references are released when the block ends.

    Raises:
        NotFrozen: ``frozen`` but other Python threads exist or the collector
            is enabled (a collection in the middle would free objects under
            the scan).

    Costs one ``sys.getrefcount`` and two ``gc.get_referents`` calls per
    tracked object, and a dict of ids: in the child, about a second and
    100-200 MB per million tracked objects.
    """
    if frozen:
        if gc.isenabled():
            raise NotFrozen("the garbage collector is enabled: scan in a forked heap worker child")
        if len(sys._current_frames()) > 1:
            raise NotFrozen("other threads are running: scan in a forked heap worker child")
    timer_set = frozenset(timers) if timers is not None else timer_types()
    heap = Heap()
    started = time.perf_counter()
    bias = _refcount_bias()
    objs = gc.get_objects()
    try:
        heap.objects = objs
        _mark(heap, objs, bias, timer_set)
        heap.elapsed_s = time.perf_counter() - started
        yield heap
    finally:
        heap.release()
        del objs


#: Objects passed to one ``gc.get_referents`` call (it takes many at once:
#: one call per batch instead of one per object).
_BATCH = 4096


def _mark(heap: Heap, objs: list[Any], bias: int, timer_set: frozenset[type]) -> None:
    # Step 1 first, before any other reference to the objects exists.
    gc_refs = [count - bias for count in _refcounts(objs)]
    n = len(objs)
    index = heap.index = {id(objs[i]): i for i in range(n)}
    get = index.get
    # Safe on 3.12, whose _asyncio module hands out freed objects (gh-122695).
    get_referents_of = referents.get_referents_of
    # Step 2: subtract references between tracked objects (every reference
    # tp_traverse visits counts once, as in subtract_refs).
    for k in range(0, n, _BATCH):
        for j in map(get, map(id, get_referents_of(objs[k:k + _BATCH]))):
            if j is not None:
                gc_refs[j] -= 1
    # Step 3a: mark from the roots, not following references out of timers.
    marked = bytearray(n)
    roots = [i for i in range(n) if gc_refs[i] > 0]
    heap.roots = len(roots)
    del gc_refs
    for i in roots:
        marked[i] = 1
    timer_positions: list[int] = []
    _spread(objs, get, marked, roots, stop_at=timer_set, stopped=timer_positions, label=None)
    heap.reachable_without_timers = bytearray(marked)
    heap.timers = len(timer_positions)
    # Step 3b: on from the timers, latest due first, so what a timer reaches
    # first is labelled with the latest due time among its holders.
    offset = time.time() - time.monotonic()
    dues = [(_due(objs[i], offset), i) for i in timer_positions]
    dues.sort(key=lambda pair: float("inf") if pair[0] is None else pair[0], reverse=True)
    for due, t in dues:
        _spread(objs, get, marked, [t], stop_at=frozenset(), stopped=[], label=(heap.held_until, due))
    heap.reachable = marked


def _spread(
    objs: list[Any],
    get: Callable[[int], int | None],
    marked: bytearray,
    frontier: list[int],
    *,
    stop_at: frozenset[type],
    stopped: list[int],
    label: tuple[dict[int, float | None], float | None] | None,
) -> None:
    """ Mark everything reachable from ``frontier`` (marked already), level
    by level, not following references out of objects whose exact type is
    in ``stop_at`` (their positions go to ``stopped``); with ``label``
    ``(held_until, due)``, record ``due`` for every newly marked position. """
    get_referents_of = referents.get_referents_of
    while frontier:
        batch = [objs[i] for i in frontier if type(objs[i]) not in stop_at]
        if stop_at:
            stopped.extend(i for i in frontier if type(objs[i]) in stop_at)
        found: list[int] = []
        for k in range(0, len(batch), _BATCH):
            for j in map(get, map(id, get_referents_of(batch[k:k + _BATCH]))):
                if j is not None and not marked[j]:
                    marked[j] = 1
                    found.append(j)
        del batch
        if label is not None:
            held_until, due = label
            for j in found:
                held_until[j] = due
        frontier = found


def _due(handle: Any, offset: float) -> float | None:
    """ When a scheduled callback is due, in unix seconds: a ``TimerHandle``'s
    ``_when`` (loop time, ``time.monotonic`` for asyncio's loops) plus the
    wall-clock offset; a plain ``Handle`` (``call_soon``, readers) is due now;
    None when unknown. """
    import asyncio.events

    kind = type(handle)
    if kind is asyncio.events.TimerHandle:
        when = handle._when  # a slot of the exact asyncio type: no user code
        return float(when) + offset if isinstance(when, (int, float)) else None
    if kind is asyncio.events.Handle:
        return time.time()
    return None


def resolve(refs: Iterable[weakref.ReferenceType[Any]]) -> list[int]:
    """ The ids of the objects still alive behind ``refs``, holding no
    strong reference afterwards. """
    ids: list[int] = []
    for ref in refs:
        obj = ref()
        if obj is not None:
            ids.append(id(obj))
        del obj
    return ids


def verify_groups(
    groups: Mapping[str, Sequence[weakref.ReferenceType[Any]]],
    *,
    parent_pid: int | None = None,
) -> dict[str, Any]:
    """ The tracker's verification job, for a forked heap worker child.

    Args:
        groups: key -> weak references (e.g. a destroyed session's Document
            first, then its Models).
        parent_pid: the pid of the process that built the job: the job
            refuses to run in that process (a thread fallback cannot give an
            exact answer), raising :class:`NotFrozen`.

    Returns:
        ``{"fates": {key: [[state, held_until], ...]}, "objects": n,
        "roots": n, "timers": n, "garbage": n, "scan_s": s}``; the fates are
        in the order of the group's references (``"freed"`` for a dead one).
    """
    if parent_pid is not None and os.getpid() == parent_pid:
        raise NotFrozen("verification must run in a forked child, not in the server process")
    wanted: dict[str, list[int | None]] = {}
    for key, refs in groups.items():
        ids: list[int | None] = []
        for ref in refs:
            obj = ref()
            ids.append(None if obj is None else id(obj))
            del obj
        wanted[key] = ids
    with scan_heap() as heap:
        fates = {
            key: [Fate("freed").as_json() if i is None else heap.fate(i).as_json() for i in ids]
            for key, ids in wanted.items()
        }
        return {
            "fates": fates,
            "objects": len(heap),
            "roots": heap.roots,
            "timers": heap.timers,
            "garbage": heap.garbage_count(),
            "scan_s": round(heap.elapsed_s, 3),
        }
