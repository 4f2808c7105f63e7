""" What a large SQLite history costs the IOLoop on every summary and scrape.

``GET api/summary`` and ``GET metrics`` ask the history database for every
worker's newest sample (``HistoryDB.latest_per_pid``) on the loop.  This
starts a real server (in a thread, ``ServerThread``) twice in one run: once
on an empty history database, once on one holding ``--rows`` rows of the same
server (``--pids`` earlier processes and this one, realistic samples of
``--apps`` applications, spread over the last ``--span-h`` hours, as a
``--num-procs`` server leaves after a day), and times on the server's loop:

* ``summary``: ``MemWatch.summary()`` (what ``GET api/summary`` runs);
* ``scrape``: rendering the Prometheus registry (what ``GET metrics`` runs);
* ``history``: ``MemWatch.history(merged=True, limit=1000)`` (``GET api/history``);
* ``latest_per_pid``: the database query alone.

Milliseconds, median and max over ``--repeat`` calls, and the ratio
large / empty of the medians.

    python -m bench.history_read [--rows 80000] [--pids 8] [--apps 2] [--repeat 30]
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document

from bokeh_memwatch import MemWatch
from bokeh_memwatch.http.metrics import make_registry, render
from bokeh_memwatch.store.history_db import DB_FILENAME
from bokeh_memwatch.testing.server import ServerThread

from .history_write import make_sample

__all__ = ("fill", "main", "measure")


def _app(doc: Document) -> None:
    pass


def fill(path: str, key: str, *, rows: int, pids: int, apps: int, span_s: float) -> int:
    """ Insert ``rows`` samples of server ``key`` (pids 1000.. plus gaps), the
    newest a minute old; returns the file size in bytes. """
    now = time.time()
    step = span_s / max(rows, 1)
    with sqlite3.connect(path, timeout=30) as connection:
        batch = []
        for i in range(rows):
            t = now - 60 - (rows - i) * step
            pid = 1000 + (i * pids) // rows  # one process after another, like restarts
            batch.append((key, pid, t, json.dumps(make_sample(t, apps), separators=(",", ":"))))
            if len(batch) >= 5000:
                connection.executemany("INSERT INTO samples (server, pid, t, data) VALUES (?, ?, ?, ?)", batch)
                batch = []
        if batch:
            connection.executemany("INSERT INTO samples (server, pid, t, data) VALUES (?, ?, ?, ?)", batch)
        connection.commit()
    return os.path.getsize(path)


def _timed(server: ServerThread, fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """ ``fn``'s time on the server's loop, in ms (median, max). """
    costs = []
    for _ in range(repeat):
        def run() -> float:
            started = time.perf_counter()
            fn()
            return (time.perf_counter() - started) * 1000

        costs.append(server.call(run))
    return {"median_ms": round(statistics.median(costs), 3), "max_ms": round(max(costs), 3)}


def measure(rows: int, pids: int, apps: int, span_s: float, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        mw = MemWatch(interval_ms=5000, history_dir=directory, history_max_bytes=1 << 30)
        server = ServerThread({"/app": Application(FunctionHandler(_app))}, mw).start()
        try:
            deadline = time.monotonic() + 30
            while not server.call(lambda: mw.cluster is not None and mw.cluster.db is not None):
                if time.monotonic() > deadline:
                    raise RuntimeError("the history database did not open in 30 s")
                time.sleep(0.05)
            assert mw.cluster is not None and mw.cluster.db is not None
            db = mw.cluster.db
            size = fill(os.path.join(directory, DB_FILENAME), mw.cluster.key, rows=rows, pids=pids, apps=apps,
                        span_s=span_s)
            registry = make_registry(mw)
            since = time.time() - mw.cluster.window_s()
            result: dict[str, Any] = {"rows": rows, "file_bytes": size}
            result["summary"] = _timed(server, mw.summary, repeat)
            result["scrape"] = _timed(server, lambda: render(registry), repeat)
            result["history"] = _timed(server, lambda: mw.history(since=None, limit=1000, merged=True), repeat)
            result["latest_per_pid"] = _timed(server, lambda: db.latest_per_pid(since=since), repeat)
        finally:
            server.stop()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=80_000)
    parser.add_argument("--pids", type=int, default=8)
    parser.add_argument("--apps", type=int, default=2)
    parser.add_argument("--span-h", type=float, default=22.0)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    empty = measure(0, args.pids, args.apps, args.span_h * 3600, args.repeat)
    large = measure(args.rows, args.pids, args.apps, args.span_h * 3600, args.repeat)
    ratios = {name: round(large[name]["median_ms"] / max(empty[name]["median_ms"], 1e-3), 2)
              for name in ("summary", "scrape", "history", "latest_per_pid")}
    print(json.dumps({"empty": empty, "large": large, "ratio_large_over_empty": ratios}, indent=1))


if __name__ == "__main__":
    main()
