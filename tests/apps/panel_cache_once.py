"""Clean Panel app with a shared cache: the first session makes a ~2 MB
DataFrame (``tests.apps.prefs.CACHE``), every later session shows the same
one in a Tabulator of its own.  Memory is held once, not per session: a
bounded cache, not a leak.

Serve with ``panel serve tests/apps/panel_cache_once.py``.
"""
from __future__ import annotations

import os
import sys

import panel as pn

# See leak_global.py: import the holder by its stable package name.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from tests.apps import prefs  # noqa: E402

pn.extension("tabulator")
pn.widgets.Tabulator(prefs.cached_frame(), page_size=20).servable()
