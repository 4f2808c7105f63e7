"""Leaks each session's Document into a tornado PeriodicCallback that keeps
updating the session's ColumnDataSource after the session ended.

Holder: the IOLoop's scheduled timer -> ``PeriodicCallback._run`` ->
``PeriodicCallback.callback`` (the ``update`` closure) -> cells ``doc`` and
``source``.  ``holders.CALLBACKS`` is a WeakSet, for ``holders.stop_all()``.

Bokeh's ``Document.destroy`` clears every Model's properties, so right after
the session the retained ColumnDataSource holds no data; the next ``update``
sets ``source.data`` again: from then on each orphan holds exactly
``DATA_BYTES`` (2 float64 columns of ``N_ROWS``) in its ColumnDataSource.

Serve with ``bokeh serve tests/apps/leak_stream.py``.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from bokeh.io import curdoc
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure
from tornado.ioloop import PeriodicCallback

# See leak_global.py: import the holder by its stable package name.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from tests.apps import holders  # noqa: E402

N_ROWS = 10_000
DATA_BYTES = 2 * N_ROWS * 8
UPDATE_INTERVAL_MS = 200


def build() -> None:
    """Add a plot to the current Document and start its never-stopped updater."""
    doc = curdoc()
    x = np.linspace(0.0, 4.0 * np.pi, N_ROWS)
    y = np.sin(x)
    source = ColumnDataSource(data={"x": x, "y": y}, name="leak_stream_source")
    plot = figure(title="leak_stream", height=300, width=600)
    plot.line("x", "y", source=source)
    doc.add_root(plot)

    # Closure cells only: Bokeh clears this script's globals when the session ends.
    # While the session lives a change needs the document lock (Bokeh's
    # doc.add_next_tick_callback is the way); this updater only matters after
    # the destroy (session_context None), when it refills the cleared source.
    def update() -> None:
        if doc.session_context is not None:
            return
        source.data = {"x": x, "y": y}

    callback = PeriodicCallback(update, UPDATE_INTERVAL_MS)
    callback.start()  # the server's loop; never stopped: the leak
    holders.CALLBACKS.add(callback)


build()
