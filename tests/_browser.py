""" Headless Chromium for the browser tests (test_dashboard.py, test_panel_plugin.py).

Chromium is Debian's (``/usr/bin/chromium``, installed by ``.ci/run``), driven
by the ``playwright`` package; ``playwright install`` is never needed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT

CHROMIUM = os.environ.get("MEMWATCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"


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


#: The rendered cells of a DataTable's column: its view found by walking
#: BokehJS's view tree from the roots, its rows in the order they are shown.
_CELLS_JS = """
([name, column]) => {
    const target = Bokeh.documents[0].get_model_by_name(name);
    const index = Bokeh.index;
    const roots = index instanceof Map ? Array.from(index.values())
        : (Array.isArray(index) ? index : Object.values(index));
    const stack = [...roots], seen = new Set();
    while (stack.length) {
        const view = stack.pop();
        if (!view || seen.has(view)) continue;
        seen.add(view);
        if (view.model === target) {
            const root = view.shadow_el || view.el.shadowRoot || view.el;
            const rows = Array.from(root.querySelectorAll(".slick-row"));
            rows.sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top));
            return rows.map(r => {
                const cell = r.querySelectorAll(".slick-cell")[column];
                return cell ? cell.innerText : null;
            });
        }
        // children_views() since Bokeh 3.5 or so; child_views (layouts) before.
        const children = typeof view.children_views === "function" ? view.children_views()
            : (view.child_views || []);
        for (const child of children) stack.push(child);
    }
    throw new Error("no view of " + name);
}
"""


class Page:
    """ A dashboard tab that records every JavaScript error and console
    error and warning, and every request it makes. """

    def __init__(self, browser: Any, url: str, *, width: int = 1400, height: int = 1000,
                 before: Any = None, **context: Any) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.requests: list[str] = []
        self.failed: list[str] = []
        self.context = browser.new_context(viewport={"width": width, "height": height}, **context)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", self._console)
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.failed.append(r.url))
        if before is not None:
            before(self.page)
        self.response = self.page.goto(url, wait_until="load")

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")
        elif message.type == "warning":
            self.warnings.append(message.text)

    def cells(self, table: str, column: int) -> list[str]:
        """ The text the page shows in one column of the DataTable model
        named ``table``, top to bottom, as rendered (read from the DOM of its
        view, not from its data). """
        result: list[str] = self.js(_CELLS_JS, [table, column])
        return result

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

    def screenshot(self, name: str, directory: Path = ARTIFACTS) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


@contextlib.contextmanager
def dashboard(browser: Any, url: str, **kw: Any) -> Iterator[Page]:
    page = Page(browser, url, **kw)
    try:
        page.wait("() => window.memwatchDashboard && window.memwatchDashboard.state.polls >= 1")
        yield page
    finally:
        page.close()
