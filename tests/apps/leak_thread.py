"""Leaks each session's Document into a daemon thread that never ends.

Holder: the running thread ``leaky-worker-<n>``; its target ``poll`` is a
closure whose cell holds the Document (thread -> frame of ``poll`` -> cell
``doc``). Stop the threads with ``holders.STOP.set()`` or
``holders.stop_threads()`` / ``holders.reset()``.

After the session, Bokeh's ``Document.destroy`` has emptied the retained
Document (roots and models deleted, each model's properties cleared), so its
ColumnDataSource is freed: only the Document object itself is leaked.

Serve with ``bokeh serve tests/apps/leak_thread.py``.
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import numpy as np
from bokeh.document import Document
from bokeh.io import curdoc
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

# See leak_global.py: import the holder by its stable package name.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from tests.apps import holders  # noqa: E402

N_ROWS = 1000
POLL_INTERVAL_S = 0.25


def start_worker(doc: Document, stop: threading.Event, poll_interval_s: float) -> threading.Thread:
    """Start a background refresher for *doc* that never notices the session ended.

    Everything ``poll`` uses is a closure cell: Bokeh clears this script's
    module globals when the session ends, and the thread keeps running after.
    """
    pending: list[Callable[[], None]] = []

    def poll() -> None:
        # Meant to push results into the page; it only stops when STOP is set.
        while not stop.wait(poll_interval_s):
            if pending:
                doc.add_next_tick_callback(pending.pop())

    thread = threading.Thread(target=poll, name=holders.next_worker_name(), daemon=True)
    thread.start()
    return thread


def build() -> None:
    """Add a plot to the current Document and start its worker thread."""
    doc = curdoc()
    x = np.linspace(0.0, 4.0 * np.pi, N_ROWS)
    source = ColumnDataSource(data={"x": x, "y": np.sin(2.0 * x)}, name="leak_thread_source")
    plot = figure(title="leak_thread", height=300, width=600)
    plot.line("x", "y", source=source)
    doc.add_root(plot)
    start_worker(doc, holders.STOP, POLL_INTERVAL_S)


build()
