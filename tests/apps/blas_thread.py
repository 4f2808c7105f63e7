"""A numpy app with a busy OpenBLAS pool: a daemon thread multiplies 300x300
matrices without pause (issue 17), and each session's Document is kept in
``tests.apps.host_probe.LEAKED`` (an orphan to search chains for).

Serve with ``OPENBLAS_NUM_THREADS=4 bokeh serve tests/apps/blas_thread.py``.
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

curdoc().add_root(Div(text="blas_thread"))
host_probe.LEAKED.append(curdoc())
host_probe.start_blas_spinner()
