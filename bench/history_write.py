""" Cost of the SQLite history per sampler tick.

Writes realistic samples (process fields and ``--apps`` applications) to a
fresh database in a temporary directory, the way the sampler does, and
reports in microseconds:

* ``submit``: what the IOLoop pays per tick (a non-blocking queue put);
* ``write``: one INSERT in WAL mode with synchronous=NORMAL (what the writer
  thread pays; this is what the loop would pay without the thread), alone and
  with ``--writers`` processes writing the same file at once (the
  ``--num-procs`` case, where a write can wait for another worker's lock).

    python -m bench.history_write [--samples 2000] [--apps 5] [--writers 2]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from typing import Any

from bokeh_memwatch.schema import APP_FIELDS, PROCESS_FIELDS
from bokeh_memwatch.store.history_db import HistoryDB


def make_sample(t: float, apps: int) -> dict[str, Any]:
    sample: dict[str, Any] = {name: float(i * 1000) for i, name in enumerate(PROCESS_FIELDS)}
    sample["t"] = t
    sample["apps"] = {f"/app{a}": {name: float(a + i) for i, name in enumerate(APP_FIELDS)} for a in range(apps)}
    return sample


def stats(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median_us": round(statistics.median(values), 1),
            "p99_us": round(values[int(len(values) * 0.99) - 1], 1), "max_us": round(values[-1], 1)}


def sync_writes(directory: str, samples: int, apps: int, key: str) -> dict[str, float]:
    db = HistoryDB(directory, server=key, max_age_s=86400, max_bytes=64 * 2**20)
    db.open(thread=False)
    costs = []
    try:
        for i in range(samples):
            started = time.perf_counter()
            db.submit(make_sample(time.time() + i * 1e-6, apps))
            costs.append((time.perf_counter() - started) * 1e6)
    finally:
        db.close()
    return stats(costs)


def _worker(args: tuple[str, int, int, str]) -> dict[str, float]:
    return sync_writes(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--apps", type=int, default=5)
    parser.add_argument("--writers", type=int, default=2)
    args = parser.parse_args()
    result: dict[str, Any] = {"samples": args.samples, "apps": args.apps}
    with tempfile.TemporaryDirectory() as directory:
        result["write_alone"] = sync_writes(directory, args.samples, args.apps, "alone")
    with tempfile.TemporaryDirectory() as directory:
        with multiprocessing.get_context("fork").Pool(args.writers) as pool:
            per = pool.map(_worker, [(directory, args.samples, args.apps, f"w{i}") for i in range(args.writers)])
        result[f"write_{args.writers}_writers"] = per
    with tempfile.TemporaryDirectory() as directory:
        db = HistoryDB(directory, server="threaded", max_age_s=86400, max_bytes=64 * 2**20,
                       queue_size=args.samples + 1)
        db.open()
        costs = []
        for i in range(args.samples):
            sample = make_sample(time.time() + i * 1e-6, args.apps)
            started = time.perf_counter()
            db.submit(sample)
            costs.append((time.perf_counter() - started) * 1e6)
            time.sleep(0.0005)
        db.flush()
        result["submit_on_loop"] = stats(costs)
        result["writer_thread"] = db.write_cost_us()
        db.close()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
