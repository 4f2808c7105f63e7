""" The ``bokeh-memwatch`` command: one subcommand per module
(``serve``, ``check``, and ``diff``/``report`` in ``snapshot``). """
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bokeh.command.util import die

from .._version import __version__
from .check import MemwatchCheck
from .serve import MemwatchServe
from .snapshot import MemwatchDiff, MemwatchReport

log = logging.getLogger(__name__)

__all__ = ("SUBCOMMANDS", "main")

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
