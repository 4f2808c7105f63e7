"""An app that cannot serve: its script raises in every session.

Bokeh logs the error and serves an empty page; ``bokeh-memwatch check``
must say the app served nothing (exit 2), not "clean".
"""
from __future__ import annotations

raise RuntimeError("broken on purpose: no session of this app can be built")
