""" Verification of destroyed sessions: the loop's stall per verification
and how often verifications run (issue 12).

A real Bokeh server with memwatch (default options, sampling every second)
runs in this process (ServerThread) with the realistic app.  ``--sessions``
sessions are opened by HTTP GETs; Bokeh destroys them after 2 s unused, and
every ``--leak-every``-th one is leaked into a module list (``?leak=1``), so
the verifications find orphans and garbage.  ``--ballast-mb`` of touched
memory and ``--extra`` small tracked objects (lists) grow the heap (the fork copies page
tables: RSS; the child's scan walks objects: object count).

A task on the server's loop sleeps 5 ms again and again and records how late
it wakes.  Three phases:

1. quiet, nothing destroyed: verifications must be 0;
2. the sessions are destroyed: every verification's cost to the loop
   (``loop_ms``: choosing the records, the fork, applying the answer; the
   fork is ``fork_ms``), the loop's worst lag while it ran (any cause: Bokeh
   destroying sessions runs a collection per destroy on the loop), the
   child's scan time and objects, and how long until every session was
   judged;
3. quiet again, everything judged (orphans proven): verifications must be 0.

    python -m bench.verify_stall                              # 200 sessions
    python -m bench.verify_stall --ballast-mb 800             # ~1 GB RSS
    python -m bench.verify_stall --smoke                      # seconds, for CI
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.script import ScriptHandler

from bokeh_memwatch import MemWatch
from bokeh_memwatch.collect.process import ProcessCollector
from bokeh_memwatch.testing.server import ServerThread

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "bench" / "apps" / "realistic.py"
PERIOD_S = 0.005


def run(sessions: int, leak_every: int, ballast_mb: int, extra: int, quiet_s: float) -> dict[str, Any]:
    import numpy as np

    from bench.apps import holder

    mw = MemWatch(interval_ms=1000, history_dir="none")
    server = ServerThread(
        {"/app": Application(ScriptHandler(filename=str(APP)))}, mw,
        check_unused_sessions_milliseconds=500, unused_session_lifetime_milliseconds=2000,
    ).start()
    lags: list[tuple[float, float]] = []  # (lag s, wake time)
    running = True

    async def probe() -> None:
        while running:
            started = time.perf_counter()
            await asyncio.sleep(PERIOD_S)
            now = time.perf_counter()
            lags.append((now - started - PERIOD_S, now))

    def state() -> dict[str, Any]:
        return {**mw.verification_state(), "scheduled": mw.sampler.verifications if mw.sampler else 0}

    runs: list[dict[str, Any]] = []
    try:
        ballast = np.ones(ballast_mb * 2**20 // 8) if ballast_mb else None  # touched: resident
        objects = [[i] for i in range(extra)]  # lists: tracked by the collector, so scanned
        server.call(lambda: asyncio.ensure_future(probe()))
        time.sleep(0.5)

        # 1. quiet, nothing destroyed
        before = server.call(state)
        time.sleep(quiet_s)
        quiet_before = server.call(state)["scheduled"] - before["scheduled"]

        # 2. destroy the sessions
        for i in range(sessions):
            leak = "&leak=1" if leak_every and i % leak_every == 0 else ""
            with urllib.request.urlopen(f"{server.url}/app?n={i}{leak}", timeout=60) as response:
                response.read()
        rss = ProcessCollector().rss_bytes()
        opened = time.perf_counter()
        seen = server.call(state)["runs"]
        judged_after_s = None
        deadline = opened + 600
        while time.perf_counter() < deadline:
            s = server.call(state)
            if s["runs"] != seen:
                seen = s["runs"]
                # The loop's worst lag between the start of this run and now.
                started_at = s.get("last_at") or 0
                ago = time.time() - started_at
                window = [lag for lag, at in lags if at >= time.perf_counter() - ago - 0.01]
                runs.append({
                    "loop_ms": s.get("last_loop_ms"),
                    "fork_ms": s.get("last_fork_ms"),
                    "max_lag_ms": round(max(window, default=0) * 1000, 1),
                    "elapsed_s": s.get("last_elapsed_s"),
                    "scan_s": s.get("last_scan_s"),
                    "objects": s.get("last_objects"),
                    "records": s.get("last_records"),
                    "worker_private_mib": round((s.get("last_worker_private_bytes") or 0) / 2**20, 1),
                })
                print(json.dumps(runs[-1]), file=sys.stderr)
            summary = server.call(mw.summary)
            if (summary["sessions"] == 0 and summary["sessions_destroyed_total"] >= sessions
                    and summary["pending_orphans"] == 0 and summary["held_by_timers"] == 0):
                judged_after_s = round(time.perf_counter() - opened, 1)
                break
            time.sleep(0.05)
        summary = server.call(mw.summary)
        # 3. quiet again, everything judged
        before = server.call(state)
        time.sleep(quiet_s)
        quiet_after = server.call(state)["scheduled"] - before["scheduled"]
        del ballast, objects
    finally:
        running = False
        server.stop()
        holder.LEAKED.clear()
    return {
        "sessions": sessions, "ballast_mb": ballast_mb, "extra_objects": extra, "rss_bytes": rss,
        "verifications_quiet_before": quiet_before, "verifications_quiet_after": quiet_after, "quiet_s": quiet_s,
        "judged_after_s": judged_after_s, "orphans": summary["orphans"],
        "awaiting_collection": summary["awaiting_collection"], "runs": runs,
    }


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    forks = [r["fork_ms"] for r in runs if r["fork_ms"] is not None]
    lines = [
        f"{result['sessions']} sessions destroyed, RSS {result['rss_bytes'] / 2**20:.0f} MiB "
        f"({result['ballast_mb']} MB ballast, {result['extra_objects']:,} extra objects): "
        f"{len(runs)} verification(s), all judged after {result['judged_after_s']} s "
        f"({result['orphans']} orphans, {result['awaiting_collection']} awaiting collection); "
        f"verifications in {result['quiet_s']:g} s quiet before / after: "
        f"{result['verifications_quiet_before']} / {result['verifications_quiet_after']}; "
        f"fork max {max(forks, default=0):.1f} ms",
        "",
        "| loop ms (prepare + fork + apply) | fork ms | loop max lag ms (any cause) | child elapsed s | scan s "
        "| objects | records | child private MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(f"| {r['loop_ms']} | {r['fork_ms']} | {r['max_lag_ms']} | {r['elapsed_s']} | {r['scan_s']} "
                     f"| {r['objects']} | {r['records']} | {r['worker_private_mib']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--leak-every", type=int, default=10, help="leak every n-th session (0: none)")
    parser.add_argument("--ballast-mb", type=int, default=0, help="touched memory to grow RSS")
    parser.add_argument("--extra", type=int, default=0, help="extra small tracked objects (lists) on the heap")
    parser.add_argument("--quiet-s", type=float, default=15.0, help="length of each quiet phase")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sessions, args.leak_every, args.quiet_s = 4, 2, 2.0
    print(markdown(run(args.sessions, args.leak_every, args.ballast_mb, args.extra, args.quiet_s)))


if __name__ == "__main__":
    main()
