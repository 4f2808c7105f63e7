""" ``bokeh-memwatch serve``.

``bokeh-memwatch serve APP... [any bokeh serve option]`` is Bokeh's own
``serve`` subcommand (every option, same behaviour) with memwatch mounted at
``{prefix}/memwatch`` and a few ``--memwatch-*`` options of its own, plus
``--extra-patterns MODULE[:ATTR]`` to mount any module's Tornado routes.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tracemalloc
from typing import Any

from bokeh.command.subcommand import Argument
from bokeh.command.subcommands.serve import Serve
from bokeh.command.util import die

from ..memwatch import MemWatch
from ..options import MemwatchOptions, add_arguments, options_from_args

log = logging.getLogger(__name__)

__all__ = (
    "MemwatchServe",
    "load_patterns",
)



def load_patterns(spec: str) -> list[tuple[Any, ...]]:
    """ Import ``MODULE[:ATTR]`` and return its Tornado routes (``ATTR``
    defaults to ``ROUTES``, the name Panel's ``--plugins`` uses). """
    module_name, _, attr = spec.partition(":")
    attr = attr or "ROUTES"
    if not module_name:
        raise ValueError(f"--extra-patterns needs MODULE[:ATTR], got {spec!r}")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--extra-patterns: cannot import {module_name!r}: {e}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    try:
        routes = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"--extra-patterns: module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(routes, (list, tuple)) or not all(
        isinstance(r, (list, tuple)) and len(r) in (2, 3) and isinstance(r[0], str) for r in routes
    ):
        raise ValueError(
            f"--extra-patterns: {spec} must be a list of (pattern, handler[, kwargs]) tuples"
        )
    return [tuple(r) for r in routes]


class MemwatchServe(Serve):
    """ ``bokeh serve`` with memwatch mounted. """

    name = "serve"
    help = "Run a Bokeh server (every 'bokeh serve' option) with memwatch at {prefix}/memwatch"

    args = (  # type: ignore[assignment]  # Serve.args is typed as its exact tuple
        *Serve.args,
        ("--extra-patterns", Argument(
            metavar="MODULE[:ATTR]",
            action="append",
            help="Mount the Tornado routes in MODULE.ATTR (default ATTR: ROUTES); repeatable",
        )),
        ("--memwatch-tracemalloc", Argument(
            metavar="FRAMES", type=int, default=None,
            help="Start tracemalloc with this many frames before the apps are loaded",
        )),
    )

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser)
        # Every MemwatchOptions field, as --memwatch-<field> (units in the names, old names kept).
        add_arguments(parser.add_argument_group("memwatch"))

    memwatch: MemWatch | None = None

    def options(self, args: argparse.Namespace) -> MemwatchOptions:
        """ The environment's options, overridden by the command line's. """
        return MemwatchOptions(**options_from_args(args))

    def invoke(self, args: argparse.Namespace) -> None:
        frames = getattr(args, "memwatch_tracemalloc", None)
        if frames is not None:
            if frames < 1:
                die("--memwatch-tracemalloc needs a number of frames >= 1")
            tracemalloc.start(frames)
        try:
            self.memwatch = MemWatch(self.options(args))
            self._extra = [r for spec in (args.extra_patterns or []) for r in load_patterns(spec)]
        except ValueError as e:
            die(str(e))
        super().invoke(args)

    def customize_applications(self, args: argparse.Namespace, applications: dict[str, Any]) -> dict[str, Any]:
        applications = super().customize_applications(args, applications)
        assert self.memwatch is not None
        return dict(self.memwatch.instrument(applications))

    def customize_kwargs(self, args: argparse.Namespace, server_kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = super().customize_kwargs(args, server_kwargs)
        assert self.memwatch is not None
        kwargs["extra_patterns"] = [*(kwargs.get("extra_patterns") or []), *self._extra, *self.memwatch.patterns()]
        return kwargs

    def customize_server(self, server: Any) -> Any:
        from .._bokeh_internals import http_server_of, tornado_app_of

        server = super().customize_server(server)
        assert self.memwatch is not None
        self.memwatch.note_tornado_app(tornado_app_of(server))
        self.memwatch.note_http_server(http_server_of(server))
        self.memwatch.server_port = server.port
        return server
