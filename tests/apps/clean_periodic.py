"""Clean Bokeh app that does everything right (issue 12, input 1).

A periodic callback every 50 ms (``doc.add_periodic_callback``), a button
callback, a worker thread stopped from ``doc.on_session_destroyed`` and a
feed subscription removed there.  Nothing outlives the session, but Bokeh's
stopped periodic callback keeps its last sleep, whose closure holds the
Document, until that sleep is due: a collection at destroy time cannot free
it, the next one can.

Serve with ``bokeh serve tests/apps/clean_periodic.py``.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any

from bokeh.document import Document
from bokeh.io import curdoc
from bokeh.layouts import column
from bokeh.models.widgets import Button, Div

# See leak_global.py: import the holder by its stable package name.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
from tests.apps import holders  # noqa: E402


def build(doc: Document) -> None:
    div = Div(text="0")
    button = Button(label="reset")
    state: dict[str, Any] = {"ticks": 0, "feed": 0}
    stop = threading.Event()

    def tick() -> None:
        state["ticks"] += 1
        div.text = f"{state['ticks']} ticks, feed {state['feed']}"

    def on_click() -> None:
        state["ticks"] = 0

    def on_feed(value: int) -> None:
        state["feed"] = value

    def work() -> None:
        while not stop.wait(0.05):
            pass

    worker = threading.Thread(target=work, name="clean-periodic-worker", daemon=True)
    worker.start()
    holders.FEED.append(on_feed)

    def cleanup(session_context: Any) -> None:
        stop.set()
        worker.join(5)
        holders.FEED.remove(on_feed)

    button.on_click(on_click)
    doc.add_periodic_callback(tick, 50)
    doc.on_session_destroyed(cleanup)
    doc.add_root(column(button, div))


build(curdoc())
