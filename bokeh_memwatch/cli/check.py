""" ``bokeh-memwatch check APP``: a leak test for any Bokeh or Panel app.

It is ``bokeh-memwatch serve`` (so every ``bokeh serve`` option works:
``--args``, ``--prefix``, ``--check-unused-sessions``...) run in-process on a
free loopback port, with a driver thread that opens and closes sessions of
every app (:class:`bokeh_memwatch.testing.leakcheck.LeakCheck`), then stops the
server and reports.  Exit status: 0 nothing retained beyond the tolerance,
1 something leaks, 2 usage or startup errors or an app that served no
session.  Errors in some sessions are reported (count, first traceback)
with the verdict, whose exit status stands.

Defaults differ from ``serve`` where a test needs it: port 0 (a free one) on
127.0.0.1, unused sessions checked every 100 ms and discarded after 100 ms,
no orphan grace, log level ``warning``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
from typing import Any, NoReturn

from bokeh.command.subcommand import Argument
from bokeh.command.util import die

from ..options import MemwatchOptions, flag_given
from ..report.text import render_text
from ..testing.leakcheck import CHECK_MEMWATCH_OPTIONS, CheckOptions, LeakCheck, looks_like_panel, parse_session_args
from .serve import MemwatchServe

log = logging.getLogger(__name__)

__all__ = ("MemwatchCheck",)

_DEFAULTS = CheckOptions()

#: Session lifetimes of the check unless given (milliseconds).
FAST_CHECK_MS = 100

def _server_args() -> tuple[Any, ...]:
    """ ``serve``'s arguments with the check's defaults: a free port on loopback. """
    out = []
    for name, original in MemwatchServe.args:
        argument = original
        if name == "--port":
            argument = dataclasses.replace(original, default=0, help="Port to listen on (default: a free one)")
        elif name == "--address":
            argument = dataclasses.replace(original, default="127.0.0.1",
                                           help="Address to listen on (default: 127.0.0.1)")
        elif name in ("--check-unused-sessions", "--unused-session-lifetime"):
            argument = dataclasses.replace(original, help=f"{original.help} (default for check: {FAST_CHECK_MS})")
        out.append((name, argument))
    return tuple(out)


class MemwatchCheck(MemwatchServe):
    """ Serve the apps, open and close sessions, report what outlives them. """

    name = "check"
    help = "Leak test for Bokeh/Panel apps: open and close sessions, report what stays alive (exit 0/1/2)"

    args = (
        *_server_args(),
        ("--sessions", Argument(
            metavar="N", type=int, default=_DEFAULTS.sessions,
            help=f"Sessions opened and closed per round (default: {_DEFAULTS.sessions}); some one after another, "
                 "some at once, "
                 "half over the websocket (pull_session), half as plain page loads",
        )),
        ("--rounds", Argument(
            metavar="R", type=int, default=_DEFAULTS.rounds,
            help=f"Rounds of sessions (default: {_DEFAULTS.rounds}); retention that grows between rounds is a leak",
        )),
        ("--tolerance", Argument(
            metavar="K", type=int, default=_DEFAULTS.tolerance,
            help="Destroyed sessions that may still hold memory at the end without failing, "
                 f"if retention does not grow (default: {_DEFAULTS.tolerance})",
        )),
        ("--session-args", Argument(
            metavar="KEY=VALUE", action="append",
            help="URL argument for every session, e.g. --session-args leak=global (repeatable)",
        )),
        ("--panel", Argument(
            action="store_true",
            help="The app is a Panel app: build it with Panel's application builder and import panel in "
                 "the clients (detected from 'import panel' in the script)",
        )),
        ("--max-chains", Argument(
            metavar="N", type=int, default=_DEFAULTS.max_chains,
            help=f"Reference chains searched at most per app (default: {_DEFAULTS.max_chains})",
        )),
        ("--settle-timeout", Argument(
            metavar="SECONDS", type=float, default=None,
            help="Longest wait for Bokeh to discard a round's sessions (default: from the session lifetimes)",
        )),
        ("--timeout", Argument(
            metavar="SECONDS", type=float, default=None,
            help="Longest wait for one session to open (default: 4 x the slowest session build measured, "
                 "plus 10 s, at least 30 s; 120 s for the first session)",
        )),
        ("--json", Argument(
            action="store_true",
            help="Print one JSON object instead of the text report",
        )),
    )

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser)
        self.report: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._check: CheckOptions | None = None
        self._applications: dict[str, Any] = {}
        self._driver: threading.Thread | None = None

    def options(self, args: argparse.Namespace) -> MemwatchOptions:
        base = super().options(args)
        changes = {name: value for name, value in CHECK_MEMWATCH_OPTIONS.items() if not flag_given(args, name)}
        return dataclasses.replace(base, **changes)

    def invoke(self, args: argparse.Namespace) -> NoReturn:
        try:
            self._prepare(args)
        except ValueError as e:
            die(str(e), 2)
        try:
            super().invoke(args)
        except SystemExit as e:
            if self.report is None:  # bokeh's die() during startup: exit 1 there, 2 here
                sys.exit(2 if e.code not in (0, None) else 0)
            raise
        except Exception as e:
            if self.report is None:
                die(f"could not start the server: {e}", 2)
            raise
        self._finish(args)

    def _prepare(self, args: argparse.Namespace) -> None:
        if not args.files:
            raise ValueError("check needs an app: bokeh-memwatch check APP [options]")
        if args.num_procs != 1:
            raise ValueError("check runs in one process: drop --num-procs")
        if args.dev is not None or args.show:
            raise ValueError("check does not take --dev or --show")
        if getattr(args, "memwatch_http", None) is False:
            raise ValueError("check needs memwatch's HTTP side: drop --memwatch-no-http")
        self._check = CheckOptions(
            sessions=args.sessions, rounds=args.rounds, tolerance=args.tolerance,
            session_args=parse_session_args(args.session_args), max_chains=args.max_chains,
            settle_timeout_s=args.settle_timeout, timeout_s=args.timeout,
        )
        if args.check_unused_sessions is None:
            args.check_unused_sessions = FAST_CHECK_MS
        if args.unused_session_lifetime is None:
            args.unused_session_lifetime = FAST_CHECK_MS
        if args.log_level is None:
            args.log_level = "warning"
        if args.panel or looks_like_panel(list(args.files)):
            args.panel = True
            # Panel's builder patches bokeh.command.util, which 'serve' uses,
            # and registers Panel's models for the clients.
            import panel
            import panel.io.application  # noqa: F401

    def customize_applications(self, args: argparse.Namespace, applications: dict[str, Any]) -> dict[str, Any]:
        applications = super().customize_applications(args, applications)
        self._applications = dict(applications)
        return applications

    def customize_server(self, server: Any) -> Any:
        server = super().customize_server(server)
        address = server.address if server.address not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
        host = f"[{address}]" if ":" in address else address
        base_url = f"http://{host}:{server.port}{server.prefix}"
        self._driver = threading.Thread(target=self._drive, args=(server, base_url), name="memwatch-check", daemon=True)
        self._driver.start()
        return server

    def _drive(self, server: Any, base_url: str) -> None:
        assert self.memwatch is not None and self._check is not None
        try:
            check = LeakCheck(self.memwatch, server.io_loop, base_url, self._check, applications=self._applications)
            self.report = check.run(sorted(self._applications))
        except BaseException as e:
            self.error = e
            log.debug("memwatch check failed", exc_info=True)
        finally:
            server.io_loop.add_callback(server.io_loop.stop)

    def _finish(self, args: argparse.Namespace) -> NoReturn:
        if self._driver is not None:
            self._driver.join(10)
        if self.report is None:
            error = self.error or RuntimeError("the server stopped before the check finished")
            print(f"ERROR: check failed: {type(error).__name__}: {error}", file=sys.stderr)
            _exit(2)
        errors = [e for app in self.report["apps"].values() for e in app["app_errors"]]
        if args.json:
            print(json.dumps(self.report, indent=None, default=str))
        else:
            print(render_text(self.report))
        if errors:
            # Listed in the report too; the verdict stands unless nothing was served.
            print("ERROR: the app failed in some sessions: " + "; ".join(errors)[:4000], file=sys.stderr)
        _exit(int(self.report["exit_code"]))


def _exit(code: int) -> NoReturn:
    """ Exit; without waiting for threads a leaking app left running (a
    non-daemon thread would keep the process alive forever). """
    sys.stdout.flush()
    sys.stderr.flush()
    lingering = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if lingering:
        os._exit(code)
    sys.exit(code)
