""" pytest plugin: leak tests for Bokeh and Panel apps in a few lines.

Installed with the package (entry point ``pytest11``), so every pytest run
loads it; it only defines a fixture and imports nothing heavy until a test
uses it.  ::

    def test_app_does_not_leak(memwatch_leak_check):
        report = memwatch_leak_check("app.py", sessions=20)
        report.assert_no_orphans()     # no Document proven to outlive its session
        report.assert_clean()          # nor any Model; retention does not grow

Verdicts are memwatch's (see the README, "How it decides"): a Document or
Model counts only when proven reachable from a root; one held by a timer
counts only if still held once the timer was due.

The fixture serves the app on a free loopback port in a background thread
with memwatch mounted (:class:`bokeh_memwatch.testing.server.ServerThread`), runs
:class:`bokeh_memwatch.testing.leakcheck.LeakCheck` (rounds of sessions opened and
closed over the websocket and as page loads, one after another and at
once), stops the server and returns a :class:`LeakReport`.  A failing
assertion's message has the counts, the reference chain to each holder and
the advice.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from bokeh.application import Application
    from bokeh.document import Document

__all__ = ("LeakReport", "memwatch_leak_check")


class LeakReport:
    """ What a leak check found, for one application (plain data in ``data``). """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = dict(data)
        app = next(iter(self.data["apps"].values()))
        self.app: dict[str, Any] = app
        self.verdict: str = self.data["verdict"]
        self.passed: bool = self.data["passed"]
        self.sessions: int = self.data["sessions"]
        self.documents_retained: int = self.data["documents_retained"]
        self.models_retained: int = self.data["models_retained"]
        self.data_bytes_retained: int = self.data["data_bytes_retained"]
        self.chains: list[dict[str, Any]] = self.data["chains"]
        self.advice: list[dict[str, Any]] = self.data["advice"]
        #: The census after every round: ``{"ran", "closed_between", "growing": [{"type",
        #: "growth_per_session", "bytes_per_session", "holder", ...}], "errors"}``.
        self.census: dict[str, Any] = app.get("census") or {}
        #: Sessions that failed to build or to open: ``{"build_failed", "client_failed",
        #: "first_build_error", "first_client_error", "served"}``.
        self.session_errors: dict[str, Any] = app.get("session_errors") or {}

    def text(self) -> str:
        from .report.text import render_text

        return render_text(self.data)

    def assert_no_orphans(self) -> None:
        """ No Document outlived its session (proven orphans). """
        if self.documents_retained:
            raise AssertionError(
                f"{self.documents_retained} Document(s) outlived their sessions (orphans) "
                f"({self.sessions} sessions opened and closed)\n{self.text()}"
            )

    def assert_clean(self) -> None:
        """ Nothing of any session (Document, Model) outlived it, within the
        tolerance given to the check, retention does not grow, and no
        application type grows with closed sessions (census). """
        if not self.passed:
            raise AssertionError(
                f"{self.verdict}: {self.documents_retained} orphan Document(s) and {self.models_retained} "
                f"Model(s) retained without their Document outlived their sessions "
                f"({self.sessions} sessions opened and closed)\n{self.text()}"
            )

    def __repr__(self) -> str:
        return (f"LeakReport(verdict={self.verdict!r}, sessions={self.sessions}, "
                f"documents_retained={self.documents_retained}, models_retained={self.models_retained})")


def _application(app: Any, *, argv: list[str] | None, panel: bool | None) -> tuple[str, Application]:
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler

    if isinstance(app, Application):
        return "/app", app
    if callable(app):
        return "/app", Application(FunctionHandler(app))
    path = os.fspath(app)
    if panel is None:
        from .testing.leakcheck import looks_like_panel

        panel = looks_like_panel([path])
    build: Callable[..., Application]
    if panel:
        from panel.io import application as panel_application  # also registers Panel's models

        build = panel_application.build_single_handler_application
    else:
        import bokeh.command.util

        build = bokeh.command.util.build_single_handler_application
    name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    return f"/{name}", build(path, list(argv or []))


@pytest.fixture
def memwatch_leak_check() -> Iterator[Callable[..., LeakReport]]:
    """ ``memwatch_leak_check(app, sessions=5, rounds=2, tolerance=0,
    session_args=None, argv=None, panel=None, max_chains=3, **server_kwargs)``:
    serve ``app`` (a script or directory path, an ``Application`` or a
    ``make_document(doc)`` function), open and close ``sessions`` sessions
    per round, and return a :class:`LeakReport`. """
    servers: list[Any] = []

    def check(
        app: str | os.PathLike[str] | Application | Callable[[Document], None],
        *,
        sessions: int | None = None,
        rounds: int | None = None,
        tolerance: int | None = None,
        session_args: Mapping[str, str] | None = None,
        argv: list[str] | None = None,
        panel: bool | None = None,
        max_chains: int = 3,
        **server_kwargs: Any,
    ) -> LeakReport:
        from .memwatch import MemWatch
        from .testing.leakcheck import CHECK_MEMWATCH_OPTIONS, CheckOptions, LeakCheck
        from .testing.server import ServerThread

        # None: CheckOptions' default, the one 'bokeh-memwatch check' shows.
        given = {"sessions": sessions, "rounds": rounds, "tolerance": tolerance}
        options = CheckOptions(**{k: v for k, v in given.items() if v is not None},
                               session_args=dict(session_args or {}), max_chains=max_chains)
        path, application = _application(app, argv=argv, panel=panel)
        memwatch = MemWatch(**CHECK_MEMWATCH_OPTIONS)
        server = ServerThread({path: application}, memwatch, **server_kwargs).start()
        servers.append(server)
        try:
            assert server.loop is not None
            leak_check = LeakCheck(memwatch, server.loop, server.url, options, applications={path: application})
            return LeakReport(leak_check.run([path]))
        finally:
            server.stop()

    yield check
    for server in servers:
        server.stop()
