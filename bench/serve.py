""" One benchmark server process: a real Bokeh server with the realistic app,
in one of these modes, plus a small control API for the benchmark driver.

* ``off``: plain ``bokeh.server.server.Server``, no memwatch;
* ``on``: memwatch mounted with its defaults (``memwatch_server``);
* ``on`` with ``--tracemalloc N``: the same, tracemalloc started with ``N``
  frames before the app is loaded (as ``--memwatch-tracemalloc N``);
* ``memlog``: no memwatch; Bokeh's own ``--mem-log-frequency`` (the
  ``mem_log_frequency_milliseconds`` server option) with the ``bokeh`` logger
  at DEBUG, writing to ``os.devnull``.

Every mode runs a lag probe on the server's IOLoop: a callback due every
``--probe-ms`` milliseconds records how late it runs.  The control API (under
``/bench/``, JSON) reads and resets those lateness figures, adds ballast
objects to the heap, times sampler ticks on the loop, expires sessions and
reports RSS.  The first line on stdout is ``{"port": ..., "pid": ...}``.

    python -m bench.serve --mode on --interval-ms 5000
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import os
import sys
import time
import tracemalloc
from array import array
from pathlib import Path
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.script import ScriptHandler
from tornado.ioloop import IOLoop
from tornado.web import HTTPError, RequestHandler

log = logging.getLogger(__name__)

__all__ = ("LagProbe", "main")

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "bench" / "apps" / "realistic.py"
APP_PATH = "/app"


class LagProbe:
    """ A callback due every ``period_s`` on the running asyncio loop that
    records how late it ran (ms), since the last :meth:`reset`. """

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.lags_ms: array[float] = array("d")
        self.late_at: array[float] = array("d")  # perf_counter of each sample
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._due = time.perf_counter() + self.period_s
        self._loop.call_later(self.period_s, self._fire)

    def _fire(self) -> None:
        now = time.perf_counter()
        self.lags_ms.append(max(0.0, now - self._due) * 1000)
        self.late_at.append(now)
        self._due = now + self.period_s
        assert self._loop is not None
        self._loop.call_later(self.period_s, self._fire)

    def reset(self) -> None:
        self.lags_ms = array("d")
        self.late_at = array("d")

    def stats(self) -> dict[str, Any]:
        lags = sorted(self.lags_ms)
        if not lags:
            return {"samples": 0, "max_ms": None, "p99_ms": None, "p50_ms": None}
        return {
            "samples": len(lags),
            "max_ms": round(lags[-1], 3),
            "p99_ms": round(percentile(lags, 99), 3),
            "p50_ms": round(percentile(lags, 50), 3),
        }


def percentile(sorted_values: list[float], pct: float) -> float:
    """ Nearest-rank percentile of an already sorted list. """
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class BenchState:
    """ What the control handlers act on. """

    def __init__(self, mode: str, probe: LagProbe) -> None:
        self.mode = mode
        self.probe = probe
        self.server: Any = None
        self.memwatch: Any = None
        self.ballast: list[list[int]] = []
        self.rss_at_start_bytes = rss_bytes()

    def tick_function(self) -> Any:
        if self.memwatch is not None:
            sampler = self.memwatch.sampler
            if sampler is None:
                raise HTTPError(409, reason="the sampler has not started")
            return sampler.tick
        if self.mode == "memlog":
            from bokeh_memwatch._bokeh_internals import tornado_app_of

            return tornado_app_of(self.server)._log_mem
        raise HTTPError(409, reason="nothing ticks in mode off")

    def sessions(self) -> list[Any]:
        return list(self.server.get_sessions(APP_PATH))


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ControlHandler(RequestHandler):
    def initialize(self, state: BenchState) -> None:
        self.state = state

    def reply(self, data: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def int_arg(self, name: str, default: int) -> int:
        try:
            return int(self.get_query_argument(name, str(default)))
        except ValueError:
            raise HTTPError(400, reason=f"{name} must be an integer") from None


class StateHandler(ControlHandler):
    """ ``GET /bench/state[?objects=1]``: RSS, sessions, memwatch's figures. """

    def get(self) -> None:
        state = self.state
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "mode": state.mode,
            "rss_bytes": rss_bytes(),
            "rss_at_start_bytes": state.rss_at_start_bytes,
            "sessions": sum(1 for s in state.sessions() if not s.expiration_requested),
            "ballast": len(state.ballast),
            "tracemalloc_frames": tracemalloc.get_traceback_limit() if tracemalloc.is_tracing() else 0,
            "memray_tracking": bool(state.memwatch is not None and state.memwatch.memray is not None
                                    and state.memwatch.memray.tracking),
        }
        out["initialize_document"] = DOCUMENT_WATCH.state()
        out["memwatch_modify_document"] = MEMWATCH_HANDLER_WATCH.state()
        if self.get_query_argument("objects", "0") == "1":
            out["gc_objects"] = len(gc.get_objects())
        mw = state.memwatch
        if mw is not None:
            out["memwatch"] = mw.sampler_state()
        self.reply(out)


class LagHandler(ControlHandler):
    """ ``GET /bench/lag[?reset=1]``: lateness of the probe since the last reset. """

    def get(self) -> None:
        out = self.state.probe.stats()
        mw = self.state.memwatch
        if mw is not None and mw.sampler is not None:
            out["sampler_ticks"] = mw.sampler.ticks
        if self.get_query_argument("reset", "0") == "1":
            self.state.probe.reset()
        self.reply(out)


class BallastHandler(ControlHandler):
    """ ``POST /bench/ballast?n=N``: keep exactly N extra gc-tracked objects
    (one-item lists) alive, then collect, as an app with a big heap would. """

    def post(self) -> None:
        n = self.int_arg("n", 0)
        started = time.perf_counter()
        self.state.ballast = []
        gc.collect()
        self.state.ballast = [[i] for i in range(n)]
        gc.collect()
        self.reply({"ballast": n, "elapsed_s": round(time.perf_counter() - started, 3), "rss_bytes": rss_bytes()})


class TicksHandler(ControlHandler):
    """ ``POST /bench/ticks?n=N``: run N sampler ticks (memwatch's
    ``Sampler.tick`` or Bokeh's ``_log_mem``) back to back on the loop and
    time each; also count the garbage collections that ran inside them. """

    def post(self) -> None:
        n = self.int_arg("n", 10)
        tick = self.state.tick_function()
        collections = [0, 0, 0]
        inside = False

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if inside and phase == "start":
                collections[info["generation"]] += 1

        times_ms, cpu_ms = [], []
        gc.callbacks.append(on_gc)
        try:
            for _ in range(n):
                inside = True
                started, cpu = time.perf_counter(), time.thread_time()
                tick()
                times_ms.append((time.perf_counter() - started) * 1000)
                cpu_ms.append((time.thread_time() - cpu) * 1000)
                inside = False
        finally:
            gc.callbacks.remove(on_gc)
        self.reply({"times_ms": times_ms, "cpu_ms": cpu_ms, "gc_collections_inside": collections})


class ForkHandler(ControlHandler):
    """ ``POST /bench/fork?n=N``: time N bare ``os.fork()`` calls (the child
    leaves at once with ``os._exit``) on the loop: the floor of any forked
    heap job's stall at this process size. """

    def post(self) -> None:
        times_ms = []
        for _ in range(self.int_arg("n", 3)):
            started = time.perf_counter()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                os._exit(0)
            times_ms.append((time.perf_counter() - started) * 1000)
            os.waitpid(pid, 0)
        self.reply({"times_ms": times_ms, "rss_bytes": rss_bytes()})


class ExpireHandler(ControlHandler):
    """ ``POST /bench/expire_leaked``: ask Bokeh to expire the sessions whose
    Documents the app leaked (``?leak=1``); returns their ids. """

    def post(self) -> None:
        from bench.apps import holder

        leaked = {id(doc) for doc in holder.LEAKED}
        expired = []
        for session in self.state.sessions():
            if id(session.document) in leaked and not session.expiration_requested:
                session.request_expiration()
                expired.append(session.id)
        self.reply({"expired": expired})


class GcHandler(ControlHandler):
    """ ``POST /bench/gc``: one full collection; its time. """

    def post(self) -> None:
        started = time.perf_counter()
        gc.collect()
        self.reply({"elapsed_ms": round((time.perf_counter() - started) * 1000, 3)})


def control_routes(state: BenchState) -> list[tuple[str, type, dict[str, Any]]]:
    kw = {"state": state}
    return [
        (r"/bench/state", StateHandler, kw),
        (r"/bench/lag", LagHandler, kw),
        (r"/bench/ballast", BallastHandler, kw),
        (r"/bench/ticks", TicksHandler, kw),
        (r"/bench/expire_leaked", ExpireHandler, kw),
        (r"/bench/fork", ForkHandler, kw),
        (r"/bench/gc", GcHandler, kw),
    ]


def websocket_nodelay() -> None:
    """ Set TCP_NODELAY on every Bokeh websocket.  Bokeh sends each message
    as several frames; with Nagle's algorithm and the peer's delayed ACK a
    round trip on loopback takes ~90 ms whatever the server does, which
    would hide any overhead smaller than that.  Same in every mode. """
    from bokeh.server.views.ws import WSHandler

    plain_open = WSHandler.open

    def open_nodelay(self: WSHandler) -> None:
        self.set_nodelay(True)
        plain_open(self)

    WSHandler.open = open_nodelay  # type: ignore[method-assign]


class Stopwatch:
    """ Calls to one function and the wall time spent in them. """

    def __init__(self) -> None:
        self.calls = 0
        self.total_s = 0.0

    def wrap(self, owner: type, name: str) -> None:
        plain = getattr(owner, name)
        watch = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return plain(*args, **kwargs)
            finally:
                watch.calls += 1
                watch.total_s += time.perf_counter() - started

        setattr(owner, name, timed)

    def state(self) -> dict[str, Any]:
        return {"calls": self.calls, "total_ms": round(self.total_s * 1000, 3),
                "mean_ms": round(self.total_s * 1000 / self.calls, 4) if self.calls else None}


#: Time Bokeh spends making each session's Document (every handler, the app's
#: and memwatch's), and the part of it that is memwatch's own handler.
DOCUMENT_WATCH = Stopwatch()
MEMWATCH_HANDLER_WATCH = Stopwatch()


def build_server(args: argparse.Namespace, state: BenchState) -> Any:
    from bokeh.server.server import Server

    app = Application(ScriptHandler(filename=str(APP)))
    kwargs: dict[str, Any] = {
        "port": 0,
        "address": "127.0.0.1",
        "check_unused_sessions_milliseconds": args.check_ms,
        "unused_session_lifetime_milliseconds": args.lifetime_ms,
        "extra_patterns": control_routes(state),
    }
    DOCUMENT_WATCH.wrap(Application, "initialize_document")
    if args.mode == "on":
        from bokeh_memwatch import MemWatch, memwatch_server
        from bokeh_memwatch.collect.app_handler import MemwatchAppHandler

        MEMWATCH_HANDLER_WATCH.wrap(MemwatchAppHandler, "modify_document")

        state.memwatch = MemWatch(interval_ms=args.interval_ms, census_interval_s=args.census_interval_s,
                                  census_min_interval_s=args.census_min_interval_s,
                                  allocations=args.allocations)  # issue 18: "memray" starts its tracker
        return memwatch_server({APP_PATH: app}, memwatch=state.memwatch, **kwargs)
    if args.mode == "memlog":
        bokeh_log = logging.getLogger("bokeh")
        bokeh_log.setLevel(logging.DEBUG)
        bokeh_log.propagate = False
        bokeh_log.addHandler(logging.StreamHandler(open(os.devnull, "w")))  # noqa: SIM115 - lives as long as the process
        kwargs["mem_log_frequency_milliseconds"] = args.memlog_ms
    return Server({APP_PATH: app}, **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("off", "on", "memlog"), required=True)
    parser.add_argument("--tracemalloc", type=int, default=0, help="frames; 0: not tracing")
    parser.add_argument("--allocations", choices=("tracemalloc", "memray"), default="tracemalloc",
                        help="memwatch's allocation backend (memray: its tracker runs from the start)")
    parser.add_argument("--interval-ms", type=int, default=5000, help="memwatch's sampler interval")
    parser.add_argument("--memlog-ms", type=int, default=5000, help="Bokeh's mem_log_frequency_milliseconds")
    parser.add_argument("--check-ms", type=int, default=17000, help="check_unused_sessions_milliseconds")
    parser.add_argument("--lifetime-ms", type=int, default=15000, help="unused_session_lifetime_milliseconds")
    parser.add_argument("--probe-ms", type=float, default=5.0, help="period of the lag probe")
    parser.add_argument("--census-interval-s", type=float, default=600.0, help="memwatch's scheduled census period")
    parser.add_argument("--census-min-interval-s", type=float, default=60.0, help="least time between censuses")
    parser.add_argument("--no-nodelay", dest="nodelay", action="store_false",
                        help="leave Nagle's algorithm on for websockets (Bokeh's default)")
    args = parser.parse_args(argv)
    if args.tracemalloc:
        tracemalloc.start(args.tracemalloc)
    if args.nodelay:
        websocket_nodelay()
    asyncio.set_event_loop(asyncio.new_event_loop())
    loop = IOLoop.current()
    probe = LagProbe(args.probe_ms / 1000)
    state = BenchState(args.mode, probe)
    state.server = build_server(args, state)
    state.server.start()
    loop.add_callback(probe.start)
    sys.stdout.write(json.dumps({"port": state.server.port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    loop.start()


if __name__ == "__main__":
    main()
