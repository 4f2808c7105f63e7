"""Leaks each session's Document into a tornado PeriodicCallback never stopped.

Holder: the IOLoop's scheduled timer -> ``PeriodicCallback._run`` ->
``PeriodicCallback.callback`` (the ``heartbeat`` closure) -> cell ``doc``.
``holders.CALLBACKS`` is only a WeakSet so tests can find and stop the
callbacks with ``holders.stop_all()`` / ``holders.reset()``; it holds nothing.

After the session, Bokeh's ``Document.destroy`` has emptied the retained
Document (roots and models deleted, each model's properties cleared), so its
ColumnDataSource is freed: only the Document object itself is leaked.

Serve with ``bokeh serve tests/apps/leak_callback.py``.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from bokeh.document import Document
from bokeh.io import curdoc
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure
from tornado.ioloop import PeriodicCallback

# See leak_global.py: import the holder by its stable package name.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from tests.apps import holders  # noqa: E402

N_ROWS = 1000
HEARTBEAT_INTERVAL_MS = 1_000  # re-arms itself: held by its timer, then proven an orphan


def start_heartbeat(doc: Document, interval_ms: int) -> PeriodicCallback:
    """Start a per-session heartbeat on the server's loop and never stop it.

    The right place would be ``doc.add_periodic_callback`` (removed with the
    session) or a ``doc.on_session_destroyed`` hook calling ``stop()``.
    Everything ``heartbeat`` uses is a closure cell because Bokeh clears this
    script's module globals when the session ends.
    """
    ticks = 0
    title = ""

    def heartbeat() -> None:
        nonlocal ticks, title
        ticks += 1
        title = doc.title

    callback = PeriodicCallback(heartbeat, interval_ms)
    callback.start()  # binds to IOLoop.current(): the server's loop
    holders.CALLBACKS.add(callback)
    return callback


def build() -> None:
    """Add a plot to the current Document and start its heartbeat."""
    doc = curdoc()
    x = np.linspace(0.0, 4.0 * np.pi, N_ROWS)
    source = ColumnDataSource(data={"x": x, "y": np.cos(2.0 * x)}, name="leak_callback_source")
    plot = figure(title="leak_callback", height=300, width=600)
    plot.line("x", "y", source=source)
    doc.add_root(plot)
    start_heartbeat(doc, HEARTBEAT_INTERVAL_MS)


build()
