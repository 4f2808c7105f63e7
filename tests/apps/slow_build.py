"""A clean app whose sessions take seconds to build (a stand-in for a
HoloViews/datashader app): the build sleeps ``SLOW_BUILD_S`` seconds (env
``SLOW_BUILD_S``, default 4) on the server's loop, as heavy plotting code
does.  Nothing outlives a session.

Serve with ``bokeh serve tests/apps/slow_build.py``.
"""
from __future__ import annotations

import os
import time

import numpy as np
from bokeh.io import curdoc
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

BUILD_S = float(os.environ.get("SLOW_BUILD_S", "4"))


def build() -> None:
    """Spend ``BUILD_S`` seconds (blocking, like a datashader render), then add a plot."""
    time.sleep(BUILD_S)
    x = np.linspace(0.0, 10.0, 1000)
    source = ColumnDataSource(data={"x": x, "y": np.sin(x)}, name="slow_build_source")
    plot = figure(title="slow_build", height=300, width=600)
    plot.line("x", "y", source=source)
    curdoc().add_root(plot)


build()
