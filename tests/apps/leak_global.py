"""Leaks every session's Document into a module-level list.

Holder: ``tests.apps.holders.DOCS[i]`` (one Document per session, never
removed). Release with ``holders.reset()``.

After the session, Bokeh's ``Document.destroy`` has emptied the retained
Document (roots and models deleted, each model's properties cleared), so its
ColumnDataSource is freed: only the Document object itself is leaked.

Serve with ``bokeh serve tests/apps/leak_global.py``.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from bokeh.io import curdoc
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

# Bokeh runs this file as a throwaway bokeh_app_<uuid> module; the holder must
# be a stable module, shared by all sessions, so import it by its package name.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from tests.apps import holders  # noqa: E402

N_ROWS = 1000


def build() -> None:
    """Add a plot to the current Document, then cache the Document globally."""
    doc = curdoc()
    x = np.linspace(0.0, 4.0 * np.pi, N_ROWS)
    source = ColumnDataSource(data={"x": x, "y": np.sin(x)}, name="leak_global_source")
    plot = figure(title="leak_global", height=300, width=600)
    plot.line("x", "y", source=source)
    doc.add_root(plot)
    # The leak: a "cache" of documents that nothing ever prunes.
    holders.DOCS.append(doc)


build()
