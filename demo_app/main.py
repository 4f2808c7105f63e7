"""bokeh_memwatch demo: a small dashboard that can leak its session on purpose.

Serve with ``bokeh serve demo_app`` (from anywhere) and open
``/demo_app``; pick a "Leak mode", close the tab, and look at ``/memwatch``.
Automated clients can preselect a mode with ``?leak=global|thread|callback``,
e.g. ``bokeh.client.pull_session(url=..., arguments={"leak": "global"})``.

The leaks themselves and their holders are in ``demo_app/leaks.py``.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
from bokeh.document import Document
from bokeh.io import curdoc
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource
from bokeh.models.widgets import Div, RadioButtonGroup, Select, Slider
from bokeh.plotting import figure

# Bokeh runs this file as a throwaway bokeh_app_<uuid> module per session; the
# leak holders must live in one stable module shared by every session, so
# import it by its package name with the app directory's parent on sys.path.
_APP_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "demo_app.leaks" not in sys.modules and _APP_PARENT not in sys.path:
    sys.path.insert(0, _APP_PARENT)
from demo_app import leaks  # noqa: E402

N_ROWS = 10_000
N_BINS = 40
DISTRIBUTIONS = ("normal", "uniform", "lognormal")
MODES = list(leaks.LEAK_MODES)  # button order: off, global, thread, callback

EXPLANATION = """
<b>Leak mode</b> makes <i>this</i> session leak, the way real apps do:
<ul>
<li><b>off</b>: nothing outlives the session (default).</li>
<li><b>global cache</b>: the Document and its data source are appended to
<code>demo_app.leaks.CACHE</code>, a module-level list nobody prunes.</li>
<li><b>thread</b>: a daemon thread whose closure holds the Document keeps
running after the tab is closed.</li>
<li><b>tornado callback</b>: a <code>tornado.ioloop.PeriodicCallback</code> whose
callback closes over the Document is started and never stopped.</li>
</ul>
Switching back to <b>off</b> does not undo a leak. Close the tab, wait for the
server to discard the session, then open <a href="/memwatch">/memwatch</a> to see
the orphaned Document and the reference chain that keeps it alive.
Preselect a mode with <code>?leak=global</code>, <code>thread</code> or <code>callback</code>.
"""


def make_data(distribution: str, noise: float, rng: np.random.Generator) -> dict[str, Any]:
    """10k (x, y) points: y = 2x + noise, x from the named distribution."""
    if distribution == "uniform":
        x = rng.uniform(-3.0, 3.0, N_ROWS)
    elif distribution == "lognormal":
        x = rng.lognormal(0.0, 0.5, N_ROWS)
    else:
        x = rng.normal(0.0, 1.0, N_ROWS)
    y = 2.0 * x + rng.normal(0.0, noise, N_ROWS)
    return {"x": x, "y": y}


def histogram(values: np.ndarray) -> dict[str, Any]:
    """Columns for a quad glyph over *values*."""
    counts, edges = np.histogram(values, bins=N_BINS)
    return {"top": counts, "left": edges[:-1], "right": edges[1:]}


def requested_mode(doc: Document) -> str:
    """The leak mode from ``?leak=...``; "off" when absent or unknown."""
    context: Any = doc.session_context  # a BokehSessionContext on the server
    request = context.request if context is not None else None
    arguments = request.arguments if request is not None else {}
    values = arguments.get("leak") or [b"off"]
    value = values[0]
    mode = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return mode if mode in leaks.LEAK_MODES else "off"


def build(doc: Document) -> None:
    """Lay out one session's dashboard on *doc*."""
    rng = np.random.default_rng(seed=0)
    data = make_data(DISTRIBUTIONS[0], 1.0, rng)
    source = ColumnDataSource(data=data, name="demo_points")
    hist_source = ColumnDataSource(data=histogram(data["y"]), name="demo_histogram")

    scatter = figure(title="y = 2x + noise (10k points)", height=350, width=450,
                     tools="pan,wheel_zoom,box_zoom,reset", output_backend="webgl")
    scatter.scatter("x", "y", source=source, size=3, alpha=0.3)
    hist = figure(title="Distribution of y", height=350, width=450, tools="")
    hist.quad(top="top", bottom=0, left="left", right="right", source=hist_source, alpha=0.6)

    options: list[Any] = list(DISTRIBUTIONS)
    distribution = Select(title="Distribution", value=DISTRIBUTIONS[0], options=options)
    noise = Slider(title="Noise", start=0.0, end=3.0, step=0.1, value=1.0)

    def refresh(attr: str, old: Any, new: Any) -> None:
        new_data = make_data(distribution.value, noise.value, rng)
        source.data = new_data
        hist_source.data = histogram(new_data["y"])

    distribution.on_change("value", refresh)
    noise.on_change("value", refresh)

    mode = requested_mode(doc)
    leak_mode = RadioButtonGroup(labels=list(leaks.LEAK_MODES.values()), active=MODES.index(mode))
    status = Div()
    applied: set[str] = set()
    session_id = doc.session_context.id if doc.session_context is not None else str(id(doc))

    def apply(mode: str) -> None:
        # Each leak is done at most once per session; "off" undoes nothing.
        if mode != "off" and mode not in applied:
            leaks.leak(mode, doc, source)
            applied.add(mode)
        leaks.ACTIVE_SESSIONS[session_id] = mode
        done = ", ".join(leaks.LEAK_MODES[m] for m in sorted(applied)) or "none"
        status.text = (f"Leak mode: <b>{leaks.LEAK_MODES[mode]}</b>; leaks done by this session: {done}; "
                       f"open sessions in this process: {len(leaks.ACTIVE_SESSIONS)}")

    def on_leak_mode(attr: str, old: int, new: int) -> None:
        apply(MODES[new])

    leak_mode.on_change("active", on_leak_mode)
    apply(mode)

    active_sessions = leaks.ACTIVE_SESSIONS

    def on_session_destroyed(session_context: Any) -> None:
        # Release what the app owns; the leaks are deliberately left alone.
        # Bokeh has already cleared this script's module globals when this
        # runs, so it may only use closure cells (hence ``active_sessions``).
        active_sessions.pop(session_id, None)
        applied.clear()

    doc.on_session_destroyed(on_session_destroyed)

    controls = column(distribution, noise, Div(text="<b>Leak mode</b>"), leak_mode, status,
                      Div(text=EXPLANATION, width=420))
    doc.add_root(row(controls, scatter, hist))
    doc.title = "bokeh_memwatch demo"


build(curdoc())
