""" Kubernetes probes, the recycling API and its metrics.

``{prefix}/memwatch/healthz`` (liveness) answers 200 ``ok`` while the
IOLoop answers.  ``{prefix}/memwatch/readyz`` (readiness) answers 200
``ok``, or 503 ``draining`` from the moment this worker starts draining
after crossing the recycle threshold until it exits.  (A worker over the
threshold waiting for another's drain still serves and stays ready: with
``--num-procs N`` the workers answer for one pod.)  Kubelets probe from
outside the pod without credentials, so both answer **without** the token
or the server's login, and say nothing beyond those two words (no pid, no
figures); ``--memwatch-no-probes`` removes them.

``GET {prefix}/memwatch/api/recycle`` (with the API's access rules): this
worker's recycling state, every worker's state from the history database,
and the newest recycle events of this server.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from tornado.web import RequestHandler

from .base import JSONHandler, check_same_origin, no_query_args

if TYPE_CHECKING:
    from ..monitor import Monitor

log = logging.getLogger(__name__)

__all__ = (
    "ProbeHandler",
    "RecycleHandler",
    "recycle_metrics",
)


class ProbeHandler(RequestHandler):
    """ ``healthz``/``readyz``: plain text, no credentials, nothing revealed. """

    def initialize(self, memwatch: Monitor, readiness: bool) -> None:
        self.memwatch = memwatch
        self.readiness = readiness

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.clear_header("Server")

    def prepare(self) -> None:
        # Kubelets and load balancers send no Sec-Fetch-Site or Origin; a
        # page of another site in an operator's browser does: refused, as on
        # every other memwatch endpoint.
        check_same_origin(self)

    def get(self) -> None:
        recycler = self.memwatch.recycler
        if self.readiness and recycler is not None and not recycler.ready:
            self.set_status(503)
            self.finish("draining\n")
            return
        self.finish("ok\n")

    def head(self) -> None:
        self.get()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(f"{status_code} {self._reason}\n")


class RecycleHandler(JSONHandler):
    """ ``GET api/recycle``. """

    def get(self) -> None:
        no_query_args(self)
        self.write_json(recycle_state(self.memwatch))


def recycle_state(memwatch: Monitor) -> dict[str, Any]:
    """ This worker's recycling, every worker's, the newest events. """
    recycler = memwatch.recycler
    out: dict[str, Any] = {
        "recycle": recycler.state_dict() if recycler is not None else {"enabled": False, "state": "serving"},
        "workers": [],
        "recycles": [],
    }
    registry = memwatch.registry
    if registry is not None:
        try:
            out["workers"] = registry.workers()
            out["recycles"] = registry.recycles(20)
            out["drain_lease_pid"] = registry.drain_holder()
        except sqlite3.Error as e:
            out["error"] = f"history database: {e}"
    return out


def recycle_metrics(memwatch: Monitor, prefix: str) -> Iterator[Metric]:
    """ Recycling series: per worker (from the registry, so any worker
    answers for every worker) ``draining``, ``drain_seconds`` and
    ``recycle_threshold_bytes``; per server ``recycles_total{reason,
    outcome}``, kept across restarts in the history database. """
    draining = GaugeMetricFamily(prefix + "draining", "1 while the worker drains before its recycle, else 0",
                                 labels=["pid"])
    pending = GaugeMetricFamily(prefix + "recycle_pending",
                                "1 while the worker is over the recycle threshold, waiting for another's drain",
                                labels=["pid"])
    seconds = GaugeMetricFamily(prefix + "drain_seconds", "Time since the worker started draining",
                                labels=["pid"])
    timeout = GaugeMetricFamily(prefix + "drain_timeout_seconds", "Longest drain before the worker exits anyway",
                                labels=["pid"])
    threshold = GaugeMetricFamily(prefix + "recycle_threshold_bytes", "RSS at which this worker recycles",
                                  labels=["pid"])
    recycles = CounterMetricFamily(prefix + "recycles", "Workers of this server recycled (kept across restarts)",
                                   labels=["reason", "outcome"])
    recycler, registry = memwatch.recycler, memwatch.registry
    me = os.getpid()
    rows: list[dict[str, Any]] = []
    counts: dict[tuple[str, str], int] = {}
    if registry is not None:
        try:
            rows = registry.workers()
            counts = registry.recycle_counts()
        except sqlite3.Error as e:
            log.warning("memwatch: recycling metrics unavailable: %s", e)
    if not any(row["pid"] == me for row in rows) and recycler is not None:
        rows.append({"pid": me, "state": recycler.state, "state_since": recycler.state_since})
    now = time.time()
    for row in rows:
        state = str(row.get("state") or "serving")
        if recycler is not None and row["pid"] == me:
            state = recycler.state
        is_draining = state in ("draining", "exiting")
        draining.add_metric([str(row["pid"])], 1.0 if is_draining else 0.0)
        pending.add_metric([str(row["pid"])], 1.0 if state == "pending" else 0.0)
        if recycler is not None:  # every worker runs with the same options
            timeout.add_metric([str(row["pid"])], recycler.drain_timeout_s)
        if is_draining and row.get("state_since"):
            since = recycler.drain_started if recycler is not None and row["pid"] == me else row["state_since"]
            seconds.add_metric([str(row["pid"])], max(0.0, now - float(since or now)))
    if recycler is not None:
        value = recycler.threshold_bytes()
        if value is not None:
            threshold.add_metric([str(me)], value)
    for (reason, outcome), n in sorted(counts.items()):
        recycles.add_metric([reason, outcome], n)
    yield draining
    yield pending
    yield seconds
    yield timeout
    yield threshold
    yield recycles
