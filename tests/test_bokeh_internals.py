""" Fails loudly when Bokeh changes an internal that memwatch relies on.

Every such internal is used in ``bokeh_memwatch/_bokeh_internals.py`` only;
this file checks each one against the installed Bokeh, plus the public API
facts the design stands on (so an upgrade shows up here first, with a
readable message, not as a wrong count in production).
"""
from __future__ import annotations

import inspect

from bokeh.application import Application
from bokeh.application.handlers.handler import Handler
from bokeh.document import Document
from bokeh.server.contexts import ApplicationContext, BokehServerContext
from bokeh.server.server import BaseServer
from bokeh.server.session import ServerSession
from bokeh.server.tornado import BokehTornado

from bokeh_memwatch import MemWatch
from bokeh_memwatch._bokeh_internals import (
    http_server_of,
    on_server_start,
    on_tornado_start,
    server_scheme,
    server_settings,
    tornado_app_of,
)

from .conftest import script_app


def test_server_keeps_its_tornado_app_in_underscore_tornado(serve) -> None:
    server = serve({"/clean": script_app("clean")})
    app = tornado_app_of(server.server)
    assert isinstance(app, BokehTornado), "Server._tornado is gone or no longer a BokehTornado"
    # The views read the auth provider the way AuthRequestHandler does.
    provider = app.auth_provider
    for name in ("get_user", "get_user_async", "login_url", "get_login_url"):
        assert hasattr(provider, name), f"AuthProvider.{name} is gone"


def test_server_keeps_its_listener_in_underscore_http(serve) -> None:
    """ A recycling worker stops listening through ``Server._http``. """
    from tornado.httpserver import HTTPServer

    server = serve({"/clean": script_app("clean")})
    http = http_server_of(server.server)
    assert isinstance(http, HTTPServer), "Server._http is gone or no longer an HTTPServer"
    assert http._sockets, "HTTPServer keeps no listening sockets: stop() would not stop accepting"


def test_session_lifetime_settings_are_where_we_read_them(serve) -> None:
    server = serve({"/clean": script_app("clean")}, check_unused_sessions_milliseconds=123,
                   unused_session_lifetime_milliseconds=456)
    settings = server_settings(tornado_app_of(server.server))
    assert settings["check_unused_sessions_ms"] == 123
    assert settings["unused_session_lifetime_ms"] == 456
    assert isinstance(settings["keep_alive_ms"], int)


def test_tornado_start_hook_runs_after_start(serve) -> None:
    seen: list[BokehTornado] = []
    on_tornado_start(seen.append)
    server = serve({"/clean": script_app("clean")})
    assert seen and seen[-1] is tornado_app_of(server.server)
    assert getattr(BokehTornado.start, "_memwatch_wrapped", False)
    assert inspect.signature(BokehTornado.start).parameters.keys() == {"self"}


def test_server_start_hook_runs_after_start_with_the_port_bound(serve) -> None:
    from bokeh_memwatch._bokeh_internals import _server_start_hooks

    seen: list[tuple[BaseServer, int | None, bool]] = []

    def hook(s: BaseServer) -> None:
        seen.append((s, s.port, "/clean" in tornado_app_of(s).applications))

    on_server_start(hook)
    try:
        server = serve({"/clean": script_app("clean")})
    finally:
        _server_start_hooks.remove(hook)  # later servers must not land in ``seen``
    assert seen == [(server.server, server.server.port, True)]
    seen.clear()
    assert getattr(BaseServer.start, "_memwatch_wrapped", False)
    assert inspect.signature(BaseServer.start).parameters.keys() == {"self"}
    # The URL parts the startup line reads: public properties, and the
    # HTTPServer's TLS options behind the private ``_http``.
    for name in ("port", "address", "prefix"):
        assert isinstance(inspect.getattr_static(BaseServer, name), property), f"BaseServer.{name}"
    assert server_scheme(server.server) == "http"
    assert hasattr(server.server._http, "ssl_options"), "BaseServer._http.ssl_options is gone"


def test_public_api_the_design_stands_on() -> None:
    # Handlers: Bokeh calls these on every handler of an Application.
    for name in ("modify_document", "on_server_loaded", "on_server_unloaded", "on_session_destroyed"):
        assert hasattr(Handler, name), f"Handler.{name} is gone"
    assert inspect.iscoroutinefunction(Handler.on_session_destroyed)
    assert hasattr(Application, "add") and hasattr(Application, "handlers")
    # Contexts and sessions, read at every tick.
    assert isinstance(inspect.getattr_static(ApplicationContext, "sessions"), property)
    assert isinstance(inspect.getattr_static(ApplicationContext, "io_loop"), property)
    assert isinstance(inspect.getattr_static(BokehServerContext, "application_context"), property)
    for name in ("id", "document", "connection_count", "milliseconds_since_last_unsubscribe", "destroyed"):
        assert isinstance(inspect.getattr_static(ServerSession, name), property), f"ServerSession.{name}"
    # Documents must be weak-referenceable, and know their session context.
    import weakref

    doc = Document()
    assert weakref.ref(doc)() is doc
    assert doc.session_context is None
    assert isinstance(inspect.getattr_static(BokehTornado, "applications"), property)
    assert isinstance(inspect.getattr_static(BokehTornado, "prefix"), property)


def test_instrument_adds_one_handler_per_application() -> None:
    mw = MemWatch()
    app = script_app("clean")
    apps = mw.instrument({"/clean": app})
    mw.instrument(apps)
    assert sum(type(h).__name__ == "MemwatchAppHandler" for h in app.handlers) == 1


def test_held_property_value_reads_without_creating_defaults() -> None:
    import numpy as np
    from bokeh.models import ColumnDataSource

    from bokeh_memwatch._bokeh_internals import held_property_value

    x = np.zeros(10)
    source = ColumnDataSource(data={"x": x})
    held = held_property_value(source, "data")
    assert held is not None and held["x"] is x, "HasProps no longer keeps set values in _property_values"
    source.destroy()  # what Document.destroy does to every Model of a destroyed session
    assert held_property_value(source, "data") is None, "Model.destroy no longer clears _property_values"
    assert "data" not in source._unstable_default_values
    # The Bokeh behaviour the helper avoids: reading the attribute stores a default.
    assert source.data == {}
    assert held_property_value(source, "data") == {}, "Bokeh no longer stores read defaults in _unstable_default_values"
    assert held_property_value(source, "no_such_property") is None
