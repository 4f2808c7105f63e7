""" What a forked heap job costs the server's IOLoop, against process size.

Every heavy on-demand operation (chain search, snapshots, allocators,
pympler types) forks; ``os.fork()`` holds the GIL while the kernel copies the
parent's page tables, so the loop stalls for at least that long, and the
copy grows with RSS.  This grows one server's heap with ballast and reports,
at each size, RSS, the time of a bare ``fork()`` and the longest IOLoop lag
while one heavy operation runs.

    python -m bench.fork_cost                                  # traced server (1 frame), allocators
    python -m bench.fork_cost --untraced --operation "orphans/{orphan}/chain"
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from .run import RESULTS, measure_operation, table, wait_for_orphan
from .servers import BenchServer, get_page, open_sessions, start_all, stop_all

__all__ = ("main", "run")


def run(extras: list[int], sessions: int, traced: bool, operation: str, out_dir: Path) -> list[dict[str, Any]]:
    options: dict[str, Any] = {"check_ms": 1000, "lifetime_ms": 3_600_000}
    if traced:
        options["tracemalloc"] = 1
    server = BenchServer("on+tracemalloc" if traced else "on", "on", out_dir / "logs", **options)
    start_all([server])
    rows = []
    try:
        get_page(server.app_url + "?leak=1")
        server.control("expire_leaked", "POST")
        open_sessions([(server, sessions)])
        orphan = wait_for_orphan(server)
        for extra in extras:
            server.control("ballast", "POST", n=extra)
            forks = server.control("fork", "POST", n=5)
            op = measure_operation(server, operation, "GET" if "chain" not in operation else "POST",
                                   operation.format(orphan=orphan), fork=False)
            rows.append({"extra_objects": extra, "rss_bytes": forks["rss_bytes"],
                         "bare_fork_ms_median": round(statistics.median(forks["times_ms"]), 3),
                         "bare_fork_ms_max": round(max(forks["times_ms"]), 3),
                         "operation": operation, "elapsed_s": op["elapsed_s"], "max_lag_ms": op["max_lag_ms"],
                         "error": op["error"]})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        stop_all([server])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extras", default="0,1000000,3000000", help="comma-separated ballast sizes")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--untraced", action="store_true", help="no tracemalloc (then use a chain or types)")
    parser.add_argument("--operation", default="allocators?group=lineno")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    rows = run([int(x) for x in args.extras.split(",")], args.sessions, not args.untraced, args.operation,
               Path(args.out))
    lines = table(["extra objects", "RSS MiB", "bare fork() ms (median)", "max", "operation", "elapsed s",
                   "max lag ms"],
                  [[r["extra_objects"], round(r["rss_bytes"] / 2**20, 1), r["bare_fork_ms_median"],
                    r["bare_fork_ms_max"], r["operation"], r["elapsed_s"], r["max_lag_ms"]] for r in rows],
                  "rrrrlrr")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
