""" Sampler tick time against sessions and heap size, on its own.

The same figure as section 3 of the suite (``python -m bench``), which now
owns the code: one ``bench.serve`` process with memwatch (the sampler's
interval set to an hour, so it ticks only when asked), sessions of the
realistic app opened by page GETs and kept, ``N`` extra one-item lists kept
alive, and ``Sampler.tick()`` timed back to back on the server's IOLoop.

    python -m bench.sampler_tick                 # 10/200/1000 sessions x 0/1M/3M objects
    python -m bench.sampler_tick --smoke         # seconds
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .run import FULL, RESULTS, SMOKE, render_ticks, tick_ratios, tick_rows
from .servers import BenchServer, open_sessions, start_all, stop_all

__all__ = ("main", "run")


def run(sessions_list: tuple[int, ...], extras: tuple[int, ...], repeats: int, out_dir: Path) -> dict[str, Any]:
    server = BenchServer("on", "on", out_dir / "logs", interval_ms=3_600_000, check_ms=1000, lifetime_ms=3_600_000)
    start_all([server])
    try:
        rows: list[dict[str, Any]] = []
        for n in sessions_list:
            open_sessions([(server, n)])
            rows += tick_rows(server, n, extras, repeats)
    finally:
        stop_all([server])
    return {"rows": rows, "ratio_most_extra_vs_none": tick_ratios(rows), "repeats": repeats}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", default=str(RESULTS), help="where to write sampler_tick.{md,json}")
    args = parser.parse_args(argv)
    profile = SMOKE if args.smoke else FULL
    out = Path(args.out)
    result = run(profile.tick_sessions, profile.tick_extras, profile.tick_repeats, out)
    markdown = "\n".join(render_ticks(result)) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampler_tick.json").write_text(json.dumps(result, indent=1))
    (out / "sampler_tick.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
