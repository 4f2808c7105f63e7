""" One call to run an embedded Bokeh server with memwatch mounted. """
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._bokeh_internals import http_server_of, tornado_app_of
from .memwatch import MemWatch

if TYPE_CHECKING:
    from bokeh.server.server import Server

    from .monitor import Applications

log = logging.getLogger(__name__)

__all__ = ("memwatch_server",)


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
