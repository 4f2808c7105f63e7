""" The dashboard at ``{prefix}/memwatch``, in a real headless Chromium.

A real server leaks sessions (``leak_global``); the browser opens the page,
waits for BokehJS to render and for the page to poll the API, then reads the
plots' and tables' data from Bokeh's JS document and checks it against the
API.  Each run saves a screenshot under ``test-artifacts/``.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``.ci/run``), driven
by the ``playwright`` package; ``playwright install`` is never needed.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bokeh_memwatch.dashboard import downsample

from .conftest import ROOT, api, http, open_and_close_sessions, script_app, wait_until

CHROMIUM = os.environ.get("MEMWATCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"
N = 3
T = TypeVar("T")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}: .ci/run installs Debian's chromium")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """ A dashboard tab that records every JavaScript error and console error. """

    def __init__(self, browser: Any, url: str) -> None:
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.goto(url, wait_until="load")

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def wait(self, expression: str, timeout_s: float = 20.0) -> Any:
        return self.page.wait_for_function(expression, timeout=timeout_s * 1000)

    def data(self, source: str) -> dict[str, list[Any]]:
        """ A ColumnDataSource's columns, read from Bokeh's JS document. """
        result: dict[str, list[Any]] = self.js(
            """name => {
                const data = Bokeh.documents[0].get_model_by_name(name).data;
                const out = {};
                for (const [k, v] of (data instanceof Map ? data.entries() : Object.entries(data))) {
                    out[k] = Array.from(v, x => (typeof x === "number" && !isFinite(x)) ? null : x);
                }
                return out;
            }""",
            source,
        )
        return result

    def text(self, name: str) -> str:
        result: str = self.js("name => Bokeh.documents[0].get_model_by_name(name).text", name)
        return result

    def polls(self) -> int:
        result: int = self.js("() => window.memwatchDashboard.state.polls")
        return result

    def wait_polls(self, more: int) -> None:
        target = self.polls() + more
        self.wait(f"() => window.memwatchDashboard.state.polls >= {target}")

    def click(self, label: str) -> None:
        self.page.locator("button", has_text=label).first.click()

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


@contextlib.contextmanager
def dashboard(browser: Any, url: str) -> Iterator[Page]:
    page = Page(browser, url)
    try:
        page.wait("() => window.memwatchDashboard && window.memwatchDashboard.state.polls >= 1")
        yield page
    finally:
        page.close()


def off_thread(fn: Callable[[], T]) -> T:
    """ Run a ``bokeh.client`` call in a thread of its own: Playwright's sync
    API keeps an asyncio loop running in this one. """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result(timeout=120)


@contextlib.contextmanager
def live_session(url: str) -> Iterator[str]:
    """ A session held open by a client in another thread; yields its id. """
    from bokeh.client import pull_session

    opened: concurrent.futures.Future[str] = concurrent.futures.Future()
    release = threading.Event()

    def hold() -> None:
        try:
            session = pull_session(url=url)
        except BaseException as e:
            opened.set_exception(e)
            return
        opened.set_result(session.id)
        release.wait(120)
        session.close()

    thread = threading.Thread(target=hold, name="live-session", daemon=True)
    thread.start()
    try:
        yield opened.result(timeout=60)
    finally:
        release.set()
        thread.join(30)


def leak(url: str, n: int) -> list[str]:
    """ Open and close ``n`` sessions of a leaking app; wait until they are orphans. """
    ids = off_thread(lambda: open_and_close_sessions(url + "/app", n))
    wait_until(lambda: api(url, "summary")["sessions_destroyed_total"] >= n, what="sessions destroyed")
    api(url, "gc", "POST")
    wait_until(lambda: api(url, "summary")["orphans"] == n, what="orphans")
    return ids


@pytest.mark.parametrize("prefix", ["", "/pfx"])
def test_dashboard_shows_the_leak_and_who_holds_it(serve, browser, prefix: str) -> None:
    server = serve({"/app": script_app("leak_global")}, gc_min_interval_s=0, **({"prefix": prefix} if prefix else {}))
    url = server.url
    assert url.endswith(f"{prefix}")
    ids = leak(url, N)
    with live_session(url + "/app") as live_id:
        wait_until(lambda: api(url, "summary")["sessions"] == 1, what="one live session")
        before = api(url, "summary")
        with dashboard(browser, url + "/memwatch") as page:
            page.wait("() => Bokeh.documents[0].get_model_by_name('orphans_source').data.session_id.length > 0")
            page.wait_polls(2)

            # 1. the timeline has samples: RSS, Documents, orphans
            timeline = page.data("timeline_source")
            assert len(timeline["t"]) >= 2
            assert timeline["rss_bytes"][-1] > 2**20, "RSS is plotted in bytes (IEC ticks)"
            assert timeline["orphans"][-1] == N and timeline["documents"][-1] == N + 1
            assert sum(x or 0 for x in timeline["opened"]) >= 1  # the live session opened inside the window

            # 2. per-app and per-session tables
            apps = page.data("apps_source")
            assert apps["app"] == ["/app"] and apps["orphans"] == [N] and apps["sessions"] == [1]
            sessions = page.data("sessions_source")
            assert sessions["id"] == [live_id] and sessions["models"][0] > 5

            # 3. orphans: the count shown is the API's
            summary = api(url, "summary")
            orphans = page.data("orphans_source")
            assert sorted(orphans["session_id"]) == sorted(ids)
            assert orphans["kind"].count("Document (orphan)") == summary["orphans"] == N
            shown = page.text("stat_orphans")
            assert f">{summary['orphans']}</div>" in shown and "orphaned Documents" in shown
            assert f"{N} orphaned Documents" in page.text("verdict")

            # ... and "why alive" names the holder
            page.click("Why alive?")
            page.wait("() => Bokeh.documents[0].get_model_by_name('chain').text.includes('chain complete')", 60)
            chain = page.text("chain")
            assert "tests.apps.holders" in chain and ".DOCS" in chain and "module" in chain
            assert page.page.get_by_text("tests.apps.holders", exact=False).first.is_visible()

            # ... and the advice names the leak with its evidence and fix (as api/advice does)
            advice = api(url, "advice")["advice"]
            shown_advice = page.text("advice")
            assert advice and all(a["title"] in shown_advice for a in advice[:3]), shown_advice
            assert "fix:" in shown_advice

            # 4. allocators: a clear state whether or not that API exists
            status = page.text("alloc_status")
            assert "Not traced" in status or "not available" in status or "allocation sites" in status, status

            # 5. settings
            settings = page.text("settings")
            assert "unused_session_lifetime_ms" in settings and str(summary["pid"]) in settings
            assert "bokeh 3." in settings

            # the window selector reloads the timeline
            page.click("last 1 h")
            page.wait_polls(2)
            assert len(page.data("timeline_source")["t"]) >= 2
            assert "last 1 h" in page.js("() => Bokeh.documents[0].get_model_by_name('memory_plot').title.text")

            page.screenshot(f"dashboard{prefix.replace('/', '-')}.png")

            # Viewing the dashboard made no session and keeps nothing alive.
            page.wait_polls(2)
            after = api(url, "summary")
            assert after["sessions_created_total"] == before["sessions_created_total"]
            assert after["sessions"] == 1 and after["documents"] == before["documents"]
            assert page.errors == [], page.errors


def test_dashboard_empty_server_and_trailing_slash(serve, browser) -> None:
    server = serve({"/app": script_app("clean")})
    for path in ("/memwatch", "/memwatch/"):
        status, headers, body = http("GET", server.url + path)
        assert status == 200 and headers["Content-Type"].startswith("text/html"), (status, body[:200])
        assert "/static/js/bokeh.min.js" in body and "cdn.bokeh.org" not in body
    with dashboard(browser, server.url + "/memwatch/") as page:
        page.wait_polls(1)
        assert "No orphans" in page.text("orphans_empty")
        assert "No live sessions" in page.text("sessions_empty")
        assert "no orphaned Documents" in page.text("verdict")
        assert page.js("() => Bokeh.documents[0].get_model_by_name('why_alive').disabled") is True
        page.screenshot("dashboard-empty.png")
        assert page.errors == [], page.errors
    assert api(server.url, "summary")["sessions_created_total"] == 0


def test_dashboard_starts_tracemalloc_when_the_api_exists(serve, browser) -> None:
    import tracemalloc

    server = serve({"/app": script_app("clean")})
    listed = {f"{e['method']} {e['path'].split('?')[0]}" for e in api(server.url, "")["endpoints"]}
    if "GET api/allocators" not in listed:
        pytest.skip("the allocators API is not mounted on this branch")
    was_tracing = tracemalloc.is_tracing()
    try:
        with dashboard(browser, server.url + "/memwatch") as page:
            page.wait_polls(1)
            if not was_tracing:
                assert "Not traced" in page.text("alloc_status")
                page.click("Start tracemalloc")
            page.wait("() => Bokeh.documents[0].get_model_by_name('allocators_source').data.where.length > 0", 30)
            rows = page.data("allocators_source")
            assert all(isinstance(w, str) and w for w in rows["where"])
            assert "allocation sites" in page.text("alloc_status")
            page.screenshot("dashboard-tracemalloc.png")
            assert page.errors == [], page.errors
    finally:
        if not was_tracing and tracemalloc.is_tracing():
            api(server.url, "tracemalloc", "POST", body={"action": "stop"})


def test_timeline_endpoint(serve) -> None:
    server = serve({"/app": script_app("clean")})
    wait_until(lambda: api(server.url, "dashboard/timeline")["points"] >= 3, what="samples")
    answer = api(server.url, "dashboard/timeline?window_s=60&max_points=2")
    assert answer["points"] <= 2 < answer["samples"] or answer["samples"] <= 2
    assert set(answer["columns"]) >= {"t", "rss_bytes", "documents", "orphans", "sessions_created_total"}
    last = answer["columns"]["t"][-1]
    time.sleep(0.3)
    newer = api(server.url, f"dashboard/timeline?window_s=60&since={last}")
    assert all(t > last for t in newer["columns"]["t"])
    for bad in ("window_s=0", "window_s=x", "max_points=0", "since=nan", "bogus=1"):
        api(server.url, f"dashboard/timeline?{bad}", expect=400)
    listed = {e["path"].split("?")[0] for e in api(server.url, "")["endpoints"]}
    assert "api/dashboard/timeline" in listed


def test_downsample_keeps_peaks_and_last_counters() -> None:
    samples = [{"t": float(i), "rss_bytes": 10.0 * (i == 2), "sessions_created_total": float(i)} for i in range(5)]
    cols = downsample(samples, 2, fields=("t", "rss_bytes", "sessions_created_total"))
    assert cols == {"t": [2.0, 4.0], "rss_bytes": [10.0, 0.0], "sessions_created_total": [2.0, 4.0]}
    assert downsample([], 10, fields=("t",)) == {"t": []}
    assert downsample([{"t": 1.0, "rss_bytes": None}], 10, fields=("t", "rss_bytes")) == {
        "t": [1.0], "rss_bytes": [None]}
