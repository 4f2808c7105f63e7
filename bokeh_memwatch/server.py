""" One call to run an embedded Bokeh server with memwatch mounted, and the
line every server logs when it starts: where memwatch's dashboard is. """
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._bokeh_internals import http_server_of, server_scheme, tornado_app_of
from .monitor import MemWatch

if TYPE_CHECKING:
    from bokeh.server.server import BaseServer, Server

    from .monitor import Applications

log = logging.getLogger(__name__)

__all__ = ("announce_dashboard", "dashboard_urls", "memwatch_server")


def memwatch_server(
    applications: Applications,
    *,
    memwatch: MemWatch | None = None,
    **server_kwargs: Any,
) -> Server:
    """ ``bokeh.server.server.Server(applications, **server_kwargs)`` with
    memwatch mounted: its routes added to ``extra_patterns``, every
    application instrumented, sampling from ``server.start()`` on.

    Equivalent to::

        mw = MemWatch()
        server = Server(mw.instrument(apps), extra_patterns=mw.patterns(), ...)
    """
    from bokeh.server.server import Server

    mw = memwatch or MemWatch()
    apps = mw.instrument(applications)
    server_kwargs["extra_patterns"] = [*(server_kwargs.get("extra_patterns") or []), *mw.patterns()]
    server = Server(apps, **server_kwargs)
    mw.note_tornado_app(tornado_app_of(server))
    mw.note_http_server(http_server_of(server))
    mw.server_port = server.port
    return server


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
