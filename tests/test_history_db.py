""" The SQLite history: shared by workers, kept across restarts, bounded. """
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from bokeh_memwatch import MemWatch
from bokeh_memwatch.store.history_db import (
    DB_FILENAME,
    HistoryDB,
    default_history_dir,
    resolve_history_dir,
    select_latest_per_pid,
    select_samples,
)

from .conftest import api, free_port, http, script_app, wait_until
from .test_command import ENV, serve_argv


def sample(t: float, rss: float = 1e6, apps: dict[str, dict[str, float]] | None = None) -> dict[str, object]:
    return {"t": t, "rss_bytes": rss, "sessions": 1.0, "apps": apps or {}}


def make_db(tmp_path: Path, server: str = "srv", **kwargs: object) -> HistoryDB:
    db = HistoryDB(str(tmp_path), server=server, max_age_s=kwargs.pop("max_age_s", 3600),  # type: ignore[arg-type]
                   max_bytes=kwargs.pop("max_bytes", 1 << 20), **kwargs)  # type: ignore[arg-type]
    db.open(thread=False)
    return db


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


# -- issue 17: bounded reads on the loop, a file that goes away or goes bad ---------------


def _plan(db: HistoryDB, sql: str, args: list[Any]) -> list[str]:
    assert db._reader is not None
    return [row[3] for row in db._reader.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall()]


def test_every_read_on_the_loop_is_an_index_range_search(tmp_path: Path) -> None:
    db = make_db(tmp_path, max_bytes=1 << 26)
    try:
        for i in range(300):
            db.write(sample(float(i)))
        assert db._writer is not None
        db._writer.execute("ANALYZE")  # the planner's choice must hold with statistics too
        variants: list[dict[str, Any]] = [
            {}, {"since": 10.0}, {"limit": 1000}, {"since": 10.0, "limit": 5}, {"pid": 7},
            {"pid": 7, "since": 1.0, "limit": 10}, {"exclude_pid_from": (1, 2.0), "limit": 1000},
            {"since": 3.0, "exclude_pid_from": (1, 2.0), "limit": 10, "pid": None},
        ]
        for kwargs in variants:
            sql, args = select_samples("srv", **kwargs)
            plan = _plan(db, sql, args)
            assert not any(step.startswith("SCAN") for step in plan), (kwargs, plan)
            index = "samples_server_pid_t" if kwargs.get("pid") is not None else "samples_server_t"
            assert any(step.startswith("SEARCH") and index in step for step in plan), (kwargs, plan)
            assert "USE TEMP B-TREE FOR ORDER BY" not in plan, (kwargs, plan)  # no sort of every row
        sql, args = select_latest_per_pid("srv", since=100.0)
        plan = _plan(db, sql, args)
        # One range search over the window (t > ?), not a pass over every row of the server.
        assert [step for step in plan if "samples" in step] == [
            "SEARCH samples USING INDEX samples_server_t (server=? AND t>?)"], plan
        assert db.latest_per_pid(since=250.5)[os.getpid()]["t"] == 299.0
    finally:
        db.close()


def _history_memwatch(tmp_path: Path, **options: Any) -> MemWatch:
    return MemWatch(interval_ms=100, orphan_grace_ms=0, history_dir=str(tmp_path),
                    history_max_bytes=1 << 30, **options)


def _db(mw: MemWatch) -> HistoryDB:
    wait_until(lambda: mw.cluster is not None and mw.cluster.db is not None and mw.cluster.db.written >= 2,
               what="history written")
    assert mw.cluster is not None and mw.cluster.db is not None
    return mw.cluster.db


def _read_steps(server: Any, db: HistoryDB, url: str) -> int:
    """ SQLite virtual-machine steps (in tens) the reader spends on one request. """
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    def install(handler: Any) -> None:
        with db._read_lock:
            assert db._reader is not None
            db._reader.set_progress_handler(handler, 10)

    server.call(lambda: install(count))
    try:
        status, _, _ = http("GET", url)
        assert status == 200
    finally:
        server.call(lambda: install(None))
    return steps[0]


def test_summary_and_scrape_do_not_grow_with_the_history(serve, tmp_path: Path) -> None:
    from bench.history_read import fill

    mw = _history_memwatch(tmp_path)
    server = serve({"/clean": script_app("clean")}, memwatch=mw)
    db = _db(mw)
    assert mw.cluster is not None
    urls = [f"{server.url}/memwatch/api/summary", f"{server.url}/memwatch/metrics"]
    before = [_read_steps(server, db, url) for url in urls]
    # 30k rows of earlier processes of this server, the newest a minute old.
    fill(db.path, mw.cluster.key, rows=30_000, pids=6, apps=2, span_s=20 * 3600)
    after = [_read_steps(server, db, url) for url in urls]
    for url, b, a in zip(urls, before, after, strict=True):
        assert a <= 3 * b + 200, f"{url}: {a * 10} SQLite steps with 30k rows, {b * 10} without"
    assert [w["pid"] for w in api(server.url, "summary")["workers"]] == [os.getpid()]


def _rows(path: str) -> int:
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as connection:
        return int(connection.execute("SELECT count(*) FROM samples").fetchone()[0])


def test_a_deleted_history_file_is_noticed_and_reopened(serve, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bokeh_memwatch")
    mw = _history_memwatch(tmp_path)
    server = serve({"/clean": script_app("clean")}, memwatch=mw)
    db = _db(mw)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(db.path + suffix)
    wait_until(lambda: api(server.url, "summary")["history"]["reopened"] >= 1, timeout_s=20, what="reopen")
    assert any("was deleted while in use" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    wait_until(lambda: _rows(db.path) >= 3, what="samples in the new file")
    history = api(server.url, "summary")["history"]
    assert history["enabled"] and history["error"] is None, history


def test_a_corrupt_history_file_is_noticed_moved_aside_and_replaced(serve, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bokeh_memwatch")
    mw = _history_memwatch(tmp_path)
    server = serve({"/clean": script_app("clean")}, memwatch=mw)
    db = _db(mw)
    # Partial corruption: the table's root page points nowhere (SQLITE_CORRUPT on every use).
    with contextlib.closing(sqlite3.connect(db.path, timeout=10, isolation_level=None)) as connection:
        version = connection.execute("PRAGMA schema_version").fetchone()[0]
        connection.execute("PRAGMA writable_schema = ON")
        connection.execute("UPDATE sqlite_master SET rootpage = 1000000 WHERE name = 'samples'")
        connection.execute(f"PRAGMA schema_version = {version + 1}")
    wait_until(lambda: api(server.url, "summary")["history"]["reopened"] >= 1, timeout_s=20, what="recovery")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("is corrupt" in w for w in warnings), warnings
    assert os.path.exists(db.path + ".corrupt")
    wait_until(lambda: _rows(db.path) >= 3, what="samples in the new file")
    # A file replaced by garbage: noticed as replaced, found not a database, moved aside.
    reopened = db.reopened
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"this is not a database" * 1000)
    os.replace(garbage, db.path)
    wait_until(lambda: api(server.url, "summary")["history"]["reopened"] > reopened, timeout_s=20, what="reopen")
    history = api(server.url, "summary")["history"]
    assert history["enabled"] and history["error"] is None, history


def test_an_unusable_history_says_so_in_the_summary(serve, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="bokeh_memwatch")
    (tmp_path / "real").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "real")
    mw = _history_memwatch(tmp_path / "state")
    server = serve({"/clean": script_app("clean")}, memwatch=mw)
    db = _db(mw)
    # The directory turns into a file, at once (a symlink swapped by rename): nothing can be made there.
    (tmp_path / "a file").write_text("a file, not a directory")
    (tmp_path / "new link").symlink_to(tmp_path / "a file")
    os.replace(tmp_path / "new link", tmp_path / "state")
    wait_until(lambda: "cannot reopen" in (api(server.url, "summary")["history"]["error"] or ""), timeout_s=20,
               what="the error")
    history = api(server.url, "summary")["history"]
    assert not history["enabled"] and "cannot reopen" in history["error"], history
    assert any("cannot reopen" in r.getMessage() for r in caplog.records)
    written = db.written
    wait_until(lambda: api(server.url, "summary")["sampler"]["ticks"] >= 5, what="ticks")
    assert api(server.url, "summary")["history"]["written"] == written  # sampling goes on, in memory


def test_a_corrupt_file_at_open_is_moved_aside(tmp_path: Path, caplog) -> None:
    (tmp_path / DB_FILENAME).write_bytes(b"not a database at all" * 500)
    db = make_db(tmp_path)
    try:
        db.write(sample(1.0))
        assert [r["t"] for r in db.query()] == [1.0]
        assert (tmp_path / f"{DB_FILENAME}.corrupt").read_bytes().startswith(b"not a database")
        assert any("not a usable database" in r.getMessage() for r in caplog.records)
    finally:
        db.close()
