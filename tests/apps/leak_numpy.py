"""Leaks a 2 MB numpy array per session into a module-level list.

Holder: ``tests.apps.holders.ARRAYS`` (never emptied by the app). The array's
buffer is a native allocation (numpy's ``malloc``), made on the line marked
``LEAK_LINE`` below: the memray backend's tests expect that line at the top of
"growth since the baseline".

Serve with ``bokeh serve tests/apps/leak_numpy.py``.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from bokeh.io import curdoc
from bokeh.models.widgets.markups import Div

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from tests.apps import holders  # noqa: E402

ARRAY_BYTES = 2 * 1024 * 1024


def leak() -> None:
    rng = np.random.default_rng()
    holders.ARRAYS.append(rng.random(ARRAY_BYTES // 8))  # LEAK_LINE


leak()
curdoc().add_root(Div(text="leaks 2 MB"))
