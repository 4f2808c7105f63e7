"""Leaks every session's Document and a block of memory, so a worker's RSS
grows with the sessions it serves (the recycling tests' app).

Holders: ``tests.apps.holders.DOCS[i]`` (the Document, an orphan after the
session) and ``tests.apps.holders.RSS_BLOCKS[i]`` (``LEAK_RSS_BYTES`` bytes,
written so that they are resident; default 8 MiB).

Serve with ``bokeh-memwatch serve tests/apps/leak_rss.py``.
"""
from __future__ import annotations

import os
import sys

from bokeh.io import curdoc
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from tests.apps import holders  # noqa: E402

BLOCK_BYTES = int(os.environ.get("LEAK_RSS_BYTES", str(8 * 2**20)))


def build() -> None:
    doc = curdoc()
    source = ColumnDataSource(data={"x": [0, 1, 2], "y": [1, 0, 1]}, name="leak_rss_source")
    plot = figure(title="leak_rss", height=200, width=300)
    plot.line("x", "y", source=source)
    doc.add_root(plot)
    holders.DOCS.append(doc)
    blocks = holders.__dict__.setdefault("RSS_BLOCKS", [])
    blocks.append(bytearray(b"\x01") * BLOCK_BYTES)  # written: resident, not a lazy zero page


build()
