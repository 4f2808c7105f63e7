"""Leaks each session's Document into a buffering logging handler.

A realistic accident: the app logs the Document lazily (``log.info("...
%s", doc)``) to an "audit" logger whose ``logging.handlers.MemoryHandler``
has no target, so it never flushes; every ``LogRecord`` keeps its ``args``,
and with them the Document, for the life of the process.

Holder: the ``logging`` module's logger registry ->
``Logger('tests.apps.audit').handlers[0]`` (MemoryHandler) -> ``.buffer[i]``
(LogRecord) -> ``.args[0]`` -> Document.  Release with :func:`release`
(tests call it in teardown).

Serve with ``bokeh serve tests/apps/leak_logging.py``.
"""
from __future__ import annotations

import logging
import logging.handlers

import numpy as np
from bokeh.io import curdoc
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

AUDIT_LOGGER = "tests.apps.audit"
N_ROWS = 1000


def audit_log() -> logging.Logger:
    """The process-wide audit logger, with one never-flushing buffer (idempotent).

    The logger lives in ``logging``'s registry, which outlives this script's
    throwaway module, so every session shares it.
    """
    logger = logging.getLogger(AUDIT_LOGGER)
    if not any(isinstance(h, logging.handlers.MemoryHandler) for h in logger.handlers):
        # No target: MemoryHandler.flush() keeps the records when there is nowhere to send them.
        logger.addHandler(logging.handlers.MemoryHandler(capacity=1_000_000, flushLevel=logging.CRITICAL + 1))
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def release() -> None:
    """Drop the audit handlers and every record (and Document) they buffer."""
    logger = logging.getLogger(AUDIT_LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        if isinstance(handler, logging.handlers.MemoryHandler):
            handler.buffer.clear()
        handler.close()


def build() -> None:
    """Add a plot to the current Document and "audit" the new session."""
    doc = curdoc()
    x = np.linspace(0.0, 4.0 * np.pi, N_ROWS)
    source = ColumnDataSource(data={"x": x, "y": np.sin(3.0 * x)}, name="leak_logging_source")
    plot = figure(title="leak_logging", height=300, width=600)
    plot.line("x", "y", source=source)
    doc.add_root(plot)
    # The leak: lazy %-formatting keeps the Document in the record's args.
    audit_log().info("session started with document %s", doc)


build()
