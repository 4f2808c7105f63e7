"""Leaks every session's Document into a logging handler that also breaks
later sessions.

A realistic accident: each page has a "log" Div; a process-wide logging
handler mirrors log lines into the Div of every session it has seen, "as
that session" (``invoke_with_curdoc``, so ``curdoc()`` is right inside the
update).  The handler keeps every Document forever (the leak), and once a
session is destroyed its Div is gone (``Document.destroy`` clears the
roots): the update raises inside Bokeh's ``patch_curdoc``, which then never
restores ``curdoc()``.  A session being built at that moment logs, so
Bokeh's check after the script finds "replaced the output document" and the
session fails.  Some sessions fail, all leak.

Holder: the ``logging`` module's registry -> ``Logger('tests.apps.panes')``
-> ``.handlers[0]`` (PaneHandler) -> ``.docs[i]`` -> Document.  Release with
:func:`release` (tests call it in teardown).

Serve with ``bokeh serve tests/apps/leak_log_panes.py``.
"""
from __future__ import annotations

import logging

from bokeh.document import Document
from bokeh.document.callbacks import invoke_with_curdoc
from bokeh.io import curdoc
from bokeh.models.widgets import Div

LOGGER = "tests.apps.panes"


class PaneHandler(logging.Handler):
    """Appends each record to the "log" Div of every Document it has seen."""

    def __init__(self) -> None:
        super().__init__()
        self.docs: list[Document] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        for doc in list(self.docs):
            def update(doc: Document = doc) -> None:
                pane = doc.get_model_by_name("log")
                pane.text += "<br>" + line  # type: ignore[union-attr]  # None once destroyed
            try:
                invoke_with_curdoc(doc, update)
            except Exception:  # a dead page: keep going (and keep the Document)
                continue


def pane_logger() -> logging.Logger:
    """The process-wide logger with its one PaneHandler (idempotent)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, PaneHandler) for h in logger.handlers):
        logger.addHandler(PaneHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def release() -> None:
    """Drop the handler and the Documents it holds."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        if isinstance(handler, PaneHandler):
            handler.docs.clear()


def build() -> None:
    doc = curdoc()
    doc.add_root(Div(name="log", text="log:"))
    logger = pane_logger()
    logger.info("new session")
    for handler in logger.handlers:
        if isinstance(handler, PaneHandler):
            handler.docs.append(doc)


build()
