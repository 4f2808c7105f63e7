""" What a census (census.py) costs the server's IOLoop and how long it takes.

One server (memwatch on); the census is ``POST api/census``: a fork, a
reachability scan and a count by type in the child.  Measured at 200
sessions, then with ~1M extra gc-tracked objects (ballast): wall time, the
longest IOLoop lag during the census (the lag probe ticks every 5 ms), the
fork's own stall, the child's scan and count times; and, as the A side, the
longest lag over a plain ``GET api/summary`` at the same heap.

    python -m bench.census_cost                 # 200 sessions; extras 0 and 1,000,000
    python -m bench.census_cost --sessions 50 --extras 0
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .run import RESULTS, table
from .servers import BenchServer, open_sessions, start_all, stop_all

__all__ = ("main", "run")


def census_once(server: BenchServer) -> dict[str, Any]:
    server.control("lag", reset=1)
    started = time.perf_counter()
    body = server.api("census", "POST")
    elapsed_s = time.perf_counter() - started
    time.sleep(0.1)  # the probe's next samples, after the answer
    lag = server.control("lag", reset=1)
    costs = body.get("costs") or {}
    return {"elapsed_s": round(elapsed_s, 3), "max_lag_ms": lag["max_ms"], "p99_lag_ms": lag["p99_ms"],
            "fork_ms": costs.get("fork_ms"), "scan_s": costs.get("scan_s"), "count_s": costs.get("count_s"),
            "worker_private_bytes": costs.get("worker_private_bytes"), "objects": body.get("objects")}


def summary_once(server: BenchServer) -> float:
    server.control("lag", reset=1)
    server.api("summary")
    time.sleep(0.1)
    return float(server.control("lag", reset=1)["max_ms"])


def run(extras: list[int], sessions: int, out_dir: Path) -> list[dict[str, Any]]:
    server = BenchServer("on", "on", out_dir / "logs", check_ms=1000, lifetime_ms=3_600_000,
                         census_interval_s=0, census_min_interval_s=0)
    start_all([server])
    rows: list[dict[str, Any]] = []
    try:
        open_sessions([(server, sessions)])
        for extra in extras:
            ballast = server.control("ballast", "POST", n=extra)
            baseline_lag = summary_once(server)
            for attempt in (1, 2):  # the second compares with the first (growth, chains)
                row = {"sessions": sessions, "extra_objects": extra, "rss_bytes": ballast["rss_bytes"],
                       "census": attempt, **census_once(server), "summary_max_lag_ms": baseline_lag}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        stop_all([server])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extras", default="0,1000000", help="comma-separated ballast sizes")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    rows = run([int(x) for x in args.extras.split(",") if x], args.sessions, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "census_cost.json").write_text(json.dumps(rows, indent=1))
    columns = ["sessions", "extra_objects", "rss_bytes", "census", "elapsed_s", "max_lag_ms", "p99_lag_ms",
               "fork_ms", "scan_s", "count_s", "objects", "summary_max_lag_ms"]
    print("\n".join(table(columns, [[row.get(c) for c in columns] for row in rows])))


if __name__ == "__main__":
    main()
