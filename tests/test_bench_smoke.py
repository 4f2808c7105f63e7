""" The benchmark suite (bench/) still runs: ``python -m bench --smoke``
writes its Markdown and JSON results with the expected structure.  Timings
are not checked here (the full run reports them against its targets). """
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LATENCY_FIGURES = {"page GET", "pull_session", "websocket round trip"}
SERVERS = {"off", "on", "on+tracemalloc", "memlog"}


def test_bench_smoke_writes_results(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(tmp_path / "state")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    markdown = (tmp_path / "results.md").read_text()
    assert done.stdout.strip() == markdown.strip()
    for heading in ("## Targets", "## 1. Session latency", "## 2. IOLoop lag", "## 2c. On-demand operations",
                    "## 3. Sampler tick time", "## 4. memwatch's own memory", "## 5. Reference"):
        assert heading in markdown

    result = json.loads((tmp_path / "results.json").read_text())
    assert result["format_version"] == 1 and result["profile"]["name"] == "smoke"
    figures = result["latency"]["figures"]
    assert set(figures) == LATENCY_FIGURES
    for per_mode in figures.values():
        assert set(per_mode) == {"off", "on", "on+tracemalloc"}
        for stats in per_mode.values():
            assert stats["n"] >= 1 and stats["min"] <= stats["median"] <= stats["max"]
            assert stats["ratio_vs_off"] is not None
    for key in ("lag", "lag_big_heap"):
        assert set(result[key]["table"]) == SERVERS
        for row in result[key]["table"].values():
            assert row["probe_samples"] > 0 and row["max_ms_median"] is not None
    assert result["lag"]["sampler"]["on"]["ticks"] >= 1

    ops = result["operations"]["rows"]
    assert {r["kind"] for r in ops} == {"heavy", "in-process"}
    assert all(r["error"] is None and r["max_lag_ms"] is not None for r in ops), ops
    assert {r["technique"] for r in ops if r["kind"] == "heavy"} <= {"fork", "thread"}

    ticks = result["ticks"]
    sessions = {r["sessions"] for r in ticks["rows"]}
    extras = {r["extra_objects"] for r in ticks["rows"]}
    assert len(ticks["rows"]) == len(sessions) * len(extras) == 4
    assert set(ticks["ratio_most_extra_vs_none"]) == {str(n) for n in sessions}

    assert result["memlog"]["memlog"]["n"] >= 1 and result["memlog"]["memwatch"]["n"] >= 1
    assert set(result["rss"]) == SERVERS
    assert all(r["rss_bytes"] > 0 for r in result["rss"].values())
    store = result["store"]
    assert store["capacity"] == 17280 and store["nbytes"] > 0 and store["traced_bytes"] > 0
    assert len(result["targets"]) >= 7
    assert all(t["met"] in (True, False, None) and t["measured"] for t in result["targets"])


def test_verify_stall_smoke(tmp_path: Path) -> None:
    """ ``python -m bench.verify_stall --smoke``: a verification runs once
    sessions are destroyed, none while nothing is unproven. """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(tmp_path / "state")}
    done = subprocess.run(
        [sys.executable, "-m", "bench.verify_stall", "--smoke"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "verifications in 2 s quiet before / after: 0 / 0" in done.stdout, done.stdout
    assert "| loop ms (prepare + fork + apply) |" in done.stdout
    assert "(2 orphans," in done.stdout, done.stdout


def test_memray_bench_smoke_writes_results(tmp_path: Path) -> None:
    """ ``python -m bench.memray_cost --smoke``: the four servers (issue 18) and every figure. """
    from bokeh_memwatch.heap.memray_backend import have_memray

    if not have_memray():
        if os.environ.get("CI"):
            raise AssertionError("memray is not installed: CI installs the test extra, which includes it")
        import pytest

        pytest.skip("memray is not installed (pip install bokeh-memwatch[memray])")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(tmp_path / "state")}
    done = subprocess.run(
        [sys.executable, "-m", "bench.memray_cost", "--smoke", "--out", str(tmp_path)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "memray.json").read_text())
    modes = {"off", "on", "on+tracemalloc", "on+memray"}
    for per_mode in result["latency"]["figures"].values():
        assert set(per_mode) == modes and per_mode["on+memray"]["paired_ratio_vs_off"] is not None
    assert set(result["lag"]) == modes and set(result["rss"]) == modes
    assert all(op["error"] is None and op["max_lag_ms"] is not None for op in result["operations"]), result
    assert "## Targets" in (tmp_path / "memray.md").read_text()
