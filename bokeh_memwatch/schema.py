""" The one schema: the fields of a sample, the states of a destroyed
session, and the Prometheus metric names (how values are written for people is
:mod:`bokeh_memwatch.units`).

The store, the history database, the cluster's worker rows, the summary, the
metrics, the API and the reports read their names from here.  Two spellings
of one figure stay for compatibility, both defined only here: a sample's
``models_retained`` count (and the tracker's status of that name) is the
length of ``GET api/orphans``'s ``retained_models`` list and the metric
``bokeh_memwatch_retained_models``; ``models_retained_sessions`` counts the
sessions in that state.

This module imports nothing of memwatch, tornado or Bokeh.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

__all__ = (
    "APP_FIELDS",
    "APP_GAUGES",
    "COUNT_FIELDS",
    "METRIC_NAMES",
    "METRIC_PREFIX",
    "ORPHAN_LISTS",
    "PROCESS_COUNTERS",
    "PROCESS_FIELDS",
    "PROCESS_GAUGES",
    "PROVEN_LISTS",
    "PROVEN_STATES",
    "RECYCLE_METRICS",
    "SESSION_COUNTS",
    "STATES",
    "UNJUDGED_STATES",
    "WORKER_FIELDS",
    "proven_leaks",
)

# -- samples ----------------------------------------------------------------------

#: What the tracker counts for the whole process at every sample (the
#: summary's figures, in this order).
SESSION_COUNTS: tuple[str, ...] = (
    "sessions",
    "connections",
    "documents",
    "models",
    "data_bytes",
    "orphans",
    "pending_orphans",
    "held_by_timers",
    "awaiting_collection",
    "models_retained",
    "models_retained_sessions",
)

#: Fields recorded once per sample for the whole process (the store's and
#: the history database's columns, in this order).
PROCESS_FIELDS: tuple[str, ...] = (
    "t",
    "rss_bytes",
    "traced_bytes",
    "traced_peak_bytes",
    "gc_gen0",
    "gc_gen1",
    "gc_gen2",
    "gc_collections_gen2",
    *SESSION_COUNTS,
    "sessions_created_total",
    "sessions_destroyed_total",
    "tick_ms",
    "errors",
)

#: Fields recorded for every application at every sample.
APP_FIELDS: tuple[str, ...] = (
    "sessions",
    "connected",
    "unused",
    "connections",
    "documents",
    "models",
    "data_bytes",
    "orphans",
    "models_retained",
    "models_retained_sessions",
)

#: Fields that are small counts (far below 2**24): stored as 4-byte floats.
COUNT_FIELDS: frozenset[str] = frozenset({
    "gc_gen0", "gc_gen1", "gc_gen2", "gc_collections_gen2", "sessions", "connected", "unused",
    "connections", "documents", "models", "orphans", "pending_orphans", "models_retained", "errors",
    "held_by_timers", "awaiting_collection", "models_retained_sessions",
})

#: A worker's row in ``summary["workers"]``.
WORKER_FIELDS: tuple[str, ...] = (
    "rss_bytes", "traced_bytes", *SESSION_COUNTS,
    "sessions_created_total", "sessions_destroyed_total",
    "memory_limit_bytes",
)

# -- destroyed sessions -------------------------------------------------------------

#: The states of a destroyed session still holding something (the tracker's ``status``).
STATES: tuple[str, ...] = ("pending", "awaiting_collection", "held_until", "orphan", "models_retained")

#: The states that are proven leaks, and those not judged yet.
PROVEN_STATES: tuple[str, ...] = ("orphan", "models_retained")
UNJUDGED_STATES: tuple[str, ...] = ("pending", "held_until")

#: ``GET api/orphans``: a state -> the list it is shown in.
ORPHAN_LISTS: Mapping[str, str] = {
    "orphan": "orphans",
    "models_retained": "retained_models",
    "held_until": "held_by_timers",
    "awaiting_collection": "awaiting_collection",
    "pending": "pending",
}

#: The lists of ``GET api/orphans`` that are proven leaks.
PROVEN_LISTS: tuple[str, ...] = ("orphans", "retained_models")


def proven_leaks(orphans: Mapping[str, Any]) -> list[dict[str, Any]]:
    """ The proven leaks of a ``GET api/orphans`` answer: orphaned Documents,
    then Models retained without their Document. """
    return [row for name in PROVEN_LISTS for row in (orphans.get(name) or [])]


# -- metrics --------------------------------------------------------------------------

#: The series :func:`recycle_metrics` writes (without the prefix).
RECYCLE_METRICS = ("draining", "recycle_pending", "drain_seconds", "drain_timeout_seconds",
                   "recycle_threshold_bytes", "recycles_total")

METRIC_PREFIX = "bokeh_memwatch_"

#: Per worker: (metric name without prefix, sample field, help, factor).
PROCESS_GAUGES: tuple[tuple[str, str, str, float], ...] = (
    ("rss_bytes", "rss_bytes", "Resident set size of the worker", 1.0),
    ("traced_bytes", "traced_bytes", "Memory traced by tracemalloc (absent when not tracing)", 1.0),
    ("sessions", "sessions", "Live Bokeh sessions", 1.0),
    ("connections", "connections", "Open websocket connections", 1.0),
    ("documents", "documents", "Alive Documents: of live sessions and of destroyed sessions not freed yet", 1.0),
    ("models", "models", "Models in live Documents", 1.0),
    ("data_bytes", "data_bytes", "Bytes held in ColumnDataSources", 1.0),
    ("orphans", "orphans",
     "Documents of destroyed sessions proven reachable from a root (leaks; a reachability scan)", 1.0),
    ("pending_orphans", "pending_orphans",
     "Destroyed sessions still holding something, not judged yet (grace period, no verification yet)", 1.0),
    ("held_by_timers", "held_by_timers",
     "Destroyed sessions held only by scheduled loop callbacks, verified again when those are due", 1.0),
    ("awaiting_collection", "awaiting_collection",
     "Destroyed sessions whose Document and Models are garbage the next full collection frees (not leaks)", 1.0),
    ("retained_models", "models_retained",
     "Models of destroyed sessions proven reachable while their Document is gone or garbage (leaks)", 1.0),
    ("memory_limit_bytes", "memory_limit_bytes", "Memory limit of the worker's cgroup (absent: none)", 1.0),
    ("sampler_tick_seconds", "tick_ms", "Duration of the worker's last sampler tick", 0.001),
    ("sample_timestamp_seconds", "t", "Unix time of the worker's latest sample", 1.0),
)

PROCESS_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("sessions_created", "sessions_created_total", "Sessions created since the worker started"),
    ("sessions_destroyed", "sessions_destroyed_total", "Sessions destroyed since the worker started"),
)

#: Per worker and application: (name without prefix, app field, help).
APP_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("app_sessions", "sessions", "Live sessions of the application"),
    ("app_connections", "connections", "Open connections of the application"),
    ("app_documents", "documents", "Live Documents of the application"),
    ("app_models", "models", "Models in the application's live Documents"),
    ("app_data_bytes", "data_bytes", "Bytes in the application's ColumnDataSources"),
    ("app_orphans", "orphans", "The application's orphaned Documents (proven)"),
    ("app_retained_models", "models_retained", "The application's Models retained without their Document (proven)"),
)

#: Every metric family a scrape can contain (names as exposed).
METRIC_NAMES: tuple[str, ...] = (
    *(METRIC_PREFIX + name for name, _, _, _ in PROCESS_GAUGES),
    METRIC_PREFIX + "rss_limit_ratio",
    *(METRIC_PREFIX + name + "_total" for name, _, _ in PROCESS_COUNTERS),
    *(METRIC_PREFIX + name for name, _, _ in APP_GAUGES),
    METRIC_PREFIX + "workers",
    METRIC_PREFIX + "sampler_ticks_total",
    METRIC_PREFIX + "sampler_errors_total",
    METRIC_PREFIX + "sampler_tick_max_seconds",
    METRIC_PREFIX + "limit_reports_total",
    METRIC_PREFIX + "history_dropped_samples_total",
    METRIC_PREFIX + "build_info",
    # the census (census.py)
    METRIC_PREFIX + "census_runs_total",
    METRIC_PREFIX + "census_growing_types",
    METRIC_PREFIX + "census_type_growth_per_session",
    METRIC_PREFIX + "census_type_growth_bytes_per_session",
    *(METRIC_PREFIX + name for name in RECYCLE_METRICS),
)
