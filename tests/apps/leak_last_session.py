"""Bounded leak: keeps only the most recent session's Document.

Holder: ``tests.apps.holders.LAST``. Each new session replaces the previous
Document, so at most one is retained after all sessions end. Release with
``holders.reset()``.

After the session, Bokeh's ``Document.destroy`` has emptied the retained
Document (roots and models deleted, each model's properties cleared), so its
ColumnDataSource is freed: only the Document object itself is leaked.

Serve with ``bokeh serve tests/apps/leak_last_session.py``.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from bokeh.io import curdoc
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

# See leak_global.py: import the holder by its stable package name.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from tests.apps import holders  # noqa: E402

N_ROWS = 1000


def build() -> None:
    """Add a plot to the current Document and remember it as "the" Document."""
    doc = curdoc()
    x = np.linspace(0.0, 4.0 * np.pi, N_ROWS)
    source = ColumnDataSource(data={"x": x, "y": np.cos(x)}, name="leak_last_source")
    plot = figure(title="leak_last_session", height=300, width=600)
    plot.line("x", "y", source=source)
    doc.add_root(plot)
    # The leak: a single-slot "current document" global, written per session.
    holders.LAST = doc


build()
