"""Clean Bokeh app: nothing it creates outlives its session.

A figure over a 1000-row ColumnDataSource and a Slider whose callback
rewrites the source. The callback is registered on the slider, which belongs
to the session's Document, so it goes away with the Document.

Serve with ``bokeh serve tests/apps/clean.py``.
"""
from __future__ import annotations

import numpy as np
from bokeh.io import curdoc
from bokeh.layouts import column
from bokeh.models import ColumnDataSource
from bokeh.models.widgets import Slider
from bokeh.plotting import figure

N_ROWS = 1000


def build() -> None:
    """Add the app's roots to the current Document."""
    x = np.linspace(0.0, 4.0 * np.pi, N_ROWS)
    source = ColumnDataSource(data={"x": x, "y": np.sin(x)}, name="clean_source")
    plot = figure(title="clean", height=300, width=600)
    plot.line("x", "y", source=source)
    slider = Slider(start=0.5, end=5.0, value=1.0, step=0.5, title="Frequency")

    def on_frequency(attr: str, old: float, new: float) -> None:
        source.data = {"x": x, "y": np.sin(new * x)}

    slider.on_change("value", on_frequency)
    curdoc().add_root(column(slider, plot))


build()
