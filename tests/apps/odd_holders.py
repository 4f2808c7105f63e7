"""Each session's Document is held by an object that refuses to be looked at
(``tests.apps.host_probe.ODD``; see ``make_odd_holder``).  Release with
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

curdoc().add_root(Div(text="odd_holders"))
host_probe.make_odd_holder(curdoc())
