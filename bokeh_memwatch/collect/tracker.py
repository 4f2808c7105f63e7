""" Track every session's Document and Models through weak references.

The tracker is told when Bokeh creates and destroys a session (through the
application handler in :mod:`bokeh_memwatch.collect.app_handler`) and, at every
sampler tick, which sessions the server holds.  From that it knows, without
ever scanning the heap:

* per session: connections, Models, bytes held in ColumnDataSources;
* what became of every destroyed session that still holds something, as one
  of the :data:`STATES`:

  - ``pending``: within the grace period, or not verified yet;
  - ``awaiting_collection``: its Document and Models are unreachable garbage
    that Python's next full collection frees (not a leak);
  - ``held_until``: reachable only through scheduled loop callbacks (a
    stopped Bokeh periodic callback's last sleep); verified again once the
    last of them is due;
  - ``orphan``: its Document is reachable from a root (proven);
  - ``models_retained``: its Document is gone or garbage but some of its
    Models are reachable from a root (proven; Panel detaches Models from
    the Document on cleanup, so a leak there keeps Models without it).

The proof is a reachability scan of a forked copy of the heap
(:mod:`bokeh_memwatch.heap.reachability`, run by the sampler through the heap
worker; :meth:`SessionTracker.verification_groups` and
:meth:`SessionTracker.apply_verification`).  Where no fork is possible the
tracker falls back to the collector's own schedule (alive past the grace
period and after a full collection since the destroy) and says so in
``verified_by``.

It holds only weak references, ids and type names: it never keeps what it
watches alive.  It imports neither tornado nor ``bokeh.server``.

Over 400 lines: one state machine per destroyed session (pending, awaiting
collection, held by timers, orphan, retained Models) and the per-tick
observation that feeds it; the verdict rules and the records they read must
change together.
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
from typing import TYPE_CHECKING, Any, Protocol

from ..heap.reachability import verify_groups
from .process import full_collections

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.model import Model

from ..schema import STATES

log = logging.getLogger(__name__)

__all__ = (
    "STATES",
    "LiveSession",
    "SessionLike",
    "SessionTracker",
    "TickCounts",
    "TrackedSession",
    "column_bytes",
    "source_bytes",
    "verification_job",
)


class SessionLike(Protocol):
    """ What the tracker reads of a server session at a tick: the
    attributes of ``bokeh.server.session.ServerSession`` it uses, so the
    server's own session objects are passed in as they are. """

    @property
    def id(self) -> str: ...
    @property
    def document(self) -> Document: ...
    @property
    def connection_count(self) -> int: ...
    @property
    def milliseconds_since_last_unsubscribe(self) -> float: ...
    @property
    def destroyed(self) -> bool: ...


#: The states of a destroyed session that still holds something (see the
#: module docstring).  ``orphan`` and ``models_retained`` are leaks, proven.

#: How the verdicts were reached: a reachability scan of a forked copy of
#: the heap, or (no fork) the collector's own schedule.
VERIFIED_BY_SCAN = "reachability_scan"
VERIFIED_BY_COLLECTIONS = "full_collection_since_destroy"

#: How early a record counts as due for verification.
_DUE_SLACK_S = 0.1

#: Seconds after a holding timer is due before the session is verified again
#: (the callback must have run and its task finished).
TIMER_MARGIN_S = 0.5


@dataclass(frozen=True, slots=True)
class LiveSession:
    """ A session described by plain values (for tests and other servers). """

    id: str
    document: Document
    connection_count: int
    milliseconds_since_last_unsubscribe: float
    destroyed: bool = False


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
    # Of a destroyed session, as of the last refresh (None: not refreshed since the destroy).
    retained_models: int | None = None
    retained_bytes: int = 0
    retained_types: dict[str, int] = field(default_factory=dict)
    refreshed_at: float = 0.0
    refreshed_collections: int = -1
    # The last verification (unix time; "" fate: never verified): "garbage",
    # "held", "orphan" or "models_retained"; held_until for "held".
    fate: str = ""
    held_until: float | None = None
    verified_at: float | None = None
    verified_by: str = ""
    # Models reachable from a root at the last verification (of a
    # "models_retained" record; an orphan's Models count with the orphan).
    proven_models: int = 0
    # ids of those Models (figures of a "models_retained" record are theirs).
    proven_ids: frozenset[int] | None = None

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


_source_type: type[Any] | None = None
_held_value: Callable[[Any, str], Any] | None = None


def source_bytes(model: Any) -> int:
    """ Bytes held in a ColumnDataSource's ``data`` (0 for other Models, and
    for a source that holds no ``data``).

    Reads the value the source holds without creating one: a Model of a
    destroyed session has had its properties cleared by Bokeh
    (``Document.destroy`` -> ``Model.destroy``), and ``model.data`` would
    then store a new empty default on the host's object.  Such a source
    holds 0 bytes until someone sets its ``data`` again (a leaked callback
    that keeps updating it, for example).
    """
    global _source_type, _held_value
    if _source_type is None or _held_value is None:
        from bokeh.models import ColumnDataSource

        # (_bokeh_internals imports bokeh.server, which this module does not.)
        from .._bokeh_internals import held_property_value

        _source_type, _held_value = ColumnDataSource, held_property_value
    if not isinstance(model, _source_type):
        return 0
    try:
        data = _held_value(model, "data")
        if not isinstance(data, dict):
            return 0
        return sum(column_bytes(column) for column in list(data.values()))
    except Exception:
        return 0


def _type_name(obj: object) -> str:
    return type(obj).__name__


class SessionTracker:
    """ The registry of sessions, live and destroyed.

    Args:
        grace_s: how long after its session was destroyed a Document may stay
            alive before it is verified (until then: ``pending``).
        exact: verdicts come from reachability scans
            (:meth:`apply_verification`); ``False`` (no fork) falls back to
            the collector's schedule: alive past the grace period and after
            a full collection since the destroy.
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
        exact: bool = True,
    ) -> None:
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        if max_destroyed < 1:
            raise ValueError(f"max_destroyed must be >= 1, got {max_destroyed}")
        self.grace_s = grace_s
        self._max_destroyed = max_destroyed
        self._clock = clock
        self._collections = collections
        self.exact = exact
        self._serial = itertools.count(1)
        self._live: dict[str, TrackedSession] = {}
        self._destroyed: dict[int, TrackedSession] = {}  # serial -> record, oldest first
        self._cursor = 0  # where the round-robin refresh goes on
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

    def observe(
        self, live: Mapping[str, Iterable[SessionLike]], *, budget_s: float | None = None, refresh: bool = True,
    ) -> TickCounts:
        """ Reconcile with the sessions the server holds now and count.

        Counting sessions, connections, Documents, Models per Document and
        orphans is exact at every call and costs a few operations per
        session.  The per-Model work (weak references to each Model, bytes in
        each ColumnDataSource, Models still alive after a destroy) is done
        round-robin within ``budget_s`` seconds (None: all of it), so a tick
        stays short however many sessions and Models there are; figures not
        refreshed this time are the last ones measured.  Nothing here grows
        with the size of the heap.  With ``refresh=False`` the per-Model work
        is left to a separate :meth:`refresh` call (the sampler runs it in a
        callback of its own, so the two never add up in one stall).
        """
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        apps: dict[str, dict[str, float]] = {}
        seen: set[str] = set()
        live_records = self._live
        for app, sessions in live.items():
            n_sessions = n_connected = n_connections = n_models = n_bytes = 0
            for item in sessions:
                if item.destroyed:
                    continue
                session_id = item.id
                document = item.document
                seen.add(session_id)
                record = live_records.get(session_id)
                if record is None or record.doc_ref() is not document:
                    record = self.session_created(app, session_id, document)
                connections = record.connections = item.connection_count
                # Only an unused session's idle time matters (cleanup); skip the clock otherwise.
                record.ms_since_unsubscribe = 0.0 if connections else item.milliseconds_since_last_unsubscribe
                models = record.models = len(document.models)
                n_sessions += 1
                n_connected += connections > 0
                n_connections += connections
                n_models += models
                n_bytes += record.data_bytes
            counts = apps.setdefault(app, _empty_app_counts())
            counts["sessions"] += n_sessions
            counts["connected"] += n_connected
            counts["unused"] += n_sessions - n_connected
            counts["connections"] += n_connections
            counts["documents"] += n_sessions
            counts["models"] += n_models
            counts["data_bytes"] += n_bytes
        for session_id, record in list(self._live.items()):
            if session_id not in seen and record.app in live:
                self._mark_destroyed(record, seen_by="tick")
        if refresh:
            self._refresh_round_robin(deadline)
        totals = _empty_app_counts()
        for key in _STATE_TOTALS.values():
            totals[key] = 0
        now = self._clock()
        collections = self._collections()
        for serial, record in list(self._destroyed.items()):
            alive = record.doc_ref() is not None
            # Freed entirely?  Stops at the first live Model, so a session that
            # retains some costs one lookup; a clean one is checked once, then dropped.
            if not alive and not any(ref() is not None for ref in record.model_refs.values()):
                del self._destroyed[serial]
                self.cleaned_total += 1
                continue
            counts = apps.setdefault(record.app, _empty_app_counts())
            state = self.state(record, alive=alive, now=now, collections=collections)
            if alive:
                counts["documents"] += 1
            if state == "orphan":
                counts["orphans"] += 1
                counts["data_bytes"] += record.retained_bytes
            elif state == "models_retained":
                counts["models_retained"] += self._retained_model_count(record)
                counts["models_retained_sessions"] += 1  # sessions, where models_retained counts Models
                counts["data_bytes"] += record.retained_bytes
            else:
                totals[_STATE_TOTALS[state]] += 1
        for counts in apps.values():
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
        return TickCounts(apps=apps, totals=totals)

    def refresh(self, budget_s: float | None) -> None:
        """ The per-Model work of :meth:`observe`, within ``budget_s``
        seconds (None: all of it); at least one session per call. """
        self._refresh_round_robin(None if budget_s is None else time.perf_counter() + budget_s)

    def _refresh_round_robin(self, deadline: float | None) -> None:
        """ Refresh the per-Model figures of as many sessions as the budget
        allows: first destroyed sessions whose figures are stale, then every
        session in turn, continuing next time where this one stopped. """
        collections = self._collections()
        for record in list(self._destroyed.values()):
            if deadline is not None and time.perf_counter() >= deadline:
                return
            if self._stale(record, collections):
                self._refresh_destroyed(record)
        records = [*self._destroyed.values(), *self._live.values()]
        n = len(records)
        for k in range(n):
            # At least one session per call, so figures freshen under any load.
            if deadline is not None and k and time.perf_counter() >= deadline:
                self._cursor += k
                return
            record = records[(self._cursor + k) % n]
            if record.destroyed:
                self._refresh_destroyed(record)
            else:
                document = record.doc_ref()
                if document is not None:
                    self._refresh_models(record, document)
                del document
        self._cursor += n

    @staticmethod
    def _stale(record: TrackedSession, collections: int) -> bool:
        """ A destroyed session not refreshed since its destroy or since the
        last full collection (which may have freed what it held). """
        return record.destroyed and (
            record.retained_models is None or record.refreshed_collections < collections
        )

    def _refresh_destroyed(self, record: TrackedSession) -> None:
        record.refreshed_collections = self._collections()
        models = record.alive_models()
        # A fresh dict: a dict never shrinks as entries are deleted.
        record.model_refs = {id(m): weakref.ref(m) for m in models}
        record.retained_models = len(models)
        # Of Models proven retained without their Document, only those count.
        proven = record.proven_ids
        kept = models if proven is None or record.fate != "models_retained" else [m for m in models if id(m) in proven]
        record.retained_bytes = sum(source_bytes(m) for m in kept)
        record.retained_types = dict(Counter(_type_name(m) for m in kept).most_common(10))
        record.refreshed_at = time.monotonic()
        del models, kept

    def state(self, record: TrackedSession, *, alive: bool, now: float, collections: int) -> str:
        """ One of :data:`STATES` for a destroyed record (``alive``: its
        Document is alive). """
        assert record.destroyed_at is not None
        fate = record.fate
        if fate == "orphan" and not alive:
            # Freed since it was proven: what is left must be proven again.
            record.fate = fate = ""
        if fate:
            return _FATE_STATES[fate]
        if (
            not self.exact
            and (now - record.destroyed_at) >= self.grace_s
            and collections > record.full_collections_at_destroy
        ):
            record.verified_by = VERIFIED_BY_COLLECTIONS
            return "orphan" if alive else "models_retained"
        return "pending"

    @staticmethod
    def _retained_model_count(record: TrackedSession) -> int:
        """ Models of a ``models_retained`` record: those proven reachable
        (a scan), else those alive (the collector's schedule). """
        if record.verified_by == VERIFIED_BY_SCAN:
            return record.proven_models
        return record.retained_models or 0

    # -- verification ---------------------------------------------------------

    def _needs_verification(self, record: TrackedSession, now: float) -> float | None:
        """ When ``record`` is next due for a verification (None: not until
        something else changes). """
        assert record.destroyed_at is not None
        fate = record.fate
        if fate == "garbage" or fate in ("orphan", "models_retained"):
            return None
        if fate == "held":
            return (record.held_until if record.held_until is not None else now) + TIMER_MARGIN_S
        return record.destroyed_at + self.grace_s

    def verification_due(self) -> float | None:
        """ The earliest unix time at which a destroyed session needs a
        verification (pending past its grace period, or held by timers that
        are then due); None when nothing is unproven. """
        if not self.exact:
            return None
        now = self._clock()
        due: float | None = None
        for record in self._destroyed.values():
            at = self._needs_verification(record, now)
            if at is not None and (due is None or at < due):
                due = at
        return due

    def verification_groups(self, *, include_proven: bool = True) -> dict[str, list[weakref.ReferenceType[Any]]]:
        """ What to verify now: per destroyed record due for it (and, with
        ``include_proven``, every proven orphan or retained-Models record,
        re-evaluated), its serial -> ``[document ref, *model refs]``.  Weak
        references only: the job resolves them in the child. """
        now = self._clock()
        groups: dict[str, list[weakref.ReferenceType[Any]]] = {}
        for serial, record in self._destroyed.items():
            at = self._needs_verification(record, now)
            proven = record.fate in ("orphan", "models_retained")
            # A little slack: a timer armed for ``at`` may fire a hair early.
            if (at is not None and at <= now + _DUE_SLACK_S) or (include_proven and proven):
                groups[str(serial)] = [record.doc_ref, *record.model_refs.values()]
        return groups

    def apply_verification(self, answer: Mapping[str, Any], *, verified_at: float) -> int:
        """ Record what a :func:`verification_job` answered (its
        ``records``); returns how many records changed state. """
        changed = 0
        records = answer.get("records") or {}
        for key, fates in records.items():
            try:
                record = self._destroyed.get(int(key))
            except ValueError:
                continue
            if record is None:
                continue
            before = (record.fate, record.held_until)
            self._apply_one(record, fates, verified_at)
            changed += before != (record.fate, record.held_until)
            if record.fate == "models_retained":
                self._refresh_destroyed(record)  # its figures are those of the proven Models
        return changed

    def _apply_one(self, record: TrackedSession, fates: Mapping[str, Any], verified_at: float) -> None:
        doc_state, doc_until = fates["document"]
        models: Mapping[str, int] = fates.get("models") or {}
        reachable_models = int(models.get("reachable", 0))
        held_models = int(models.get("held_by_timer", 0))
        if doc_state == "untracked" or models.get("untracked"):
            return  # cannot be decided: stays pending
        was = record.fate
        record.verified_at = verified_at
        record.verified_by = VERIFIED_BY_SCAN
        document_alive = doc_state not in ("freed", "garbage")
        if doc_state == "reachable":
            record.fate, record.held_until = "orphan", None
        elif doc_state == "held_by_timer" or held_models:
            untils = [u for u in (doc_until if doc_state == "held_by_timer" else None,
                                  fates.get("models_held_until")) if u is not None]
            if was in ("held", "orphan", "models_retained") or reachable_models:
                # Still held once its timers were due (a callback that re-arms
                # itself), or held by a root besides: proven.
                record.fate = "orphan" if document_alive else "models_retained"
                record.held_until = None
            else:
                record.fate = "held"
                record.held_until = max(untils) if untils else verified_at
        elif reachable_models:
            record.fate, record.held_until = "models_retained", None
        else:
            record.fate, record.held_until = "garbage", None
        record.proven_models = reachable_models + (held_models if record.fate == "models_retained" else 0)
        kept = fates.get("models_kept")
        record.proven_ids = frozenset(int(i) for i in kept) if isinstance(kept, list) else None

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
        record.refreshed_at = time.monotonic()
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

    def destroyed_holding(self, *, budget_s: float | None = None) -> list[dict[str, Any]]:
        """ Destroyed sessions whose Document or Models are still alive.

        Whether the Document is alive is checked now; stale Model figures
        (see ``_stale``) are refreshed within ``budget_s`` (None: all), the
        others are those of the last refresh (``refreshed_s_ago``).
        """
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        now = self._clock()
        collections = self._collections()
        out = []
        for record in list(self._destroyed.values()):
            alive = record.doc_ref() is not None
            if self._stale(record, collections) and (deadline is None or time.perf_counter() < deadline):
                self._refresh_destroyed(record)
            if not alive and not record.retained_models:
                continue
            assert record.destroyed_at is not None
            state = self.state(record, alive=alive, now=now, collections=collections)
            out.append({
                "session_id": record.session_id,
                "app": record.app,
                "created_at": record.created_at,
                "destroyed_at": record.destroyed_at,
                "seconds_since_destroyed": round(now - record.destroyed_at, 3),
                "status": state,
                "held_until": record.held_until if state == "held_until" else None,
                "verified_by": record.verified_by or None,
                "verified_s_ago": None if record.verified_at is None else round(now - record.verified_at, 3),
                "document_alive": alive,
                "models": record.retained_models or 0,
                "models_proven": self._retained_model_count(record) if state == "models_retained" else None,
                "model_types": dict(record.retained_types),
                "data_bytes": record.retained_bytes,
                "refreshed_s_ago": round(time.monotonic() - record.refreshed_at, 3),
                "destroy_seen_by": record.destroy_seen_by,
            })
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

    def nbytes(self) -> int:
        """ Memory of the registry itself: its records, their weak references
        and small dicts (not what the weak references point to). """
        size = sys.getsizeof(self._live) + sys.getsizeof(self._destroyed)
        for record in [*self._live.values(), *self._destroyed.values()]:
            size += sys.getsizeof(record) + sys.getsizeof(record.session_id) + sys.getsizeof(record.doc_ref)
            size += sys.getsizeof(record.model_refs) + sys.getsizeof(record.retained_types)
            # Every weak reference has the same size: per session, not per Model.
            size += len(record.model_refs) * _WEAKREF_BYTES
        return size

    def counters(self) -> dict[str, int]:
        return {
            "sessions_created_total": self.created_total,
            "sessions_destroyed_total": self.destroyed_total,
            "sessions_cleaned_total": self.cleaned_total,
            "sessions_forgotten_total": self.forgotten_total,
            "destroyed_tracked": len(self._destroyed),
        }


#: Totals (process-wide only) of the states that are not leaks.
_STATE_TOTALS = {
    "pending": "pending_orphans",
    "held_until": "held_by_timers",
    "awaiting_collection": "awaiting_collection",
}

_FATE_STATES = {
    "garbage": "awaiting_collection",
    "held": "held_until",
    "orphan": "orphan",
    "models_retained": "models_retained",
}


def verification_job(groups: Mapping[str, list[weakref.ReferenceType[Any]]], parent_pid: int) -> dict[str, Any]:
    """ The heap worker job (forked child) behind
    :meth:`SessionTracker.apply_verification`: a reachability scan of the
    records' Documents and Models, summed up per record as
    ``{"document": [state, held_until], "models": {state: n},
    "models_held_until": t, "models_kept": [id, ...]}`` under ``records``
    (``models_kept``: ids of the Models a collection keeps), with the scan's
    figures. """
    answer = verify_groups(groups, parent_pid=parent_pid)
    records: dict[str, Any] = {}
    for key, fates in answer.pop("fates").items():
        document, *models = fates
        counts = Counter(state for state, _ in models)
        untils = [until for state, until in models if state == "held_by_timer" and until is not None]
        kept: list[int] = []
        for ref, (state, _) in zip(groups[key][1:], models, strict=True):
            if state in ("reachable", "held_by_timer"):
                obj = ref()
                if obj is not None:
                    kept.append(id(obj))
                del obj
        records[key] = {
            "document": document,
            "models": dict(counts),
            "models_held_until": max(untils) if untils else None,
            "models_kept": kept,
        }
    answer["records"] = records
    return answer


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
        # Destroyed sessions in the models_retained state (models_retained counts their Models).
        "models_retained_sessions": 0,
    }


#: Size of one weak reference (``weakref.ref`` objects all have one size).
_WEAKREF_BYTES = sys.getsizeof(weakref.ref(_empty_app_counts))
