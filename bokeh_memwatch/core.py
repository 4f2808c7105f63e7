""" The MemWatch object: the one place that knows every layer.

It owns, per process, the session tracker, the sample store, the sampler and
the heap worker, and wires them into a Bokeh server in any of three ways:

* ``bokeh-memwatch serve``: :meth:`MemWatch.instrument` before the server is
  built and :meth:`MemWatch.patterns` as ``extra_patterns``;
* ``Server(apps, extra_patterns=...)``: the same two calls, or the one-call
  helper :func:`bokeh_memwatch.memwatch_server`;
* ``panel serve --plugins bokeh_memwatch.panel``: :meth:`MemWatch.attach` to
  the running server.

Everything it reports is computed from weak references and counters; the
heavy questions (why is this Document alive?) run in a forked child so the
IOLoop keeps serving.
"""
from __future__ import annotations

import functools
import gc
import logging
import os
import secrets
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler

from . import chains
from .census import CensusManager
from .cluster import WORKER_FIELDS, Cluster, server_key
from .collectors import Collector, ProcessCollector, default_collectors
from .heapwork import FORK_MODES, HeapWorkBusy, HeapWorker
from .instrument import MemwatchAppHandler
from .memray_backend import MemrayBackend
from .sampler import Sampler
from .snapshots import SnapshotManager
from .store import SampleStore
from .tracker import VERIFIED_BY_COLLECTIONS, VERIFIED_BY_SCAN, SessionTracker, source_bytes, verification_job

if TYPE_CHECKING:
    from bokeh.application.application import ServerContext
    from bokeh.document import Document
    from bokeh.server.contexts import ApplicationContext
    from bokeh.server.server import BaseServer
    from bokeh.server.session import ServerSession
    from bokeh.server.tornado import BokehTornado
    from tornado.httpserver import HTTPServer
    from tornado.ioloop import IOLoop

    from .forwarding import Forwarder, PrivateListener
    from .recycle import Recycler
    from .registry import WorkerRegistry

log = logging.getLogger(__name__)

__all__ = (
    "MemWatch",
    "MemwatchOptions",
    "UnknownSession",
    "options_from_env",
)


#: What Bokeh's ``Server`` accepts as applications.
Applications: TypeAlias = (
    "Mapping[str, Application | Callable[[Document], None]] | Application | Callable[[Document], None]"
)


#: Time an API request may spend refreshing per-Model figures of destroyed sessions.
ON_DEMAND_BUDGET_S = 0.05

#: Chain answers kept at most (each under ``chain_max_depth`` hops); older ones go first.
CHAIN_CACHE_ENTRIES = 64


class UnknownSession(LookupError):
    """ No session with that id was ever seen (or it was forgotten). """


@dataclass(frozen=True)
class MemwatchOptions:
    """ Settings of one MemWatch; every one is also a ``--memwatch-*`` option.

    Attributes:
        interval_ms: time between samples.
        history_s: how much history the in-memory store keeps.
        orphan_grace_ms: how long a destroyed session's Document and Models
            may stay alive before they are verified (``pending`` until then).
        verify_min_interval_s: least time between two verifications of
            destroyed sessions (reachability scans in a forked child; they
            run only while some destroyed session is unproven).
        verify_timeout_s: longest one verification may run.
        allow_remote: answer non-loopback clients when no Bokeh auth is set.
        chain_timeout_s: longest a "why alive" search may run.
        chain_max_depth: longest reference chain searched.
        chain_cache_s: how long a chain answer is reused.
        gc_min_interval_s: least time between two collections asked over HTTP.
        tick_budget_ms: time a sample may spend on per-Model figures (bytes in
            ColumnDataSources, Models alive after a destroy), refreshed
            round-robin across sessions; counts of sessions, Documents,
            Models and orphans are exact at every sample regardless.
        max_destroyed: destroyed sessions still holding something remembered.
        token: when set, every HTTP request must carry it (header
            ``Authorization: Bearer``/``X-Memwatch-Token``, the cookie set by
            a one-time ``?token=``); also lets remote clients in.
        http: mount the HTTP side (API, dashboard); off keeps sampling and
            metrics only.
        show_values: add short reprs of objects to "why alive" chains.
        heap_fork: how heap jobs run when a loaded native thread pool makes
            ``fork`` unsafe (:func:`bokeh_memwatch.heapwork.fork_policy`):
            ``"auto"`` in a thread, ``"refuse"`` not at all (409 with the
            reason), ``"force"`` forked anyway, ``"never"`` always a thread.
    """

    interval_ms: int = 5000
    history_s: int = 24 * 3600
    orphan_grace_ms: int = 5000
    verify_min_interval_s: float = 5.0
    verify_timeout_s: float = 120.0
    allow_remote: bool = False
    chain_timeout_s: float = 30.0
    chain_max_depth: int = 25
    chain_cache_s: float = 60.0
    gc_min_interval_s: float = 10.0
    max_destroyed: int = 10_000
    tick_budget_ms: float = 0.5
    token: str = field(default="", repr=False)
    http: bool = True
    show_values: bool = False
    # Heap snapshots (snapshots.py): files kept, their total bytes, the least
    # time between two pympler summaries, the longest one snapshot job may run.
    max_snapshots: int = 5
    max_snapshot_bytes: int = 512 * 1024 * 1024
    types_min_interval_s: float = 30.0
    snapshot_timeout_s: float = 300.0
    # How heap jobs run when a native thread pool (OpenBLAS, OpenMP, MKL)
    # makes fork unsafe (heapwork.fork_policy): "auto" (a thread instead),
    # "refuse" (409), "force" (fork anyway), "never" (always a thread).
    heap_fork: str = "auto"
    # Allocation tracking (memray_backend.py, issue 18): "memray" starts a
    # memray tracker in each serving process at start (tracemalloc stays the
    # fallback, with one warning, where memray is not installed).
    allocations: str = "tracemalloc"
    # Beyond one process (cluster.py): the SQLite history ("" the per-user
    # default directory, "none" off) and its size bound; the cgroup mount
    # read for the memory limit; the fraction of it at which a report is
    # written, and the least time between two such reports.
    history_dir: str = ""
    history_max_bytes: int = 64 * 1024 * 1024
    cgroup_root: str = "/sys/fs/cgroup"
    limit_fraction: float = 0.9
    limit_min_interval_s: float = 600.0
    # The census (census.py): live objects by type in the heap worker, every
    # census_interval_s when sessions closed since the last one (0: on
    # demand only), at most one per census_min_interval_s.
    census_interval_s: float = 600.0
    census_min_interval_s: float = 60.0
    # Recycling (recycle.py): where ("" off, a fraction of the memory limit
    # or a size such as "1.5GiB"), for how many samples in a row, the longest
    # drain; the Kubernetes probes (probes.py); forwarding requests to the
    # worker that owns their object (forwarding.py).
    recycle_at: str = ""
    recycle_samples: int = 3
    drain_timeout_s: float = 600.0
    probes: bool = True
    forward: bool = True

    def __post_init__(self) -> None:
        from .recycle import parse_recycle_at

        parse_recycle_at(self.recycle_at)  # raises ValueError
        if self.recycle_samples < 1:
            raise ValueError(f"recycle_samples must be >= 1, got {self.recycle_samples}")
        if self.drain_timeout_s <= 0:
            raise ValueError(f"drain_timeout_s must be > 0, got {self.drain_timeout_s}")
        if self.history_max_bytes < 64 * 1024:
            raise ValueError(f"history_max_bytes must be at least 65536, got {self.history_max_bytes}")
        if not 0 <= self.limit_fraction <= 1:
            raise ValueError(f"limit_fraction must be between 0 (off) and 1, got {self.limit_fraction}")
        if self.limit_min_interval_s < 0:
            raise ValueError(f"limit_min_interval_s must be >= 0, got {self.limit_min_interval_s}")
        for name in ("max_snapshots", "max_snapshot_bytes", "snapshot_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.allocations not in ("tracemalloc", "memray"):  # memray_backend.BACKENDS
            raise ValueError(f"allocations must be 'tracemalloc' or 'memray', got {self.allocations!r}")
        if self.heap_fork not in FORK_MODES:
            raise ValueError(f"heap_fork must be one of {', '.join(FORK_MODES)}, got {self.heap_fork!r}")
        for name in ("census_interval_s", "census_min_interval_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.types_min_interval_s < 0:
            raise ValueError(f"types_min_interval_s must be >= 0, got {self.types_min_interval_s}")
        for name in ("interval_ms", "history_s", "chain_max_depth", "max_destroyed"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("orphan_grace_ms", "chain_cache_s", "gc_min_interval_s", "tick_budget_ms",
                     "verify_min_interval_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.verify_timeout_s <= 0:
            raise ValueError(f"verify_timeout_s must be > 0, got {self.verify_timeout_s}")
        if self.chain_timeout_s <= 0:
            raise ValueError(f"chain_timeout_s must be > 0, got {self.chain_timeout_s}")
        if self.token and len(self.token) < 16:
            raise ValueError(
                "token must be at least 16 characters (python -c 'import secrets; print(secrets.token_urlsafe())')"
            )

    def public(self) -> dict[str, Any]:
        """ The options as shown over HTTP: the token is never echoed. """
        shown = asdict(self)
        shown["token"] = "(set)" if self.token else ""
        return shown

    @property
    def capacity(self) -> int:
        return max(1, self.history_s * 1000 // self.interval_ms)


class MemWatch:
    """ Memory diagnostics for one Bokeh server process.

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
        self.store: SampleStore | None = None
        self.sampler: Sampler | None = None
        self.heap_worker = HeapWorker(max_concurrent=1, fork_mode=self.options.heap_fork)  # type: ignore[arg-type]
        #: Verifications of destroyed sessions have a worker of their own, so
        #: that they never make a user's chain search or snapshot wait (429).
        #: The same fork policy applies: no fork next to an unsafe thread pool.
        self.verify_worker = HeapWorker(max_concurrent=1, fork_mode=self.options.heap_fork)  # type: ignore[arg-type]
        plan = self.verify_worker.plan()
        self.tracker.exact = plan.technique == "fork"
        #: The last verification of destroyed sessions (see verify_destroyed);
        #: ``fallback_reason``: why verdicts cannot come from a forked scan.
        self.verification: dict[str, Any] = {"runs": 0, "last_error": None, "fallback_reason": plan.refused}
        self._contexts: dict[str, ApplicationContext] = {}
        self._app_refs: weakref.WeakSet[Application] = weakref.WeakSet()
        self._io_loop: IOLoop | None = None
        self._tornado: weakref.ReferenceType[BokehTornado] | None = None
        self._pid: int | None = None
        self._started_at: float | None = None
        #: session id -> (monotonic time, answer), oldest first; bounded by
        #: ``chain_cache_entries`` and by age (``chain_cache_s``).
        self._chain_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self.chain_cache_entries = CHAIN_CACHE_ENTRIES
        self._last_gc: float = float("-inf")
        self._process: ProcessCollector | None = None
        self.snapshots: SnapshotManager | None = None
        #: The memray allocation backend (memray_backend.py; made in start()).
        self.memray: MemrayBackend | None = None
        #: Censuses of live objects by type (made in start()).
        self.census: CensusManager | None = None
        #: History database, workers, memory limit (made in start()).
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

    # -- wiring -------------------------------------------------------------

    def patterns(self) -> list[tuple[str, type, dict[str, Any]]]:
        """ Tornado routes for ``Server(..., extra_patterns=...)``; Bokeh
        prepends the server's ``--prefix`` to each.  A server they are
        mounted on logs the dashboard's URL when it starts. """
        from ._bokeh_internals import on_server_start
        from .probes import probe_routes
        from .server import announce_dashboard
        from .views import routes

        on_server_start(announce_dashboard)
        if not self.options.http:
            from .metrics import metrics_routes

            return [*probe_routes(self), *metrics_routes(self)]
        return [*probe_routes(self), *routes(self)]

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
        self._chain_cache.pop(session_id, None)
        self._prune_chain_cache()
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
        self._pid = os.getpid()
        self._started_at = time.time()
        self._io_loop = io_loop
        collectors = self._collector_factory()
        self.cluster = Cluster(self, key=self._server_key())
        collectors = [*collectors, self.cluster.cgroup]
        self._process = next((c for c in collectors if isinstance(c, ProcessCollector)), None) or ProcessCollector()
        self.store = SampleStore(self.options.capacity)
        from .workers import make_recycler, start_worker_services

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
        self.snapshots = SnapshotManager(
            self.heap_worker, max_snapshots=self.options.max_snapshots,
            max_snapshot_bytes=self.options.max_snapshot_bytes,
            types_min_interval_s=self.options.types_min_interval_s, timeout_s=self.options.snapshot_timeout_s,
        )
        self.snapshots.start()
        self._start_memray()
        self._start_census(io_loop)

    def _start_memray(self) -> None:
        """ The memray backend; its tracker starts here with ``allocations="memray"``
        (after any fork: one tracker per serving process). """
        from .memray_backend import MemrayBackend, MemrayError, have_memray

        self.memray = MemrayBackend(max_captures=self.options.max_snapshots,
                                    max_capture_bytes=self.options.max_snapshot_bytes,
                                    timeout_s=self.options.snapshot_timeout_s)
        self.memray.start()
        if self.options.allocations != "memray":
            return
        if not have_memray():  # warned once; tracemalloc's API stays
            return
        try:
            self.memray.start_tracking()
        except MemrayError as e:
            log.warning("memwatch: memray tracking not started: %s", e)

    def _start_census(self, io_loop: IOLoop | None) -> None:
        self.census = CensusManager(
            self.heap_worker, closed=lambda: self.tracker.destroyed_total,
            live=lambda: sum(len(s) for s in self.live_sessions().values()),
            interval_s=self.options.census_interval_s, min_interval_s=self.options.census_min_interval_s,
            timeout_s=self.options.snapshot_timeout_s, chain_depth=self.options.chain_max_depth,
            chain_timeout_s=self.options.chain_timeout_s,
        )
        try:
            self.census.start()
        except RuntimeError:  # no running loop yet
            if io_loop is not None:
                io_loop.add_callback(self.census.start)

    def stop(self) -> None:
        from .workers import stop_worker_services

        stop_worker_services(self)
        if self.census is not None:
            self.census.stop()
        if self.sampler is not None:
            self.sampler.stop()
        if self.snapshots is not None:
            self.snapshots.stop()
        if self.memray is not None:
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
        latest = self.store.latest() if self.store is not None else None
        now = time.time()
        result: dict[str, Any] = {
            "pid": os.getpid(),
            "time": now,
            "started_at": self._started_at,
            "uptime_s": None if self._started_at is None else round(now - self._started_at, 3),
            "rss_bytes": self._rss_bytes(),
            "traced_bytes": latest.get("traced_bytes") if latest else None,
        }
        for key in ("sessions", "connections", "documents", "models", "data_bytes", "orphans",
                    "pending_orphans", "held_by_timers", "awaiting_collection", "models_retained",
                    "models_retained_sessions"):
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
            "samples": len(store) if store else 0,
            "capacity": store.capacity if store else self.options.capacity,
            "store_bytes": store.nbytes() if store else 0,
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
        :data:`bokeh_memwatch.tracker.STATES`): ``orphans`` and
        ``retained_models`` are proven leaks; ``held_by_timers``,
        ``awaiting_collection`` and ``pending`` are not (yet). """
        rows = self.tracker.destroyed_holding(budget_s=ON_DEMAND_BUDGET_S)
        return {
            "orphans": [r for r in rows if r["status"] == "orphan"],
            "retained_models": [r for r in rows if r["status"] == "models_retained"],
            "held_by_timers": [r for r in rows if r["status"] == "held_until"],
            "awaiting_collection": [r for r in rows if r["status"] == "awaiting_collection"],
            "pending": [r for r in rows if r["status"] == "pending"],
        }

    def verification_state(self) -> dict[str, Any]:
        """ How verdicts are reached, and the last verification's figures. """
        sampler = self.sampler
        return {
            **self.verification,
            "technique": VERIFIED_BY_SCAN if self.tracker.exact else VERIFIED_BY_COLLECTIONS,
            "min_interval_s": self.options.verify_min_interval_s,
            "scheduled_in_s": (
                None if sampler is None or sampler._verify_timer is None
                else round(max(0.0, sampler._verify_at - time.time()), 3)
            ),
        }

    async def verify_destroyed(self, *, include_proven: bool = True) -> dict[str, Any]:
        """ Verify the destroyed sessions due for it (and re-evaluate proven
        ones): a reachability scan in a forked heap worker child (see
        :mod:`bokeh_memwatch.reachability`); the loop pays the fork.

        Returns the verification state.  Without a fork (or when the heap
        worker cannot fork) verdicts fall back to the collector's schedule
        and ``technique`` says so; nothing is collected here.  A busy heap
        worker leaves the records pending for the next attempt.
        """
        loop_started = time.perf_counter()
        plan = self.verify_worker.plan()
        if plan.technique != "fork":
            # The fork policy (no fork next to an unsafe native thread pool,
            # heap_fork "never", no os.fork): verdicts fall back, and say why.
            self.tracker.exact = False
            self.verification["fallback_reason"] = plan.refused
            return self.verification_state()
        self.tracker.exact = True
        self.verification["fallback_reason"] = None
        groups = self.tracker.verification_groups(include_proven=include_proven)
        if not groups:
            return self.verification_state()
        pid = os.getpid()
        started = time.time()
        prepare_s = time.perf_counter() - loop_started
        try:
            result = await self.verify_worker.run(
                lambda: verification_job(groups, pid), timeout_s=self.options.verify_timeout_s, plan=plan,
            )
        except HeapWorkBusy as e:
            self.verification["last_error"] = f"heap worker busy: {e}"
            return self.verification_state()
        except Exception as e:
            self.verification["last_error"] = f"{type(e).__name__}: {e}"
            if "NotFrozen" in str(e):
                # The heap worker ran the job in this process (no fork allowed):
                # no exact answer is possible; say how verdicts are reached instead.
                self.tracker.exact = False
            log.warning("memwatch: verification of destroyed sessions failed: %s", e)
            return self.verification_state()
        value = result.value
        apply_started = time.perf_counter()
        changed = self.tracker.apply_verification(value, verified_at=started)
        # What the loop paid: choosing the records, the fork, applying the answer.
        loop_s = prepare_s + (result.fork_s or 0.0) + time.perf_counter() - apply_started
        self.verification.update({
            "runs": int(self.verification.get("runs", 0)) + 1,
            "last_at": started,
            "last_error": None,
            "last_records": len(value.get("records") or {}),
            "last_changed": changed,
            "last_objects": value.get("objects"),
            "last_scan_s": value.get("scan_s"),
            "last_loop_ms": round(loop_s * 1000, 3),
            **{f"last_{k}": v for k, v in result.costs().items()},
        })
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
        from .advice import advise, census_advice

        summary = self.summary()
        orphans = self.orphans()
        grown = census_advice(None, self.census.state()) if self.census is not None and rounds is None else []
        return grown + advise(
            summary,
            sessions=self.sessions(),
            retained=[*orphans["orphans"], *orphans["retained_models"]],
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
        if self.store is not None and pid in (None, me):
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
        """ The last chain searched for this session, if still fresh. """
        if self.tracker.find(session_id) is None:
            raise UnknownSession(session_id)
        self._prune_chain_cache()
        cached = self._chain_cache.get(session_id)
        return None if cached is None else {**cached[1], "cached": True}

    def _prune_chain_cache(self) -> None:
        """ Drop chain answers older than ``chain_cache_s``, then the oldest
        beyond ``chain_cache_entries``. """
        cache, now = self._chain_cache, time.monotonic()
        for key in [k for k, (t, _) in cache.items() if now - t >= self.options.chain_cache_s]:
            del cache[key]
        while len(cache) > max(0, self.chain_cache_entries):
            del cache[next(iter(cache))]

    async def chain(self, session_id: str) -> dict[str, Any]:
        """ Why is this destroyed session's Document (or Model) still alive?

        Raises UnknownSession for an id never seen, LookupError subclasses
        for a live or a fully collected session (see the views).
        """
        record = self.tracker.find(session_id)
        if record is None:
            raise UnknownSession(session_id)
        if not record.destroyed:
            raise SessionAlive(session_id)
        self._prune_chain_cache()
        cached = self._chain_cache.get(session_id)
        if cached is not None:
            return {**cached[1], "cached": True}
        job, fields = self.prepare_chain(session_id, chains.capture_roots())
        try:
            outcome = await self.heap_worker.run(job, timeout_s=self.options.chain_timeout_s)
        finally:
            del job  # drops the roots' keep-alive references to threads
        result: dict[str, Any] = {
            **fields,
            **outcome.value,
            "text": chains.format_chain(outcome.value),
            **outcome.costs(),
            "cached": False,
        }
        self._chain_cache.pop(session_id, None)
        self._chain_cache[session_id] = (time.monotonic(), result)
        self._prune_chain_cache()
        return result

    def prepare_chain(
        self, session_id: str, roots: chains.Roots,
    ) -> tuple[Callable[[], dict[str, Any]], dict[str, Any]]:
        """ The search for why a destroyed session's Document (or Model) is
        alive, to run in the heap worker, and the fields its answer carries.

        Raises as :meth:`chain` does.  ``roots`` come from
        :func:`chains.capture_roots`, taken on the loop just before the job
        starts (one capture serves several searches).
        """
        record = self.tracker.find(session_id)
        if record is None:
            raise UnknownSession(session_id)
        if not record.destroyed:
            raise SessionAlive(session_id)
        target_ref, target_type = _chain_target(record.doc_ref, record.alive_models())
        if target_ref is None:
            raise SessionCollected(session_id)
        job = functools.partial(
            _search_chain, target_ref, roots,
            max_depth=self.options.chain_max_depth, deadline_s=self.options.chain_timeout_s * 0.8,
            values=self.options.show_values,
        )
        return job, {"session_id": session_id, "app": record.app, "target": target_type}

    def _rss_bytes(self) -> int | None:
        try:
            return (self._process or ProcessCollector()).rss_bytes()
        except Exception:
            return None


class SessionAlive(LookupError):
    """ The session is alive: the server holds its Document, as it should. """


class SessionCollected(LookupError):
    """ Nothing of the session is alive any more. """


def _search_chain(
    target_ref: weakref.ReferenceType[Any], roots: chains.Roots, *, max_depth: int, deadline_s: float,
    values: bool = False,
) -> dict[str, Any]:
    """ The chain search itself; runs in the heap worker (a forked child). """
    target = target_ref()
    if target is None:
        return {"chain": [], "root": None, "complete": False, "reason": "collected before the search"}
    return chains.find_chain(target, roots=roots, max_depth=max_depth, deadline_s=deadline_s, values=values)


def _chain_target(
    doc_ref: weakref.ReferenceType[Any], models: Iterable[Any]
) -> tuple[weakref.ReferenceType[Any] | None, str]:
    if doc_ref() is not None:
        return doc_ref, "Document"
    from bokeh.models import ColumnDataSource

    # The heaviest source first; with equal bytes (Bokeh clears a destroyed
    # Model's properties) a data source rather than a Selection or a glyph.
    best = max(models, key=lambda m: (source_bytes(m), isinstance(m, ColumnDataSource)), default=None)
    if best is None:
        return None, ""
    return weakref.ref(best), type(best).__name__


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


ENV_PREFIX = "BOKEH_MEMWATCH_"


def options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """ Option overrides from ``BOKEH_MEMWATCH_<FIELD>`` environment variables
    (``BOKEH_MEMWATCH_INTERVAL_MS=1000``, ``BOKEH_MEMWATCH_ALLOW_REMOTE=1``),
    for ways in that take no command-line options (the Panel plugin). """
    from dataclasses import fields

    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for f in fields(MemwatchOptions):
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is None or raw == "":
            continue
        kind = type(getattr(MemwatchOptions(), f.name))
        try:
            if kind is bool:
                lowered = raw.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(raw)
                out[f.name] = lowered in ("1", "true", "yes", "on")
            else:
                out[f.name] = kind(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{f.name.upper()} must be a {kind.__name__}, got {raw!r}") from None
    return out
