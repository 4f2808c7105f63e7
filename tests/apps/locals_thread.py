"""Each session's Document is a local of a thread that keeps a ``locals()`` dict.

Holder: the ``locals-watcher`` thread's frame (local ``doc``); see
``tests.apps.host_probe.start_locals_watcher``.  Stop with
``host_probe.reset()``.
"""
from __future__ import annotations

import os
import sys

from bokeh.io import curdoc
from bokeh.models.widgets import Div

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from tests.apps import host_probe  # noqa: E402

curdoc().add_root(Div(text="locals_thread"))
host_probe.start_locals_watcher(curdoc())
