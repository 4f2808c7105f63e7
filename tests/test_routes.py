""" The one route table: what ``MemWatch.patterns()`` mounts and what the
API index (``GET api/``) lists come from the same rows, so they cannot drift. """
from __future__ import annotations

import re

from bokeh_memwatch import MemWatch
from bokeh_memwatch.http.api import IndexHandler, NotFoundHandler
from bokeh_memwatch.routes import ENDPOINTS, ROUTES
from bokeh_memwatch.ui.dashboard import DashboardHandler
from tests.conftest import api, script_app

#: Routes with no row in the index, and why.
UNLISTED = {
    DashboardHandler: "the dashboard page is the index's own page, not an API endpoint",
    NotFoundHandler: "the catch-all JSON 404",
}


def _example(path: str) -> str:
    """ A URL path for an index row: placeholders filled, the query dropped. """
    path = path.split("?", maxsplit=1)[0].replace("<session_id>", "abc").replace("<id>", "baseline")
    return "/memwatch/" + path


def test_every_endpoint_is_routed_and_every_route_is_listed() -> None:
    for route in ROUTES:
        assert route.endpoints or route.handler in UNLISTED, route.pattern
        for _method, path, _purpose in route.endpoints:
            # The first route that matches is the one tornado picks (its rules are in order): this one.
            first = next(r for r in ROUTES if re.fullmatch(r.pattern, _example(path)))
            assert first is route, (path, first.pattern, route.pattern)
    methods = {(e["method"], e["path"]) for e in ENDPOINTS}
    assert len(methods) == len(ENDPOINTS), "an endpoint is listed twice"
    # Drifted before the table: routed, not listed.
    assert ("GET", "api/snapshots/<id>") in methods and ("GET", "api/census") in methods


def test_every_listed_method_is_implemented() -> None:
    for route in ROUTES:
        for method, path, _purpose in route.endpoints:
            assert method.lower() in vars(route.handler) or any(
                method.lower() in vars(base) for base in route.handler.__mro__[1:-1]
                if base.__module__.startswith("bokeh_memwatch")), (method, path)


def test_patterns_follow_the_options() -> None:
    def mounted(**options: object) -> list[str]:
        return [pattern for pattern, _, _ in MemWatch(**options).patterns()]  # type: ignore[arg-type]

    everything = mounted()
    assert everything == [r.pattern for r in ROUTES]
    assert mounted(http=False) == [r"/memwatch/healthz/?", r"/memwatch/readyz/?", r"/memwatch/metrics/?"]
    assert mounted(http=False, probes=False) == [r"/memwatch/metrics/?"]
    assert not any("healthz" in p for p in mounted(probes=False))
    index = next(kw for pattern, handler, kw in MemWatch().patterns() if handler is IndexHandler)
    assert index["endpoints"] is ENDPOINTS


def test_the_index_lists_the_table(serve) -> None:
    server = serve({"/app": script_app("clean")})
    listed = api(server.url, "")["endpoints"]
    assert [(e["method"], e["path"]) for e in listed] == [(e["method"], e["path"]) for e in ENDPOINTS]
    assert all(e["url"] == "/memwatch/" + e["path"] for e in listed)
