""" Panel plugin: ``panel serve app.py --plugins bokeh_memwatch.panel``.

Panel imports this module and mounts its ``ROUTES`` (under ``--prefix``);
with ``--admin``, Panel's ``/admin`` page gets a "Memory" tab
(:mod:`bokeh_memwatch.ui.panel_admin`, through ``pn.config.admin_plugins``).
Panel gives a plugin nothing else, so memwatch attaches itself to the server
when Bokeh starts it (in every worker with ``--num-procs``), instruments its
applications and starts sampling.  Options come from ``BOKEH_MEMWATCH_*``
environment variables, e.g. ``BOKEH_MEMWATCH_INTERVAL_MS=1000``.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._bokeh_internals import on_tornado_start
from .memwatch import MemWatch
from .options import options_from_env
from .ui.panel_admin import install as install_admin_tab

if TYPE_CHECKING:
    from bokeh.server.tornado import BokehTornado

log = logging.getLogger(__name__)

__all__ = ("MEMWATCH", "ROUTES")

MEMWATCH = MemWatch(**options_from_env())
ROUTES: list[tuple[str, type, dict[str, Any]]] = MEMWATCH.patterns()


def _mounted(app: BokehTornado) -> bool:
    return any(
        getattr(rule, "target_kwargs", {}).get("memwatch") is MEMWATCH
        for rule in app.wildcard_router.rules
    )


def _attach(app: BokehTornado) -> None:
    if _mounted(app):
        MEMWATCH.attach(app)


on_tornado_start(_attach)

install_admin_tab(MEMWATCH)
