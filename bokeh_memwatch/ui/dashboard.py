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

Over 400 lines: the page's layout and its handlers; issue 14 reshapes this
module, so it is moved here as it is.
"""
from __future__ import annotations

import html
import importlib.resources
import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import (
    BasicTicker,
    ColumnDataSource,
    CustomJS,
    CustomJSTickFormatter,
    DataRange1d,
    DatetimeTickFormatter,
    HoverTool,
    InlineStyleSheet,
)
from bokeh.models.widgets import (
    Button,
    CheckboxGroup,
    DataTable,
    Div,
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

if TYPE_CHECKING:
    from bokeh.models import LayoutDOM

    from ..monitor import Monitor

log = logging.getLogger(__name__)

__all__ = (
    "TIMELINE_FIELDS",
    "DashboardHandler",
    "PageCache",
    "TimelineHandler",
    "downsample",
    "render_page",
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
    "data_bytes",
    "sessions_created_total",
    "sessions_destroyed_total",
)

#: Within a bucket of samples these keep the largest value (a spike stays
#: visible); the others (time, cumulative counters) keep the last one.
_PEAK_FIELDS = frozenset({"rss_bytes", "traced_bytes", "sessions", "documents", "orphans",
                          "pending_orphans", "models_retained", "data_bytes"})

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


def _resources(prefix: str) -> Resources:
    """ BokehJS from this server, as ``BokehTornado.resources()`` builds it
    (root-relative), whatever ``BOKEH_RESOURCES`` says the apps use. """
    if settings.resources(default="server") == "server-dev":
        return Resources(mode="server-dev", root_url=f"{prefix}/", path_versioner=StaticHandler.append_version)
    return Resources(mode="server", root_url=f"{prefix}/", path_versioner=StaticHandler.append_version)


def _stat(name: str, label: str) -> Div:
    return Div(name=name, text=f"<div class='mw-stat-label'>{html.escape(label)}</div>"
               "<div class='mw-stat-value'>…</div>", css_classes=["mw-stat"], width=150)


def _table(name: str, columns: list[TableColumn], fields: tuple[str, ...],
           *, index: bool = False) -> tuple[ColumnDataSource, DataTable]:
    """ A sortable table; ``dashboard.js`` sizes it to its rows. """
    source = ColumnDataSource(data={f: [] for f in fields}, name=f"{name}_source")
    table = DataTable(source=source, columns=columns, name=f"{name}_table", height=58,
                      sizing_mode="stretch_width", index_position=0 if index else None,
                      sortable=True, selectable=True, reorderable=False)
    return source, table


def _mb(field: str, title: str, width: int = 80, *, digits: int = 2) -> TableColumn:
    """ Megabytes (10**6 bytes); ``digits`` 3 shows kilobytes too. """
    return TableColumn(field=field, title=title, width=width,
                       formatter=NumberFormatter(format="0,0." + "0" * digits))


def _int(field: str, title: str, width: int = 70) -> TableColumn:
    return TableColumn(field=field, title=title, width=width, formatter=NumberFormatter(format="0,0"))


def _text(field: str, title: str, width: int = 120) -> TableColumn:
    return TableColumn(field=field, title=title, width=width, formatter=StringFormatter())


def _duration(field: str, title: str, width: int = 80) -> TableColumn:
    return TableColumn(field=field, title=title, width=width, formatter=NumberFormatter(format="00:00:00"))


def _call(method: str, *args: str) -> CustomJS:
    """ A CustomJS that calls ``window.memwatchDashboard.<method>(...)``. """
    arguments = ", ".join(f"cb_obj.{a}" for a in args)
    return CustomJS(code=f"if (window.memwatchDashboard) window.memwatchDashboard.{method}({arguments});")


def _section(title: str, subtitle: str = "") -> Div:
    sub = f"<span class='mw-sub'>{html.escape(subtitle)}</span>" if subtitle else ""
    return Div(text=f"<h2>{html.escape(title)}</h2>{sub}", sizing_mode="stretch_width", css_classes=["mw-section"])


def _timeline_plots() -> list[LayoutDOM]:
    source = ColumnDataSource(
        data={k: [] for k in ("t", "rss_mb", "traced_mb", "sessions", "documents", "orphans",
                              "models_retained", "opened", "closed", "width")},
        name="timeline_source",
    )
    tools = "xpan,xwheel_zoom,reset,save"
    memory = figure(name="memory_plot", title="Memory (MB)", height=270, sizing_mode="stretch_width",
                    x_axis_type="datetime", tools=tools, toolbar_location="right")
    memory.line("t", "rss_mb", source=source, line_width=2, color="#1f77b4", legend_label="RSS: resident memory")
    memory.line("t", "traced_mb", source=source, line_width=2, color="#ff7f0e",
                legend_label="traced by tracemalloc")
    memory.yaxis.axis_label = "MB"
    # Zoomed on the data, so growth shows; but never magnify less than 10 MB of noise.
    memory.y_range = DataRange1d(min_interval=10, range_padding=0.2, name="memory_range")
    memory.add_tools(HoverTool(tooltips=[("time", "@t{%H:%M:%S}"), ("RSS", "@rss_mb{0,0.0} MB"),
                                         ("traced", "@traced_mb{0,0.0} MB")],
                               formatters={"@t": "datetime"}, mode="vline"))

    counts = figure(name="counts_plot", title="Live sessions, Documents and orphans (count)",
                    height=250, sizing_mode="stretch_width", x_axis_type="datetime", x_range=memory.x_range,
                    tools=tools, toolbar_location="right")
    lines = [
        ("live sessions", "sessions", "#2ca02c", "solid"),
        ("alive Documents", "documents", "#1f77b4", "solid"),
        ("orphaned Documents", "orphans", "#d62728", "solid"),
        ("Models retained without their Document", "models_retained", "#9467bd", "dashed"),
    ]
    for label, field, color, dash in lines:
        counts.step(x="t", y=field, source=source, line_width=2, color=color, line_dash=dash, mode="after",
                    legend_label=label)
    counts.yaxis.axis_label = "count"
    counts.y_range.start = 0  # type: ignore[attr-defined]
    counts.add_tools(HoverTool(tooltips=[("time", "@t{%H:%M:%S}"), ("sessions", "@sessions"),
                                         ("Documents", "@documents"), ("orphans", "@orphans")],
                               formatters={"@t": "datetime"}, mode="vline"))

    activity = figure(name="activity_plot", title="Sessions opened (up) and closed (down) per sample",
                      height=190, sizing_mode="stretch_width", x_axis_type="datetime", x_range=memory.x_range,
                      tools=tools, toolbar_location="right")
    activity.vbar(x="t", top="opened", width="width", source=source, color="#2ca02c", alpha=0.6,
                  legend_label="opened")
    activity.vbar(x="t", top="closed", width="width", source=source, color="#7f7f7f", alpha=0.6,
                  legend_label="closed")
    activity.yaxis.axis_label = "sessions"
    activity.yaxis.formatter = CustomJSTickFormatter(code="return Math.abs(tick).toString();")
    activity.yaxis.ticker = BasicTicker(min_interval=1, desired_num_ticks=4)
    counts.yaxis.ticker = BasicTicker(min_interval=1)

    for plot in (memory, counts, activity):
        plot.xaxis.formatter = DatetimeTickFormatter(minutes="%H:%M", hours="%H:%M", seconds="%H:%M:%S",
                                                     minsec="%H:%M:%S")
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
        plot.min_border_left = 60  # the same for all three, so their time axes line up
    activity.xaxis.axis_label = "local time"
    return [memory, counts, activity]


def build_layout(poll_ms: int) -> LayoutDOM:
    """ The page's Bokeh layout; ``dashboard.js`` finds its models by name. """
    header = Div(name="header", sizing_mode="stretch_width", css_classes=["mw-header"], text=(
        "<h1>memwatch</h1><span class='mw-sub'>memory of this Bokeh server process, "
        f"refreshed every {poll_ms / 1000:g} s</span>"))
    status = Div(name="status", text="loading…", sizing_mode="stretch_width", css_classes=["mw-status"])
    verdict = Div(name="verdict", text="", sizing_mode="stretch_width", css_classes=["mw-verdict"])
    stats = row(
        _stat("stat_rss", "RSS (MB)"), _stat("stat_traced", "traced (MB)"), _stat("stat_sessions", "live sessions"),
        _stat("stat_documents", "alive Documents"), _stat("stat_orphans", "orphaned Documents (proven)"),
        _stat("stat_retained", "Models retained without their Document"),
        _stat("stat_pending", "closed sessions not judged yet"),
        sizing_mode="stretch_width",
    )
    window = RadioButtonGroup(name="window", labels=[label for label, _ in WINDOWS_S], active=0)
    window.js_on_change("active", _call("setWindow", "active"))

    _, apps_table = _table("apps", [
        _text("app", "app", 160), _int("sessions", "live sessions"), _int("connections", "connections"),
        _int("documents", "Documents"), _int("models", "Models"), _mb("data_mb", "data (MB)"),
        _int("orphans", "orphans"), _int("models_retained", "Models w/o Document"),
    ], ("app", "sessions", "connections", "documents", "models", "data_mb", "orphans", "models_retained"))

    _, sessions_table = _table("sessions", [
        _mb("data_mb", "data (MB)"), _int("models", "Models"), _int("documents", "Documents"),
        _text("app", "app", 120), _text("id", "session", 300), _int("connections", "connections"),
        _duration("age_s", "age (h:mm:ss)", 100),
    ], ("id", "app", "connections", "age_s", "documents", "models", "data_mb"))
    sessions_empty = Div(name="sessions_empty", text="", css_classes=["mw-empty"])

    _, orphans_table = _table("orphans", [
        _text("kind", "what is alive", 190), _text("app", "app", 110), _text("session_id", "session", 300),
        _text("destroyed", "session destroyed at", 140), _duration("ago_s", "ago (h:mm:ss)", 90),
        _int("models", "Models"), _mb("data_mb", "data (MB)"), _text("status", "status", 170),
    ], ("kind", "app", "session_id", "destroyed", "ago_s", "models", "data_mb", "status"))
    why = Button(name="why_alive", label="Why alive? (selected row, else the first)", button_type="warning",
                 width=300)
    why.js_on_click(_call("whyAlive"))
    gc_button = Button(name="gc", label="Run garbage collection now", width=220)
    gc_button.js_on_click(_call("collectGarbage"))
    orphans_empty = Div(name="orphans_empty", text="", css_classes=["mw-empty"])
    chain = Div(name="chain", text="", sizing_mode="stretch_width", css_classes=["mw-chain"])

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
        _text("where", "where allocated", 420), _mb("size_mb", "size (MB)", digits=3),
        _int("count", "blocks", 80), _mb("diff_mb", "change since baseline (MB)", 120, digits=3),
    ], ("where", "size_mb", "count", "diff_mb"))

    types_status = Div(name="types_status", text="Not summarized yet: this walks the whole heap (seconds on a "
                       "large server), so it runs only when asked.", sizing_mode="stretch_width")
    types_button = Button(name="types_refresh", label="Summarize types now", width=180)
    types_button.js_on_click(_call("refreshTypes"))
    _, types_table = _table("types", [
        _text("type", "type", 300), _int("count", "objects", 90), _mb("size_mb", "size (MB)", digits=3),
    ], ("type", "count", "size_mb"))

    census_parts = _census_block()
    settings_div = Div(name="settings", text="", sizing_mode="stretch_width", css_classes=["mw-settings"])
    advice_div = Div(name="advice", text="no advice yet", sizing_mode="stretch_width", css_classes=["mw-advice"])

    return column(
        header, status, verdict, stats,
        _section("Timeline", "since the server started; drag or scroll to zoom, click a legend entry to hide"),
        window, *_timeline_plots(),
        _section("Applications", "live counts per app path"),
        apps_table,
        _section("Sessions", "live sessions, heaviest first; click a column title to sort"),
        sessions_empty, sessions_table,
        _section("Orphans", "destroyed sessions whose Document (or some of its Models) is still alive: a leak"),
        orphans_empty, orphans_table, row(why, gc_button), chain,
        *census_parts,
        _section("Advice", "the memory checklist, checked against what this server does"),
        advice_div,
        _section("Top allocators", "tracemalloc: where the memory still allocated was allocated"),
        alloc_status, row(alloc_start, alloc_group, alloc_compare, alloc_baseline, alloc_refresh), alloc_table,
        _section("Types", "pympler summary: live objects per type"),
        types_status, types_button, types_table,
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
        _mb("mb_per_session", "MB per closed session (shallow)", 170, digits=3), _int("count", "alive", 80),
        _text("holder", "held by (one instance)", 520),
    ], ("type", "per_session", "mb_per_session", "count", "holder"))
    return [
        _section("Types growing with closed sessions",
                 "census of what a full collection keeps, by type, in a forked child: Panel/param objects, "
                 "DataFrames and arrays that outlive sessions without their Document"),
        status, button, table,
    ]


_STYLE = """
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
         padding: 8px 20px 40px; max-width: 1400px; color: #222; }
</style>
"""

#: Blocks of Bokeh's FILE template (``file_html`` adds ``{% extends base %}``).
_TEMPLATE = """
{% block preamble %}<link rel="icon" href="data:,">{% endblock %}
{% block postamble %}""" + _STYLE + """{% endblock %}
{% block inner_body %}
{{ super() }}
<script type="application/json" id="memwatch-config">{{ config_json }}</script>
<script type="text/javascript">{{ dashboard_js }}</script>
{% endblock %}
"""

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
:host(.mw-empty) { color: #2e7d32; font-style: italic; }
:host(.mw-chain) ol { margin: 4px 0; padding-left: 22px; }
:host(.mw-chain) code, :host(.mw-settings) code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; }
:host(.mw-settings) table { border-collapse: collapse; font-size: 13px; }
:host(.mw-settings) td { padding: 1px 10px 1px 0; vertical-align: top; }
:host(.mw-verdict) { font-size: 15px; }
:host(.mw-advice) .mw-advice-item { margin: 6px 0; font-size: 13px; line-height: 1.4; }
:host(.mw-advice) code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; }
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
    config = {"poll_ms": poll_ms, "windows_s": [w for _, w in WINDOWS_S], "interval_ms": interval_ms}
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
        now = time.time()
        start = now - window_s if since is None else max(since, now - window_s)
        store = self.memwatch.store
        columns = store.columns(TIMELINE_FIELDS, since=start, max_points=max_points, peak_fields=_PEAK_FIELDS)
        self.write_json({
            "now": now,
            "window_s": window_s,
            "samples": store.count(since=start),
            "points": len(columns["t"]),
            "interval_ms": self.memwatch.options.interval_ms,
            "columns": columns,
        })
