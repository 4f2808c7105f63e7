""" The memwatch benchmark suite: is memwatch nearly free to leave on?

Starts real Bokeh servers (``bench/serve.py``, one process per mode) with the
realistic app (``bench/apps/realistic.py``) and measures, memwatch off / on
with defaults / on with tracemalloc (1 frame), and Bokeh's own
``--mem-log-frequency`` at DEBUG as the reference:

1. session creation latency (page GET, ``pull_session``) and a websocket
   round trip, modes alternated round by round (A B C, C B A, ...);
2. IOLoop lag under the default sampler (5 s interval) at N sessions, with
   and without 1M extra objects, and during each heavy on-demand operation;
3. sampler tick time against sessions and extra heap objects;
4. memwatch's own memory: a 24 h store, and RSS at N sessions on vs off;
5. Bokeh's ``_log_mem`` tick time and lag, for reference.

    python -m bench                 # full run (~6-8 min on 2 cores)
    python -m bench --smoke         # tiny sizes, for CI (~30 s)

Results go to ``bench/results/results.{md,json}``; the Markdown is printed.
See bench/README.rst for what each figure means.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .apps.realistic import status_text
from .servers import BenchServer, alone, get_page, open_sessions, pull, start_all, stop_all

__all__ = ("FULL", "SMOKE", "Profile", "main", "render_markdown", "render_ticks", "run", "tick_ratios", "tick_rows")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

#: Result file format; bump when the JSON layout changes.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Profile:
    """ Sizes of one run. """

    name: str
    rounds: int = 5                      # A/B/C rounds of the latency figures
    gets_per_batch: int = 8              # off and on (the target); on+tracemalloc takes a quarter
    pulls_per_batch: int = 4
    roundtrips_per_batch: int = 50
    sessions: int = 200                  # sessions held during the lag and RSS figures
    interval_ms: int = 5000              # memwatch's sampler (its default) and Bokeh's mem log
    lag_windows: int = 3
    lag_window_s: float = 8.0            # at least one 5 s sampler tick in each
    lag_windows_big: int = 2             # windows with ``ops_extra`` extra objects
    tick_sessions: tuple[int, ...] = (10, 200, 1000)
    tick_extras: tuple[int, ...] = (0, 1_000_000, 3_000_000)
    tick_repeats: int = 30
    ops_extra: int = 1_000_000
    memlog_ticks: int = 5
    store_samples: int = 17_280          # 24 h at the default 5 s interval
    store_apps: int = 10                 # DEFAULT_MAX_APPS: the most apps with history columns
    tracemalloc_sessions: int = 50       # sessions of the traced server (its page GETs are ~8x slower)
    heavy_operations: bool = True        # False: only the operations marked cheap (smoke)


FULL = Profile(name="full")
SMOKE = Profile(
    name="smoke", rounds=1, gets_per_batch=1, pulls_per_batch=1, roundtrips_per_batch=3, sessions=5,
    interval_ms=200, lag_windows=1, lag_window_s=0.5, lag_windows_big=1, tick_sessions=(2, 5),
    tick_extras=(0, 20_000), tick_repeats=3, ops_extra=20_000, memlog_ticks=2, store_samples=2_000,
    tracemalloc_sessions=5,
    heavy_operations=False,
)

#: On-demand operations: (server, label, method, API path, kind).  ``heavy``
#: ones (forked heap work) count for the 50 ms target; ``in-process`` ones
#: run on the loop by design (a full collection, reading the store) and are
#: reported beside them; ``smoke`` ones run in the smoke profile too.
OPERATIONS: tuple[tuple[str, str, str, str, str], ...] = (
    ("on", "GET summary", "GET", "summary", "in-process smoke"),
    ("on", "GET orphans", "GET", "orphans", "in-process"),
    ("on", "GET advice", "GET", "advice", "in-process"),
    ("on", "GET history (1000 samples, the API's most)", "GET", "history?limit=1000", "in-process"),
    ("on", "POST gc", "POST", "gc", "in-process smoke"),
    ("on", "POST chain", "POST", "orphans/{orphan}/chain", "heavy smoke"),
    ("on", "GET types", "GET", "types", "heavy"),
    ("on+tracemalloc", "POST baseline", "POST", "baseline", "heavy"),
    ("on+tracemalloc", "POST snapshots", "POST", "snapshots", "heavy"),
    ("on+tracemalloc", "GET allocators lineno", "GET", "allocators?group=lineno", "heavy smoke"),
    ("on+tracemalloc", "GET allocators traceback vs baseline", "GET",
     "allocators?group=traceback&compare=baseline", "heavy"),
    ("on+tracemalloc", "POST chain", "POST", "orphans/{orphan}/chain", "heavy"),
)
# Left out for time: ``GET types?compare=baseline`` (another pympler summary, as
# ``POST baseline`` takes one) and ``GET report`` (summary, chains, allocators,
# growth and types in sequence: its stalls are those of its parts).

LATENCY_MODES = ("off", "on", "on+tracemalloc")


# --- statistics --------------------------------------------------------------------


def summarize(values_s: Sequence[float], *, scale: float = 1000.0) -> dict[str, Any]:
    """ n, median, min, max, p90 of ``values_s`` (seconds) in ms. """
    values = sorted(v * scale for v in values_s)
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "p90": None}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "min": round(values[0], 3),
        "max": round(values[-1], 3),
        "p90": round(values[min(len(values) - 1, max(0, math.ceil(0.9 * len(values)) - 1))], 3),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def median_of(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- 1. latency ---------------------------------------------------------------------


def measure_latency(profile: Profile, servers: dict[str, BenchServer],
                    latency_modes: Sequence[str] = LATENCY_MODES) -> dict[str, Any]:
    """ Page GET, pull_session and a websocket round trip per mode; the modes
    take turns batch by batch, the order reversed every other round.
    (``latency_modes``: bench/memray_cost.py measures its own modes.) """
    modes = [m for m in latency_modes if m in servers]
    gets: dict[str, list[float]] = {m: [] for m in modes}
    pulls: dict[str, list[float]] = {m: [] for m in modes}
    trips: dict[str, list[float]] = {m: [] for m in modes}
    # Server CPU seconds per operation, one figure per batch.
    cpu: dict[str, dict[str, list[float]]] = {f: {m: [] for m in modes}
                                              for f in ("page GET", "pull_session", "websocket round trip")}
    # Per round, per mode: where that round's samples start, for the paired ratios.
    marks: list[dict[str, tuple[int, int, int]]] = []
    clients = {m: pull(servers[m].app_url) for m in modes}
    value = 1.0
    try:
        for round_no in range(profile.rounds):
            order = modes if round_no % 2 == 0 else modes[::-1]
            marks.append({m: (len(gets[m]), len(pulls[m]), len(trips[m])) for m in modes})
            for mode in order:
                server = servers[mode]
                # The ratios that matter are on / off: on+tracemalloc (4x slower) gets fewer samples.
                share = 4 if mode == "on+tracemalloc" else 1
                n_gets, n_pulls, n_trips = (max(1, n // share) for n in (
                    profile.gets_per_batch, profile.pulls_per_batch, profile.roundtrips_per_batch))
                with alone([server], servers.values()):  # the others paused
                    url = server.app_url
                    cpu_before = server.cpu_s()
                    for _ in range(n_gets):
                        gets[mode].append(get_page(url))
                    cpu_mid = server.cpu_s()
                    cpu["page GET"][mode].append((cpu_mid - cpu_before) / n_gets)
                    for _ in range(n_pulls):
                        started = time.perf_counter()
                        session = pull(url)
                        pulls[mode].append(time.perf_counter() - started)
                        session.close()
                    cpu_before = server.cpu_s()
                    cpu["pull_session"][mode].append((cpu_before - cpu_mid) / n_pulls)
                    client = clients[mode]
                    slider = client.document.get_model_by_name("frequency")
                    status = client.document.get_model_by_name("status")
                    for _ in range(n_trips):
                        value = value + 0.5 if value < 49 else 1.0
                        want = status_text(value)
                        started = time.perf_counter()
                        slider.value = value
                        # Runs the client's loop (sends the patch, applies the server's)
                        # until the Div's new text is in.
                        client._connection._loop_until(lambda status=status, want=want: status.text == want)
                        trips[mode].append(time.perf_counter() - started)
                    cpu["websocket round trip"][mode].append(
                        (server.cpu_s() - cpu_before) / n_trips)
    finally:
        for client in clients.values():
            client.close()
    out: dict[str, Any] = {"modes": modes, "rounds": profile.rounds, "figures": {}}
    if "on" in servers:
        state = servers["on"].control("state")
        made, mine = state["initialize_document"], state["memwatch_modify_document"]
        out["per_session"] = {
            "documents": made["calls"],
            "initialize_document_ms_mean": made["mean_ms"],
            "memwatch_handler_ms_mean": mine["mean_ms"],
            "memwatch_share": ratio(mine["total_ms"], made["total_ms"]),
        }
    for index, (figure, data) in enumerate((("page GET", gets), ("pull_session", pulls),
                                            ("websocket round trip", trips))):
        rows = {m: summarize(data[m]) for m in modes}
        base = rows["off"]["median"] if "off" in rows else None
        for m in modes:
            rows[m]["ratio_vs_off"] = ratio(rows[m]["median"], base)
            rows[m]["paired_ratio_vs_off"] = paired_ratio(data, marks, index, m) if "off" in rows else None
            rows[m]["server_cpu_ms_median"] = summarize(cpu[figure][m])["median"]
        cpu_base = rows["off"]["server_cpu_ms_median"] if "off" in rows else None
        for m in modes:
            rows[m]["server_cpu_ratio_vs_off"] = ratio(rows[m]["server_cpu_ms_median"], cpu_base)
        out["figures"][figure] = rows
    return out


# --- 2. lag ---------------------------------------------------------------------------


def paired_ratio(data: dict[str, list[float]], marks: list[dict[str, tuple[int, int, int]]],
                 index: int, mode: str) -> float | None:
    """ Median over rounds of (``mode``'s median / off's median) in that
    round: batches of one round run back to back, so slow drift of the
    machine cancels out of each ratio. """
    ratios = []
    for k, mark in enumerate(marks):
        end = marks[k + 1] if k + 1 < len(marks) else None
        cut = {m: data[m][mark[m][index]:(end[m][index] if end else None)] for m in (mode, "off")}
        if cut[mode] and cut["off"]:
            ratios.append(statistics.median(cut[mode]) / statistics.median(cut["off"]))
    return round(statistics.median(ratios), 3) if ratios else None


def lag_windows(servers: Sequence[BenchServer], windows: int, window_s: float,
                alone_servers: Sequence[BenchServer] = ()) -> dict[str, list[dict[str, Any]]]:
    """ Lateness of each server's 5 ms probe over ``windows`` idle windows.
    ``servers`` are measured over the same windows (the client sleeps) with
    ``alone_servers`` paused; each of those is then measured alone. """
    everyone = [*servers, *alone_servers]
    out: dict[str, list[dict[str, Any]]] = {s.name: [] for s in everyone}
    for group in [list(servers), *[[s] for s in alone_servers]]:
        with alone(group, everyone):
            for _ in range(windows):
                for server in group:
                    server.control("lag", reset=1)
                time.sleep(window_s)
                for server in group:
                    out[server.name].append(server.control("lag", reset=1))
    return out


def lag_table(windows: dict[str, list[dict[str, Any]]], sessions: dict[str, int]) -> dict[str, dict[str, Any]]:
    table = {}
    for name, rows in windows.items():
        maxima = [r["max_ms"] for r in rows if r["max_ms"] is not None]
        table[name] = {
            "sessions": sessions[name],
            "windows": len(rows),
            "probe_samples": sum(r["samples"] for r in rows),
            "max_ms_median": median_of(rows, "max_ms"),
            "max_ms_min": min(maxima) if maxima else None,
            "max_ms_max": max(maxima) if maxima else None,
            "p99_ms_median": median_of(rows, "p99_ms"),
            "p50_ms_median": median_of(rows, "p50_ms"),
        }
    base = table.get("off", {}).get("max_ms_median")
    for row in table.values():
        row["max_added_vs_off_ms"] = (
            None if base is None or row["max_ms_median"] is None else round(row["max_ms_median"] - base, 3)
        )
    return table


def periodic_ticks(server: BenchServer, since: float) -> dict[str, Any]:
    """ ``tick_ms`` of the sampler's own periodic ticks since ``since``, from
    memwatch's history: what each tick added to the loop during the windows. """
    samples = server.api(f"history?since={since}&limit=1000")["samples"]
    return summarize([s["tick_ms"] / 1000 for s in samples if s.get("tick_ms") is not None])


# --- 3. ticks --------------------------------------------------------------------------


def time_ticks(server: BenchServer, repeats: int) -> dict[str, Any]:
    """ Wall-clock figures of ``repeats`` ticks, plus ``cpu_median`` and
    ``cpu_max``: the loop thread's CPU time, which other processes' load on
    this shared machine does not inflate. """
    answer = server.control("ticks", "POST", n=repeats)
    stats = summarize([t / 1000 for t in answer["times_ms"]])
    cpu = summarize([t / 1000 for t in answer["cpu_ms"]])
    stats["cpu_median"], stats["cpu_max"] = cpu["median"], cpu["max"]
    stats["gc_collections_inside"] = answer["gc_collections_inside"]
    return stats


def tick_rows(server: BenchServer, sessions: int, extras: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for extra in extras:
        server.control("ballast", "POST", n=extra)
        state = server.control("state", objects=1)
        stats = time_ticks(server, repeats)
        rows.append({"server": server.name, "sessions": state["sessions"], "extra_objects": extra,
                     "gc_objects": state["gc_objects"], "rss_bytes": state["rss_bytes"], **stats})
        log(f"ticks {server.name} {sessions} sessions {extra:,} extra: median {stats['median']} ms")
    server.control("ballast", "POST", n=0)
    return rows


def tick_ratios(rows: Sequence[dict[str, Any]], key: str = "median") -> dict[str, float | None]:
    """ Per number of sessions: median tick (``key``: wall ``median`` or
    ``cpu_median``) with the most extra objects over the same with none. """
    out: dict[str, float | None] = {}
    for sessions in sorted({r["sessions"] for r in rows}):
        mine = [r for r in rows if r["sessions"] == sessions]
        base = min(mine, key=lambda r: r["extra_objects"])
        big = max(mine, key=lambda r: r["extra_objects"])
        out[str(sessions)] = ratio(big[key], base[key])
    return out


# --- 2b. heavy operations ----------------------------------------------------------


def measure_operation(server: BenchServer, label: str, method: str, path: str, *, fork: bool) -> dict[str, Any]:
    forked = server.control("fork", "POST", n=3) if fork else None
    server.control("lag", reset=1)
    started = time.perf_counter()
    error = None
    body: dict[str, Any] = {}
    try:
        body = server.api(path, method)
    except RuntimeError as e:
        error = str(e)[:200]
    elapsed_s = time.perf_counter() - started
    time.sleep(0.1)  # the probe's next samples, after the answer
    lag = server.control("lag", reset=1)
    return {
        "server": server.name,
        "operation": label,
        "elapsed_s": round(elapsed_s, 3),
        "max_lag_ms": lag["max_ms"],
        "p99_lag_ms": lag["p99_ms"],
        "technique": body.get("technique"),
        "worker_private_bytes": body.get("worker_private_bytes"),
        "fork_ms": body.get("fork_ms"),
        "bare_fork_ms": None if forked is None else round(statistics.median(forked["times_ms"]), 3),
        "rss_bytes": None if forked is None else forked["rss_bytes"],
        "error": error,
    }


def wait_for_orphan(server: BenchServer, timeout_s: float = 30.0) -> str:
    """ The id of a destroyed session whose Document the app leaked. """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = server.api("orphans")
        held = [*rows["orphans"], *rows["pending"]]
        if held:
            return str(held[0]["session_id"])
        time.sleep(0.25)
    raise RuntimeError(f"{server.name}: the leaked session was not destroyed in {timeout_s} s")


# --- 4. store ----------------------------------------------------------------------


def fill_store(store: Any, samples: int, apps: int) -> float:
    """ Append ``samples`` samples of ``apps`` apps; returns seconds. """
    from bokeh_memwatch.schema import APP_FIELDS, PROCESS_FIELDS

    started = time.perf_counter()
    for i in range(samples):
        process = {name: float(i) for name in PROCESS_FIELDS}
        process["t"] = 1.7e9 + 5.0 * i
        per_app = {f"/app{k}": {name: float(i + k) for name in APP_FIELDS} for k in range(apps)}
        store.append(process, per_app)
    return time.perf_counter() - started


def measure_store(samples: int, apps: int) -> dict[str, Any]:
    """ A store sized for 24 h at the default interval, filled with
    ``samples`` samples of ``apps`` apps in this process: once under
    tracemalloc (memory), once without (times). """
    from bokeh_memwatch.options import MemwatchOptions
    from bokeh_memwatch.store.ring import SampleStore

    capacity = MemwatchOptions().capacity
    tracemalloc.start(1)
    try:
        before, _ = tracemalloc.get_traced_memory()
        traced_store = SampleStore(capacity)
        fill_store(traced_store, samples, apps)
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    nbytes = traced_store.nbytes()
    del traced_store
    store = SampleStore(capacity)
    append_s = fill_store(store, samples, apps)
    started = time.perf_counter()
    rows = store.query(limit=samples)
    query_s = time.perf_counter() - started
    started = time.perf_counter()
    json.dumps(rows)
    dumps_s = time.perf_counter() - started
    started = time.perf_counter()
    json.dumps(store.query(limit=1000))
    page_s = time.perf_counter() - started
    return {
        "capacity": capacity,
        "samples": samples,
        "apps": apps,
        "hours_of_history": round(samples * 5000 / 1000 / 3600, 2),
        "nbytes": nbytes,
        "traced_bytes": traced,
        "append_us_mean": round(append_s / samples * 1e6, 2),
        "query_all_ms": round(query_s * 1000, 1),
        "json_dumps_all_ms": round(dumps_s * 1000, 1),
        "query_and_dumps_1000_ms": round(page_s * 1000, 1),
        "query_rows": len(rows),
    }


# --- the run ----------------------------------------------------------------------------


@contextlib.contextmanager
def servers_running(profile: Profile, log_dir: Path) -> Iterator[dict[str, BenchServer]]:
    common = {"check_ms": 1000, "lifetime_ms": 3_600_000}
    servers = [
        BenchServer("off", "off", log_dir, **common),
        BenchServer("on", "on", log_dir, interval_ms=profile.interval_ms, **common),
        BenchServer("on+tracemalloc", "on", log_dir, interval_ms=profile.interval_ms, tracemalloc=1, **common),
        BenchServer("memlog", "memlog", log_dir, memlog_ms=profile.interval_ms, **common),
    ]
    start_all(servers)
    try:
        yield {s.name: s for s in servers}
    finally:
        stop_all(servers)


def run(profile: Profile, out_dir: Path = RESULTS) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "profile": asdict(profile),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": list(os.getloadavg())},
        "started_at": time.time(),
    }
    with servers_running(profile, out_dir / "logs") as servers:
        on, off, tm, memlog = servers["on"], servers["off"], servers["on+tracemalloc"], servers["memlog"]
        result["rss_at_start_bytes"] = {name: s.control("state")["rss_at_start_bytes"] for name, s in servers.items()}

        # One leaked Document per memwatch server, for the chain search.
        for server in (on, tm):
            get_page(server.app_url + "?leak=1")
            server.control("expire_leaked", "POST")

        # 3a. ticks at the smallest number of sessions.
        first = profile.tick_sessions[0]
        open_sessions([(s, first) for s in servers.values()])
        ticks = tick_rows(on, first, profile.tick_extras, profile.tick_repeats)

        # 1. latency, all modes alternating.
        log("latency")
        result["latency"] = measure_latency(profile, servers)

        # 2. lag under the default sampler at ``sessions`` sessions.
        log(f"opening sessions up to {profile.sessions} per server")
        open_sessions([(s, profile.tracemalloc_sessions if s is tm else profile.sessions)
                       for s in servers.values()])
        for server in servers.values():
            server.control("gc", "POST")
        log("lag windows")
        lag_servers = [off, on, tm, memlog]
        since = time.time()
        # Bokeh's mem log scans the heap for ~1 s every interval: measured alone.
        windows = lag_windows([off, on, tm], profile.lag_windows, profile.lag_window_s, [memlog])
        periodic = {name: periodic_ticks(servers[name], since) for name in ("on", "on+tracemalloc")}
        states = {name: s.control("state") for name, s in servers.items()}
        result["lag"] = {"sessions": profile.sessions, "extra_objects": 0, "interval_ms": profile.interval_ms,
                         "window_s": profile.lag_window_s, "windows": windows,
                         "table": lag_table(windows, {n: st["sessions"] for n, st in states.items()}),
                         "sampler": {n: states[n].get("memwatch") for n in ("on", "on+tracemalloc")},
                         "periodic_ticks": periodic}

        # 4b. RSS at ``sessions`` sessions (separate processes, after a full collection).
        result["rss"] = {
            name: {"sessions": st["sessions"], "rss_at_start_bytes": st["rss_at_start_bytes"],
                   "rss_bytes": st["rss_bytes"], "growth_bytes": st["rss_bytes"] - st["rss_at_start_bytes"],
                   "memwatch_store_bytes": (st.get("memwatch") or {}).get("store_bytes"),
                   "memwatch_registry_bytes": (st.get("memwatch") or {}).get("registry_bytes")}
            for name, st in states.items()
        }

        # 3b. ticks at ``sessions`` sessions (if in the list).
        for n in profile.tick_sessions[1:]:
            if n <= profile.sessions:
                ticks += tick_rows(on, n, profile.tick_extras, profile.tick_repeats)

        # 2b/5. lag with ``ops_extra`` extra objects, and Bokeh's _log_mem.
        log(f"lag windows with {profile.ops_extra:,} extra objects")
        for server in lag_servers:
            server.control("ballast", "POST", n=profile.ops_extra)
        windows_big = lag_windows([off, on, tm], profile.lag_windows_big, profile.lag_window_s, [memlog])
        result["lag_big_heap"] = {"sessions": profile.sessions, "extra_objects": profile.ops_extra,
                                  "table": lag_table(windows_big, {n: st["sessions"] for n, st in states.items()}),
                                  "windows": windows_big}
        memlog_ticks: dict[str, Any] = {
            "extra_objects": profile.ops_extra,
            "memwatch": time_ticks(on, profile.tick_repeats),
            "memlog": time_ticks(memlog, profile.memlog_ticks),
        }
        memlog.control("ballast", "POST", n=0)
        memlog_ticks["memlog_no_extra"] = time_ticks(memlog, profile.memlog_ticks)
        memlog_ticks["memwatch_tick_ms_median"] = memlog_ticks["memwatch"]["median"]
        result["memlog"] = memlog_ticks

        # 2c. heavy operations, ``ops_extra`` extra objects on the heap.
        log("heavy operations")
        orphans = {name: wait_for_orphan(servers[name]) for name in ("on", "on+tracemalloc")}
        ops = []
        for name, label, method, path, kind in OPERATIONS:
            if not profile.heavy_operations and "smoke" not in kind:
                continue
            row = measure_operation(servers[name], label, method, path.format(orphan=orphans[name]),
                                    fork=kind.startswith("heavy"))
            row["kind"] = kind.split()[0]
            ops.append(row)
            log(f"{name} {label}: {row['elapsed_s']} s, max lag {row['max_lag_ms']} ms {row['error'] or ''}")
        result["operations"] = {"sessions": {n: states[n]["sessions"] for n in ("on", "on+tracemalloc")},
                                "extra_objects": profile.ops_extra, "rows": ops}
        for server in lag_servers:
            server.control("ballast", "POST", n=0)

        # 3c. ticks at more sessions than the lag figures use.
        for n in profile.tick_sessions[1:]:
            if n > profile.sessions:
                log(f"opening sessions up to {n} on 'on'")
                open_sessions([(on, n)])
                ticks += tick_rows(on, n, profile.tick_extras, profile.tick_repeats)
        result["ticks"] = {"rows": ticks, "ratio_most_extra_vs_none": tick_ratios(ticks),
                           "cpu_ratio_most_extra_vs_none": tick_ratios(ticks, "cpu_median"),
                           "repeats": profile.tick_repeats}

    # 4a. the store.
    log("store")
    result["store"] = measure_store(profile.store_samples, profile.store_apps)
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    result["targets"] = check_targets(result)
    return result


# --- targets ------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    limit: str
    measured: str
    met: bool | None
    note: str = ""

    def row(self) -> dict[str, Any]:
        return asdict(self)


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    targets: list[Target] = []
    figures = result["latency"]["figures"]
    for figure in ("page GET", "pull_session", "websocket round trip"):
        on = figures[figure]["on"]
        r, pooled, c = on["paired_ratio_vs_off"], on["ratio_vs_off"], on["server_cpu_ratio_vs_off"]
        targets.append(Target(f"{figure}: on / off (paired by round; pooled medians; server CPU)", "<= 1.03",
                              f"{r}; {pooled}; {c}", None if r is None else r <= 1.03))
    added = result["lag"]["table"]["on"]["max_added_vs_off_ms"]
    tick_max = result["lag"]["periodic_ticks"]["on"]["max"]
    targets.append(Target(f"default sampler: max IOLoop lag added at {result['lag']['sessions']} sessions "
                          "(probe max on - off; longest periodic tick)", "<= 2 ms", f"{added} ms; {tick_max} ms",
                          None if added is None or tick_max is None else max(added, tick_max) <= 2.0))
    cpu_ratios = result["ticks"]["cpu_ratio_most_extra_vs_none"]
    for sessions, r in result["ticks"]["ratio_most_extra_vs_none"].items():
        most = max(result["profile"]["tick_extras"])
        c = cpu_ratios.get(sessions)
        targets.append(Target(f"tick with {most:,} extra objects / none, {sessions} sessions (CPU; wall)",
                              "<= 1.2", f"{c}; {r}", None if c is None else c <= 1.2))
    heavy = [r for r in result["operations"]["rows"] if r["kind"] == "heavy"]
    worst = max(heavy, key=lambda r: r["max_lag_ms"] or 0)
    targets.append(Target(f"longest IOLoop stall of any heavy on-demand operation, "
                          f"{result['operations']['extra_objects']:,} extra objects",
                          "<= 50 ms", f"{worst['max_lag_ms']} ms ({worst['server']}: {worst['operation']})",
                          None if worst["max_lag_ms"] is None else worst["max_lag_ms"] <= 50))
    store = result["store"]
    scale = store["capacity"] / max(1, store["samples"])  # 1 in the full run; the smoke run extrapolates
    nbytes, traced = store["nbytes"] * scale, store["traced_bytes"] * scale
    targets.append(Target(f"store for 24 h at 5 s, {store['apps']} apps", "<= 10 MB",
                          f"{nbytes / 1e6:.2f} MB (nbytes), {traced / 1e6:.2f} MB traced"
                          + (" (extrapolated)" if scale > 1 else ""),
                          max(nbytes, traced) <= 10e6))
    return [t.row() for t in targets]


# --- rendering ----------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def render_ticks(ticks: dict[str, Any]) -> list[str]:
    out = [f"## 3. Sampler tick time ({ticks['repeats']} ticks back to back on the loop, ms)", ""]
    out += table(["sessions", "extra objects", "gc-tracked objects", "RSS MiB", "median", "min", "p90", "max",
                  "CPU median", "CPU max", "gc runs inside (gen0/1/2)"],
                 [[r["sessions"], r["extra_objects"], r["gc_objects"], _mib(r["rss_bytes"]), r["median"], r["min"],
                   r["p90"], r["max"], r["cpu_median"], r["cpu_max"], "/".join(map(str, r["gc_collections_inside"]))]
                  for r in ticks["rows"]])
    cpu_ratios = ticks.get("cpu_ratio_most_extra_vs_none", {})
    out += [""] + [f"- {n} sessions: median tick with the most extra objects / with none = {_fmt(r)} wall, "
                   f"{_fmt(cpu_ratios.get(n))} CPU" for n, r in ticks["ratio_most_extra_vs_none"].items()]
    return out


def render_markdown(result: dict[str, Any]) -> str:
    p = result["profile"]
    out = [f"# memwatch benchmark ({p['name']})", "",
           f"{result['machine']['cpus']} CPUs, Python {result['machine']['python']}, load average at start "
           f"{', '.join(f'{x:.2f}' for x in result['machine']['load_avg_at_start'])}; "
           f"run took {result['elapsed_s']} s.", ""]

    out += ["## Targets", ""]
    out += table(["target", "limit", "measured", "met"],
                 [[t["name"], t["limit"], t["measured"], {True: "yes", False: "**NO**", None: "?"}[t["met"]]]
                  for t in result["targets"]], "llll")

    lat = result["latency"]
    out += ["", f"## 1. Session latency and websocket round trip ({lat['rounds']} alternating rounds, ms)", ""]
    rows = []
    for figure, per_mode in lat["figures"].items():
        for mode, s in per_mode.items():
            rows.append([figure, mode, s["n"], s["median"], s["min"], s["p90"], s["max"], s["ratio_vs_off"],
                         s.get("paired_ratio_vs_off"), s["server_cpu_ms_median"], s["server_cpu_ratio_vs_off"]])
    out += table(["figure", "mode", "n", "median", "min", "p90", "max", "median / off", "paired by round / off",
                  "server CPU per op", "CPU / off"], rows, "llrrrrrrrrr")
    out += ["", "- Each batch runs with the other servers paused (SIGSTOP). \"Paired by round\": the median "
                "over rounds of this mode's median / off's median within the round (batches back to back)."]
    per = lat.get("per_session")
    if per:
        out += ["", f"- memwatch's own work per new session, timed inside the `on` server over "
                    f"{per['documents']} Documents: {per['memwatch_handler_ms_mean']} ms in its handler's "
                    f"`modify_document`, of {per['initialize_document_ms_mean']} ms for Bokeh's "
                    f"`Application.initialize_document` (share {per['memwatch_share']})."]

    for key, title in (("lag", "## 2. IOLoop lag, idle server, default sampler"),
                       ("lag_big_heap", "## 2b. IOLoop lag with extra objects")):
        lag = result[key]
        out += ["", f"{title}: {lag['extra_objects']:,} extra objects, "
                    f"probe every 5 ms, {p['lag_window_s']} s windows (ms)", ""]
        out += table(["server", "sessions", "windows", "probe samples", "max (median of windows)", "max min",
                      "max max", "p99 (median)", "p50 (median)", "max added vs off"],
                     [[name, r["sessions"], r["windows"], r["probe_samples"], r["max_ms_median"], r["max_ms_min"],
                       r["max_ms_max"], r["p99_ms_median"], r["p50_ms_median"], r["max_added_vs_off_ms"]]
                      for name, r in lag["table"].items()])
    sampler = result["lag"]["sampler"]
    periodic = result["lag"]["periodic_ticks"]
    out += [""] + [f"- {name} sampler, its periodic ticks during the windows (memwatch's history, `tick_ms`): "
                   f"{periodic[name]['n']} ticks, median {periodic[name]['median']} ms, "
                   f"max {periodic[name]['max']} ms; "
                   f"since start: {s['ticks']} ticks, max {s['max_tick_ms']} ms (interval {s['interval_ms']} ms)"
                   for name, s in sampler.items() if s]

    ops = result["operations"]
    out += ["", f"## 2c. On-demand operations: {ops['extra_objects']:,} extra objects; sessions: "
                f"{', '.join(f'{k} {v}' for k, v in ops['sessions'].items())}", ""]
    out += table(["server", "operation", "kind", "elapsed s", "max lag ms", "p99 lag ms", "technique",
                  "worker private MiB", "server RSS MiB", "its fork() ms", "bare fork() ms", "error"],
                 [[r["server"], r["operation"], r["kind"], r["elapsed_s"], r["max_lag_ms"], r["p99_lag_ms"],
                   r["technique"], _mib(r["worker_private_bytes"]), _mib(r["rss_bytes"]), r.get("fork_ms"),
                   r["bare_fork_ms"], r["error"]] for r in ops["rows"]], "lllrrrlrrrrl")

    out += ["", *render_ticks(result["ticks"])]

    mem = result["memlog"]
    out += ["", f"## 5. Reference: Bokeh's `_log_mem` (`--mem-log-frequency`, `bokeh` logger at DEBUG), "
                f"{result['lag']['sessions']} sessions (ms)", ""]
    out += table(["tick", "extra objects", "n", "median", "min", "max"],
                 [["memwatch Sampler.tick", mem["extra_objects"], mem["memwatch"]["n"], mem["memwatch"]["median"],
                   mem["memwatch"]["min"], mem["memwatch"]["max"]],
                  ["Bokeh _log_mem", mem["extra_objects"], mem["memlog"]["n"], mem["memlog"]["median"],
                   mem["memlog"]["min"], mem["memlog"]["max"]],
                  ["Bokeh _log_mem", 0, mem["memlog_no_extra"]["n"], mem["memlog_no_extra"]["median"],
                   mem["memlog_no_extra"]["min"], mem["memlog_no_extra"]["max"]]])

    store = result["store"]
    out += ["", "## 4. memwatch's own memory", "",
            f"- Store: capacity {store['capacity']:,} samples (24 h at 5 s), {store['samples']:,} appended with "
            f"{store['apps']} apps ({store['hours_of_history']} h): `nbytes()` {store['nbytes'] / 1e6:.2f} MB, "
            f"tracemalloc {store['traced_bytes'] / 1e6:.2f} MB; append {store['append_us_mean']} µs; "
            f"`query()` of all {store['query_rows']:,} samples {store['query_all_ms']} ms "
            f"+ `json.dumps` {store['json_dumps_all_ms']} ms (reading the whole day in one request, on the loop); "
            f"one page of 1000 samples (`GET api/history?limit=1000`) {store.get('query_and_dumps_1000_ms')} ms.",
            ""]
    out += table(["server", "sessions", "RSS at start MiB", "RSS MiB", "growth MiB", "RSS - off MiB",
                  "store bytes", "registry bytes"],
                 [[name, r["sessions"], _mib(r["rss_at_start_bytes"]), _mib(r["rss_bytes"]), _mib(r["growth_bytes"]),
                   _mib(r["rss_bytes"] - result["rss"]["off"]["rss_bytes"]), r["memwatch_store_bytes"],
                   r["memwatch_registry_bytes"]] for name, r in result["rss"].items()])
    return "\n".join(out) + "\n"


def write_results(result: dict[str, Any], out_dir: Path, stem: str = "results") -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(result)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / f"{stem}.md").write_text(markdown)
    return markdown


def main(argv: list[str] | None = None, *, runner: Callable[[Profile, Path], dict[str, Any]] = run) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI (well under a minute)")
    parser.add_argument("--out", default=str(RESULTS), help="directory for results.{md,json} (default: %(default)s)")
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the server processes are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    profile = SMOKE if args.smoke else FULL
    out_dir = Path(args.out)
    result = runner(profile, out_dir)
    print(write_results(result, out_dir))


if __name__ == "__main__":
    main()
