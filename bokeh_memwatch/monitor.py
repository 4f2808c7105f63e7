""" The Monitor: memwatch for one Bokeh server process, everything but its routes.

It builds, in ``__init__``, the session tracker, the "why alive" search
(:class:`~bokeh_memwatch.analyze.why_alive.WhyAlive`) and the verifier of
destroyed sessions; :meth:`Monitor.start` binds what belongs to one process
and one loop (after any ``--num-procs`` fork): the store, the sampler, the
snapshot and census managers, the cluster (history database, workers, memory
limit) and the worker services.  It is also the Bokeh application handler's
listener and answers the queries the API, the metrics and the reports ask
(plain data).  :class:`bokeh_memwatch.MemWatch` adds the routes; the ways in
(``bokeh-memwatch serve``, :func:`bokeh_memwatch.memwatch_server`, the Panel
plugin) build that.

Everything it reports is computed from weak references and counters; the
heavy questions (why is this Document alive?) run in a forked child so the
IOLoop keeps serving.

Over 400 lines: the facade the handlers, the metrics and the reports read,
with its lifecycle; each query is a few lines over the parts it owns.
"""
from __future__ import annotations

import gc
import logging
import os
import secrets
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeAlias

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler

from .analyze.verification import Verifier
from .analyze.why_alive import WhyAlive
from .cluster.cluster import Cluster, server_key
from .collect.app_handler import MemwatchAppHandler
from .collect.process import Collector, ProcessCollector, default_collectors
from .collect.tracker import SessionTracker
from .heap import chains
from .heap.census import CensusManager
from .heap.memray_backend import MemrayBackend, MemrayError, have_memray
from .heap.snapshots import SnapshotManager
from .heap.worker import HeapWorker
from .options import MemwatchOptions
from .sampler import Sampler
from .schema import ORPHAN_LISTS, SESSION_COUNTS, WORKER_FIELDS, proven_leaks
from .store.ring import SampleStore

if TYPE_CHECKING:
    from bokeh.application.application import ServerContext
    from bokeh.document import Document
    from bokeh.server.contexts import ApplicationContext
    from bokeh.server.server import BaseServer
    from bokeh.server.session import ServerSession
    from bokeh.server.tornado import BokehTornado
    from tornado.httpserver import HTTPServer
    from tornado.ioloop import IOLoop

    from .cluster.forwarding import Forwarder, PrivateListener
    from .cluster.recycle import Recycler
    from .store.registry import WorkerRegistry

log = logging.getLogger(__name__)

__all__ = (
    "Applications",
    "Monitor",
)


#: What Bokeh's ``Server`` accepts as applications.
Applications: TypeAlias = (
    "Mapping[str, Application | Callable[[Document], None]] | Application | Callable[[Document], None]"
)


#: Time an API request may spend refreshing per-Model figures of destroyed sessions.
ON_DEMAND_BUDGET_S = 0.05

class Monitor:
    """ Memory diagnostics for one Bokeh server process: everything but the
    HTTP routes (:class:`bokeh_memwatch.MemWatch` adds those).

    Args:
        options: settings; keyword arguments override single fields.
        collectors: process collectors (default: RSS, gc, tracemalloc); a
            factory, since they must be made after a ``--num-procs`` fork.
    """

    def __init__(
        self,
        options: MemwatchOptions | None = None,
        *,
        collectors: Callable[[], list[Collector]] = default_collectors,
        **overrides: Any,
    ) -> None:
        base = options or MemwatchOptions()
        self.options = MemwatchOptions(**{**asdict(base), **overrides})
        self._collector_factory = collectors
        self.tracker = SessionTracker(
            grace_s=self.options.orphan_grace_ms / 1000, max_destroyed=self.options.max_destroyed
        )
        #: The in-memory history (the sampler appends to it from start() on).
        self.store = SampleStore(self.options.capacity)
        #: Made in start(): it needs the collectors, which are made after any fork.
        self.sampler: Sampler | None = None
        options = self.options
        #: "Why alive?" searches and their cache, in the heap worker for user jobs.
        self.why_alive = WhyAlive(
            self.tracker, HeapWorker(max_concurrent=1, fork_mode=options.heap_fork),  # type: ignore[arg-type]
            max_depth=options.chain_max_depth, timeout_s=options.chain_timeout_s, cache_s=options.chain_cache_s,
            show_values=options.show_values,
        )
        #: Verifications of destroyed sessions, in a heap worker of their own.
        self.verifier = Verifier(
            self.tracker, HeapWorker(max_concurrent=1, fork_mode=options.heap_fork),  # type: ignore[arg-type]
            timeout_s=options.verify_timeout_s,
        )
        #: Snapshots, baseline and type summaries (start() makes their private directory).
        self.snapshots = SnapshotManager(
            self.heap_worker, max_snapshots=options.max_snapshots, max_snapshot_bytes=options.max_snapshot_bytes,
            types_min_interval_s=options.types_min_interval_s, timeout_s=options.snapshot_timeout_s,
        )
        #: The memray allocation backend (start() makes its directory and,
        #: with ``allocations="memray"``, starts its tracker: one per serving process).
        self.memray = MemrayBackend(max_captures=options.max_snapshots, max_capture_bytes=options.max_snapshot_bytes,
                                    timeout_s=options.snapshot_timeout_s)
        #: Censuses of live objects by type (start() schedules the periodic one).
        self.census = CensusManager(
            self.heap_worker, closed=lambda: self.tracker.destroyed_total,
            live=lambda: sum(len(s) for s in self.live_sessions().values()),
            interval_s=options.census_interval_s, min_interval_s=options.census_min_interval_s,
            timeout_s=options.snapshot_timeout_s, chain_depth=options.chain_max_depth,
            chain_timeout_s=options.chain_timeout_s,
        )
        self._contexts: dict[str, ApplicationContext] = {}
        self._app_refs: weakref.WeakSet[Application] = weakref.WeakSet()
        self._io_loop: IOLoop | None = None
        self._tornado: weakref.ReferenceType[BokehTornado] | None = None
        self._pid: int | None = None
        self._started_at: float | None = None
        self._last_gc: float = float("-inf")
        self._process: ProcessCollector | None = None
        #: History database, workers, memory limit (made in start(): its key
        #: names the server's port and applications, known by then).
        self.cluster: Cluster | None = None
        #: The server's port, when the way in knows it (names its history).
        self.server_port: int | None = None
        #: Workers (workers.py): the registry in the history database, this
        #: worker's private port and forwarder, its recycler, the server's
        #: listener (stopped by a drain), the secret forwarded requests carry
        #: (made here, before any fork, so every worker has it).
        self.registry: WorkerRegistry | None = None
        self.forwarder: Forwarder | None = None
        self.private: PrivateListener | None = None
        self.recycler: Recycler | None = None
        self.http_server: HTTPServer | None = None
        self.forward_secret = secrets.token_urlsafe(32)

    @property
    def heap_worker(self) -> HeapWorker:
        """ The heap worker of user jobs (chains, snapshots, the census); may
        be replaced before :meth:`start`. """
        return self.why_alive.heap_worker

    @heap_worker.setter
    def heap_worker(self, worker: HeapWorker) -> None:
        self.why_alive.heap_worker = self.snapshots.heap_worker = self.census.heap_worker = worker

    # -- wiring -------------------------------------------------------------

    def instrument(self, applications: Applications) -> dict[str, Application]:
        """ Add memwatch's handler to every application; returns the
        applications as the ``{path: Application}`` mapping Bokeh expects. """
        if callable(applications) and not isinstance(applications, Application):
            applications = Application(FunctionHandler(applications))
        if isinstance(applications, Application):
            applications = {"/": applications}
        result: dict[str, Application] = {}
        for path, each in applications.items():
            app = each if isinstance(each, Application) else Application(FunctionHandler(each))
            self._instrument_one(path, app)
            result[path] = app
        return result

    def _instrument_one(self, path: str, app: Application) -> None:
        if any(isinstance(h, MemwatchAppHandler) and h.listener is self for h in app.handlers):
            return
        handler = MemwatchAppHandler(path, self)
        app_ref = weakref.ref(app)
        handler.siblings = lambda: tuple(getattr(app_ref(), "handlers", ()))
        app.add(handler)
        self._app_refs.add(app)

    def attach(self, target: BaseServer | BokehTornado) -> None:
        """ Watch a server that already exists (and may already run): add the
        handler to its applications and start sampling on its IOLoop. """
        from bokeh.server.tornado import BokehTornado

        from ._bokeh_internals import tornado_app_of

        app = target if isinstance(target, BokehTornado) else tornado_app_of(target)
        self._tornado = weakref.ref(app)
        for path, context in app.applications.items():
            self._instrument_one(path, context.application)
            self._contexts[path] = context
        self.start(app.io_loop)

    # -- the handler's listener protocol -------------------------------------

    def document_created(self, app_path: str, session_id: str, document: Document) -> None:
        self.tracker.session_created(app_path, session_id, document)

    def session_destroyed(self, app_path: str, session_id: str) -> None:
        self.tracker.session_destroyed(session_id)
        self.why_alive.forget(session_id)
        # Verify when its grace period ends, whatever the sampling interval.
        if self.sampler is not None and self.sampler.running:
            self.sampler.schedule_verification()

    def server_loaded(self, app_path: str, server_context: ServerContext) -> None:
        context = getattr(server_context, "application_context", None)
        if context is None:
            log.warning("memwatch: no application context for %s; sessions will not be sampled", app_path)
            return
        self._contexts[app_path] = context
        self.start(context.io_loop)

    def server_unloaded(self, app_path: str) -> None:
        self._contexts.pop(app_path, None)
        if not self._contexts:
            self.stop()

    # -- lifecycle ------------------------------------------------------------

    def start(self, io_loop: IOLoop | None = None) -> None:
        """ Start sampling (idempotent); call on the server's IOLoop, after
        any fork. """
        if self.sampler is not None and self._pid == os.getpid():
            return
        if self._pid is not None:  # started in the process this one was forked from: not our samples
            self.store = SampleStore(self.options.capacity)
        self._pid = os.getpid()
        self._started_at = time.time()
        self._io_loop = io_loop
        collectors = self._collector_factory()
        self.cluster = Cluster(self, key=self._server_key())
        collectors = [*collectors, self.cluster.cgroup]
        self._process = next((c for c in collectors if isinstance(c, ProcessCollector)), None) or ProcessCollector()
        from .cluster.workers import make_recycler, start_worker_services

        self.recycler = make_recycler(self)
        self.sampler = Sampler(
            store=self.store,
            tracker=self.tracker,
            sessions=self.live_sessions,
            collectors=collectors,
            interval_ms=self.options.interval_ms,
            budget_s=self.options.tick_budget_ms / 1000,
            listeners=[self.cluster.on_sample, *([self.recycler.on_sample] if self.recycler else [])],
            verify=self.verify_destroyed,
            verify_min_interval_s=self.options.verify_min_interval_s,
        )
        self.cluster.start()
        start_worker_services(self)
        self.sampler.start(io_loop)
        log.info("memwatch sampling every %d ms in process %d", self.options.interval_ms, self._pid)
        self.snapshots.start()
        self._start_memray()
        try:
            self.census.start()
        except RuntimeError:  # no running loop yet
            if io_loop is not None:
                io_loop.add_callback(self.census.start)

    def _start_memray(self) -> None:
        """ The memray backend's directory; its tracker too with ``allocations="memray"``
        (after any fork: one tracker per serving process). """
        self.memray.start()
        if self.options.allocations != "memray" or not have_memray():  # warned once; tracemalloc's API stays
            return
        try:
            self.memray.start_tracking()
        except MemrayError as e:
            log.warning("memwatch: memray tracking not started: %s", e)

    def stop(self) -> None:
        from .cluster.workers import stop_worker_services

        stop_worker_services(self)
        self.census.stop()
        if self.sampler is not None:
            self.sampler.stop()
        self.snapshots.stop()
        self.memray.stop()
        if self.cluster is not None:
            self.cluster.stop()

    def _server_key(self) -> str:
        """ Names this server's rows in the shared history: port, prefix, apps. """
        app = self._tornado() if self._tornado is not None else None
        paths = list(app.applications) if app is not None else [
            h.app_path for a in self._app_refs for h in a.handlers
            if isinstance(h, MemwatchAppHandler) and h.listener is self
        ]
        return server_key(self.server_port, app.prefix if app is not None else "", paths)

    @property
    def running(self) -> bool:
        return self.sampler is not None and self.sampler.running

    # -- reading the server -------------------------------------------------------

    def live_sessions(self) -> dict[str, list[ServerSession]]:
        """ The server's sessions per application path (Bokeh's own objects,
        read by the tracker without copying). """
        return {path: list(context.sessions) for path, context in list(self._contexts.items())}

    # -- queries (plain data, for the views) -------------------------------------

    def _observe(self) -> Any:
        return self.tracker.observe(self.live_sessions(), budget_s=self.options.tick_budget_ms / 1000)

    def summary(self) -> dict[str, Any]:
        counts = self._observe()
        latest = self.store.latest()
        now = time.time()
        result: dict[str, Any] = {
            "pid": os.getpid(),
            "time": now,
            "started_at": self._started_at,
            "uptime_s": None if self._started_at is None else round(now - self._started_at, 3),
            "rss_bytes": self._rss_bytes(),
            "traced_bytes": latest.get("traced_bytes") if latest else None,
        }
        for key in SESSION_COUNTS:
            result[key] = int(counts.totals.get(key, 0))
        result["verification"] = self.verification_state()
        result.update(self.tracker.counters())
        result["apps"] = {path: {k: int(v) for k, v in app.items()} for path, app in counts.apps.items()}
        result["sampler"] = self.sampler_state()
        result["options"] = self.options.public()
        result["server"] = self.server_settings()
        result["versions"] = versions()
        if self.cluster is not None:
            # This worker's entry has the live figures above; the others' their latest sample.
            live = {**(latest or {}), **{k: v for k, v in result.items() if k in WORKER_FIELDS}, "t": now}
            result["workers"] = self.cluster.workers(live)
            result.update(self.cluster.limit_state(result["rss_bytes"]))
            result["history"] = self.cluster.history_state()
        result["recycle"] = self.recycler.state_dict() if self.recycler is not None else {"enabled": False}
        return result

    def report_settings(self) -> dict[str, Any]:
        """ Options, server settings and versions, for a report. """
        return {"options": self.options.public(), "server": self.server_settings(), "versions": versions()}

    def sampler_state(self) -> dict[str, Any]:
        sampler, store = self.sampler, self.store
        return {
            "running": self.running,
            "interval_ms": self.options.interval_ms,
            "ticks": sampler.ticks if sampler else 0,
            "last_tick_ms": round(sampler.last_tick_ms, 3) if sampler else None,
            "max_tick_ms": round(sampler.max_tick_ms, 3) if sampler else None,
            "last_refresh_ms": round(sampler.last_refresh_ms, 3) if sampler else None,
            "max_refresh_ms": round(sampler.max_refresh_ms, 3) if sampler else None,
            "errors_total": sampler.errors_total if sampler else 0,
            "failed_collectors": sampler.failed_collectors if sampler else [],
            "samples": len(store),
            "capacity": store.capacity,
            "store_bytes": store.nbytes(),
            "registry_bytes": self.tracker.nbytes(),
        }

    def server_settings(self) -> dict[str, Any]:
        from ._bokeh_internals import server_settings

        app = self._tornado() if self._tornado is not None else None
        if app is None:
            return {}
        try:
            return server_settings(app)
        except Exception:
            log.warning("memwatch could not read the server settings", exc_info=True)
            return {}

    def note_http_server(self, server: HTTPServer) -> None:
        """ Remember the server's listener (a drain stops it in this worker). """
        self.http_server = server

    @property
    def tornado_app(self) -> BokehTornado | None:
        return self._tornado() if self._tornado is not None else None

    def note_tornado_app(self, app: BokehTornado) -> None:
        """ Remember the server's tornado application (for its settings). """
        if self._tornado is None or self._tornado() is not app:
            self._tornado = weakref.ref(app)

    def sessions(self, app: str | None = None) -> list[dict[str, Any]]:
        self._observe()
        rows = self.tracker.live_sessions()
        if app is not None:
            rows = [row for row in rows if row["app"] == app]
        rows.sort(key=lambda row: (row["data_bytes"], row["models"]), reverse=True)
        return rows

    def orphans(self) -> dict[str, list[dict[str, Any]]]:
        """ Destroyed sessions still holding something, by state (see
        :data:`bokeh_memwatch.schema.STATES`): ``orphans`` and
        ``retained_models`` are proven leaks; ``held_by_timers``,
        ``awaiting_collection`` and ``pending`` are not (yet). """
        rows = self.tracker.destroyed_holding(budget_s=ON_DEMAND_BUDGET_S)
        lists: dict[str, list[dict[str, Any]]] = {name: [] for name in ORPHAN_LISTS.values()}
        for row in rows:
            lists[ORPHAN_LISTS[row["status"]]].append(row)
        return lists

    def verification_state(self) -> dict[str, Any]:
        """ How verdicts are reached, and the last verification's figures. """
        return {
            **self.verifier.state,
            "technique": self.verifier.technique,
            "min_interval_s": self.options.verify_min_interval_s,
            "scheduled_in_s": None if self.sampler is None else self.sampler.verification_due_in_s(),
        }

    async def verify_destroyed(self, *, include_proven: bool = True) -> dict[str, Any]:
        """ Verify the destroyed sessions due for it (and re-evaluate proven
        ones): a reachability scan in a forked heap worker child (see
        :class:`~bokeh_memwatch.analyze.verification.Verifier`).  Returns the
        verification state. """
        await self.verifier.run(include_proven=include_proven)
        return self.verification_state()

    def cleanup_hooks(self) -> dict[str, dict[str, int]]:
        """ Per app: sessions seen and how many had an ``on_session_destroyed``
        callback of the app's own when their Document was made. """
        out: dict[str, dict[str, int]] = {}
        for app in list(self._app_refs):
            for handler in app.handlers:
                if isinstance(handler, MemwatchAppHandler) and handler.listener is self:
                    out[handler.app_path] = {
                        "sessions": handler.sessions_seen, "with_hooks": handler.sessions_with_hooks,
                    }
        return out

    def session_build_errors(self) -> dict[str, dict[str, Any]]:
        """ Per app: sessions whose build failed in one of the app's own
        handlers, and the first error (text with traceback, or None). """
        out: dict[str, dict[str, Any]] = {}
        for app in list(self._app_refs):
            for handler in app.handlers:
                if isinstance(handler, MemwatchAppHandler) and handler.listener is self:
                    out[handler.app_path] = {"count": handler.sessions_failed, "first": handler.first_error}
        return out

    def advice(self, *, rounds: Mapping[str, Any] | None = None, history_limit: int = 720) -> list[dict[str, Any]]:
        """ The article's checklist applied to live data (see :mod:`.advice`);
        ``rounds`` is what ``bokeh-memwatch check`` measured, per app. """
        from .analyze.advice import advise, census_advice

        summary = self.summary()
        orphans = self.orphans()
        proven = proven_leaks(orphans)
        grown = census_advice(
            None, self.census.state(),
            documents=sum(1 for r in proven if r.get("status") == "orphan"),
            models=sum(int(r.get("models_proven") or r.get("models") or 0)
                       for r in proven if r.get("status") == "models_retained"),
        ) if rounds is None else []
        return grown + advise(
            summary,
            sessions=self.sessions(),
            retained=proven,
            history=self.history(since=None, limit=history_limit),
            cleanup_hooks=self.cleanup_hooks(),
            rounds=rounds,
        )

    def history(self, *, since: float | None, limit: int, merged: bool = False,
                pid: int | None = None) -> list[dict[str, Any]]:
        """ Samples after ``since``, oldest first, the newest ``limit``, each
        with its ``pid``: this process's (from memory), or with ``merged``
        also the history database's (other workers, earlier runs; see
        :meth:`Cluster.history`), optionally of one ``pid`` only. """
        me = os.getpid()
        local: list[dict[str, Any]] = []
        if pid in (None, me):
            local = self.store.query(since=since, limit=limit)
        for sample in local:
            sample["pid"] = me
        if not merged or self.cluster is None:
            return local
        return self.cluster.history(local, since=since, limit=limit, pid=pid)

    def collect_garbage(self) -> dict[str, Any]:
        """ Run one full collection now, at most once per ``gc_min_interval_s``.

        This runs in-process (a collection elsewhere frees nothing here) and
        costs what Bokeh itself spends at every session destroy.
        """
        now = time.monotonic()
        wait_s = self._last_gc + self.options.gc_min_interval_s - now
        if wait_s > 0:
            return {"ran": False, "retry_after_s": round(wait_s, 3)}
        self._last_gc = now
        started = time.perf_counter()
        collected = gc.collect()
        return {"ran": True, "collected": collected, "elapsed_ms": round((time.perf_counter() - started) * 1000, 3)}

    def cached_chain(self, session_id: str) -> dict[str, Any] | None:
        """ The last chain searched for this session, if still fresh (see :class:`WhyAlive`). """
        return self.why_alive.cached(session_id)

    async def chain(self, session_id: str) -> dict[str, Any]:
        """ Why is this destroyed session's Document (or Model) still alive?
        See :meth:`WhyAlive.search` for the answer and the errors. """
        return await self.why_alive.search(session_id)

    def prepare_chain(
        self, session_id: str, roots: chains.Roots,
    ) -> tuple[Callable[[], dict[str, Any]], dict[str, Any]]:
        """ A chain search to run in the heap worker (see :meth:`WhyAlive.prepare`). """
        return self.why_alive.prepare(session_id, roots)

    def _rss_bytes(self) -> int | None:
        try:
            return (self._process or ProcessCollector()).rss_bytes()
        except Exception:
            return None


def versions() -> dict[str, str | None]:
    import bokeh
    import tornado

    panel = sys.modules.get("panel")
    return {
        "python": sys.version.split()[0],
        "bokeh": bokeh.__version__,
        "tornado": tornado.version,
        "panel": getattr(panel, "__version__", None),
    }
