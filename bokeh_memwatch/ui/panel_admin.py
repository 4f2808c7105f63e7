""" A "Memory" tab in Panel's ``/admin`` page (``panel serve --admin``).

Panel's documented hook is ``pn.config.admin_plugins``: a list of
``(title, factory)`` tuples; ``panel/io/admin.py`` calls every ``factory()``
with the admin session's Document current and appends the component it
returns as a tab.  :func:`install` adds memwatch's tab once; the Panel plugin
(:mod:`bokeh_memwatch.panel`) calls it.  On a Panel without the hook
(it is looked up as a parameter of ``pn.config``, not by version) the tab is
left out with one log line; ``/memwatch`` works either way.

The tab reads the same data as ``GET api/summary`` (:meth:`Monitor.summary`),
written with the rules of :mod:`bokeh_memwatch.units`, and refreshes it
every :data:`REFRESH_MS` through a periodic callback of the admin session
(Bokeh stops it when that session is destroyed, so it keeps nothing alive).
It shows counts only, like Panel's own Overview tab (memory, sessions), never
heap contents: chains, types and allocators stay behind ``/memwatch``'s
access rules, which the tab links to.
"""
from __future__ import annotations

import html
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..units import format_bytes, format_clock, format_duration

if TYPE_CHECKING:
    from ..monitor import Monitor

log = logging.getLogger(__name__)

__all__ = ("REFRESH_MS", "TAB_TITLE", "install", "memory_tab", "render_summary")

TAB_TITLE = "Memory"

#: How often the tab re-reads the summary, in milliseconds.
REFRESH_MS = 2000

#: (summary key, label, tone when > 0) of the cards, in the dashboard's order.
_CARDS: tuple[tuple[str, str, str], ...] = (
    ("sessions", "live sessions", ""),
    ("documents", "alive Documents", ""),
    ("orphans", "orphaned Documents (proven)", "bad"),
    ("models_retained_sessions", "sessions with retained Models", "bad"),
    ("pending_orphans", "closed sessions not judged yet", "warn"),
    ("held_by_timers", "held by scheduled callbacks", "warn"),
    ("awaiting_collection", "awaiting collection (garbage)", ""),
)

_CSS = (
    "<style>.mw-cards{display:flex;flex-wrap:wrap;gap:8px;margin:6px 0}"
    ".mw-card{border:1px solid #8884;border-radius:6px;padding:4px 10px;min-width:130px}"
    ".mw-card .l{font-size:11px;opacity:.75}.mw-card .v{font-size:22px;font-weight:600}"
    ".mw-bad{color:#e53935}.mw-warn{color:#fb8c00}a{color:#42a5f5}"
    ".mw-apps td,.mw-apps th{padding:1px 12px 1px 0;text-align:left}"
    "</style>"
)


def render_summary(summary: dict[str, Any], dashboard_url: str = "memwatch") -> str:
    """ The tab's HTML for one summary (``GET api/summary``'s shape). """
    def card(label: str, value: str, tone: str = "", name: str = "") -> str:
        cls = f" mw-{tone}" if tone else ""
        return (f"<div class='mw-card' data-memwatch='{html.escape(name)}'><div class='l'>{html.escape(label)}</div>"
                f"<div class='v{cls}'>{html.escape(value)}</div></div>")

    traced = summary.get("traced_bytes")
    cards = [card("RSS", format_bytes(summary.get("rss_bytes")), name="rss_bytes"),
             card("traced by tracemalloc", "off" if traced is None else format_bytes(traced), name="traced_bytes")]
    for key, label, tone in _CARDS:
        value = int(summary.get(key) or 0)
        cards.append(card(label, f"{value:,}", tone if value else "", name=key))
    apps = summary.get("apps") or {}
    rows = "".join(
        f"<tr><td>{html.escape(path)}</td><td>{int(a.get('sessions', 0)):,}</td><td>{int(a.get('documents', 0)):,}</td>"
        f"<td>{int(a.get('orphans', 0)):,}</td><td>{int(a.get('models_retained_sessions', 0)):,}</td>"
        f"<td>{html.escape(format_bytes(a.get('data_bytes', 0)))}</td></tr>"
        for path, a in sorted(apps.items())
    )
    table = ("<table class='mw-apps'><tr><th>app</th><th>live sessions</th><th>Documents</th><th>orphans</th>"
             f"<th>sessions with retained Models</th><th>data</th></tr>{rows}</table>") if rows else ""
    status = (f"process {summary.get('pid')} · up {format_duration(summary.get('uptime_s'))} · "
              f"{int(summary.get('sessions_created_total') or 0):,} sessions opened, "
              f"{int(summary.get('sessions_destroyed_total') or 0):,} closed · updated "
              f"{format_clock(summary.get('time'))}")
    return (f"{_CSS}<h2 style='margin:4px 0'>memwatch</h2><div class='mw-status'>{html.escape(status)}</div>"
            f"<div class='mw-cards'>{''.join(cards)}</div>{table}"
            f"<p><a href='{html.escape(dashboard_url, quote=True)}' target='_blank'>Open the memwatch dashboard</a>: "
            "timeline, orphans and why they are alive, allocators, types.</p>")


def memory_tab(memwatch: Monitor) -> Any:
    """ The tab's component for the current (admin) session. """
    import panel as pn
    from bokeh.models.widgets import Div

    # A Bokeh Div, not pn.pane.HTML: Panel 1.6's HTML view stays
    # visibility:hidden in an admin tab (it waits for its stylesheets).
    div = Div(text=render_summary(memwatch.summary()), sizing_mode="stretch_width", name="memwatch")

    def refresh() -> None:
        try:
            div.text = render_summary(memwatch.summary())
        except Exception:
            log.warning("memwatch admin tab: could not read the summary", exc_info=True)

    pn.state.add_periodic_callback(refresh, period=REFRESH_MS)
    pane = pn.pane.Bokeh(div)  # type: ignore[no-untyped-call]
    return pn.Column(pane, sizing_mode="stretch_width", name=TAB_TITLE)


def install(memwatch: Monitor) -> bool:
    """ Add the tab to ``pn.config.admin_plugins`` (once); False where this
    Panel has no such hook. """
    import panel as pn

    if "admin_plugins" not in pn.config.param:
        log.info("memwatch: this Panel (%s) has no admin_plugins hook; no Memory tab in /admin", pn.__version__)
        return False
    factory: Callable[[], Any] = _Factory(memwatch)
    plugins = list(pn.config.admin_plugins)
    if any(isinstance(f, _Factory) and f.memwatch is memwatch for _, f in plugins):
        return True
    pn.config.admin_plugins = [*plugins, (TAB_TITLE, factory)]
    return True


class _Factory:
    """ ``admin_plugins``' factory: ``factory()`` -> the tab. """

    def __init__(self, memwatch: Monitor) -> None:
        self.memwatch = memwatch

    def __call__(self) -> Any:
        return memory_tab(self.memwatch)
