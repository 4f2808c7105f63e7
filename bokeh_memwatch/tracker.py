""" Track every session's Document and Models through weak references.

The tracker is told when Bokeh creates and destroys a session (through the
application handler in :mod:`bokeh_memwatch.instrument`) and, at every
sampler tick, which sessions the server holds.  From that it knows, without
ever scanning the heap:

* per session: connections, Models, bytes held in ColumnDataSources;
* orphans: Documents still alive after their session was destroyed, past a
  grace period and after a full collection of the garbage collector;
* retained Models: Models of a destroyed session that are still alive even
  though their Document is gone (Panel detaches Models from the Document on
  cleanup, so a leak there keeps Models and their data without the Document).

It holds only weak references, ids and type names: it never keeps what it
watches alive.  It imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import itertools
import logging
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .collectors import full_collections

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.model import Model

log = logging.getLogger(__name__)

__all__ = (
    "LiveSession",
    "SessionTracker",
    "TickCounts",
    "TrackedSession",
    "column_bytes",
    "source_bytes",
)


@dataclass(frozen=True, slots=True)
class LiveSession:
    """ What the server says about one of its sessions at a tick. """

    session_id: str
    document: Document
    connections: int
    ms_since_unsubscribe: float


@dataclass(slots=True, eq=False)
class TrackedSession:
    """ Everything memwatch keeps about one session: weak references only. """

    session_id: str
    app: str
    created_at: float
    doc_ref: weakref.ReferenceType[Document]
    serial: int
    model_refs: dict[int, weakref.ReferenceType[Model]] = field(default_factory=dict)
    connections: int = 0
    ms_since_unsubscribe: float = 0.0
    models: int = 0
    data_bytes: int = 0
    destroyed_at: float | None = None
    full_collections_at_destroy: int = 0
    destroy_seen_by: str = ""

    @property
    def destroyed(self) -> bool:
        return self.destroyed_at is not None

    def alive_models(self) -> list[Model]:
        """ Strong references to the still-alive Models: drop them soon. """
        alive = []
        for key, ref in list(self.model_refs.items()):
            model = ref()
            if model is None:
                del self.model_refs[key]
            else:
                alive.append(model)
        return alive


@dataclass(slots=True)
class TickCounts:
    """ What one tick of the tracker found, per application and in total. """

    apps: dict[str, dict[str, float]]
    totals: dict[str, float]


def column_bytes(value: Any) -> int:
    """ Bytes held by one ColumnDataSource column, estimated cheaply.

    Arrays and pandas objects report ``nbytes``; for Python sequences the
    container plus its first item's size times the length (an estimate that
    costs constant time, not a walk over every element).
    """
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    try:
        size = sys.getsizeof(value)
        if isinstance(value, (list, tuple)) and value:
            size += len(value) * sys.getsizeof(value[0])
        return size
    except Exception:
        return 0


def source_bytes(model: Any) -> int:
    """ Bytes held in a ColumnDataSource's ``data`` (0 for other Models). """
    from bokeh.models import ColumnDataSource

    if not isinstance(model, ColumnDataSource):
        return 0
    try:
        data = model.data
        return sum(column_bytes(column) for column in data.values())
    except Exception:
        return 0


def _type_name(obj: object) -> str:
    return type(obj).__name__


class SessionTracker:
    """ The registry of sessions, live and destroyed.

    Args:
        grace_s: how long after its session was destroyed a Document may stay
            alive before it counts as an orphan (it also needs a full
            collection of the garbage collector since the destroy).
        max_destroyed: how many destroyed sessions that still hold something
            are remembered; beyond that the oldest are forgotten and counted
            in ``forgotten_total``.
        clock: unix time in seconds (injectable for tests).
        collections: how many full gc collections have run (injectable).
    """

    def __init__(
        self,
        *,
        grace_s: float = 5.0,
        max_destroyed: int = 10_000,
        clock: Callable[[], float] = time.time,
        collections: Callable[[], int] = full_collections,
    ) -> None:
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        if max_destroyed < 1:
            raise ValueError(f"max_destroyed must be >= 1, got {max_destroyed}")
        self.grace_s = grace_s
        self._max_destroyed = max_destroyed
        self._clock = clock
        self._collections = collections
        self._serial = itertools.count(1)
        self._live: dict[str, TrackedSession] = {}
        self._destroyed: dict[int, TrackedSession] = {}  # serial -> record, oldest first
        self.created_total = 0
        self.destroyed_total = 0
        self.cleaned_total = 0
        self.forgotten_total = 0

    # -- lifecycle events ---------------------------------------------------

    def session_created(self, app: str, session_id: str, document: Document) -> TrackedSession:
        """ Bokeh made a Document for a new session (called from the app handler). """
        old = self._live.get(session_id)
        if old is not None and old.doc_ref() is document:
            return old
        if old is not None:
            self._mark_destroyed(old, seen_by="replaced")
        record = TrackedSession(
            session_id=session_id,
            app=app,
            created_at=self._clock(),
            doc_ref=weakref.ref(document),
            serial=next(self._serial),
        )
        self._live[session_id] = record
        self.created_total += 1
        self._refresh_models(record, document)
        return record

    def session_destroyed(self, session_id: str, *, seen_by: str = "hook") -> None:
        """ Bokeh destroyed the session (its Document should now be freed). """
        record = self._live.get(session_id)
        if record is not None:
            self._mark_destroyed(record, seen_by=seen_by)

    def _mark_destroyed(self, record: TrackedSession, *, seen_by: str) -> None:
        self._live.pop(record.session_id, None)
        record.destroyed_at = self._clock()
        record.full_collections_at_destroy = self._collections()
        record.destroy_seen_by = seen_by
        record.connections = 0
        self.destroyed_total += 1
        self._destroyed[record.serial] = record
        while len(self._destroyed) > self._max_destroyed:
            oldest = next(iter(self._destroyed))
            del self._destroyed[oldest]
            self.forgotten_total += 1

    # -- per tick -----------------------------------------------------------

    def observe(self, live: Mapping[str, Iterable[LiveSession]]) -> TickCounts:
        """ Reconcile with the sessions the server holds now and count.

        Cost grows with the number of sessions and their Models, never with
        the size of the heap.
        """
        apps: dict[str, dict[str, float]] = {}
        seen: set[str] = set()
        for app, sessions in live.items():
            counts = apps.setdefault(app, _empty_app_counts())
            for item in sessions:
                seen.add(item.session_id)
                record = self._live.get(item.session_id)
                if record is None or record.doc_ref() is not item.document:
                    record = self.session_created(app, item.session_id, item.document)
                record.connections = item.connections
                record.ms_since_unsubscribe = item.ms_since_unsubscribe
                self._refresh_models(record, item.document)
                counts["sessions"] += 1
                counts["connected" if item.connections else "unused"] += 1
                counts["connections"] += item.connections
                counts["documents"] += 1
                counts["models"] += record.models
                counts["data_bytes"] += record.data_bytes
        for session_id, record in list(self._live.items()):
            if session_id not in seen and record.app in live:
                self._mark_destroyed(record, seen_by="tick")
        totals = _empty_app_counts()
        totals["pending_orphans"] = 0
        now = self._clock()
        collections = self._collections()
        for serial, record in list(self._destroyed.items()):
            document = record.doc_ref()
            models = record.alive_models()
            if document is None and not models:
                del self._destroyed[serial]
                self.cleaned_total += 1
                continue
            counts = apps.setdefault(record.app, _empty_app_counts())
            settled = self._settled(record, now, collections)
            if document is not None:
                if settled:
                    counts["orphans"] += 1
                    counts["documents"] += 1
                else:
                    totals["pending_orphans"] += 1
            if settled and models:
                counts["models_retained"] += len(models)
                counts["data_bytes"] += sum(source_bytes(m) for m in models)
            del document, models
        for counts in apps.values():
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
        return TickCounts(apps=apps, totals=totals)

    def _settled(self, record: TrackedSession, now: float, collections: int) -> bool:
        assert record.destroyed_at is not None
        return (now - record.destroyed_at) >= self.grace_s and collections > record.full_collections_at_destroy

    def _refresh_models(self, record: TrackedSession, document: Document) -> None:
        refs = record.model_refs
        data_bytes = 0
        models = document.models
        for model in models:
            key = id(model)
            ref = refs.get(key)
            if ref is None or ref() is not model:
                refs[key] = weakref.ref(model)
            data_bytes += source_bytes(model)
        record.models = len(models)
        record.data_bytes = data_bytes
        if len(refs) > 2 * record.models + 64:
            for key, ref in list(refs.items()):
                if ref() is None:
                    del refs[key]

    # -- queries ------------------------------------------------------------

    def live_sessions(self) -> list[dict[str, Any]]:
        """ The live sessions as of the last tick (or creation), plain data. """
        now = self._clock()
        return [
            {
                "id": r.session_id,
                "app": r.app,
                "created_at": r.created_at,
                "age_s": round(now - r.created_at, 3),
                "connections": r.connections,
                "ms_since_unsubscribe": round(r.ms_since_unsubscribe, 1),
                "documents": 1,
                "models": r.models,
                "data_bytes": r.data_bytes,
            }
            for r in self._live.values()
        ]

    def destroyed_holding(self) -> list[dict[str, Any]]:
        """ Destroyed sessions whose Document or Models are still alive. """
        now = self._clock()
        collections = self._collections()
        out = []
        for record in list(self._destroyed.values()):
            document = record.doc_ref()
            models = record.alive_models()
            if document is None and not models:
                continue
            assert record.destroyed_at is not None
            settled = self._settled(record, now, collections)
            types = Counter(_type_name(m) for m in models)
            out.append({
                "session_id": record.session_id,
                "app": record.app,
                "created_at": record.created_at,
                "destroyed_at": record.destroyed_at,
                "seconds_since_destroyed": round(now - record.destroyed_at, 3),
                "status": ("orphan" if document is not None else "models_retained") if settled else "pending",
                "document_alive": document is not None,
                "models": len(models),
                "model_types": dict(types.most_common(10)),
                "data_bytes": sum(source_bytes(m) for m in models),
                "destroy_seen_by": record.destroy_seen_by,
            })
            del document, models
        return out

    def find(self, session_id: str) -> TrackedSession | None:
        """ The most recent record for ``session_id``, live or destroyed. """
        record = self._live.get(session_id)
        if record is not None:
            return record
        for record in reversed(list(self._destroyed.values())):
            if record.session_id == session_id:
                return record
        return None

    def counters(self) -> dict[str, int]:
        return {
            "sessions_created_total": self.created_total,
            "sessions_destroyed_total": self.destroyed_total,
            "sessions_cleaned_total": self.cleaned_total,
            "sessions_forgotten_total": self.forgotten_total,
            "destroyed_tracked": len(self._destroyed),
        }


def _empty_app_counts() -> dict[str, float]:
    return {
        "sessions": 0,
        "connected": 0,
        "unused": 0,
        "connections": 0,
        "documents": 0,
        "models": 0,
        "data_bytes": 0,
        "orphans": 0,
        "models_retained": 0,
    }
