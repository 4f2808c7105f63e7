""" Prometheus metrics at ``{prefix}/memwatch/metrics``.

A custom ``prometheus_client`` collector, registered on a private
``CollectorRegistry`` per :class:`~bokeh_memwatch.monitor.Monitor` (never the
global one: an embedding application's own metrics stay its own), rendered
by ``generate_latest`` in the text format.  A scrape reads the latest sample
of each worker (this one from memory, the others from the history database)
and a few counters: it never walks the heap.

Every series has a ``pid`` label; per-application series an ``app`` label.
With ``--num-procs N`` whichever worker answers a scrape reports every
worker's series (the others' as of their last sample), so one scrape target
sees them all.

Mounted even with ``--memwatch-no-http``, under the same access rules as the
API (Bokeh auth, memwatch token, loopback).
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from .._version import __version__
from ..schema import APP_GAUGES, METRIC_PREFIX, PROCESS_COUNTERS, PROCESS_GAUGES
from .base import JSONHandler, no_query_args
from .probes import recycle_metrics

if TYPE_CHECKING:
    from ..monitor import Monitor

log = logging.getLogger(__name__)

__all__ = (
    "CONTENT_TYPE",
    "MemwatchCollector",
    "MetricsHandler",
    "make_registry",
)

#: The text exposition format (what ``generate_latest`` writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class MemwatchCollector:
    """ A ``prometheus_client`` collector reading one Monitor's samples. """

    def __init__(self, memwatch: Monitor) -> None:
        self.memwatch = memwatch

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: families depend on the workers seen

    def collect(self) -> Iterator[Metric]:
        mw = self.memwatch
        me = str(os.getpid())
        latest = mw.store.latest()
        samples: Mapping[int, Mapping[str, Any]]
        if mw.cluster is not None:
            samples = mw.cluster.worker_samples(latest)
        else:
            samples = {} if latest is None else {os.getpid(): latest}

        for name, fieldname, doc, factor in PROCESS_GAUGES:
            gauge = GaugeMetricFamily(METRIC_PREFIX + name, doc, labels=["pid"])
            for pid, sample in samples.items():
                value = _number(sample.get(fieldname))
                if value is not None:
                    gauge.add_metric([str(pid)], value * factor)
            yield gauge
        ratio = GaugeMetricFamily(METRIC_PREFIX + "rss_limit_ratio", "RSS as a fraction of the memory limit",
                                  labels=["pid"])
        for pid, sample in samples.items():
            rss, limit = _number(sample.get("rss_bytes")), _number(sample.get("memory_limit_bytes"))
            if rss is not None and limit:
                ratio.add_metric([str(pid)], rss / limit)
        yield ratio
        for name, fieldname, doc in PROCESS_COUNTERS:
            counter = CounterMetricFamily(METRIC_PREFIX + name, doc, labels=["pid"])
            for pid, sample in samples.items():
                value = _number(sample.get(fieldname))
                if value is not None:
                    counter.add_metric([str(pid)], value)
            yield counter
        for name, fieldname, doc in APP_GAUGES:
            gauge = GaugeMetricFamily(METRIC_PREFIX + name, doc, labels=["pid", "app"])
            for pid, sample in samples.items():
                for app, values in sorted((sample.get("apps") or {}).items()):
                    value = _number((values or {}).get(fieldname))
                    if value is not None:
                        gauge.add_metric([str(pid), str(app)], value)
            yield gauge

        yield GaugeMetricFamily(METRIC_PREFIX + "workers", "Workers of this server with a recent sample",
                                value=len(samples) or 1)
        sampler = mw.sampler
        ticks = CounterMetricFamily(METRIC_PREFIX + "sampler_ticks", "Sampler ticks in this worker", labels=["pid"])
        errors = CounterMetricFamily(METRIC_PREFIX + "sampler_errors", "Collector failures in this worker",
                                     labels=["pid"])
        tick_max = GaugeMetricFamily(METRIC_PREFIX + "sampler_tick_max_seconds", "Longest sampler tick in this worker",
                                     labels=["pid"])
        if sampler is not None:
            ticks.add_metric([me], sampler.ticks)
            errors.add_metric([me], sampler.errors_total)
            tick_max.add_metric([me], sampler.max_tick_ms / 1000)
        yield ticks
        yield errors
        yield tick_max
        reports = CounterMetricFamily(METRIC_PREFIX + "limit_reports", "Reports written near the memory limit",
                                      labels=["pid"])
        dropped = CounterMetricFamily(METRIC_PREFIX + "history_dropped_samples",
                                      "Samples not written to the history database (queue full)", labels=["pid"])
        if mw.cluster is not None:
            reports.add_metric([me], mw.cluster.guard.triggered_total)
            if mw.cluster.db is not None:
                dropped.add_metric([me], mw.cluster.db.dropped)
        yield reports
        yield dropped
        yield from _census_metrics(mw, me)
        yield from recycle_metrics(mw, METRIC_PREFIX)
        import bokeh

        info = GaugeMetricFamily(METRIC_PREFIX + "build_info", "Versions (value 1)",
                                 labels=["pid", "version", "bokeh", "python"])
        info.add_metric([me, __version__, bokeh.__version__, sys.version.split()[0]], 1)
        yield info


def _census_metrics(mw: Monitor, me: str) -> Iterator[Metric]:
    """ The census (census.py): types growing with closed sessions. """
    census = mw.census
    runs = CounterMetricFamily(METRIC_PREFIX + "census_runs", "Censuses of live objects by type taken in this worker",
                               labels=["pid"])
    growing = GaugeMetricFamily(METRIC_PREFIX + "census_growing_types",
                                "Application types whose count grows with closed sessions (census)", labels=["pid"])
    per_session = GaugeMetricFamily(METRIC_PREFIX + "census_type_growth_per_session",
                                    "Instances kept per closed session, per growing type (census; top 10)",
                                    labels=["pid", "type"])
    bytes_per_session = GaugeMetricFamily(METRIC_PREFIX + "census_type_growth_bytes_per_session",
                                          "Shallow bytes kept per closed session, per growing type (census; top 10)",
                                          labels=["pid", "type"])
    runs.add_metric([me], census.runs_total)
    rows = [r for r in census.growing() if not r.get("generic")]
    if census.runs_total:
        growing.add_metric([me], len(rows))
    for row in rows[:10]:
        per_session.add_metric([me, str(row["type"])], float(row["growth_per_session"]))
        bytes_per_session.add_metric([me, str(row["type"])], float(row["bytes_per_session"]))
    yield runs
    yield growing
    yield per_session
    yield bytes_per_session


def make_registry(memwatch: Monitor) -> CollectorRegistry:
    """ A private registry holding memwatch's collector only. """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MemwatchCollector(memwatch))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class MetricsHandler(JSONHandler):
    """ ``GET {prefix}/memwatch/metrics``: the text format (errors stay JSON). """

    cross_site_navigation = True

    def initialize(self, memwatch: Monitor, registry: CollectorRegistry | None = None) -> None:
        super().initialize(memwatch)
        # The route table makes one registry per mount; a handler mounted alone makes its own.
        self.registry = registry if registry is not None else make_registry(memwatch)

    def get(self) -> None:
        no_query_args(self)
        body = render(self.registry)
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(body)
