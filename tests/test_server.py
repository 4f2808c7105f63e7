""" The embedded ways in: ``memwatch_server`` and a plain ``Server`` with
memwatch's ``extra_patterns``; each logs where the dashboard is when it starts. """
from __future__ import annotations

import logging
from typing import Any

import pytest
from bokeh.server.server import Server

from bokeh_memwatch import MemWatch

from .conftest import api, script_app, wait_until


def plain_server(apps: Any, *, memwatch: MemWatch, **kwargs: Any) -> Server:
    """ The README's "keeping your own Server(...) call". """
    return Server(memwatch.instrument(apps), extra_patterns=memwatch.patterns(), **kwargs)


def dashboard_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("memwatch dashboard at ")]


def test_plain_server_logs_the_dashboard_url(serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bokeh_memwatch")
    server = serve({"/app": script_app("clean")}, make_server=plain_server, prefix="/pfx")
    port = server.server.port
    assert dashboard_lines(caplog) == [f"memwatch dashboard at http://127.0.0.1:{port}/pfx/memwatch"]
    # The URL it names is the dashboard, and memwatch samples the plain Server's apps.
    assert server.url == f"http://127.0.0.1:{port}/pfx"
    wait_until(lambda: api(server.url, "summary")["sampler"]["ticks"] >= 1, what="a tick")


def test_memwatch_server_logs_the_dashboard_url(serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bokeh_memwatch")
    server = serve({"/app": script_app("clean")})
    assert dashboard_lines(caplog) == [f"memwatch dashboard at http://127.0.0.1:{server.server.port}/memwatch"]


def test_without_http_it_logs_the_metrics_url(serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bokeh_memwatch")
    server = serve({"/app": script_app("clean")}, http=False)
    assert dashboard_lines(caplog) == []
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memwatch metrics at ")]
    url = f"http://127.0.0.1:{server.server.port}/memwatch/metrics"
    assert lines == [f"memwatch metrics at {url} (dashboard and API off)"]
