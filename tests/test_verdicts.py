""" Exact verdicts (issue 12, inputs 1-4), on real servers with real
clients, with no collection forced: an orphan is proven by a reachability
scan of a forked copy of the heap, never guessed from the collector's
schedule. """
from __future__ import annotations

import time
import urllib.request
from typing import Any

import bokeh
from packaging.version import Version

from .conftest import api, open_and_close_sessions, script_app, wait_until

#: Bokeh before 3.10: a stopped periodic callback's pending sleep
#: (``_AsyncPeriodic.stop()`` only sets a flag) holds the Document until it
#: is due.  From 3.10 ``stop()`` cancels its task, and the sleep with it.
STOP_KEEPS_SLEEP = Version(bokeh.__version__) < Version("3.10")

NOT_JUDGED = ("pending", "held_by_timers")


def judged(url: str) -> dict[str, Any]:
    """ api/orphans once no destroyed session is pending or held by timers
    (an empty dict before). """
    orphans: dict[str, Any] = api(url, "orphans")
    return {} if any(orphans[k] for k in NOT_JUDGED) else orphans


def wait_destroyed(url: str, n: int, timeout_s: float = 30.0) -> None:
    wait_until(lambda: api(url, "summary")["sessions_destroyed_total"] >= n, timeout_s, what="sessions destroyed")


def test_input1_clean_app_with_a_periodic_callback_has_no_orphans(serve) -> None:
    """ 10 sessions of an app doing everything right: the stopped periodic
    callback's last sleep holds each Document for up to 50 ms; no orphan,
    without any collection asked for. """
    server = serve({"/app": script_app("clean_periodic")}, interval_ms=200, verify_min_interval_s=0.5)
    open_and_close_sessions(server.url + "/app", 10)
    wait_destroyed(server.url, 10)
    orphans = wait_until(lambda: judged(server.url), 60, 0.2, "every destroyed session judged")
    assert orphans["orphans"] == [] and orphans["retained_models"] == []
    summary = api(server.url, "summary")
    assert summary["orphans"] == 0 and summary["models_retained"] == 0
    assert summary["verification"]["technique"] == "reachability_scan"
    assert summary["verification"]["runs"] >= 1
    # What is left is garbage Python's next collection frees, said as such.
    assert all(r["status"] == "awaiting_collection" for r in orphans["awaiting_collection"])
    assert summary["awaiting_collection"] == len(orphans["awaiting_collection"])
    assert summary["documents"] == sum(r["document_alive"] for r in orphans["awaiting_collection"])


def test_input2_plain_page_load_is_not_an_orphan(serve) -> None:
    """ A page load without a websocket (a health check, a crawler). """
    server = serve({"/app": script_app("clean")}, interval_ms=200, verify_min_interval_s=0.5)
    with urllib.request.urlopen(server.url + "/app", timeout=30) as response:
        assert response.status == 200
        response.read()
    wait_destroyed(server.url, 1)
    orphans = wait_until(lambda: judged(server.url), 60, 0.2, "the destroyed session judged")
    assert orphans["orphans"] == [] and orphans["retained_models"] == []
    assert api(server.url, "summary")["orphans"] == 0
    # Either the collector ran meanwhile (freed), or it is awaiting collection: proven garbage.
    for row in orphans["awaiting_collection"]:
        assert row["verified_by"] == "reachability_scan"


def test_input3_real_leak_confirmed_within_grace_plus_10_s_with_defaults(serve) -> None:
    """ Three Documents appended to a module's list, on a quiet server with
    the default interval, grace period and verification interval. """
    server = serve({"/app": script_app("leak_global")}, interval_ms=5000, orphan_grace_ms=5000)
    ids = open_and_close_sessions(server.url + "/app", 3)
    wait_destroyed(server.url, 3)
    seen_documents: set[int] = set()

    def proven() -> dict[str, Any]:
        summary: dict[str, Any] = api(server.url, "summary")
        seen_documents.add(summary["documents"])
        return summary if summary["orphans"] == 3 else {}

    summary = wait_until(proven, 40, 0.25, "3 orphans proven")
    # Every alive Document is counted, whatever its state.
    assert seen_documents == {3}
    assert summary["pending_orphans"] == 0 and summary["held_by_timers"] == 0
    rows = api(server.url, "orphans")["orphans"]
    assert sorted(r["session_id"] for r in rows) == sorted(ids)
    for row in rows:
        assert row["verified_by"] == "reachability_scan"
        # When the verification that proved it started, after the destroy.
        proven_after_s = row["seconds_since_destroyed"] - row["verified_s_ago"]
        assert 5.0 <= proven_after_s <= 15.0, row


def test_input4_timer_held_document_is_freed_when_the_timer_is_due(serve) -> None:
    """ ``doc.add_periodic_callback(refresh, 10_000)``: held by the stopped
    callback's pending sleep until it is due, then garbage; never an orphan. """
    server = serve({"/app": script_app("timer_refresh")}, interval_ms=200, verify_min_interval_s=0.5)
    open_and_close_sessions(server.url + "/app", 3)
    destroyed_at = time.time()
    wait_destroyed(server.url, 3)
    if STOP_KEEPS_SLEEP:
        held = wait_until(lambda: api(server.url, "orphans")["held_by_timers"], 20, 0.1, "held by the timer")
        for row in held:
            assert row["status"] == "held_until"
            assert destroyed_at - 1 < row["held_until"] <= row["destroyed_at"] + 10.5, row
    # (From Bokeh 3.10 stop() cancels the sleep: nothing is held, the
    # sessions are judged at once; the verdict is the same.)
    assert api(server.url, "summary")["orphans"] == 0
    orphans = wait_until(lambda: judged(server.url), 40, 0.2, "the timers due and the sessions judged")
    assert orphans["orphans"] == [] and orphans["retained_models"] == []
    assert api(server.url, "summary")["orphans"] == 0


def test_self_rearming_tornado_periodic_callback_is_an_orphan(serve) -> None:
    """ A tornado PeriodicCallback started by hand re-arms itself: held by a
    timer, and still held once it was due: proven. """
    server = serve({"/app": script_app("leak_callback")}, interval_ms=200, verify_min_interval_s=0.5)
    ids = open_and_close_sessions(server.url + "/app", 2)
    wait_destroyed(server.url, 2)
    orphans = wait_until(lambda: judged(server.url), 40, 0.2, "judged")
    assert sorted(r["session_id"] for r in orphans["orphans"]) == sorted(ids)
    assert api(server.url, "summary")["orphans"] == 2
