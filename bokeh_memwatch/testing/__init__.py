""" Testing helpers: a real Bokeh server with memwatch in a background thread
(``server``: :class:`ServerThread`, :func:`client_session`), and the
leak-check driver behind ``bokeh-memwatch check`` and the pytest plugin
(``leakcheck``). """
from __future__ import annotations

from .server import ServerThread, client_session

__all__ = ("ServerThread", "client_session")
