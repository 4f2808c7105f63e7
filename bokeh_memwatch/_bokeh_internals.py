""" Every use of a private Bokeh internal, in one place.

memwatch prefers Bokeh's public API (Application handlers, ApplicationContext
.sessions, ServerSession properties).  The few things that have no public
accessor live here, and ``tests/test_bokeh_internals.py`` fails loudly when
an upgrade of Bokeh changes any of them.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bokeh.server.tornado import BokehTornado

if TYPE_CHECKING:
    from bokeh.server.server import BaseServer
    from tornado.httpserver import HTTPServer

log = logging.getLogger(__name__)

__all__ = (
    "held_property_value",
    "http_server_of",
    "on_server_start",
    "on_tornado_start",
    "server_scheme",
    "server_settings",
    "tornado_app_of",
)

_start_hooks: list[Callable[[BokehTornado], None]] = []
_server_start_hooks: list[Callable[[BaseServer], None]] = []


def tornado_app_of(server: BaseServer) -> BokehTornado:
    """ The BokehTornado application behind a ``bokeh.server.server.Server``
    (``Server`` has no public accessor for it). """
    app = server._tornado
    if not isinstance(app, BokehTornado):
        raise TypeError(f"expected Server._tornado to be a BokehTornado, got {type(app).__name__}")
    return app


def http_server_of(server: BaseServer) -> HTTPServer:
    """ The tornado ``HTTPServer`` listening for a ``bokeh.server.server.Server``
    (a drain stops it in one worker; ``Server`` has no public accessor). """
    from tornado.httpserver import HTTPServer

    http = server._http
    if not isinstance(http, HTTPServer):
        raise TypeError(f"expected Server._http to be an HTTPServer, got {type(http).__name__}")
    return http


def server_settings(app: BokehTornado) -> dict[str, Any]:
    """ The server's session-lifetime settings, which BokehTornado keeps in
    private attributes. """
    return {
        "check_unused_sessions_ms": app._check_unused_sessions_milliseconds,
        "unused_session_lifetime_ms": app._unused_session_lifetime_milliseconds,
        "keep_alive_ms": app._keep_alive_milliseconds,
        "mem_log_frequency_ms": app._mem_log_frequency_milliseconds,
        "prefix": app.prefix,
    }


#: Where a HasProps instance keeps its property values: set ones, then the
#: containers Bokeh made for a themed or a default value when first read.
_VALUE_DICTS = ("_property_values", "_unstable_themed_values", "_unstable_default_values")


def held_property_value(obj: Any, name: str) -> Any:
    """ The value ``obj`` (a Bokeh ``HasProps``) holds for property ``name``,
    or None when it holds none, read without side effects.

    Reading the attribute (``source.data``) of a property that holds no
    value makes Bokeh create the default and store it on the object (a new
    empty ``PropertyValueColumnData`` for ``data``); that is what a Model of
    a destroyed session looks like, since ``Document.destroy`` calls
    ``Model.destroy``, which clears ``_property_values``.  memwatch must not
    change the objects it inspects, so it reads the dicts where HasProps
    keeps its values (private; no public accessor avoids the default).
    """
    for attr in _VALUE_DICTS:
        values = getattr(obj, attr, None)
        if isinstance(values, dict) and name in values:
            return values[name]
    return None


def on_tornado_start(hook: Callable[[BokehTornado], None]) -> None:
    """ Call ``hook(app)`` right after every ``BokehTornado.start()``.

    ``BokehTornado.start`` runs once per server, in each worker after a
    ``--num-procs`` fork, on the server's IOLoop.  Panel's ``--plugins``
    mechanism gives a plugin module its import and nothing else, so this is
    how the Panel plugin learns that the server started.  The method is
    wrapped once; the wrapper calls the original first and isolates hook
    failures.
    """
    if not getattr(BokehTornado.start, "_memwatch_wrapped", False):
        original = BokehTornado.start

        @functools.wraps(original)
        def start(self: BokehTornado) -> None:
            original(self)
            for each in list(_start_hooks):
                try:
                    each(self)
                except Exception:
                    log.exception("memwatch start hook %r failed", each)

        start._memwatch_wrapped = True  # type: ignore[attr-defined]
        BokehTornado.start = start  # type: ignore[method-assign]
    if hook not in _start_hooks:
        _start_hooks.append(hook)


def server_scheme(server: BaseServer) -> str:
    """ ``"https"`` when the server's HTTPServer has TLS options (Bokeh's
    ``--ssl-certfile``), else ``"http"``: ``BaseServer`` keeps its HTTPServer
    in a private attribute. """
    return "https" if getattr(server._http, "ssl_options", None) else "http"


def on_server_start(hook: Callable[[BaseServer], None]) -> None:
    """ Call ``hook(server)`` right after every ``BaseServer.start()``.

    ``start`` is public, and the one moment every way of running a server
    shares (``bokeh serve``, ``panel serve``, an embedded ``Server``): it runs
    once per server, in each worker after a ``--num-procs`` fork, with the
    sockets bound.  The method is wrapped once; the wrapper calls the
    original first and isolates hook failures.
    """
    from bokeh.server.server import BaseServer

    if not getattr(BaseServer.start, "_memwatch_wrapped", False):
        original = BaseServer.start

        @functools.wraps(original)
        def start(self: BaseServer) -> None:
            original(self)
            for each in list(_server_start_hooks):
                try:
                    each(self)
                except Exception:
                    log.exception("memwatch server start hook %r failed", each)

        start._memwatch_wrapped = True  # type: ignore[attr-defined]
        BaseServer.start = start  # type: ignore[method-assign]
    if hook not in _server_start_hooks:
        _server_start_hooks.append(hook)
