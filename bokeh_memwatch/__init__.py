""" bokeh_memwatch: find what keeps Bokeh and Panel server memory alive.

Mount it into any Bokeh server (``bokeh-memwatch serve``, the Panel plugin
``bokeh_memwatch.panel``, or :func:`memwatch_server` / :class:`MemWatch` for
embedded servers) and ask ``{prefix}/memwatch/api/`` how many sessions,
Documents and Models are alive, which Documents outlived their session, and
what keeps each one alive.
"""
from __future__ import annotations

from ._version import __version__
from .memwatch import MemWatch
from .options import MemwatchOptions, options_from_env
from .server import memwatch_server

__all__ = (
    "MemWatch",
    "MemwatchOptions",
    "__version__",
    "memwatch_server",
    "options_from_env",
)
