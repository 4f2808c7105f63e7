"""Panel leak with no Document and no Model left: a shared preference.

Every session serves a Tabulator of a fresh ~2 MB DataFrame whose
``page_size`` follows the process-wide ``tests.apps.prefs.PREFS``.  Passing
``PREFS.param.page_size`` links the widget to ``PREFS`` both ways, and the
link outlives the session: ``PREFS`` keeps each session's Tabulator and
DataFrame.  Panel detaches the Bokeh Models at cleanup and Bokeh frees the
Document, so only Panel/param objects and data are left.

Serve with ``panel serve tests/apps/panel_leak_prefs.py``.
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
pn.widgets.Tabulator(prefs.frame(), page_size=prefs.PREFS.param.page_size).servable()
