""" Does ``os.fork()`` hang while an OpenBLAS thread pool is busy, and does
the heap worker's fork policy avoid it?  What does the policy cost per job?

Each trial is a fresh Python process (``--trial MODE``) with numpy loaded and
one daemon thread looping ``a = (a @ a) / 300.0`` on a 300x300 array (the
app in issue 17).  It then forks ``--forks`` times; each child ``os._exit``s
at once.  A trial that has not finished within ``--trial-timeout-s`` is a
hang (the parent killed it).  Modes:

* ``plain``: ``os.fork()`` as is;
* ``limits``: inside ``threadpoolctl.threadpool_limits(1)`` (the pool is
  told to use one thread, the fork happens, the limit is restored);
* ``startup_limit``: the app calls ``threadpool_limits(1)`` once at start,
  before any BLAS call (the workers exist but are never used), then plain
  forks; the policy counts such a pool as safe;
* ``policy``: ``bokeh_memwatch.heap.worker.fork_policy()`` decides; it forks
  only when it finds no native pool unsafe across fork (and runs nothing
  otherwise: the thread technique would run the job instead).

It also times the policy's inspection (``threadpoolctl.threadpool_info``,
done on the event loop before every job), first call and steady state.

    python -m bench.fork_blas                # 10 trials per mode, 5 forks each
    python -m bench.fork_blas --trials 20
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ("main",)

ROOT = Path(__file__).resolve().parent.parent
MODES = ("plain", "limits", "startup_limit", "policy")


def _trial(mode: str, forks: int) -> None:
    """ One trial (a fresh process): start the BLAS thread, fork ``forks`` times. """
    import threading

    import numpy as np

    if mode == "startup_limit":
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)

    def spin() -> None:
        a = np.random.default_rng(0).random((300, 300))
        while True:
            a = (a @ a) / 300.0

    threading.Thread(target=spin, daemon=True).start()
    time.sleep(0.2)
    forked = 0
    for _ in range(forks):
        if mode == "policy":
            from bokeh_memwatch.heap.worker import fork_policy

            if fork_policy().technique != "fork":
                time.sleep(0.05)
                continue
            pid = os.fork()
        elif mode == "limits":
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):
                pid = os.fork()
        else:
            pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forked += 1
        time.sleep(0.05)
    print(json.dumps({"forked": forked}), flush=True)


def _inspection_cost(repeats: int) -> dict[str, Any]:
    code = (
        "import json, time, numpy\n"
        "from bokeh_memwatch.heap.worker import fork_policy\n"
        "t = time.perf_counter(); fork_policy(); first = time.perf_counter() - t\n"
        "times = []\n"
        f"for _ in range({repeats}):\n"
        "    t = time.perf_counter(); fork_policy(); times.append(time.perf_counter() - t)\n"
        "print(json.dumps({'first_ms': first * 1000, 'times_ms': [x * 1000 for x in times]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    times = data["times_ms"]
    return {"first_ms": round(data["first_ms"], 3), "median_ms": round(statistics.median(times), 3),
            "max_ms": round(max(times), 3), "repeats": repeats}


def run(trials: int, forks: int, timeout_s: float, modes: tuple[str, ...]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for mode in modes:
        hangs = forked = 0
        for _ in range(trials):
            proc = subprocess.Popen([sys.executable, "-m", "bench.fork_blas", "--trial", mode,
                                     "--forks", str(forks)], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True, start_new_session=True)
            try:
                stdout, _ = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.communicate()
                hangs += 1
                continue
            lines = stdout.strip().splitlines()
            forked += json.loads(lines[-1])["forked"] if lines else 0
        results[mode] = {"trials": trials, "hung_trials": hangs, "forks_done": forked,
                         "forks_tried": trials * forks}
        print(json.dumps({mode: results[mode]}), flush=True)
    results["policy_inspection"] = _inspection_cost(200)
    print(json.dumps({"policy_inspection": results["policy_inspection"]}), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fork_blas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trial", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--forks", type=int, default=5)
    parser.add_argument("--trial-timeout-s", type=float, default=15.0)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fork_blas.json")
    args = parser.parse_args(argv)
    if args.trial:
        _trial(args.trial, args.forks)
        return
    modes = tuple(m for m in args.modes.split(",") if m)
    results = run(args.trials, args.forks, args.trial_timeout_s, modes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
