""" The one route table: every URL memwatch mounts, its handler, and the
endpoints the API index (``GET api/``) lists for it.

:func:`patterns` turns the table into tornado routes for one
:class:`~bokeh_memwatch.monitor.Monitor` (Bokeh prepends the server's
``--prefix``); :data:`ENDPOINTS`, the index, is generated from the same rows,
so a route cannot be mounted and missing from the index or the other way
round (``tests/test_layering.py`` checks it).  Order matters: tornado takes
the first pattern that matches, and the catch-all JSON 404 comes last.

This module sits above ``http`` and ``ui``: it is the only place that knows
every handler.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from tornado.web import RequestHandler

from .http.api import (
    AdviceHandler,
    ChainHandler,
    GcHandler,
    HistoryHandler,
    IndexHandler,
    NotFoundHandler,
    OrphansHandler,
    SessionsHandler,
    SummaryHandler,
)
from .http.census import CensusHandler
from .http.memray import (
    MemrayAllocatorsHandler,
    MemrayBaselineHandler,
    MemrayCaptureHandler,
    MemrayDownloadHandler,
    MemrayFlamegraphHandler,
    MemrayStateHandler,
)
from .http.metrics import MetricsHandler, make_registry
from .http.probes import ProbeHandler, RecycleHandler
from .http.snapshots import (
    AllocatorsHandler,
    BaselineHandler,
    ReportHandler,
    SnapshotDownloadHandler,
    SnapshotItemHandler,
    SnapshotsHandler,
    TracemallocHandler,
    TypesHandler,
)
from .monitor import Monitor
from .ui.dashboard import DashboardHandler, PageCache, TimelineHandler

log = logging.getLogger(__name__)

__all__ = (
    "ENDPOINTS",
    "ROUTES",
    "Route",
    "Routes",
    "patterns",
)

#: What ``Server(extra_patterns=...)`` takes.
Routes = list[tuple[str, type[RequestHandler], dict[str, Any]]]

#: When a route is mounted: ``probes`` unless ``--memwatch-no-probes``, ``always``,
#: ``http`` unless ``--memwatch-no-http``.
Mount = Literal["probes", "always", "http"]


def _no_deps(memwatch: Monitor) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Route:
    """ One row: a URL pattern (relative to the prefix), its handler, when
    it is mounted, the handler's ``initialize`` keyword arguments beyond
    ``memwatch`` (made once per :func:`patterns` call), and its rows in the
    API index as ``(method, path, purpose)``. """

    pattern: str
    handler: type[RequestHandler]
    endpoints: tuple[tuple[str, str, str], ...] = ()
    mount: Mount = "http"
    deps: Callable[[Monitor], dict[str, Any]] = _no_deps


ROUTES: tuple[Route, ...] = (
    Route(r"/memwatch/healthz/?", ProbeHandler, mount="probes", deps=lambda mw: {"readiness": False}, endpoints=(
        ("GET", "healthz", "liveness probe: 200 ok (no credentials, reveals nothing)"),)),
    Route(r"/memwatch/readyz/?", ProbeHandler, mount="probes", deps=lambda mw: {"readiness": True}, endpoints=(
        ("GET", "readyz", "readiness probe: 200 ok, 503 draining (no credentials)"),)),
    Route(r"/memwatch/api/?", IndexHandler, deps=lambda mw: {"endpoints": ENDPOINTS}, endpoints=(
        ("GET", "api/", "this list"),)),
    Route(r"/memwatch/api/summary/?", SummaryHandler, endpoints=(
        ("GET", "api/summary",
         "pid, RSS, sessions, Documents, Models, orphans (proven) and the other states of destroyed sessions, "
         "how verdicts are reached (verification), per-app counts, sampler and server settings"),)),
    Route(r"/memwatch/api/sessions/?", SessionsHandler, endpoints=(
        ("GET", "api/sessions?app=", "live sessions, heaviest first: id, app, connections, age, models, data_bytes"),)),
    Route(r"/memwatch/api/orphans/?", OrphansHandler, endpoints=(
        ("GET", "api/orphans",
         "destroyed sessions still holding something, by state: orphans and retained_models (proven leaks), "
         "held_by_timers (with held_until), awaiting_collection (garbage), pending"),)),
    Route(r"/memwatch/api/orphans/([^/]+)/chain/?", ChainHandler, endpoints=(
        ("POST", "api/orphans/<session_id>/chain",
         "why alive: search the reference chain from a root to the orphan (in a forked child)"),
        ("GET", "api/orphans/<session_id>/chain", "the last chain searched for that orphan (404 until a POST ran one)"),
    )),
    Route(r"/memwatch/api/history/?", HistoryHandler, endpoints=(
        ("GET", "api/history?since=&limit=&pid=",
         "samples of every worker and earlier runs (memory + history database), oldest first, with pid"),)),
    Route(r"/memwatch/api/gc/?", GcHandler, endpoints=(
        ("POST", "api/gc", "run one full garbage collection (rate-limited)"),)),
    Route(r"/memwatch/api/advice/?", AdviceHandler, endpoints=(
        ("GET", "api/advice",
         "the memory checklist applied to live data: [{id, severity, title, evidence, fix, article_section}]"),)),
    Route(r"/memwatch/api/recycle/?", RecycleHandler, endpoints=(
        ("GET", "api/recycle",
         "recycling: this worker's state (threshold, drain), every worker's, the newest recycles"),)),
    Route(r"/memwatch/metrics/?", MetricsHandler, mount="always",
          deps=lambda mw: {"registry": make_registry(mw)}, endpoints=(
        ("GET", "metrics",
         "Prometheus text format: RSS, sessions, Documents, Models, orphans per worker (pid) and app"),)),
    Route(r"/memwatch/api/tracemalloc/?", TracemallocHandler, endpoints=(
        ("GET", "api/tracemalloc", "tracemalloc state: tracing, frames, traced bytes"),
        ("POST", "api/tracemalloc", 'start or stop tracemalloc: {"action": "start"|"stop", "frames": N}'),
    )),
    Route(r"/memwatch/api/snapshots/?", SnapshotsHandler, endpoints=(
        ("POST", "api/snapshots", "take a tracemalloc snapshot (in a forked child); {id}"),
        ("GET", "api/snapshots", "stored snapshots: id, created_at, size_bytes, traced_bytes, frames"),
    )),
    Route(r"/memwatch/api/snapshots/([^/]+)/?", SnapshotItemHandler, endpoints=(
        ("GET", "api/snapshots/<id>", "one stored snapshot: id, created_at, size_bytes, traced_bytes, frames"),
        ("DELETE", "api/snapshots/<id>", "drop a stored snapshot"),
    )),
    Route(r"/memwatch/api/snapshots/([^/]+)/tracemalloc/?", SnapshotDownloadHandler, endpoints=(
        ("GET", "api/snapshots/<id>/tracemalloc",
         "download a snapshot file for tracemalloc.Snapshot.load (id 'baseline': the baseline's)"),)),
    Route(r"/memwatch/api/baseline/?", BaselineHandler, endpoints=(
        ("GET", "api/baseline", "the baseline: when, and what it holds"),
        ("POST", "api/baseline", "set the baseline: a tracemalloc snapshot and a pympler type summary"),
    )),
    Route(r"/memwatch/api/allocators/?", AllocatorsHandler, endpoints=(
        ("GET", "api/allocators?group=lineno|filename|traceback&limit=&compare=baseline|<id>&snapshot=<id>",
         "top allocators (memwatch's own left out), or growth since the baseline"),)),
    Route(r"/memwatch/api/types/?", TypesHandler, endpoints=(
        ("GET", "api/types?limit=&compare=baseline",
         "pympler type summary (rate-limited, age_s) and per-type growth since the baseline"),)),
    Route(r"/memwatch/api/report/?", ReportHandler, endpoints=(
        ("GET", "api/report?chains=",
         "download a JSON report for a bug report: summary, sessions, orphans and chains, allocators, types, "
         "settings, versions"),)),
    Route(r"/memwatch/api/dashboard/timeline/?", TimelineHandler, endpoints=(
        ("GET", "api/dashboard/timeline?window_s=&since=&max_points=",
         "history as columns for the dashboard's plots, at most max_points points per window"),)),
    Route(r"/memwatch/?", DashboardHandler, deps=lambda mw: {"cache": PageCache()}),
    Route(r"/memwatch/api/census/?", CensusHandler, endpoints=(
        ("GET", "api/census",
         "types growing with closed sessions (census of live objects by type, kept censuses)"),
        ("POST", "api/census", "take a census now in a forked child (rate-limited: census_min_interval_s)"),
    )),
    Route(r"/memwatch/api/memray/?", MemrayStateHandler, endpoints=(
        ("GET", "api/memray", "memray tracker state and kept captures"),
        ("POST", "api/memray", 'start/stop memray tracking: {"action": "start"|"stop", "native_traces": bool}'),
    )),
    Route(r"/memwatch/api/memray/baseline/?", MemrayBaselineHandler, endpoints=(
        ("POST", "api/memray/baseline", "open a memray window at the baseline"),)),
    Route(r"/memwatch/api/memray/allocators/?", MemrayAllocatorsHandler, endpoints=(
        ("GET", "api/memray/allocators",
         "memray: what the window allocated and still holds (group=lineno|filename|stack, compare=baseline)"),)),
    Route(r"/memwatch/api/memray/captures/([^/]+)/?", MemrayCaptureHandler, endpoints=(
        ("GET", "api/memray/captures/<id>", "one kept memray capture: id, window, size, settings"),
        ("DELETE", "api/memray/captures/<id>", "drop a kept memray capture"),
    )),
    Route(r"/memwatch/api/memray/captures/([^/]+)/memray/?", MemrayDownloadHandler, endpoints=(
        ("GET", "api/memray/captures/<id>/memray", "memray's capture file"),)),
    Route(r"/memwatch/api/memray/captures/([^/]+)/flamegraph/?", MemrayFlamegraphHandler, endpoints=(
        ("GET", "api/memray/captures/<id>/flamegraph", "memray's HTML flame graph"),)),
    # Last: JSON 404 for unknown API paths (the bare /memwatch is the dashboard's page).
    Route(r"/memwatch/api/(.*)", NotFoundHandler),
)

#: Every endpoint, for ``GET api/``: ``{"method", "path", "purpose"}``, in table order.
ENDPOINTS: list[dict[str, str]] = [
    {"method": method, "path": path, "purpose": purpose}
    for route in ROUTES for method, path, purpose in route.endpoints
]


def patterns(memwatch: Monitor) -> Routes:
    """ The table's routes for ``memwatch``, as ``Server(extra_patterns=...)``
    takes them: the probes (unless off), the metrics, and with the HTTP side
    on, the API and the dashboard. """
    options = memwatch.options
    mounted = {"always", *(["probes"] if options.probes else []), *(["http"] if options.http else [])}
    out: Routes = []
    for route in ROUTES:
        if route.mount not in mounted:
            continue
        kwargs: dict[str, Any] = {"memwatch": memwatch, **route.deps(memwatch)}
        out.append((route.pattern, route.handler, kwargs))
    return out
