""" Wiring of the per-worker services: the registry in the history
database, the private forwarding port, the recycler.

Called from :meth:`Monitor.start` (after any fork, on the worker's IOLoop,
once the history database is open) and :meth:`Monitor.stop`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from typing import TYPE_CHECKING, Protocol

from ..analyze.limits import parse_recycle_at
from ..store.registry import WorkerRegistry
from .forwarding import Forwarder, ForwardingHost, PrivateListener
from .recycle import RecycleHost, Recycler

if TYPE_CHECKING:
    from bokeh.server.tornado import BokehTornado
    from tornado.httpserver import HTTPServer

    from .cluster import Cluster

log = logging.getLogger(__name__)

__all__ = (
    "make_recycler",
    "start_worker_services",
    "stop_worker_services",
)


class WorkerHost(ForwardingHost, RecycleHost, Protocol):
    """ The :class:`~bokeh_memwatch.monitor.Monitor` whose per-worker services these are. """

    registry: WorkerRegistry | None
    private: PrivateListener | None
    recycler: Recycler | None
    http_server: HTTPServer | None
    cluster: Cluster | None

    @property
    def tornado_app(self) -> BokehTornado | None: ...


def make_recycler(memwatch: RecycleHost) -> Recycler | None:
    """ The recycler the options ask for, or None. """
    options = memwatch.options
    threshold = parse_recycle_at(options.recycle_at)
    if threshold is None:
        return None
    return Recycler(memwatch, threshold, samples=options.recycle_samples, drain_timeout_s=options.drain_timeout_s)


def start_worker_services(memwatch: WorkerHost) -> None:
    """ Open the registry, start the private port and the forwarder, register
    this worker, start the recycler.  Failures log a warning and turn the
    one feature off. """
    cluster = memwatch.cluster
    registry: WorkerRegistry | None = None
    if cluster is not None and cluster.db is not None:
        registry = WorkerRegistry(cluster.db.path, server=cluster.key)
        try:
            registry.open()
        except (OSError, sqlite3.Error) as e:
            log.warning("memwatch: worker registry unusable (%s): no forwarding between workers, no drain lease", e)
            registry = None
    memwatch.registry = registry
    port: int | None = None
    app = memwatch.tornado_app
    if registry is not None and memwatch.options.forward and memwatch.options.http and app is not None:
        listener = PrivateListener()
        try:
            port = listener.start(app)
        except OSError as e:
            log.warning("memwatch: no private port for forwarding between workers: %s", e)
        else:
            memwatch.private = listener
            memwatch.forwarder = Forwarder(memwatch, registry)
            log.info("memwatch: worker %d answers forwarded requests on 127.0.0.1:%d", os.getpid(), port)
    if registry is not None:
        try:
            registry.register(os.getpid(), port=port)
        except sqlite3.Error as e:
            log.warning("memwatch: could not register worker %d: %s", os.getpid(), e)
    if memwatch.recycler is not None:
        memwatch.recycler.start(registry, memwatch.http_server)


def stop_worker_services(memwatch: WorkerHost) -> None:
    if memwatch.recycler is not None:
        memwatch.recycler.stop()
    if memwatch.forwarder is not None:
        memwatch.forwarder.close()
        memwatch.forwarder = None
    if memwatch.private is not None:
        memwatch.private.stop()
        memwatch.private = None
    registry = memwatch.registry
    if registry is not None:
        with contextlib.suppress(sqlite3.Error):
            registry.unregister(os.getpid())
        registry.close()
        memwatch.registry = None
