""" The SQLite history: shared by workers, kept across restarts, bounded. """
from __future__ import annotations

import ast
import os
import sqlite3
import time
from pathlib import Path

import pytest

from bokeh_memwatch.history_db import DB_FILENAME, HistoryDB, default_history_dir, resolve_history_dir

from .conftest import ROOT, api, free_port, wait_until
from .test_command import ENV, serve_argv


def sample(t: float, rss: float = 1e6, apps: dict[str, dict[str, float]] | None = None) -> dict[str, object]:
    return {"t": t, "rss_bytes": rss, "sessions": 1.0, "apps": apps or {}}


def make_db(tmp_path: Path, server: str = "srv", **kwargs: object) -> HistoryDB:
    db = HistoryDB(str(tmp_path), server=server, max_age_s=kwargs.pop("max_age_s", 3600),  # type: ignore[arg-type]
                   max_bytes=kwargs.pop("max_bytes", 1 << 20), **kwargs)  # type: ignore[arg-type]
    db.open(thread=False)
    return db


def test_collectors_and_store_side_import_neither_tornado_nor_bokeh_server() -> None:
    for name in ("history_db", "cgroup", "cluster", "limits"):
        tree = ast.parse((ROOT / "bokeh_memwatch" / f"{name}.py").read_text())
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [m for m in imported if m.startswith(("tornado", "bokeh.server"))], (name, imported)


def test_write_query_and_server_isolation(tmp_path: Path) -> None:
    db = make_db(tmp_path)
    other = make_db(tmp_path, server="another server")
    try:
        for t in (10.0, 11.0, 12.0):
            db.submit(sample(t, apps={"/a": {"sessions": 1.0}}))
        other.submit(sample(11.5))
        rows = db.query()
        assert [r["t"] for r in rows] == [10.0, 11.0, 12.0]
        assert rows[0]["pid"] == os.getpid() and rows[0]["apps"] == {"/a": {"sessions": 1.0}}
        assert [r["t"] for r in db.query(since=10.0, limit=1)] == [12.0]
        assert [r["t"] for r in db.query(exclude_pid_from=(os.getpid(), 11.0))] == [10.0]
        assert db.query(pid=os.getpid() + 1) == []
        assert set(db.latest_per_pid(since=11.0)) == {os.getpid()}
        assert db.latest_per_pid(since=11.0)[os.getpid()]["t"] == 12.0
        assert [r["t"] for r in other.query()] == [11.5]
        assert db.query(limit=0) == []
    finally:
        db.close()
        other.close()
    with sqlite3.connect(tmp_path / DB_FILENAME) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_non_finite_numbers_are_stored_as_null(tmp_path: Path) -> None:
    db = make_db(tmp_path)
    db.submit(sample(1.0, rss=float("nan")))
    assert db.query()[0]["rss_bytes"] is None
    db.close()


def test_bounded_by_age_and_size(tmp_path: Path) -> None:
    now = [1000.0]
    db = make_db(tmp_path, max_age_s=100, max_bytes=256 * 1024, clock=lambda: now[0], prune_every_s=0)
    try:
        db.submit(sample(850.0))
        db.submit(sample(950.0))
        assert [r["t"] for r in db.query()] == [950.0]  # 850 is older than 100 s
        big = {f"/app{i}": {"sessions": float(i), "models": 1e6} for i in range(40)}
        for i in range(2000):
            now[0] = 1000.0 + i * 0.01
            db.submit({"t": now[0], "rss_bytes": 1.0, "apps": big})
        assert db.size_bytes() <= 256 * 1024
        assert os.path.getsize(tmp_path / DB_FILENAME) <= 2 * 256 * 1024
        rows = db.query()
        assert 0 < len(rows) < 2000 and rows[-1]["t"] == pytest.approx(now[0])
        assert db.pruned > 0 and db.write_errors == 0
    finally:
        db.close()


def test_writer_thread_and_measured_cost(tmp_path: Path) -> None:
    db = HistoryDB(str(tmp_path), server="srv", max_age_s=3600, max_bytes=1 << 24, queue_size=1000)
    db.open()
    try:
        put_us = []
        for i in range(200):
            started = time.perf_counter()
            assert db.submit(sample(float(i), apps={"/a": {"sessions": 1.0, "models": 10.0}}))
            put_us.append((time.perf_counter() - started) * 1e6)
        assert db.flush()
        assert len(db.query()) == 200
        state = db.state()
        assert state["written"] == 200 and state["dropped"] == 0
        assert state["write_us_median"] is not None and state["write_us_max"] is not None
        put_us.sort()
        # What the IOLoop pays per tick: a queue put, far below a millisecond.
        assert put_us[len(put_us) // 2] < 200
    finally:
        db.close()


def test_full_queue_drops_instead_of_blocking(tmp_path: Path) -> None:
    db = HistoryDB(str(tmp_path), server="srv", max_age_s=3600, max_bytes=1 << 20, queue_size=1)
    db.open(thread=False)
    db._thread = object()  # type: ignore[assignment]  # pretend a writer that never drains
    try:
        assert db.submit(sample(1.0))
        assert not db.submit(sample(2.0))
        assert db.dropped == 1
    finally:
        db._thread = None
        db.close()


def test_unusable_directory_is_an_error_at_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    db = HistoryDB(str(blocker / "sub"), server="s", max_age_s=10, max_bytes=1 << 20)
    with pytest.raises(OSError):
        db.open()


def test_default_directory() -> None:
    assert default_history_dir({"XDG_STATE_HOME": "/state"}) == "/state/bokeh-memwatch"
    assert default_history_dir({}, home="/home/u") == "/home/u/.local/state/bokeh-memwatch"
    assert default_history_dir({"XDG_STATE_HOME": "relative"}, home="") .startswith("/")
    assert resolve_history_dir("none") is None and resolve_history_dir("OFF") is None
    assert resolve_history_dir("", {"XDG_STATE_HOME": "/x"}) == "/x/bokeh-memwatch"
    assert resolve_history_dir("/tmp/h") == "/tmp/h"


def test_history_survives_a_restart(run_command, tmp_path: Path) -> None:
    port = free_port()
    argv = serve_argv(port, "--memwatch-history-dir", str(tmp_path), "tests/apps/clean.py")
    first = run_command(argv, port, env=ENV)
    wait_until(lambda: api(first.url, "summary")["history"]["written"] >= 5, what="samples written")
    first_pid = first.proc.pid
    first.stop()

    second = run_command(argv, port, env=ENV)
    summary = api(second.url, "summary")
    assert summary["pid"] == second.proc.pid != first_pid
    assert [w["pid"] for w in summary["workers"]] == [second.proc.pid]  # the old process is not a worker
    wait_until(lambda: api(second.url, "summary")["sampler"]["ticks"] >= 3, what="ticks")
    samples = api(second.url, "history?limit=1000")["samples"]
    pids = [s["pid"] for s in samples]
    assert pids.count(first_pid) >= 5 and pids.count(second.proc.pid) >= 3
    times = [s["t"] for s in samples]
    assert times == sorted(times)
    # The earlier run's samples come first, then this one's, all of this server.
    assert max(s["t"] for s in samples if s["pid"] == first_pid) < min(
        s["t"] for s in samples if s["pid"] == second.proc.pid)
    only_first = api(second.url, f"history?pid={first_pid}")["samples"]
    assert only_first and {s["pid"] for s in only_first} == {first_pid}
    since = api(second.url, f"history?since={times[-1] - 0.001}")["samples"]
    assert all(s["t"] > times[-1] - 0.001 for s in since)
    api(second.url, "history?pid=abc", expect=400)
