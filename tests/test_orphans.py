""" Orphans and their holders, on real servers with real clients.

Each test serves one of the apps in tests/apps through ``memwatch_server``
(the embedded way in), opens and closes sessions with
``bokeh.client.pull_session``, lets Bokeh destroy them, and asks the HTTP
API what is still alive and why.
"""
from __future__ import annotations

import contextlib
from typing import Any

import pytest
from bokeh.application import Application

from bokeh_memwatch import MemWatch
from bokeh_memwatch.testing.server import client_session

from .conftest import ROOT, api, open_and_close_sessions, script_app, settle_orphans, wait_until

N = 3


@pytest.mark.parametrize(
    ("app", "root_kind", "root_name", "must_say"),
    [
        ("leak_global", "module", "tests.apps.holders", [".DOCS", "Document"]),
        ("leak_thread", "thread", "leaky-worker-", ["closure", "Document"]),
        ("leak_callback", "callback", "PeriodicCallback", ["closure", "Document"]),
    ],
)
def test_leaking_app_reports_every_orphan_and_its_holder(serve, app, root_kind, root_name, must_say) -> None:
    server = serve({"/app": script_app(app)}, gc_min_interval_s=0)
    ids = open_and_close_sessions(server.url + "/app", N)
    orphans = settle_orphans(server.url, N)
    assert sorted(o["session_id"] for o in orphans["orphans"]) == sorted(ids)
    assert all(o["app"] == "/app" and o["document_alive"] for o in orphans["orphans"])
    summary = api(server.url, "summary")
    assert summary["orphans"] == N and summary["sessions"] == 0
    assert summary["apps"]["/app"]["orphans"] == N

    chain = api(server.url, f"orphans/{ids[0]}/chain", "POST")
    assert chain["complete"], chain
    assert chain["root"]["kind"] == root_kind, chain
    assert root_name in chain["root"]["name"], chain
    assert chain["chain"][-1]["type"].endswith("Document")
    for text in must_say:
        assert text in chain["text"], chain["text"]
    assert chain["target"] == "Document"


def test_clean_app_reports_no_orphans(serve) -> None:
    server = serve({"/app": script_app("clean")}, gc_min_interval_s=0)
    open_and_close_sessions(server.url + "/app", N)
    orphans = settle_orphans(server.url, N)
    assert {k: v for k, v in orphans.items() if k != "pid"} == {
        "orphans": [], "retained_models": [], "held_by_timers": [], "awaiting_collection": [], "pending": [],
    }
    summary = api(server.url, "summary")
    assert summary["documents"] == 0 and summary["orphans"] == 0 and summary["models_retained"] == 0
    assert summary["sessions_created_total"] == N and summary["sessions_cleaned_total"] == N


def test_bounded_leak_keeps_only_the_last_session(serve) -> None:
    server = serve({"/app": script_app("leak_last_session")}, gc_min_interval_s=0)
    ids = open_and_close_sessions(server.url + "/app", N)
    orphans = settle_orphans(server.url, N)
    assert [o["session_id"] for o in orphans["orphans"]] == [ids[-1]]
    chain = api(server.url, f"orphans/{ids[-1]}/chain", "POST")
    assert chain["root"] == {"kind": "module", "name": "tests.apps.holders"}
    assert ".LAST" in chain["text"]


def test_live_sessions_are_counted_per_session(serve) -> None:
    server = serve({"/app": script_app("clean")})
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(client_session(server.url + "/app")) for _ in range(2)]
        wait_until(lambda: api(server.url, "summary")["sessions"] == 2, what="two sessions")
        rows = api(server.url, "sessions")["sessions"]
        assert {r["id"] for r in rows} == {s.id for s in sessions}
        for row in rows:
            assert row["app"] == "/app" and row["connections"] == 1 and row["documents"] == 1
            assert row["models"] > 5 and row["data_bytes"] >= 1000 * 8
        summary = api(server.url, "summary")
        assert summary["connections"] == 2 and summary["documents"] == 2
        assert summary["models"] == sum(r["models"] for r in rows)
        assert api(server.url, "sessions?app=/nope")["sessions"] == []
        # A live session has no chain to explain.
        api(server.url, f"orphans/{sessions[0].id}/chain", "POST", expect=409)


def test_sessions_between_ticks_are_not_missed(serve) -> None:
    # A sampler that effectively never ticks: the lifecycle hooks alone must see everything.
    server = serve({"/app": script_app("leak_global")}, interval_ms=3_600_000, gc_min_interval_s=0)
    ids = open_and_close_sessions(server.url + "/app", N)
    orphans = settle_orphans(server.url, N)
    assert sorted(o["session_id"] for o in orphans["orphans"]) == sorted(ids)
    assert {o["destroy_seen_by"] for o in orphans["orphans"]} == {"hook"}


def test_history_records_activity(serve) -> None:
    server = serve({"/app": script_app("leak_global")}, gc_min_interval_s=0)
    open_and_close_sessions(server.url + "/app", 2)
    settle_orphans(server.url, 2)
    wait_until(lambda: (api(server.url, "history?limit=1")["samples"] or [{}])[-1].get("orphans") == 2,
               what="a sample with the orphans")
    samples = api(server.url, "history")["samples"]
    assert len(samples) >= 2
    last = samples[-1]
    assert last["rss_bytes"] > 0 and last["sessions_created_total"] == 2
    assert last["apps"]["/app"]["orphans"] == 2
    since = samples[-2]["t"]
    assert all(s["t"] > since for s in api(server.url, f"history?since={since}")["samples"])


def test_per_model_work_runs_in_its_own_callback(serve) -> None:
    # The sampler's tick counts; the per-Model figures (bytes in each source)
    # are refreshed by a separate callback right after it, within the budget.
    # The sessions are held open by websocket clients: Bokeh never discards a
    # connected session, so all three are in every sample until they close
    # (page loads would be unused sessions, discarded after 100 ms here).
    mw = MemWatch(interval_ms=100, orphan_grace_ms=0)
    server = serve({"/app": script_app("clean")}, memwatch=mw)

    def sampled_bytes() -> float:
        last = (api(server.url, "history?limit=1")["samples"] or [{}])[-1]
        return float((last.get("apps") or {}).get("/app", {}).get("data_bytes") or 0)

    with contextlib.ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(client_session(server.url + "/app"))
        # Only ticks write history: figures there come from the sampler's own refresh.
        wait_until(lambda: sampled_bytes() >= 3 * 1000 * 8, what="source bytes of all 3 sessions in a sample")
        sampler = server.call(lambda: mw.sampler)
        assert sampler is not None and sampler.running
        state = api(server.url, "summary")["sampler"]
        assert state["max_refresh_ms"] > 0 and state["max_tick_ms"] > 0

        # Calling tick() on the loop while the sampler runs leaves the refresh to a later callback.
        def tick_now() -> float:
            sampler.last_refresh_ms = -1.0
            sampler.tick()
            return float(sampler.last_refresh_ms)

        assert server.call(tick_now) == -1.0
        wait_until(lambda: server.call(lambda: sampler.last_refresh_ms) >= 0, what="the refresh callback")


def test_orphan_data_bytes_are_what_its_sources_hold(serve) -> None:
    # Bokeh clears a destroyed session's Models; leak_stream's never-stopped
    # callback then sets its source's data again: 2 x 10k float64 per orphan.
    from tests.apps.leak_stream import DATA_BYTES

    server = serve({"/app": script_app("leak_stream")}, gc_min_interval_s=0)
    ids = open_and_close_sessions(server.url + "/app", 2)
    settle_orphans(server.url, 2)

    def orphans_with_data() -> list[dict[str, Any]]:
        rows = api(server.url, "orphans")["orphans"]
        return rows if len(rows) == 2 and all(r["data_bytes"] == DATA_BYTES for r in rows) else []

    rows = wait_until(orphans_with_data, what="both orphans holding their sources' data")
    assert sorted(r["session_id"] for r in rows) == sorted(ids)
    assert all(r["model_types"].get("ColumnDataSource") == 1 for r in rows), rows
    wait_until(lambda: api(server.url, "summary")["apps"]["/app"]["data_bytes"] == 2 * DATA_BYTES,
               what="the app's data_bytes")
    assert api(server.url, "summary")["data_bytes"] == 2 * DATA_BYTES


def test_destroyed_sources_are_read_without_being_changed(serve) -> None:
    # The README demo's global leak keeps (Document, ColumnDataSource); Bokeh
    # cleared the source's data at destroy, so it holds 0 bytes, and reading it
    # must not make Bokeh store a fresh default ``data`` on the host's object.
    from bokeh.application.handlers.directory import DirectoryHandler

    from bokeh_memwatch._bokeh_internals import held_property_value
    from demo_app import leaks

    server = serve({"/demo_app": Application(DirectoryHandler(filename=str(ROOT / "demo_app")))},
                   gc_min_interval_s=0)
    try:
        ids = open_and_close_sessions(server.url + "/demo_app", 2, {"leak": "global"})
        orphans = settle_orphans(server.url, 2)["orphans"]
        assert sorted(o["session_id"] for o in orphans) == sorted(ids)
        assert all(o["data_bytes"] == 0 and o["model_types"].get("ColumnDataSource") == 1 for o in orphans), orphans
        api(server.url, "summary")  # one more full reconcile: every figure read again

        def untouched() -> list[tuple[Any, Any]]:
            return [(held_property_value(source, "data"), source._unstable_default_values.get("data"))
                    for _, source in leaks.CACHE]

        assert server.call(untouched) == [(None, None), (None, None)]
    finally:
        leaks.reset()
