"""Panel app leaking per-session Bokeh models (not the Document) via a shared widget.

A Select created once per process (``tests.apps.holders.GLOBAL_SELECT``) is
shown in every session, and every session registers a ``param.watch``
callback on it whose closure holds that session's ColumnDataSource and its
10k-float arrays. When the session ends Panel drops the Select's per-session
Bokeh model and Bokeh destroys the Document, which is freed; the watchers stay
on the shared widget:

    tests.apps.holders.GLOBAL_SELECT -> its param watchers -> ``on_curve``
    closure -> cell ``source`` (ColumnDataSource) and cells ``x``, ``curves``
    (numpy arrays, about 320 kB per session)

Note that ``Document.destroy`` calls ``Model.destroy`` on every model, which
clears its properties: right after the session the retained
ColumnDataSource has no ``name`` and empty ``data`` (the arrays are still
held, by the closure). As soon as anyone changes the shared widget, e.g.
``holders.GLOBAL_SELECT.value = "cos"`` (another user, or a test), every dead
session's watcher runs and refills its ColumnDataSource with 10k rows.

Release with ``holders.reset()`` (drops the widget and its watchers).

Serve with ``panel serve tests/apps/panel_leak_models.py``.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

# See leak_global.py: import the holder by its stable package name.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from tests.apps import holders  # noqa: E402

N_ROWS = 10_000


def build() -> pn.viewable.Viewable:
    """One session's page: the shared Select driving this session's figure."""
    select = holders.global_select()
    x = np.linspace(0.0, 10.0, N_ROWS)
    curves = {
        "sin": np.sin(x),
        "cos": np.cos(x),
        "damped": np.exp(-x / 5.0) * np.sin(3.0 * x),
    }
    source = ColumnDataSource(data={"x": x, "y": curves[select.value]}, name="panel_leak_source")
    plot = figure(title="panel_leak_models", height=300, width=600)
    plot.line("x", "y", source=source)

    # Only closure cells are used: Bokeh clears this script's globals when the
    # session ends, and this callback outlives it.
    def on_curve(event: object) -> None:
        source.data = {"x": x, "y": curves[getattr(event, "new", "sin")]}

    # The leak: a watcher on a process-wide widget, never unwatched.
    select.param.watch(on_curve, "value")
    return pn.Column(select, pn.pane.Bokeh(plot))


pn.extension()
build().servable()
