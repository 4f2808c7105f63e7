"""A Div refreshed every 10 s by ``doc.add_periodic_callback`` (issue 12,
input 4).  Clean: Bokeh stops the callback at destroy, but its pending
sleep (``_AsyncPeriodic.stop()`` only sets a flag) keeps the Document alive
until that sleep is due, <= 10 s later; then it is garbage.

Serve with ``bokeh serve tests/apps/timer_refresh.py``.
"""
from __future__ import annotations

from bokeh.io import curdoc
from bokeh.models.widgets import Div

doc = curdoc()
div = Div(text="")


def refresh() -> None:
    div.text = "refreshed"


doc.add_root(div)
doc.add_periodic_callback(refresh, 10_000)
