""" ``bokeh-memwatch diff`` and ``bokeh-memwatch report``: read what the
snapshot API downloads, offline.

``bokeh-memwatch diff OLD NEW [--group lineno|filename|traceback] [--limit N]``
prints what grew between two tracemalloc snapshot files (``GET
api/snapshots/<id>/tracemalloc``); ``bokeh-memwatch report FILE`` prints a
JSON report (``GET api/report``) readably.
"""
from __future__ import annotations

import argparse
import json
import logging

from bokeh.command.subcommand import Argument, Subcommand
from bokeh.command.util import die

from ..heap.allocations import GROUPS, top_growth
from ..report.text import format_allocators, format_report

log = logging.getLogger(__name__)

__all__ = ("MemwatchDiff", "MemwatchReport")


class MemwatchDiff(Subcommand):
    """ Top growth between two snapshot files. """

    name = "diff"
    help = "Print what grew between two tracemalloc snapshot files downloaded from memwatch"

    args = (
        ("old", Argument(metavar="OLD", help="the earlier snapshot file")),
        ("new", Argument(metavar="NEW", help="the later snapshot file")),
        (("-g", "--group"), Argument(
            choices=GROUPS, default="lineno",
            help="group allocations by line, file or whole traceback (default: lineno)",
        )),
        (("-n", "--limit"), Argument(type=int, default=15, help="rows to print (default: 15)")),
        ("--json", Argument(action="store_true", help="print the rows as JSON")),
    )

    def invoke(self, args: argparse.Namespace) -> None:
        if args.limit < 1:
            die("--limit must be at least 1")
        try:
            result = top_growth(args.old, args.new, group=args.group, limit=args.limit)
        except (OSError, EOFError, ValueError, TypeError) as e:
            die(f"cannot read the snapshots: {e}")
        except Exception as e:  # a pickle that is not a snapshot raises anything
            die(f"not a tracemalloc snapshot file: {type(e).__name__}: {e}")
        if args.json:
            print(json.dumps(result, indent=1))
            return
        growth = result["new_traced_bytes"] - result["old_traced_bytes"]
        print(f"traced: {result['old_traced_bytes']} -> {result['new_traced_bytes']} bytes "
              f"({growth:+d}); top {len(result['allocators'])} of {result['rows_total']} by growth "
              f"(grouped by {result['group']}):")
        print(format_allocators(result["allocators"]))


class MemwatchReport(Subcommand):
    """ A downloaded JSON report, readable. """

    name = "report"
    help = "Print a JSON report downloaded from memwatch (GET api/report) readably"

    args = (
        ("file", Argument(metavar="FILE", help="the report file")),
        (("-n", "--limit"), Argument(type=int, default=15, help="rows per section (default: 15)")),
    )

    def invoke(self, args: argparse.Namespace) -> None:
        try:
            with open(args.file, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, ValueError) as e:
            die(f"cannot read {args.file}: {e}")
        if not isinstance(report, dict):
            die(f"{args.file} is not a memwatch report")
        try:
            print(format_report(report, limit=args.limit), end="")
        except (ValueError, KeyError, TypeError) as e:
            die(f"{args.file} is not a readable memwatch report: {e}")
