"""Leaks the session's Document only when the session was opened with the
argument ``leak`` (``?leak=1``, or ``pull_session(arguments={"leak": "1"})``),
so one session id can be an orphan on one worker and collected on another.

Holder: ``tests.apps.holders.DOCS[i]``.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from bokeh.io import curdoc
from bokeh.models.widgets import Div

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from tests.apps import holders  # noqa: E402

doc = curdoc()
doc.add_root(Div(text="leak_if_asked"))
context: Any = doc.session_context  # a BokehSessionContext on the server
if context is not None and "leak" in context.request.arguments:
    holders.DOCS.append(doc)
