"""Clean Panel app: the same page as panel_leak_models.py without the leak.

Each session gets its own Select, so the ``param.watch`` callback (and the
ColumnDataSource its closure holds) belongs to objects that die with the
session.

Serve with ``panel serve tests/apps/panel_clean.py``.
"""
from __future__ import annotations

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

N_ROWS = 10_000
CURVES = ("sin", "cos", "damped")


def build() -> pn.viewable.Viewable:
    """One session's page: a per-session Select driving a Bokeh figure."""
    select = pn.widgets.Select(name="Curve", options=list(CURVES), value=CURVES[0])
    x = np.linspace(0.0, 10.0, N_ROWS)
    curves = {
        "sin": np.sin(x),
        "cos": np.cos(x),
        "damped": np.exp(-x / 5.0) * np.sin(3.0 * x),
    }
    source = ColumnDataSource(data={"x": x, "y": curves[select.value]}, name="panel_clean_source")
    plot = figure(title="panel_clean", height=300, width=600)
    plot.line("x", "y", source=source)

    def on_curve(event: object) -> None:
        source.data = {"x": x, "y": curves[getattr(event, "new", "sin")]}

    # The watcher lives on this session's own Select, so it dies with the session.
    select.param.watch(on_curve, "value")
    return pn.Column(select, pn.pane.Bokeh(plot))


pn.extension()
build().servable()
