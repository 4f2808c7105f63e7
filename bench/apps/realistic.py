""" A realistic Bokeh app for the benchmarks: three figures over one
ColumnDataSource of 10,000 rows per session, a histogram with its own source,
a hover tool, a Slider, a Select and a status Div.

The Slider's ``on_change`` callback updates the Div (and the 40-bin
histogram): the websocket round-trip benchmark sets the Slider from a client
and waits until the Div's new text comes back.  With the session argument
``leak=1`` the Document is also put in a module-level list
(``bench.apps.holder.LEAKED``), so it outlives its session: the chain-search
benchmark needs one such orphan.

Serve with ``bokeh serve bench/apps/realistic.py``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from bokeh.document import Document
from bokeh.io import curdoc
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.models.widgets import Div, Select, Slider
from bokeh.plotting import figure

N_ROWS = 10_000
N_BINS = 40


def status_text(frequency: float) -> str:
    """ The Div's text after the Slider moved to ``frequency`` (the client waits for it). """
    return f"frequency = {frequency:g}"


def build(doc: Document) -> None:
    """ Add the app's roots to ``doc``. """
    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 20.0 * np.pi, N_ROWS)
    y = np.sin(x)
    z = y + rng.normal(0.0, 0.3, N_ROWS)
    source = ColumnDataSource(
        data={"x": x, "y": y, "z": z, "size": rng.uniform(2.0, 8.0, N_ROWS)}, name="source",
    )
    counts, edges = np.histogram(z, bins=N_BINS)
    hist = ColumnDataSource(data={"left": edges[:-1], "right": edges[1:], "top": counts}, name="hist")

    line = figure(title="signal", height=250, width=500, tools="pan,wheel_zoom,box_zoom,reset")
    line.line("x", "y", source=source)
    scatter = figure(title="noisy", height=250, width=500, x_range=line.x_range)
    scatter.scatter("x", "z", size="size", source=source, alpha=0.4)
    scatter.add_tools(HoverTool(tooltips=[("x", "@x"), ("z", "@z")]))
    histogram = figure(title="histogram", height=250, width=500)
    histogram.quad(left="left", right="right", top="top", bottom=0, source=hist)

    slider = Slider(start=0.5, end=50.0, value=1.0, step=0.5, title="Frequency", name="frequency")
    functions: list[str | tuple[Any, str]] = ["sin", "cos"]
    select = Select(options=functions, value="sin", title="Function", name="function")
    status = Div(text=status_text(1.0), name="status")

    def on_frequency(attr: str, old: float, new: float) -> None:
        status.text = status_text(new)
        top, _ = np.histogram(np.sin(new * x[:2000]), bins=N_BINS)
        hist.data["top"] = top

    slider.on_change("value", on_frequency)
    doc.add_root(column(row(slider, select, status), line, scatter, histogram))

    request = getattr(doc.session_context, "request", None)  # a server session's HTTP request
    if request is not None and request.arguments.get("leak") == [b"1"]:
        from bench.apps import holder

        holder.LEAKED.append(doc)


if __name__.startswith("bokeh_app_"):
    build(curdoc())
