""" "Why alive?": the reference chain that holds a destroyed session's
Document (or, with the Document gone, its heaviest Model), searched in the
heap worker, with its answers cached by session.

:class:`WhyAlive` is what ``POST api/orphans/<id>/chain``, the bug report and
``bokeh-memwatch check`` ask; the search itself is
:func:`bokeh_memwatch.heap.chains.find_chain`.  Only weak references to the
target cross into the job, and the captured roots are dropped when it ends.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ..collect.tracker import SessionTracker, source_bytes
from ..heap import chains
from ..heap.worker import HeapWorker

log = logging.getLogger(__name__)

__all__ = (
    "CACHE_ENTRIES",
    "SessionAlive",
    "SessionCollected",
    "UnknownSession",
    "WhyAlive",
    "chain_target",
)

#: Chain answers kept at most (each under ``max_depth`` hops); older ones go first.
CACHE_ENTRIES = 64


class UnknownSession(LookupError):
    """ No session with that id was ever seen (or it was forgotten). """


class SessionAlive(LookupError):
    """ The session is alive: the server holds its Document, as it should. """


class SessionCollected(LookupError):
    """ Nothing of the session is alive any more. """


class WhyAlive:
    """ Chain searches for destroyed sessions, and their answers for ``cache_s``.

    Args:
        tracker: finds the session's record (weak references to its objects).
        heap_worker: runs the search (one heavy job at a time).
        max_depth: longest chain searched, in hops.
        timeout_s: longest one search may run (the search itself stops at 80%).
        cache_s: how long an answer is reused.
        show_values: add short reprs of the objects on the chain.
    """

    def __init__(self, tracker: SessionTracker, heap_worker: HeapWorker, *, max_depth: int, timeout_s: float,
                 cache_s: float, show_values: bool = False) -> None:
        self.tracker = tracker
        self.heap_worker = heap_worker
        self.max_depth = max_depth
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self.show_values = show_values
        #: session id -> (monotonic time, answer), oldest first; bounded by
        #: ``cache_entries`` and by age (``cache_s``).
        self.cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self.cache_entries = CACHE_ENTRIES

    def forget(self, session_id: str) -> None:
        """ Drop a session's answer (its session was just destroyed: a new one applies). """
        self.cache.pop(session_id, None)
        self._prune()

    def cached(self, session_id: str) -> dict[str, Any] | None:
        """ The last chain searched for this session, if still fresh.
        Raises :class:`UnknownSession`. """
        if self.tracker.find(session_id) is None:
            raise UnknownSession(session_id)
        self._prune()
        cached = self.cache.get(session_id)
        return None if cached is None else {**cached[1], "cached": True}

    def _prune(self) -> None:
        """ Drop answers older than ``cache_s``, then the oldest beyond ``cache_entries``. """
        cache, now = self.cache, time.monotonic()
        for key in [k for k, (t, _) in cache.items() if now - t >= self.cache_s]:
            del cache[key]
        while len(cache) > max(0, self.cache_entries):
            del cache[next(iter(cache))]

    async def search(self, session_id: str) -> dict[str, Any]:
        """ Why is this destroyed session's Document (or Model) still alive?

        Returns the chain (:func:`bokeh_memwatch.heap.chains.find_chain`'s
        answer) with ``session_id``, ``app``, ``target``, ``text``, the job's
        costs and ``cached``.  Raises :class:`UnknownSession`,
        :class:`SessionAlive` or :class:`SessionCollected`, and the heap
        worker's errors.
        """
        self._destroyed(session_id)
        self._prune()
        cached = self.cache.get(session_id)
        if cached is not None:
            return {**cached[1], "cached": True}
        job, fields = self.prepare(session_id, chains.capture_roots())
        try:
            outcome = await self.heap_worker.run(job, timeout_s=self.timeout_s)
        finally:
            del job  # drops the roots' keep-alive references to threads
        result: dict[str, Any] = {
            **fields,
            **outcome.value,
            "text": chains.format_chain(outcome.value),
            **outcome.costs(),
            "cached": False,
        }
        self.cache.pop(session_id, None)
        self.cache[session_id] = (time.monotonic(), result)
        self._prune()
        return result

    def prepare(
        self, session_id: str, roots: chains.Roots,
    ) -> tuple[Callable[[], dict[str, Any]], dict[str, Any]]:
        """ The search for why a destroyed session's Document (or Model) is
        alive, to run in the heap worker, and the fields its answer carries.

        Raises as :meth:`search` does.  ``roots`` come from
        :func:`chains.capture_roots`, taken on the loop just before the job
        starts (one capture serves several searches).
        """
        record = self._destroyed(session_id)
        target_ref, target_type = chain_target(record.doc_ref, record.alive_models())
        if target_ref is None:
            raise SessionCollected(session_id)
        job = functools.partial(
            _search_chain, target_ref, roots,
            max_depth=self.max_depth, deadline_s=self.timeout_s * 0.8, values=self.show_values,
        )
        return job, {"session_id": session_id, "app": record.app, "target": target_type}

    def target_type(self, session_id: str) -> str:
        """ The type a search for this destroyed session would target
        (``"Document"``, ``"ColumnDataSource"``...; ``""``: nothing, or not a
        destroyed session): :func:`chain_target`'s choice, without searching. """
        record = self.tracker.find(session_id)
        if record is None or not record.destroyed:
            return ""
        return chain_target(record.doc_ref, record.alive_models())[1]

    def _destroyed(self, session_id: str) -> Any:
        """ The record of a destroyed session; raises :class:`UnknownSession`
        or :class:`SessionAlive`. """
        record = self.tracker.find(session_id)
        if record is None:
            raise UnknownSession(session_id)
        if not record.destroyed:
            raise SessionAlive(session_id)
        return record


def _search_chain(
    target_ref: weakref.ReferenceType[Any], roots: chains.Roots, *, max_depth: int, deadline_s: float,
    values: bool = False,
) -> dict[str, Any]:
    """ The chain search itself; runs in the heap worker (a forked child). """
    target = target_ref()
    if target is None:
        return {"chain": [], "root": None, "complete": False, "reason": "collected before the search"}
    return chains.find_chain(target, roots=roots, max_depth=max_depth, deadline_s=deadline_s, values=values)


def chain_target(
    doc_ref: weakref.ReferenceType[Any], models: Iterable[Any]
) -> tuple[weakref.ReferenceType[Any] | None, str]:
    """ What a search for a destroyed session targets: its Document while
    alive, else its heaviest Model; ``(weak reference, type name)``, or
    ``(None, "")`` when nothing is alive. """
    if doc_ref() is not None:
        return doc_ref, "Document"
    from bokeh.models import ColumnDataSource

    # The heaviest source first; with equal bytes (Bokeh clears a destroyed
    # Model's properties) a data source rather than a Selection or a glyph.
    best = max(models, key=lambda m: (source_bytes(m), isinstance(m, ColumnDataSource)), default=None)
    if best is None:
        return None, ""
    return weakref.ref(best), type(best).__name__
