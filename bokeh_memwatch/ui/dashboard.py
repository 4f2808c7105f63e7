""" The dashboard: ``{prefix}/memwatch``, a Bokeh page that reads the JSON API.

The page is a *standalone* Bokeh document (:func:`bokeh.embed.file_html`):
it is rendered once into HTML by a tornado handler and never becomes a
Bokeh server session, so looking at the dashboard creates no session,
Document or Model that memwatch would count, and keeps nothing alive on the
server.  BokehJS is loaded from the server the page is mounted on (no CDN:
it works offline and under ``--prefix``).

In the browser, ``dashboard.js`` polls the JSON API every few seconds with
``fetch()`` and writes what it gets into the page's ColumnDataSources; the
buttons are Bokeh widgets whose ``CustomJS`` callbacks call into it.

The one extra endpoint, ``api/dashboard/timeline``, is the history shaped for
the plots: columns instead of rows, only the fields plotted, at most
``max_points`` points per window.

Over 400 lines: one page (its cards, plots and tables, the resources it
loads, the page cache) and its two handlers; its behaviour is dashboard.js.
"""
from __future__ import annotations

import html
import importlib.resources
import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import (
    BasicTicker,
    ColumnDataSource,
    CustomJS,
    CustomJSHover,
    CustomJSTickFormatter,
    DatetimeTickFormatter,
    HoverTool,
    InlineStyleSheet,
    Range1d,
    WheelZoomTool,
)
from bokeh.models.widgets import (
    Button,
    CheckboxGroup,
    DataTable,
    Div,
    HTMLTemplateFormatter,
    NumberFormatter,
    RadioButtonGroup,
    Select,
    StringFormatter,
    TableColumn,
)
from bokeh.plotting import figure
from bokeh.resources import Resources
from bokeh.server.views.static_handler import StaticHandler
from bokeh.settings import settings

from ..http.base import JSONHandler, float_arg, int_arg, no_query_args
from ..saferepr import render_json

if TYPE_CHECKING:
    from bokeh.models import LayoutDOM

    from ..monitor import Monitor

log = logging.getLogger(__name__)

__all__ = (
    "TIMELINE_FIELDS",
    "BokehOnlyResources",
    "DashboardHandler",
    "PageCache",
    "TimelineHandler",
    "downsample",
    "render_page",
    "timeline_answer",
)

#: History fields the timeline plots; counters are cumulative.
TIMELINE_FIELDS: tuple[str, ...] = (
    "t",
    "rss_bytes",
    "traced_bytes",
    "sessions",
    "documents",
    "orphans",
    "pending_orphans",
    "models_retained",
    "models_retained_sessions",
    "data_bytes",
    "sessions_created_total",
    "sessions_destroyed_total",
)

#: Within a bucket of samples these keep the largest value (a spike stays
#: visible); the others (time, cumulative counters) keep the last one.
_PEAK_FIELDS = frozenset({"rss_bytes", "traced_bytes", "sessions", "documents", "orphans",
                          "pending_orphans", "models_retained", "models_retained_sessions", "data_bytes"})

#: Windows the page offers, in seconds (the timeline accepts any up to a week).
WINDOWS_S: tuple[tuple[str, int], ...] = (("last 15 min", 900), ("last 1 h", 3600), ("last 24 h", 86400))

MAX_WINDOW_S = 7 * 86400
MAX_SAMPLES_READ = 20_000

#: Poll interval of the page: the sampler's, within these bounds.
MIN_POLL_MS = 1000
MAX_POLL_MS = 5000


# -- plain data ---------------------------------------------------------------------


def downsample(samples: list[dict[str, Any]], max_points: int,
               fields: tuple[str, ...] = TIMELINE_FIELDS) -> dict[str, list[float | None]]:
    """ Samples (oldest first) as columns of at most ``max_points`` values.

    Consecutive samples are grouped into equal buckets; a bucket keeps the
    peak of each gauge and the last time and counter values.
    """
    columns: dict[str, list[float | None]] = {name: [] for name in fields}
    if not samples or max_points <= 0:
        return columns
    size = max(1, math.ceil(len(samples) / max_points))
    for start in range(0, len(samples), size):
        bucket = samples[start:start + size]
        for name in fields:
            if name in _PEAK_FIELDS:
                values = [v for v in (s.get(name) for s in bucket) if v is not None]
                columns[name].append(max(values) if values else None)
            else:
                columns[name].append(bucket[-1].get(name))
    return columns


# -- the page -------------------------------------------------------------------------


class BokehOnlyResources(Resources):
    """ BokehJS's own files and nothing else.

    Bokeh's ``Resources.js_files``/``css_files`` add the ``__javascript__`` and
    ``__css__`` of *every* Model class imported in the process: under
    ``panel serve`` that is Panel's Tabulator, luxon, es-module-shims (from a
    CDN), whatever extensions the apps import.  The dashboard uses only
    Bokeh's built-in models, so it loads only Bokeh's components, from this
    server, whatever else the process has imported.  (``clone``, which
    ``file_html`` calls to drop unused components, keeps the class.)
    """

    def clone(self, *, components: list[Any] | None = None) -> Resources:
        copy = super().clone(components=components)
        copy.__class__ = BokehOnlyResources
        return copy

    def _own(self, files: list[str], kind: str) -> list[str]:
        names = {f"{c}{'.min' if self.minified else ''}.{kind}" for c in self.components_for(kind)}  # type: ignore[arg-type]
        return [f for f in files if urlsplit(f).path.rsplit("/", 1)[-1] in names]

    @property
    def js_files(self) -> list[str]:
        return self._own(super().js_files, "js")

    @property
    def css_files(self) -> list[str]:
        return self._own(super().css_files, "css")


def _resources(prefix: str) -> Resources:
    """ BokehJS from this server, as ``BokehTornado.resources()`` builds it
    (root-relative), whatever ``BOKEH_RESOURCES`` says the apps use; no
    other model's resources (:class:`BokehOnlyResources`). """
    if settings.resources(default="server") == "server-dev":
        return BokehOnlyResources(mode="server-dev", root_url=f"{prefix}/",
                                  path_versioner=StaticHandler.append_version)
    return BokehOnlyResources(mode="server", root_url=f"{prefix}/", path_versioner=StaticHandler.append_version)


def _stat(name: str, label: str) -> Div:
    return Div(name=name, text=f"<div class='mw-stat-label'>{html.escape(label)}</div>"
               "<div class='mw-stat-value'>…</div>", css_classes=["mw-stat"], width=150)


def _wrapping_row(*children: LayoutDOM, name: str | None = None) -> LayoutDOM:
    """ A row that wraps its children onto more lines when the page is
    narrow (Bokeh's ``row`` never wraps: 7 cards made a 1135 px page). """
    box = row(*children, sizing_mode="stretch_width", styles={"flex-wrap": "wrap", "gap": "6px"})
    if name:
        box.name = name
    return box


def _table(name: str, columns: list[TableColumn], fields: tuple[str, ...],
           *, index: bool = False) -> tuple[ColumnDataSource, DataTable]:
    """ A sortable table; ``dashboard.js`` sizes it to its rows and redraws
    it whenever its data changes (keeping the sort and the selected row). """
    source = ColumnDataSource(data={f: [] for f in fields}, name=f"{name}_source")
    source.selected.js_on_change("indices", CustomJS(
        code=f"if (window.memwatchDashboard) window.memwatchDashboard.selectionChanged({name!r});"))
    table = DataTable(source=source, columns=columns, name=f"{name}_table", height=58,
                      sizing_mode="stretch_width", index_position=0 if index else None,
                      css_classes=[f"mw-table-{name}"],  # for tests and user stylesheets
                      sortable=True, selectable=True, reorderable=False)
    return source, table


def _template(field: str, title: str, width: int, expression: str) -> TableColumn:
    """ A column shown through one of ``dashboard.js``'s formatters
    (``memwatchFormat``, the rules of units.py), sorted by its raw value. """
    template = f"<%- window.memwatchFormat ? window.memwatchFormat.{expression} : value %>"
    return TableColumn(field=field, title=title, width=width, formatter=HTMLTemplateFormatter(template=template))


def _bytes(field: str, title: str, width: int = 90) -> TableColumn:
    """ Bytes, IEC units (``160.0 KiB``), sorted by the number of bytes. """
    return _template(field, title, width, "bytes(value)")


def _app(field: str, title: str, width: int = 120) -> TableColumn:
    """ An application path, linked to the application's page. """
    template = ("<% if (window.memwatchFormat) { %><a href='<%- window.memwatchFormat.appUrl(value) %>' "
                "target='_blank'><%- value %></a><% } else { %><%- value %><% } %>")
    return TableColumn(field=field, title=title, width=width, formatter=HTMLTemplateFormatter(template=template))


def _int(field: str, title: str, width: int = 70) -> TableColumn:
    return TableColumn(field=field, title=title, width=width, formatter=NumberFormatter(format="0,0"))


def _text(field: str, title: str, width: int = 120) -> TableColumn:
    return TableColumn(field=field, title=title, width=width, formatter=StringFormatter())


def _duration(field: str, title: str, width: int = 90) -> TableColumn:
    return _template(field, title, width, "duration(value)")


def _clock(field: str, title: str, width: int = 90) -> TableColumn:
    """ Unix seconds as a 24 h local time of day. """
    return _template(field, title, width, "clock(value)")


def _call(method: str, *args: str) -> CustomJS:
    """ A CustomJS that calls ``window.memwatchDashboard.<method>(...)``. """
    arguments = ", ".join(f"cb_obj.{a}" for a in args)
    return CustomJS(code=f"if (window.memwatchDashboard) window.memwatchDashboard.{method}({arguments});")


def _section(title: str, subtitle: str = "") -> Div:
    sub = f"<span class='mw-sub'>{html.escape(subtitle)}</span>" if subtitle else ""
    return Div(text=f"<h2>{html.escape(title)}</h2>{sub}", sizing_mode="stretch_width", css_classes=["mw-section"])


def _bytes_ticks() -> CustomJSTickFormatter:
    """ Axis ticks of byte values in IEC units (the rules of units.py). """
    return CustomJSTickFormatter(code="""
        return window.memwatchFormat ? window.memwatchFormat.bytes(tick) : String(tick);
    """)


def _bytes_hover() -> CustomJSHover:
    """ Hover values of bytes: "off" where tracemalloc did not trace (NaN), not "NaN MB". """
    return CustomJSHover(code="""
        return (value === null || isNaN(value)) ? "off"
            : (window.memwatchFormat ? window.memwatchFormat.bytes(value) : String(value));
    """)


def _time_plot(name: str, title: str, height: int, x_range: Any = None) -> Any:
    """ A time plot whose wheel zooms the time axis without picking a tool first. """
    kw: dict[str, Any] = {} if x_range is None else {"x_range": x_range}
    plot = figure(name=name, title=title, height=height, sizing_mode="stretch_width", x_axis_type="datetime",
                  tools="xpan,reset,save", toolbar_location="right", min_width=300, **kw)
    wheel = WheelZoomTool(dimensions="width")
    plot.add_tools(wheel)
    plot.toolbar.active_scroll = wheel  # "scroll to zoom" works at once
    return plot


def _timeline_plots() -> list[LayoutDOM]:
    source = ColumnDataSource(
        data={k: [] for k in ("t", "rss_bytes", "traced_bytes", "sessions", "documents", "orphans",
                              "models_retained_sessions", "opened", "closed", "width")},
        name="timeline_source",
    )
    # RSS alone on its axis: traced memory (often a tenth of it) would squash its growth.
    # The time axis follows the data (dashboard.js fitTime) until the user zooms or pans it.
    memory = _time_plot("memory_plot", "Resident memory (RSS)", 240, x_range=Range1d(start=0, end=1, name="time_range"))
    memory.line("t", "rss_bytes", source=source, line_width=2, color="#1f77b4", legend_label="RSS: resident memory")
    memory.yaxis.formatter = _bytes_ticks()
    # Zoomed on the data, so growth shows; but never magnify less than 10 MiB of
    # noise.  The y-ranges are Range1d set by dashboard.js (fitRange): a
    # DataRange1d of no finite value (tracemalloc off, no session activity)
    # logs "could not set initial ranges" at every render.
    memory.y_range = Range1d(start=0, end=1, name="memory_range")
    memory.add_tools(HoverTool(tooltips=[("time", "@t{%H:%M:%S}"), ("RSS", "@rss_bytes{custom}")],
                               formatters={"@t": "datetime", "@rss_bytes": _bytes_hover()}, mode="vline"))

    traced = _time_plot("traced_plot", "Traced by tracemalloc", 170, x_range=memory.x_range)
    traced.line("t", "traced_bytes", source=source, line_width=2, color="#ff7f0e",
                legend_label="traced by tracemalloc (Python allocations)")
    traced.yaxis.formatter = _bytes_ticks()
    traced.y_range = Range1d(start=0, end=1, name="traced_range")
    traced.add_tools(HoverTool(tooltips=[("time", "@t{%H:%M:%S}"), ("traced", "@traced_bytes{custom}")],
                               formatters={"@t": "datetime", "@traced_bytes": _bytes_hover()}, mode="vline"))

    # Counts: the y-range follows the bulk of the values and the latest ones
    # (dashboard.js fitCounts); a one-sample spike above it is kept, drawn as a
    # marker on the top edge with its value, instead of stretching the axis.
    counts = _time_plot("counts_plot", "Live sessions, Documents and orphans (count)", 250, x_range=memory.x_range)
    counts.y_range = Range1d(start=0, end=5, name="counts_range")
    lines = [
        ("live sessions", "sessions", "#2ca02c", "solid"),
        ("alive Documents", "documents", "#1f77b4", "solid"),
        ("orphaned Documents", "orphans", "#d62728", "solid"),
        ("sessions with retained Models", "models_retained_sessions", "#9467bd", "dashed"),
    ]
    for label, field, color, dash in lines:
        counts.step(x="t", y=field, source=source, line_width=2, color=color, line_dash=dash, mode="after",
                    legend_label=label)
    spikes = ColumnDataSource(data={"t": [], "y": [], "value": [], "series": []}, name="spikes_source")
    spike_glyph = counts.scatter("t", "y", source=spikes, marker="triangle", size=9, color="#444",
                                 legend_label="peak above the scale")
    counts.add_tools(HoverTool(renderers=[spike_glyph], formatters={"@t": "datetime"},
                               tooltips=[("time", "@t{%H:%M:%S}"), ("peak", "@series: @value")]))
    counts.yaxis.axis_label = "count"
    counts.add_tools(HoverTool(tooltips=[("time", "@t{%H:%M:%S}"), ("sessions", "@sessions"),
                                         ("Documents", "@documents"), ("orphans", "@orphans"),
                                         ("sessions with retained Models", "@models_retained_sessions")],
                               formatters={"@t": "datetime"}, mode="vline", renderers=counts.renderers[:4]))

    activity = _time_plot("activity_plot", "Sessions opened (up) and closed (down) per sample", 170,
                          x_range=memory.x_range)
    activity.vbar(x="t", top="opened", width="width", source=source, color="#2ca02c", alpha=0.6,
                  legend_label="opened")
    activity.vbar(x="t", top="closed", width="width", source=source, color="#7f7f7f", alpha=0.6,
                  legend_label="closed")
    activity.y_range = Range1d(start=-1, end=1, name="activity_range")
    activity.yaxis.axis_label = "sessions"
    activity.yaxis.formatter = CustomJSTickFormatter(code="return Math.abs(tick).toString();")
    activity.yaxis.ticker = BasicTicker(min_interval=1, desired_num_ticks=4)
    counts.yaxis.ticker = BasicTicker(min_interval=1)

    for plot in (memory, traced, counts, activity):
        # 24 h everywhere (tables and status lines too: units.format_clock).
        plot.xaxis.formatter = DatetimeTickFormatter(minutes="%H:%M", hours="%H:%M", seconds="%H:%M:%S",
                                                     minsec="%H:%M:%S", hourmin="%H:%M", days="%d %b")
        plot.legend.click_policy = "hide"
        plot.legend.orientation = "horizontal"
        plot.legend.location = "top_left"
        plot.legend.label_text_font_size = "9pt"
        plot.legend.glyph_height = 12
        plot.legend.label_height = 12
        plot.legend.border_line_alpha = 0
        legend = plot.legend[0]
        legend.update(padding=2, margin=0)
        plot.add_layout(legend, "above")  # never over the data
        plot.min_border_left = 70  # the same for all, so their time axes line up
    # Five entries: three to a line, so the legend fits a 700 px page.
    counts.legend[0].ncols = 3
    activity.xaxis.axis_label = "local time"
    return [memory, traced, counts, activity]


#: Refresh choices: (label, ms); 0 pauses polling.
REFRESH_CHOICES: tuple[tuple[str, int], ...] = (
    ("every 1 s", 1000), ("every 2 s", 2000), ("every 5 s", 5000), ("every 10 s", 10000),
    ("every 30 s", 30000), ("paused", 0))


def _links() -> Div:
    """ Where else to look: relative to the page (``{prefix}/memwatch``),
    so they work under any prefix; dashboard.js hides the ones the server
    does not mount. """
    links = [
        ("link_report", "memwatch/api/report", "download a JSON report (for a bug report)"),
        ("link_metrics", "memwatch/metrics", "Prometheus metrics"),
        ("link_api", "memwatch/api/", "the JSON API"),
        ("link_snapshots", "#mw-snapshots", "tracemalloc snapshots"),
    ]
    items = " · ".join(f"<a id='{i}' href='{h}'>{html.escape(t)}</a>" for i, h, t in links)
    return Div(name="links", text=f"<span class='mw-links'>{items}</span>", sizing_mode="stretch_width")


def build_layout(poll_ms: int) -> LayoutDOM:
    """ The page's Bokeh layout; ``dashboard.js`` finds its models by name. """
    header = Div(name="header", sizing_mode="stretch_width", css_classes=["mw-header"], text=(
        "<h1>memwatch</h1><span class='mw-sub'>memory of this Bokeh server process</span>"))
    choices: list[str | tuple[Any, str]] = [label for label, _ in REFRESH_CHOICES]
    default = min(range(len(REFRESH_CHOICES) - 1), key=lambda i: abs(REFRESH_CHOICES[i][1] - poll_ms))
    refresh = Select(name="refresh", title="refresh", value=choices[default], options=choices, width=120)
    refresh.js_on_change("value", _call("setRefresh", "value"))
    status = Div(name="status", text="loading…", sizing_mode="stretch_width", css_classes=["mw-status"])
    verdict = Div(name="verdict", text="", sizing_mode="stretch_width", css_classes=["mw-verdict"])
    stats = _wrapping_row(
        _stat("stat_rss", "RSS"), _stat("stat_traced", "traced by tracemalloc"),
        _stat("stat_sessions", "live sessions"),
        _stat("stat_documents", "alive Documents"), _stat("stat_orphans", "orphaned Documents (proven)"),
        _stat("stat_retained", "sessions with retained Models"),
        _stat("stat_pending", "closed sessions not judged yet"),
        _stat("stat_awaiting", "awaiting collection (garbage)"),
        name="stats",
    )
    window = RadioButtonGroup(name="window", labels=[label for label, _ in WINDOWS_S], active=0)
    window.js_on_change("active", _call("setWindow", "active"))

    _, apps_table = _table("apps", [
        _app("app", "app", 160), _int("sessions", "live sessions"), _int("connections", "connections"),
        _int("documents", "Documents"), _int("models", "Models"), _bytes("data_bytes", "data"),
        _int("orphans", "orphans"), _int("models_retained_sessions", "sessions w/ retained Models", 110),
    ], ("app", "sessions", "connections", "documents", "models", "data_bytes", "orphans",
        "models_retained_sessions"))

    _, sessions_table = _table("sessions", [
        _bytes("data_bytes", "data"), _int("models", "Models"), _int("documents", "Documents"),
        _app("app", "app", 120), _text("id", "session", 300), _int("connections", "connections"),
        _duration("age_s", "age", 100),
    ], ("id", "app", "connections", "age_s", "documents", "models", "data_bytes"))
    sessions_empty = Div(name="sessions_empty", text="", css_classes=["mw-empty"])
    session_id = Div(name="session_id", text="", sizing_mode="stretch_width", css_classes=["mw-id"])

    _, holders_table = _table("holders", [
        _int("count", "sessions", 70), _text("holder", "held by", 360), _text("apps", "app", 110),
        _bytes("data_bytes", "data", 90), _text("kind", "what is alive", 160),
    ], ("key", "count", "holder", "apps", "data_bytes", "kind", "explained"))
    _, orphans_table = _table("orphans", [
        _text("kind", "what is alive", 190), _app("app", "app", 110), _text("session_id", "session", 300),
        _clock("destroyed_at", "destroyed at", 100), _duration("ago_s", "ago", 90),
        _int("models", "Models"), _bytes("data_bytes", "data"), _text("status", "status", 170),
    ], ("kind", "app", "session_id", "destroyed_at", "ago_s", "models", "data_bytes", "status"))
    why = Button(name="why_alive", label="Why alive? (selected row, else the first)", button_type="warning",
                 width=300)
    why.js_on_click(_call("whyAlive"))
    explain_all = Button(name="explain_all", label="Explain all (group by holder)", width=230)
    explain_all.js_on_click(_call("explainAll"))
    gc_button = Button(name="gc", label="Run garbage collection now", width=220)
    gc_button.js_on_click(_call("collectGarbage"))
    gc_status = Div(name="gc_status", text="", sizing_mode="stretch_width")
    orphans_empty = Div(name="orphans_empty", text="", css_classes=["mw-empty"])
    chain = Div(name="chain", text="", sizing_mode="stretch_width", min_width=320, css_classes=["mw-chain"])
    holders_table.min_width = 420
    orphan_id = Div(name="orphan_id", text="", sizing_mode="stretch_width", css_classes=["mw-id"])

    alloc_status = Div(name="alloc_status", text="checking tracemalloc…", sizing_mode="stretch_width")
    alloc_start = Button(name="alloc_start", label="Start tracemalloc", button_type="primary", width=160)
    alloc_start.js_on_click(_call("startTracemalloc"))
    group_options: list[str | tuple[Any, str]] = [
        ("lineno", "line"), ("filename", "file"), ("traceback", "traceback")]
    alloc_group = Select(name="alloc_group", title="group by", value="lineno", options=group_options, width=120)
    alloc_group.js_on_change("value", _call("refreshAllocators"))
    alloc_compare = CheckboxGroup(name="alloc_compare", labels=["compare to baseline"], active=[])
    alloc_compare.js_on_change("active", _call("refreshAllocators"))
    alloc_baseline = Button(name="alloc_baseline", label="Set baseline now", width=140)
    alloc_baseline.js_on_click(_call("setBaseline"))
    alloc_refresh = Button(name="alloc_refresh", label="Refresh", width=90)
    alloc_refresh.js_on_click(_call("refreshAllocators"))
    _, alloc_table = _table("allocators", [
        _text("where", "where allocated", 420), _bytes("size_bytes", "size", 90),
        _int("count", "blocks", 80), _bytes("diff_bytes", "change since baseline", 130),
    ], ("where", "size_bytes", "count", "diff_bytes"))

    types_status = Div(name="types_status", text="Not summarized yet: this walks the whole heap (seconds on a "
                       "large server), so it runs only when asked.", sizing_mode="stretch_width")
    types_button = Button(name="types_refresh", label="Summarize types now", width=180)
    types_button.js_on_click(_call("refreshTypes"))
    types_compare = CheckboxGroup(name="types_compare", labels=["compare to baseline"], active=[])
    types_compare.js_on_change("active", _call("refreshTypes"))
    _, types_table = _table("types", [
        _text("type", "type", 300), _int("count", "objects", 90), _bytes("size_bytes", "size", 90),
        _int("count_diff", "objects since baseline", 120), _bytes("size_diff_bytes", "size since baseline", 120),
    ], ("type", "count", "size_bytes", "count_diff", "size_diff_bytes"))

    snapshots = Div(name="snapshots", text="", sizing_mode="stretch_width", css_classes=["mw-snapshots"])

    census_parts = _census_block()
    settings_div = Div(name="settings", text="", sizing_mode="stretch_width", css_classes=["mw-settings"])
    advice_div = Div(name="advice", text="no advice yet", sizing_mode="stretch_width", css_classes=["mw-advice"])

    return column(
        _wrapping_row(header, refresh), _links(), status, verdict, stats,
        _section("Timeline", "since the server started; scroll or drag to zoom the time axis, "
                 "click a legend entry to hide"),
        window, *_timeline_plots(),
        _section("Applications", "live counts per app path"),
        apps_table,
        _section("Sessions", "live sessions, heaviest first; click a column title to sort, a row to copy its id"),
        sessions_empty, sessions_table, session_id,
        _section("Orphans", "destroyed sessions whose Document (or some of its Models) is still alive: a leak; "
                 "grouped by what holds them"),
        orphans_empty, _wrapping_row(holders_table, chain), orphans_table, orphan_id,
        _wrapping_row(why, explain_all, gc_button), gc_status,
        *census_parts,
        _section("Advice", "the memory checklist, checked against what this server does"),
        advice_div,
        _section("Top allocators", "tracemalloc: where the memory still allocated was allocated"),
        alloc_status, _wrapping_row(alloc_start, alloc_group, alloc_compare, alloc_baseline, alloc_refresh),
        alloc_table,
        _section("Snapshots", "tracemalloc snapshots stored on the server, for tracemalloc.Snapshot.load"),
        snapshots,
        _section("Types", "pympler summary: live objects per type"),
        types_status, _wrapping_row(types_button, types_compare), types_table,
        _section("Settings", "what decides when Bokeh frees a closed session, and how memwatch samples"),
        settings_div,
        sizing_mode="stretch_width", name="dashboard",
    )


def _census_block() -> list[LayoutDOM]:
    """ "Types growing with closed sessions" (census.py; dashboard.js
    ``renderCensus``/``runCensus``). """
    status = Div(name="census_status", text="no census yet", sizing_mode="stretch_width")
    button = Button(name="census_run", label="Take a census now", width=180)
    button.js_on_click(_call("runCensus"))
    _, table = _table("census", [
        _text("type", "type", 260), _text("per_session", "kept per closed session", 150),
        _bytes("bytes_per_session", "per closed session (shallow)", 170), _int("count", "alive", 80),
        _text("holder", "held by (one instance)", 520),
    ], ("type", "per_session", "bytes_per_session", "count", "holder"))
    return [
        _section("Types growing with closed sessions",
                 "census of what a full collection keeps, by type, in a forked child: Panel/param objects, "
                 "DataFrames and arrays that outlive sessions without their Document"),
        status, button, table,
    ]


_STYLE = """
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
         padding: 8px 16px 40px; max-width: 1400px; color: #222; box-sizing: border-box; }
</style>
"""

#: Blocks of Bokeh's FILE template (``file_html`` adds ``{% extends base %}``).
#: ``__MEMWATCH_INITIAL__`` is replaced per request by the first data (render_initial).
_TEMPLATE = """
{% block preamble %}<link rel="icon" href="data:,">{% endblock %}
{% block postamble %}""" + _STYLE + """{% endblock %}
{% block inner_body %}
{{ super() }}
<script type="application/json" id="memwatch-config">{{ config_json }}</script>
<script type="application/json" id="memwatch-initial">__MEMWATCH_INITIAL__</script>
<script type="text/javascript">{{ dashboard_js }}</script>
{% endblock %}
"""

INITIAL_PLACEHOLDER = "__MEMWATCH_INITIAL__"

#: CSS for the models (BokehJS renders them in shadow roots: stylesheets go on the models).
_MODEL_CSS = """
:host(.mw-header) h1 { margin: 6px 0 0; font-size: 22px; }
:host(.mw-section) h2 { margin: 18px 0 0; font-size: 17px; border-bottom: 1px solid #ddd; }
.mw-sub { color: #666; font-size: 12px; }
:host(.mw-stat) { border: 1px solid #ddd; border-radius: 6px; padding: 4px 8px; background: #fafafa; }
.mw-stat-label { font-size: 11px; color: #555; }
.mw-stat-value { font-size: 22px; font-weight: 600; }
.mw-bad { color: #c62828; }
.mw-ok { color: #2e7d32; }
.mw-warn { color: #b26a00; }
.mw-muted { color: #777; }
.mw-links a { margin-right: 2px; }
:host(.mw-empty) { color: #2e7d32; font-style: italic; }
:host(.mw-chain) ol { margin: 4px 0; padding-left: 22px; }
:host(.mw-chain) code, :host(.mw-settings) code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px;
  overflow-wrap: anywhere; }
:host(.mw-id) code { user-select: all; background: #f3f3f3; padding: 1px 4px; border-radius: 3px;
  overflow-wrap: anywhere; }
:host(.mw-settings) table { border-collapse: collapse; font-size: 13px; }
:host(.mw-settings) td { padding: 1px 10px 1px 0; vertical-align: top; overflow-wrap: anywhere; }
:host(.mw-verdict) { font-size: 15px; }
:host(.mw-advice) .mw-advice-item { margin: 6px 0; font-size: 13px; line-height: 1.4; }
:host(.mw-advice) code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; }
:host(.mw-snapshots) table { border-collapse: collapse; font-size: 13px; }
:host(.mw-snapshots) td, :host(.mw-snapshots) th { padding: 1px 10px 1px 0; text-align: left; }
"""


def poll_interval_ms(interval_ms: int) -> int:
    return max(MIN_POLL_MS, min(MAX_POLL_MS, interval_ms))


def render_page(prefix: str, interval_ms: int) -> str:
    """ The dashboard's HTML; BokehJS from ``{prefix}/static/``. """
    poll_ms = poll_interval_ms(interval_ms)
    layout = build_layout(poll_ms)
    sheet = InlineStyleSheet(css=_MODEL_CSS)
    for model in layout.select({"type": Div}):
        assert isinstance(model, Div)
        model.stylesheets = [*model.stylesheets, sheet]
    config = {"poll_ms": poll_ms, "windows_s": [w for _, w in WINDOWS_S], "interval_ms": interval_ms,
              "refresh_choices": dict(REFRESH_CHOICES)}
    js = importlib.resources.files(__package__).joinpath("dashboard.js").read_text(encoding="utf-8")
    try:
        return file_html(
            layout, _resources(prefix), title="memwatch",
            template=_TEMPLATE,
            template_variables={
                # Escaped for an HTML script element: no "</" can end it early.
                "config_json": json.dumps(config).replace("</", "<\\/"),
                "dashboard_js": js,
            },
        )
    finally:
        del layout  # a standalone document: nothing of it outlives the render


# -- handlers -------------------------------------------------------------------------


class PageCache:
    """ Rendered pages per prefix: the page is the same for every request. """

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}


class DashboardHandler(JSONHandler):
    """ ``{prefix}/memwatch``: the page (same access rules as the API). """

    cross_site_navigation = True

    def initialize(self, memwatch: Monitor, cache: PageCache | None = None) -> None:
        super().initialize(memwatch)
        self.cache = cache if cache is not None else PageCache()

    def get(self) -> None:
        no_query_args(self)
        prefix: str = self.application.prefix  # type: ignore[attr-defined]
        page = self.cache.pages.get(prefix)
        if page is None:
            page = self.cache.pages[prefix] = render_page(prefix, self.memwatch.options.interval_ms)
        # The first data in the page, so it shows numbers before its first
        # poll (what GET api/summary and the timeline's first window answer).
        initial = {"summary": self.memwatch.summary(),
                   "timeline": timeline_answer(self.memwatch, WINDOWS_S[0][1], None, 1500)}
        page = page.replace(INITIAL_PLACEHOLDER, render_json(initial).decode().replace("</", "<\\/"), 1)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy", "frame-ancestors 'none'")
        self.finish(page)


class TimelineHandler(JSONHandler):
    """ ``api/dashboard/timeline``: the window's history as columns. """

    def get(self) -> None:
        no_query_args(self, ("window_s", "since", "max_points"))
        window_s = int_arg(self, "window_s", 900, lo=1, hi=MAX_WINDOW_S)
        max_points = int_arg(self, "max_points", 1500, lo=1, hi=MAX_SAMPLES_READ)
        since = float_arg(self, "since")
        self.write_json(timeline_answer(self.memwatch, window_s, since, max_points))


def timeline_answer(memwatch: Monitor, window_s: int, since: float | None, max_points: int) -> dict[str, Any]:
    """ ``api/dashboard/timeline``'s answer: the last ``window_s`` seconds
    (after ``since``, unix seconds) of history as columns of at most
    ``max_points`` values. """
    now = time.time()
    start = now - window_s if since is None else max(since, now - window_s)
    store = memwatch.store
    columns = store.columns(TIMELINE_FIELDS, since=start, max_points=max_points, peak_fields=_PEAK_FIELDS)
    return {
        "now": now,
        "window_s": window_s,
        "samples": store.count(since=start),
        "points": len(columns["t"]),
        "interval_ms": memwatch.options.interval_ms,
        "columns": columns,
    }
