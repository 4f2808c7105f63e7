""" The ``bokeh-memwatch`` command.

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
from collections.abc import Sequence
from typing import Any

from bokeh.command.subcommand import Argument
from bokeh.command.subcommands.serve import Serve
from bokeh.command.util import die

from . import __version__
from .core import MemWatch, MemwatchOptions, options_from_env
from .snapshot_command import MemwatchDiff, MemwatchReport

log = logging.getLogger(__name__)

__all__ = (
    "MemwatchServe",
    "load_patterns",
    "main",
)

_DEFAULTS = MemwatchOptions()


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
        ("--memwatch-interval", Argument(
            metavar="MS", type=int, default=None,
            help=f"Milliseconds between samples (default: {_DEFAULTS.interval_ms})",
        )),
        ("--memwatch-history", Argument(
            metavar="SECONDS", type=int, default=None,
            help=f"Seconds of history kept in memory (default: {_DEFAULTS.history_s})",
        )),
        ("--memwatch-orphan-grace", Argument(
            metavar="MS", type=int, default=None,
            help="How long a destroyed session's Document and Models may stay alive before they are "
                 f"verified (pending until then; default: {_DEFAULTS.orphan_grace_ms})",
        )),
        ("--memwatch-chain-timeout", Argument(
            metavar="SECONDS", type=float, default=None,
            help=f"Longest a 'why alive' search may run (default: {_DEFAULTS.chain_timeout_s:g})",
        )),
        ("--memwatch-allow-remote", Argument(
            action="store_true",
            help="Answer non-loopback clients when the server has no authentication",
        )),
        ("--memwatch-token", Argument(
            metavar="TOKEN", default=None,
            help="Require this token on every memwatch request (X-Memwatch-Token header, "
                 "'Authorization: Bearer', or a one-time ?token= that sets a cookie); "
                 "better set through BOKEH_MEMWATCH_TOKEN, which other users cannot read in ps",
        )),
        ("--memwatch-no-http", Argument(
            action="store_true",
            help="Do not mount memwatch's HTTP side (sampling and metrics go on)",
        )),
        ("--memwatch-show-values", Argument(
            action="store_true",
            help="Show short, truncated reprs of objects in 'why alive' chains (off: types and names only)",
        )),
        ("--memwatch-history-dir", Argument(
            metavar="DIR", default=None,
            help="Directory of the SQLite history shared by the workers and kept across restarts "
                 "(default: $XDG_STATE_HOME/bokeh-memwatch or ~/.local/state/bokeh-memwatch; 'none': off)",
        )),
        ("--memwatch-limit-fraction", Argument(
            metavar="FRACTION", type=float, default=None,
            help="Write a report (and a tracemalloc snapshot when tracing) when RSS reaches this fraction "
                 f"of the container's memory limit (default: {_DEFAULTS.limit_fraction:g}; 0: never)",
        )),
        ("--memwatch-heap-fork", Argument(
            metavar="MODE", choices=("auto", "refuse", "force", "never"), default=None,
            help="When a native thread pool (OpenBLAS, OpenMP, MKL) makes fork unsafe: 'auto' runs heap "
                 "jobs in a thread, 'refuse' answers 409, 'force' forks anyway (may freeze the server), "
                 "'never' always uses a thread (default: auto)",
        )),
        ("--memwatch-recycle-at", Argument(
            metavar="FRACTION|SIZE", default=None,
            help="Recycle a worker gracefully when its RSS stays at or above this (a fraction of the container's "
                 "memory limit, 0.85, or a size, 1.5GiB) for --memwatch-recycle-samples samples: write the limit "
                 "report, drain (readyz 503, stop accepting, live sessions go on), exit with status 75 so that "
                 "--num-procs or the supervisor starts a fresh worker (default: off)",
        )),
        ("--memwatch-recycle-samples", Argument(
            metavar="N", type=int, default=None,
            help=f"Samples in a row above --memwatch-recycle-at needed (default: {_DEFAULTS.recycle_samples})",
        )),
        ("--memwatch-drain-timeout", Argument(
            metavar="SECONDS", type=float, default=None,
            help="Longest a recycled worker drains before it exits anyway "
                 f"(default: {_DEFAULTS.drain_timeout_s:g})",
        )),
        ("--memwatch-no-probes", Argument(
            action="store_true",
            help="Do not mount {prefix}/memwatch/healthz and readyz (they answer without credentials)",
        )),
        ("--memwatch-allocations", Argument(
            metavar="BACKEND", choices=("tracemalloc", "memray"), default=None,
            help="Allocation tracking: 'memray' starts a memray tracker in each serving process (cheap enough "
                 "to leave on; pip install bokeh-memwatch[memray]); 'tracemalloc' (default) leaves tracing to "
                 "--memwatch-tracemalloc and the API",
        )),
        ("--memwatch-tracemalloc", Argument(
            metavar="FRAMES", type=int, default=None,
            help="Start tracemalloc with this many frames before the apps are loaded",
        )),
    )

    memwatch: MemWatch | None = None

    def options(self, args: argparse.Namespace) -> MemwatchOptions:
        overrides = options_from_env()
        for flag, field in (
            ("memwatch_interval", "interval_ms"),
            ("memwatch_history", "history_s"),
            ("memwatch_orphan_grace", "orphan_grace_ms"),
            ("memwatch_chain_timeout", "chain_timeout_s"),
            ("memwatch_history_dir", "history_dir"),
            ("memwatch_limit_fraction", "limit_fraction"),
            ("memwatch_heap_fork", "heap_fork"),
            ("memwatch_allocations", "allocations"),
            ("memwatch_recycle_at", "recycle_at"),
            ("memwatch_recycle_samples", "recycle_samples"),
            ("memwatch_drain_timeout", "drain_timeout_s"),
        ):
            value = getattr(args, flag, None)
            if value is not None:
                overrides[field] = value
        if getattr(args, "memwatch_allow_remote", False):
            overrides["allow_remote"] = True
        if getattr(args, "memwatch_token", None):
            overrides["token"] = args.memwatch_token
        if getattr(args, "memwatch_no_http", False):
            overrides["http"] = False
        if getattr(args, "memwatch_show_values", False):
            overrides["show_values"] = True
        if getattr(args, "memwatch_no_probes", False):
            overrides["probes"] = False
        return MemwatchOptions(**overrides)

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
        from ._bokeh_internals import http_server_of, tornado_app_of

        server = super().customize_server(server)
        assert self.memwatch is not None
        self.memwatch.note_tornado_app(tornado_app_of(server))
        self.memwatch.note_http_server(http_server_of(server))
        self.memwatch.server_port = server.port
        return server


# check_command subclasses MemwatchServe, so it is imported once that exists.
from .check_command import MemwatchCheck  # noqa: E402

SUBCOMMANDS = (MemwatchServe, MemwatchDiff, MemwatchReport, MemwatchCheck)


def main(argv: Sequence[str] | None = None) -> None:
    """ Entry point of the ``bokeh-memwatch`` console script. """
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="bokeh-memwatch",
        description="Find what keeps Bokeh and Panel server memory alive.",
        epilog="See 'bokeh-memwatch <command> --help' for a command's options.",
    )
    parser.add_argument("-v", "--version", action="version", version=__version__)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs.required = True
    for cls in SUBCOMMANDS:
        subparser = subs.add_parser(cls.name, help=cls.help)
        subcommand = cls(parser=subparser)
        subparser.set_defaults(invoke=subcommand.invoke)
    args = parser.parse_args(argv[1:])
    try:
        result = args.invoke(args)
    except Exception as e:
        die(str(e))
    if result is False:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
