""" ``panel serve app.py --plugins bokeh_memwatch.panel``. """
from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path
from typing import Any

import pytest

from . import _browser
from .conftest import PYTHON, api, free_port, http, wait_until

PANEL = str(Path(PYTHON).with_name("panel"))
PANEL_VERSION = tuple(int(p) for p in importlib.metadata.version("panel").split(".")[:2])

# Panel 1.4 and 1.5 serve Panel apps under bokeh-memwatch serve and check
# --panel (tested there); only this way in needs 1.6's --plugins.
needs_plugins = pytest.mark.skipif(PANEL_VERSION < (1, 6), reason="panel serve --plugins arrived in Panel 1.6")
pytestmark = needs_plugins
ENV = {
    "BOKEH_MEMWATCH_INTERVAL_MS": "200",
    "BOKEH_MEMWATCH_ORPHAN_GRACE_MS": "0",
    "BOKEH_MEMWATCH_GC_MIN_INTERVAL_S": "0",
}
N = 3


def panel_argv(port: int, app: str, *extra: str) -> list[str]:
    return [PANEL, "serve", f"tests/apps/{app}.py", "--plugins", "bokeh_memwatch.panel",
            "--port", str(port), "--address", "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}",
            "--check-unused-sessions", "100", "--unused-session-lifetime", "100", *extra]


def open_pages(url: str, n: int) -> None:
    """ Open the app page n times over HTTP (a session each, never connected). """
    for _ in range(n):
        status, _, _ = http("GET", url)
        assert status == 200


def test_panel_leak_keeps_models_but_not_the_document(run_command) -> None:
    port = free_port()
    server = run_command(panel_argv(port, "panel_leak_models", "--prefix", "/pfx"), port, prefix="/pfx", env=ENV)
    assert f"memwatch dashboard at http://127.0.0.1:{port}/pfx/memwatch\n" in server.log()
    summary = api(server.url, "summary")
    assert summary["sampler"]["running"] and summary["sampler"]["ticks"] >= 1  # started with the server

    open_pages(f"{server.url}/panel_leak_models", N)
    wait_until(lambda: api(server.url, "summary")["sessions_destroyed_total"] >= N, what="sessions destroyed")
    api(server.url, "gc", "POST")
    def retained() -> dict[str, Any] | None:
        rows: dict[str, Any] = api(server.url, "orphans")
        return rows if len(rows["retained_models"]) == N else None

    result = wait_until(retained, what="retained models")
    assert result is not None
    assert result["orphans"] == []  # the Documents were freed
    for row in result["retained_models"]:
        assert not row["document_alive"] and row["model_types"].get("ColumnDataSource") == 1
    summary = api(server.url, "summary")
    assert summary["orphans"] == 0 and summary["models_retained"] >= N

    chain = api(server.url, f"orphans/{result['retained_models'][0]['session_id']}/chain", "POST")
    assert chain["target"] == "ColumnDataSource"
    assert chain["root"]["kind"] == "module" and chain["root"]["name"] == "tests.apps.holders", chain
    assert ".GLOBAL_SELECT" in chain["text"], chain["text"]


def test_panel_clean_app(run_command) -> None:
    port = free_port()
    server = run_command(panel_argv(port, "panel_clean"), port, env=ENV)
    open_pages(f"{server.url}/panel_clean", N)
    wait_until(lambda: api(server.url, "summary")["sessions_destroyed_total"] >= N, what="sessions destroyed")
    api(server.url, "gc", "POST")
    result = api(server.url, "orphans")
    assert result["orphans"] == [] and result["retained_models"] == [] and result["pending"] == []
    assert api(server.url, "summary")["sessions_cleaned_total"] == N


# -- issue 14: /memwatch under panel serve, and the Memory tab in /admin -------------------------

browser = _browser.browser  # the fixture


@pytest.mark.parametrize("admin", [False, True], ids=["no-admin", "admin"])
def test_memwatch_loads_nothing_from_outside_the_server(run_command, browser, admin: bool) -> None:
    """ Bokeh's Resources add the __javascript__ of every imported Model
    class: under panel serve that was Tabulator, luxon, es-module-shims (and
    a CDN request).  The page must load BokehJS from the server, nothing else. """
    port = free_port()
    server = run_command(panel_argv(port, "panel_leak_models", *(["--admin"] if admin else [])), port, env=ENV)
    open_pages(f"{server.url}/panel_leak_models", N)
    wait_until(lambda: api(server.url, "summary")["sessions_destroyed_total"] >= N, what="sessions destroyed")
    api(server.url, "gc", "POST")
    wait_until(lambda: len(api(server.url, "orphans")["retained_models"]) == N, what="retained models")

    with _browser.dashboard(browser, f"{server.url}/memwatch") as page:
        page.wait_polls(1)
        origin = f"http://127.0.0.1:{port}/"
        outside = [u for u in page.requests if not u.startswith((origin, "data:", f"blob:{origin}"))]
        assert outside == [], outside
        assert page.failed == [], page.failed
        scripts = [u for u in page.requests if ".js" in u]
        assert all("/static/js/bokeh" in u for u in scripts), scripts
        for name in ("tabulator", "luxon", "es-module-shims", "panel"):
            assert not any(name in u.lower() for u in scripts), (name, scripts)

        # The card counts sessions; models_retained counts their Models.
        summary = api(server.url, "summary")
        assert summary["models_retained_sessions"] == N and summary["models_retained"] >= N
        page.wait_polls(1)
        assert f">{N}</div>" in page.text("stat_retained") and "sessions with retained Models" in page.text(
            "stat_retained")
        assert page.errors == [], page.errors


def test_admin_page_has_a_memory_tab_with_live_numbers(run_command, browser) -> None:
    port = free_port()
    server = run_command(panel_argv(port, "panel_clean", "--admin"), port, env=ENV)
    page = _browser.Page(browser, f"{server.url}/admin")
    try:
        # The tab's header (Panel's Overview may say "Memory" too).
        page.page.locator(".bk-tab", has_text=re.compile(r"^Memory$")).first.click(timeout=60_000)
        tab = page.page.locator("[data-memwatch='sessions']").first
        tab.wait_for(timeout=30_000)

        def opened() -> int:
            status = page.page.locator(".mw-status").first.inner_text()
            match = re.search(r"([\d,]+) sessions opened", status)
            return int(match.group(1).replace(",", "")) if match else -1

        before = wait_until(lambda: opened() + 1, what="the tab's status line") - 1
        assert before >= 0
        open_pages(f"{server.url}/panel_clean", N)
        wait_until(lambda: opened() >= before + N, timeout_s=30, what="the tab's numbers follow the server")
        rss = page.page.locator("[data-memwatch='rss_bytes'] .v").first.inner_text()
        assert re.fullmatch(r"\d+(\.\d)? (MiB|GiB)", rss), rss
        assert page.page.get_by_text("Open the memwatch dashboard").first.get_attribute("href") == "memwatch"
        page.screenshot("admin-memory-tab.png", Path(os.environ.get("MEMWATCH_SCREENS", str(_browser.ARTIFACTS))))
    finally:
        page.close()
