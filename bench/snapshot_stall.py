""" IOLoop stall while heap snapshots are taken (issue #4).

A real Bokeh server with memwatch runs in this process (ServerThread), with
``--sessions`` sessions of the clean test app opened by HTTP GETs and kept,
tracemalloc tracing ``--frames`` frames, and ``--extra`` extra traced
objects on the heap.  A task on the server's loop sleeps 5 ms again and
again and records how late it wakes (``max_lag_ms``, wall clock) and how
much CPU the loop thread spent between two wake-ups (``max_busy_ms``).
Each API operation is timed that way, then the same tracemalloc work is
done on the loop itself for comparison.

    python -m bench.snapshot_stall                          # 200 sessions, 1 frame
    python -m bench.snapshot_stall --extra 1000000 --frames 25
    python -m bench.snapshot_stall --smoke                  # seconds, for CI
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.script import ScriptHandler

from bokeh_memwatch import MemWatch
from bokeh_memwatch.collect.process import ProcessCollector
from bokeh_memwatch.testing.server import ServerThread

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "apps" / "clean.py"
PERIOD_S = 0.005

OPERATIONS = [
    ("POST baseline", "POST", "baseline"),
    ("POST snapshots", "POST", "snapshots"),
    ("GET allocators lineno", "GET", "allocators?group=lineno"),
    ("GET allocators traceback growth", "GET", "allocators?group=traceback&compare=baseline"),
    ("GET types", "GET", "types?compare=baseline"),
    ("GET report", "GET", "report"),
]


def request(method: str, url: str) -> dict[str, Any]:
    data = b"{}" if method == "POST" else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def run(sessions: int, extra: int, frames: int, inline: bool = True, only: str = "") -> dict[str, Any]:
    mw = MemWatch(interval_ms=1000, types_min_interval_s=0, snapshot_timeout_s=3600)
    server = ServerThread(
        {"/app": Application(ScriptHandler(filename=str(APP)))}, mw,
        check_unused_sessions_milliseconds=3_600_000, unused_session_lifetime_milliseconds=3_600_000,
    ).start()
    lags: list[tuple[float, float, float]] = []
    running = True

    async def probe() -> None:
        while running:
            started, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(PERIOD_S)
            now = time.perf_counter()
            lags.append((now - started - PERIOD_S, time.thread_time() - cpu, now))

    gc_pauses: list[float] = []
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses.append(time.perf_counter() - gc_started[0])

    rows: list[dict[str, Any]] = []
    api = f"{server.url}/memwatch/api/"
    gc.callbacks.append(on_gc)
    try:
        tracemalloc.start(frames)
        for _ in range(sessions):
            with urllib.request.urlopen(server.url + "/app", timeout=60) as response:
                response.read()
        ballast = [{"n": i} for i in range(extra)]
        server.call(lambda: asyncio.ensure_future(probe()))
        rss = ProcessCollector().rss_bytes()
        for name, method, path in [op for op in OPERATIONS if any(o in op[0] for o in only.split(","))]:
            mark, gc_mark = len(lags), len(gc_pauses)
            started = time.perf_counter()
            body = request(method, api + path)
            elapsed = time.perf_counter() - started
            time.sleep(2 * PERIOD_S)
            window = lags[mark:]
            rows.append({
                "operation": name,
                "elapsed_s": round(elapsed, 2),
                "max_lag_ms": round(max(lag for lag, _, _ in window) * 1000, 1),
                "max_busy_ms": round(max(busy for _, busy, _ in window) * 1000, 1),
                # the three busiest loop intervals: [busy ms, seconds after the request]
                "busiest": [[round(busy * 1000, 1), round(at - busy - started, 3)]
                            for _, busy, at in sorted(window, key=lambda w: -w[1])[:3]],
                "max_gc_pause_ms": round(max(gc_pauses[gc_mark:], default=0) * 1000, 1),
                "technique": body.get("technique"),
                "fork_ms": body.get("fork_ms"),
                "worker_private_mib": round((body.get("worker_private_bytes") or 0) / 2**20, 1),
                "traces": body.get("traces"),
            })
            print(json.dumps(rows[-1]), file=sys.stderr)
        for name, work in [
            ("inline take_snapshot", tracemalloc.take_snapshot),
            ("inline take_snapshot + statistics", lambda: tracemalloc.take_snapshot().statistics("lineno")),
        ] if inline else []:
            mark = len(lags)
            started = time.perf_counter()
            server.call(work, timeout_s=3600)
            time.sleep(2 * PERIOD_S)
            rows.append({
                "operation": name,
                "elapsed_s": round(time.perf_counter() - started, 2),
                "max_lag_ms": round(max(lag for lag, _, _ in lags[mark:]) * 1000, 1),
                "max_busy_ms": round(max(busy for _, busy, _ in lags[mark:]) * 1000, 1),
            })
            print(json.dumps(rows[-1]), file=sys.stderr)
        stop_started = time.perf_counter()
        tracemalloc.stop()
        stop_ms = (time.perf_counter() - stop_started) * 1000
        del ballast
    finally:
        running = False
        gc.callbacks.remove(on_gc)
        tracemalloc.stop()
        server.stop()
    return {"sessions": sessions, "extra_objects": extra, "frames": frames, "rss_bytes": rss,
            "tracemalloc_stop_ms": round(stop_ms, 1), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['sessions']} sessions, {result['extra_objects']:,} extra objects, {result['frames']} frame(s), "
        f"RSS {result['rss_bytes'] / 2**20:.0f} MiB; tracemalloc.stop() {result['tracemalloc_stop_ms']} ms",
        "",
        "| operation | elapsed s | max lag ms | loop busy ms | longest gc pause ms | worker private MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['operation']} | {r['elapsed_s']} | {r['max_lag_ms']} | {r['max_busy_ms']} "
                     f"| {r.get('max_gc_pause_ms', '')} | {r.get('worker_private_mib', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--extra", type=int, default=0, help="extra traced objects (dicts)")
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--no-inline", action="store_true", help="skip doing the work on the loop for comparison")
    parser.add_argument("--only", default="", help="only operations whose names contain one of these (comma-separated)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sessions, args.extra = 3, 20_000
    print(markdown(run(args.sessions, args.extra, args.frames, inline=not args.no_inline, only=args.only)))


if __name__ == "__main__":
    main()
