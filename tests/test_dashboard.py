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
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bokeh_memwatch.ui.dashboard import downsample

from . import _browser
from ._browser import CHROMIUM, CHROMIUM_ARGS, Page, dashboard
from .conftest import api, http, open_and_close_sessions, script_app, wait_until

browser = _browser.browser  # the fixture
__all__ = ("CHROMIUM", "CHROMIUM_ARGS")  # where test_recycle.py finds them

N = 3
T = TypeVar("T")


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


# -- issue 14: always current, readable at any width -----------------------------------------


def shown(page: Page, table: str, column: int, ok: Callable[[list[str]], bool], what: str, *,
          timeout_s: float = 20.0) -> list[str]:
    """ Wait (bounded) until the page shows values in that column that are ``ok``. """
    def cells() -> list[str]:
        now = page.cells(table, column)
        return now if now and ok(now) else []

    return wait_until(cells, timeout_s=timeout_s, what=what)


def changed(page: Page, table: str, column: int, before: list[str], what: str) -> list[str]:
    """ Wait (bounded) until the page shows other values in that column. """
    return shown(page, table, column, lambda now: now != before, what)


def test_tables_show_the_latest_poll_without_a_click(serve, browser) -> None:
    """ A table redrew only when its number of rows changed: values in the
    same rows went stale (issue 14, item 1).  Here the row counts of the
    apps, sessions and orphans tables stay the same while their values move. """
    server = serve({"/app": script_app("leak_global")}, gc_min_interval_s=0)
    url = server.url
    leak(url, 1)
    with live_session(url + "/app") as live_id, dashboard(browser, url + "/memwatch") as page:
        wait_until(lambda: page.cells("apps_table", 6) == ["1"], what="the apps row shows 1 orphan")
        ages = shown(page, "sessions_table", 6, bool, "the session's age")
        assert page.cells("sessions_table", 4) == [live_id]
        ago = page.cells("orphans_table", 4)
        assert len(ago) == 1

        # Without a click: the same rows, new values.
        changed(page, "sessions_table", 6, ages, "the session's age moves on")
        changed(page, "orphans_table", 4, ago, "the orphan's 'ago' moves on")
        leak_more = off_thread(lambda: open_and_close_sessions(url + "/app", 2))
        assert len(leak_more) == 2
        wait_until(lambda: api(url, "summary")["sessions_destroyed_total"] >= 3, what="sessions destroyed")
        api(url, "gc", "POST")
        wait_until(lambda: api(url, "summary")["orphans"] == 3, what="3 orphans")
        wait_until(lambda: page.cells("apps_table", 6) == ["3"], what="the apps row shows 3 orphans")
        assert page.cells("apps_table", 0) == ["/app"]  # still one row
        assert len(page.cells("sessions_table", 4)) == 1
        assert page.errors == [], page.errors


def test_allocators_table_follows_its_grouping(serve, browser) -> None:
    import tracemalloc

    server = serve({"/app": script_app("clean")})
    was_tracing = tracemalloc.is_tracing()
    try:
        with dashboard(browser, server.url + "/memwatch") as page:
            if not was_tracing:
                page.click("Start tracemalloc")
            lines = shown(page, "allocators_table", 0, bool, "allocators", timeout_s=30)
            assert all(re.search(r":\d+$", w) for w in lines), lines  # grouped by line: file:lineno
            page.page.select_option("select[name=alloc_group]", label="file")
            files = shown(page, "allocators_table", 0, lambda c: not any(re.search(r":\d+$", w) for w in c),
                          "rows by file", timeout_s=30)
            assert files and all(w.endswith(".py") or "<" in w for w in files), files

            page.click("Set baseline now")  # turns "compare to baseline" on
            wait_until(lambda: "compared to the baseline" in page.text("alloc_status"), timeout_s=30, what="compare")
            diffs = shown(page, "allocators_table", 3, lambda c: all(re.match(r"-?\d", x) for x in c),
                          "growth since the baseline", timeout_s=30)
            assert all(re.fullmatch(r"-?\d+(\.\d)? (B|KiB|MiB|GiB)", d) for d in diffs), diffs

            # The baseline's snapshot is a download on the page ...
            page.wait("() => Bokeh.documents[0].get_model_by_name('snapshots').text"
                      ".includes('snapshots/baseline/tracemalloc')", 30)
            # ... and the types summary compares to it.
            page.js("() => { Bokeh.documents[0].get_model_by_name('types_compare').active = [0]; }")
            grown = shown(page, "types_table", 3, lambda c: all(re.fullmatch(r"-?[\d,]+", x) for x in c),
                          "types compared to the baseline", timeout_s=90)
            assert grown and "since the baseline" in page.text("types_status")
            assert page.errors == [], page.errors
    finally:
        if not was_tracing and tracemalloc.is_tracing():
            api(server.url, "tracemalloc", "POST", body={"action": "stop"})


SCREENS = Path(os.environ.get("MEMWATCH_SCREENS", str(_browser.ARTIFACTS)))


def horizontal_overflow(page: Page, width: int) -> int:
    """ Pixels the page scrolls sideways (0: none); with MEMWATCH_DEBUG_LAYOUT
    set, prints what sticks out. """
    overflow: int = page.js("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    if overflow > 0 and os.environ.get("MEMWATCH_DEBUG_LAYOUT"):
        wide = page.page.evaluate("""() => { const out = []; const walk = (root) => {
            for (const e of root.querySelectorAll('*')) {
                const r = e.getBoundingClientRect();
                if (r.right > window.innerWidth + 1) out.push(e.tagName + '.' + e.className + ' ' + r.right);
                if (e.shadowRoot) walk(e.shadowRoot);
            } }; walk(document); return out.slice(0, 40); }""")
        print(f"at {width} px:", *wide, sep="\n")
    return overflow


@pytest.mark.parametrize("width", [1440, 1000, 700])
def test_layout_wraps_without_horizontal_scroll(serve, browser, width: int) -> None:
    server = serve({"/app": script_app("leak_global")}, gc_min_interval_s=0)
    leak(server.url, 2)
    with live_session(server.url + "/app"), dashboard(browser, server.url + "/memwatch", width=width) as page:
        page.wait("() => Bokeh.documents[0].get_model_by_name('orphans_source').data.session_id.length == 2")
        page.wait_polls(1)
        assert horizontal_overflow(page, width) <= 0, f"horizontal scroll at {width} px"
        # Every card is on the page, none cut off.
        boxes = [card.bounding_box() for card in page.page.locator(".mw-stat-value").all()]
        cards = [box["x"] + box["width"] for box in boxes if box is not None]
        assert len(cards) >= 7 and max(cards) <= width, (cards, width)

        # Orphans grouped by holder: one row for the two sessions held by one list, its chain beside.
        page.click("Explain all")
        page.wait("() => !window.memwatchDashboard.state.chainBusy && Bokeh.documents[0]"
                  ".get_model_by_name('holders_source').data.explained.every(x => x === true)", 60)
        holders = page.data("holders_source")
        assert holders["count"] == [2] and "tests.apps.holders" in holders["holder"][0], holders
        assert "2 sessions are held this way" in page.text("chain")
        page.wait_polls(1)
        assert horizontal_overflow(page, width) <= 0, f"horizontal scroll at {width} px with a chain shown"
        page.screenshot(f"dashboard-{width}.png", SCREENS)
        assert page.errors == [], page.errors
        # 21 "could not set initial ranges" per load: ranges of no finite value (issue 14, item 7).
        assert not [w for w in page.warnings if "initial ranges" in w], page.warnings


def test_first_data_is_in_the_page(serve, browser) -> None:
    """ The page shows numbers before its first request to the API answers. """
    server = serve({"/app": script_app("clean")})
    status, _, body = http("GET", server.url + "/memwatch")
    assert status == 200 and 'id="memwatch-initial">{' in body and '"rss_bytes"' in body
    held: list[Any] = []

    def hold_api(page: Any) -> None:
        def hold(route: Any) -> None:
            held.append(route)  # never answered

        page.route("**/memwatch/api/**", hold)

    page = Page(browser, server.url + "/memwatch", before=hold_api)
    try:
        page.wait("() => window.memwatchDashboard && window.memwatchDashboard.state.initialShown")
        rss = page.text("stat_rss")
        assert re.search(r">\d+(\.\d)? MiB</div>$", rss), rss
        assert "…" not in page.text("stat_sessions") and "loading" not in page.text("status")
        assert page.data("timeline_source")["t"], "the first window of the timeline came with the page"
        assert page.polls() == 0 and held
    finally:
        page.close()


def test_formatting_is_the_same_in_python_and_javascript(serve, browser, monkeypatch) -> None:
    from bokeh_memwatch import units

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        server = serve({"/app": script_app("clean")})
        with dashboard(browser, server.url + "/memwatch", timezone_id="UTC") as page:
            sizes = [0, 1, 512, 1023, 1024, 1280, 1536, 160_000, 1_250_000, 1_048_524, 2**30 * 3.3, -2048, -1, 2**45]
            durations = [0, 0.0004, 0.1115, 0.9999, 1, 7.911, 9.96, 59.4, 59.6, 60, 185, 3599.6, 7440, 86399, 262800]
            clocks = [0, 1_700_000_000, 1_700_000_000.7]
            js = page.js("""([b, d, c]) => [b.map(memwatchFormat.bytes), d.map(memwatchFormat.duration),
                                            c.map(memwatchFormat.clock), [0, 5000, 100].map(memwatchFormat.interval),
                                            [null, NaN].map(memwatchFormat.bytes)]""",
                         [sizes, durations, clocks])
            assert js[0] == [units.format_bytes(n) for n in sizes]
            assert js[1] == [units.format_duration(s) for s in durations]
            assert js[2] == [units.format_clock(t) for t in clocks]
            assert js[3] == [units.format_interval_ms(ms) for ms in (0, 5000, 100)] == ["off", "5.0 s", "100 ms"]
            assert js[4] == [units.format_bytes(None), units.format_bytes(float("nan"))]
            assert units.format_bytes(160_000) == "156.3 KiB" and units.format_duration(0.111528) == "112 ms"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_wheel_zoom_refresh_control_links_and_spikes(serve, browser) -> None:
    server = serve({"/app": script_app("clean")})
    with dashboard(browser, server.url + "/memwatch") as page:
        for plot in ("memory_plot", "traced_plot", "counts_plot", "activity_plot"):
            tool = page.js(f"() => {{ const s = Bokeh.documents[0].get_model_by_name('{plot}').toolbar.active_scroll;"
                           " return s && s.type; }")
            assert tool == "WheelZoomTool", (plot, tool)
        # RSS and traced memory on plots of their own
        assert page.js("() => Bokeh.documents[0].get_model_by_name('memory_plot').renderers.length") == 1

        # Pause: no poll while paused; a rate resumes.
        page.js("() => { const s = Bokeh.documents[0].get_model_by_name('refresh'); s.value = 'paused'; }")
        time.sleep(0.2)
        paused_at = page.polls()
        assert "paused" in page.text("status")
        time.sleep(2.5)  # longer than the fastest rate: a poll would have happened
        assert page.polls() == paused_at
        page.js("() => { Bokeh.documents[0].get_model_by_name('refresh').value = 'every 1 s'; }")
        page.wait_polls(2)

        # Links lead to the report, metrics, API and snapshots, and they answer.
        links = page.js("""() => { const d = Bokeh.documents[0].get_model_by_name('links').text;
            return Array.from(d.matchAll(/href='([^']+)'/g), m => m[1]); }""")
        for path in ("/memwatch/api/report", "/memwatch/metrics", "/memwatch/api/"):
            assert path in links, links
            status, _, _ = http("GET", server.url + path)
            assert status == 200, path

        # A one-sample spike keeps the counts' scale; it shows as a marker.
        out = {"t": [1, 2, 3, 4, 5, 6], "sessions": [2, 2, 135, 2, 3, 3], "documents": [2, 2, 2, 2, 3, 3],
               "orphans": [0, 0, 0, 1, 1, 1], "models_retained_sessions": [0] * 6}
        page.js("out => window.memwatchDashboard.fitCounts(out)", out)
        end = page.js("() => Bokeh.documents[0].get_model_by_name('counts_range').end")
        assert 3 < end < 10, end
        assert page.data("spikes_source")["value"] == [135]
        # ... but a line that really grows stays on the scale.
        out["orphans"] = [0, 10, 20, 30, 40, 50]
        page.js("out => window.memwatchDashboard.fitCounts(out)", out)
        assert page.js("() => Bokeh.documents[0].get_model_by_name('counts_range').end") >= 50
        assert page.errors == [], page.errors


def test_a_browser_without_credentials_gets_a_page_and_the_token_leaves_the_address_bar(serve, browser) -> None:
    token = "correct-horse-battery-staple"
    server = serve({"/app": script_app("clean")}, token=token)
    page = Page(browser, server.url + "/memwatch")
    try:
        assert page.response.status == 401
        assert page.response.headers["content-type"].startswith("text/html")
        assert page.page.locator("h1").inner_text().startswith("memwatch: 401")
        page.page.fill("input[name=token]", token)
        page.page.click("button[type=submit]")
        page.wait("() => window.memwatchDashboard && window.memwatchDashboard.state.polls >= 1")
        assert page.page.url == server.url + "/memwatch", page.page.url  # no ?token= in the address bar
        assert token not in page.page.url
        assert "process" in page.text("status")  # the API answers: the cookie works
    finally:
        page.close()
