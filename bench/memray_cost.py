""" What memray allocation tracking costs a Bokeh server (issue 18), A/B in one run.

``python -m bench.memray_cost [--smoke] [--out DIR]`` starts four servers of
the realistic app (bench/apps/realistic.py) side by side:

* ``off``: plain Bokeh;
* ``on``: memwatch with defaults (no allocation tracking);
* ``on+tracemalloc``: memwatch, tracemalloc at 1 frame from the start;
* ``on+memray``: memwatch with ``allocations="memray"``: its aggregated
  memray Tracker runs from the start.

Each holds ``sessions`` (200) sessions; then page GET, ``pull_session`` and a
websocket round trip are timed, the servers taking turns batch by batch (the
others paused), with ratios to ``off`` (paired per round); the IOLoop's lag
(a 5 ms probe) over idle windows; RSS with the sessions open (the tracker's
memory is ``on+memray`` minus ``on``); and the loop stall of memray's
operations (closing a window, reading it, the flame graph).

Target: ``on+memray`` / ``off`` <= 1.15 for the three latency figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .run import FULL, RESULTS, Profile, lag_table, lag_windows, log, measure_latency, measure_operation
from .servers import BenchServer, open_sessions, pull, start_all, stop_all

MODES = ("off", "on", "on+tracemalloc", "on+memray")
TARGET = 1.15


@dataclass(frozen=True)
class MemrayProfile:
    latency: Profile
    sessions: int = 200
    lag_windows: int = 3
    lag_window_s: float = 6.0
    leak_sessions: int = 20


FULL_PROFILE = MemrayProfile(latency=replace(FULL, rounds=5))
SMOKE_PROFILE = MemrayProfile(
    latency=replace(FULL, name="smoke", rounds=1, gets_per_batch=1, pulls_per_batch=1, roundtrips_per_batch=3),
    sessions=3, lag_windows=1, lag_window_s=0.5, leak_sessions=1,
)


def run(profile: MemrayProfile) -> dict[str, Any]:
    log_dir = RESULTS / "memray-logs"
    common = {"check_ms": 1000, "lifetime_ms": 3_600_000, "interval_ms": 5000}
    servers = {
        "off": BenchServer("off", "off", log_dir, check_ms=1000, lifetime_ms=3_600_000),
        "on": BenchServer("on", "on", log_dir, **common),
        "on+tracemalloc": BenchServer("on+tracemalloc", "on", log_dir, tracemalloc=1, **common),
        "on+memray": BenchServer("on+memray", "on", log_dir, allocations="memray", **common),
    }
    started = time.perf_counter()
    start_all(list(servers.values()))
    result: dict[str, Any] = {"profile": {"sessions": profile.sessions, **asdict(profile.latency)}}
    try:
        memray_state = servers["on+memray"].api("memray")
        if not memray_state.get("tracking"):
            raise RuntimeError(f"on+memray is not tracking: {memray_state}")
        log(f"opening {profile.sessions} sessions per server")
        open_sessions([(s, profile.sessions) for s in servers.values()])
        states = {name: s.control("state") for name, s in servers.items()}
        result["rss"] = {name: {"rss_bytes": st["rss_bytes"], "rss_at_start_bytes": st["rss_at_start_bytes"],
                                "sessions": st["sessions"]} for name, st in states.items()}
        result["tracker_bytes"] = {
            "memray (on+memray - on)": states["on+memray"]["rss_bytes"] - states["on"]["rss_bytes"],
            "tracemalloc (on+tracemalloc - on)": states["on+tracemalloc"]["rss_bytes"] - states["on"]["rss_bytes"],
        }
        log("latency")
        result["latency"] = measure_latency(profile.latency, servers, MODES)
        log("lag")
        windows = lag_windows(list(servers.values()), profile.lag_windows, profile.lag_window_s)
        result["lag"] = lag_table(windows, {n: profile.sessions for n in servers})
        log("memray operations")
        memray = servers["on+memray"]
        ops = [measure_operation(memray, "POST memray/baseline (close + open a window)", "POST",
                                 "memray/baseline", fork=False)]
        ops[-1].update(on_loop(memray))
        for _ in range(profile.leak_sessions):
            pull(memray.app_url).close()
        ops.append(measure_operation(memray, "GET memray/allocators?compare=baseline", "GET",
                                     "memray/allocators?compare=baseline", fork=False))
        ops[-1].update(on_loop(memray))
        ops.append(measure_operation(memray, "GET memray/allocators?group=stack", "GET",
                                     "memray/allocators?group=stack", fork=False))
        ops[-1].update(on_loop(memray))
        capture = memray.api("memray")["captures"][-1]["id"]
        ops.append(measure_download(memray, "GET flamegraph (memray's reporter)",
                                    f"memray/captures/{capture}/flamegraph"))
        ops[-1].update(on_loop(memray), rotation_ms=None)
        result["operations"] = ops
        result["rotation_ms"] = memray.api("memray")["last_rotation_ms"]
    finally:
        stop_all(list(servers.values()))
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def on_loop(server: BenchServer) -> dict[str, Any]:
    """ What the last operation did on the loop itself, timed by memwatch: closing and
    opening a window (``rotation_ms``), starting the helper process (``spawn_ms``). """
    state = server.api("memray")
    return {"rotation_ms": state["last_rotation_ms"], "spawn_ms": state["last_spawn_ms"]}


def measure_download(server: BenchServer, label: str, path: str) -> dict[str, Any]:
    """ :func:`bench.run.measure_operation` for an answer that is not JSON. """
    server.control("lag", reset=1)
    started = time.perf_counter()
    error = None
    size = 0
    try:
        with urllib.request.urlopen(f"{server.url}/memwatch/api/{path}", timeout=600) as response:
            size = len(response.read())
    except OSError as e:
        error = str(e)[:200]
    elapsed_s = time.perf_counter() - started
    time.sleep(0.1)
    lag = server.control("lag", reset=1)
    return {"server": server.name, "operation": label, "elapsed_s": round(elapsed_s, 3),
            "max_lag_ms": lag["max_ms"], "p99_lag_ms": lag["p99_ms"], "size_bytes": size, "error": error}


def render(result: dict[str, Any]) -> str:
    out = [f"# memray vs tracemalloc: {result['profile']['sessions']} sessions per server "
           f"(wall {result['wall_s']} s)", "", "## Latency (median ms; paired ratio to off)", "",
           "| figure | " + " | ".join(MODES) + " |", "|---" * (len(MODES) + 1) + "|"]
    targets = []
    for figure, rows in result["latency"]["figures"].items():
        cells = [f"{rows[m]['median']:.2f} ({rows[m]['paired_ratio_vs_off']}x)" for m in MODES]
        out.append(f"| {figure} | " + " | ".join(cells) + " |")
        r = rows["on+memray"]["paired_ratio_vs_off"]
        targets.append(f"- on+memray / off, {figure}: {r} (target <= {TARGET}): "
                       f"{'met' if r is not None and r <= TARGET else 'NOT met'}")
    out += ["", "## Targets", "", *targets, "", "## IOLoop lag, idle (5 ms probe; ms, median of windows)", "",
            "| server | max | p99 | p50 |", "|---|---|---|---|"]
    for name in MODES:
        row = result["lag"][name]
        out.append(f"| {name} | {row['max_ms_median']} | {row['p99_ms_median']} | {row['p50_ms_median']} |")
    out += ["", "## Memory with the sessions open", "", "| server | RSS MiB |", "|---|---|"]
    for name in MODES:
        out.append(f"| {name} | {result['rss'][name]['rss_bytes'] / 2**20:.1f} |")
    for label, n in result["tracker_bytes"].items():
        out.append(f"\ntracker cost, {label}: {n / 2**20:.1f} MiB")
    out += ["", "## memray operations on on+memray (loop stall)", "",
            "| operation | elapsed s | max lag ms | p99 lag ms | rotation ms | spawn ms | error |",
            "|---|---|---|---|---|---|---|"]
    for op in result["operations"]:
        out.append(f"| {op['operation']} | {op['elapsed_s']} | {op['max_lag_ms']} | {op['p99_lag_ms']} | "
                   f"{op.get('rotation_ms')} | {op.get('spawn_ms')} | {op['error'] or ''} |")
    out.append(f"\nlast window rotation on the loop: {result['rotation_ms']} ms")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where memray.md and memray.json go")
    args = parser.parse_args(argv)
    result = run(SMOKE_PROFILE if args.smoke else FULL_PROFILE)
    markdown = render(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memray.json").write_text(json.dumps(result, indent=1))
    (args.out / "memray.md").write_text(markdown)
    sys.stdout.write(markdown)


if __name__ == "__main__":
    main()
