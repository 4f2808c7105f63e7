""" :class:`MemWatch`: a :class:`~bokeh_memwatch.monitor.Monitor` and its
routes, the object every way in builds.

The way in (``bokeh-memwatch serve``, :func:`bokeh_memwatch.memwatch_server`,
the Panel plugin) makes one MemWatch before the server exists and mounts
:meth:`MemWatch.patterns`; the Monitor it is does everything else.  It is a
subclass, not a field of the Monitor, so that the handlers (``http``, ``ui``)
can take a Monitor without importing the route table that names them: imports
run one way (see ``tests/test_layering.py``).  Also here: the line a server
logs when it starts, naming the dashboard's URL.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._bokeh_internals import on_server_start, server_scheme, tornado_app_of
from .monitor import Monitor
from .routes import Routes, patterns

if TYPE_CHECKING:
    from bokeh.server.server import BaseServer

log = logging.getLogger(__name__)

__all__ = (
    "MemWatch",
    "announce_dashboard",
    "dashboard_urls",
)


class MemWatch(Monitor):
    """ Memory diagnostics for one Bokeh server process, with its routes.

    Args:
        options: settings (:class:`~bokeh_memwatch.options.MemwatchOptions`);
            keyword arguments override single fields.
        collectors: process collectors (default: RSS, gc, tracemalloc); a
            factory, since they must be made after a ``--num-procs`` fork.
    """

    def patterns(self) -> Routes:
        """ Tornado routes for ``Server(..., extra_patterns=...)`` (from the
        one route table, :mod:`bokeh_memwatch.routes`); Bokeh prepends the
        server's ``--prefix`` to each.  A server they are mounted on logs the
        dashboard's URL when it starts. """
        on_server_start(announce_dashboard)
        return patterns(self)


def dashboard_urls(server: BaseServer) -> list[str]:
    """ ``{scheme}://{host}:{port}{prefix}/memwatch`` for every memwatch
    mounted on ``server`` (``/memwatch/metrics`` where its HTTP side is off),
    with the host as Bokeh's "Bokeh app running at" line names it
    (``localhost`` when the server listens on every interface).  Empty for a
    server on a unix socket (no port) or with no memwatch mounted. """
    if not server.port:
        return []
    host = server.address or "localhost"
    base = f"{server_scheme(server)}://{host}:{server.port}{server.prefix}"
    urls: list[str] = []
    seen: set[int] = set()
    for rule in tornado_app_of(server).wildcard_router.rules:
        mw = (getattr(rule, "target_kwargs", None) or {}).get("memwatch")
        if isinstance(mw, MemWatch) and id(mw) not in seen:
            seen.add(id(mw))
            urls.append(f"{base}/memwatch" if mw.options.http else f"{base}/memwatch/metrics")
    return urls


def announce_dashboard(server: BaseServer) -> None:
    """ Log ``memwatch dashboard at URL`` when a server with memwatch starts
    (each way in registers this with ``on_server_start``).

    ``bokeh serve`` and ``panel serve`` show their own INFO lines by setting
    the ``bokeh`` logger's level (``--log-level``); memwatch's loggers follow
    it unless the application set their level itself. """
    ours = logging.getLogger(__package__ or "bokeh_memwatch")
    bokeh_level = logging.getLogger("bokeh").level
    if ours.level == logging.NOTSET and bokeh_level != logging.NOTSET:
        ours.setLevel(bokeh_level)
    for url in dashboard_urls(server):
        if url.endswith("/metrics"):
            log.info("memwatch metrics at %s (dashboard and API off)", url)
        else:
            log.info("memwatch dashboard at %s", url)
