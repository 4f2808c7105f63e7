""" Hundreds of sessions opened and closed in bursts by concurrent clients:
every one accounted for, no request failed, memwatch's memory bounded. """
from __future__ import annotations

import contextlib
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from bokeh.client import pull_session

from .conftest import api, script_app, wait_until

BURSTS = int(__import__("os").environ.get("MW_LOAD_BURSTS", "10"))
BURST = 50
WORKERS = 10


def tracker_bytes(server: Any) -> int:
    """ Memory of memwatch's session registry (records, weak references). """
    return int(server.call(server.memwatch.tracker.nbytes))


@pytest.mark.timeout(600)
def test_bursts_of_sessions_are_all_accounted_for(serve) -> None:
    if True:
        server = serve({"/clean": script_app("clean"), "/leak": script_app("leak_global")},
                       gc_min_interval_s=0, interval_ms=100)
        failures: list[str] = []

        def open_one(i: int) -> str:
            app = "/leak" if i % 5 == 0 else "/clean"
            try:
                if i % 25 == 1:  # some real websocket clients, most plain page loads
                    with contextlib.closing(pull_session(url=server.url + app)) as session:
                        return app if session.id else ""
                with urllib.request.urlopen(server.url + app, timeout=60) as response:
                    return app if response.status == 200 else ""
            except Exception as e:  # counted, not raised: the test reports them all
                failures.append(f"{app}: {e!r}")
                return ""

        opened: list[str] = []
        before_bytes = tracker_bytes(server)
        with ThreadPoolExecutor(WORKERS) as pool:
            for burst in range(BURSTS):
                opened += pool.map(open_one, range(burst * BURST, (burst + 1) * BURST))
                # Between bursts the server destroys what closed; the API keeps answering.
                summary = api(server.url, "summary")
                assert summary["sessions_created_total"] == summary["sessions"] + summary["sessions_destroyed_total"]
        assert failures == [] and len(opened) == BURSTS * BURST
        leaked = opened.count("/leak")

        wait_until(lambda: api(server.url, "summary")["sessions_destroyed_total"] == BURSTS * BURST,
                   timeout_s=60, what="every session destroyed")
        api(server.url, "gc", "POST")
        summary = wait_until(lambda: (s := api(server.url, "summary"))["orphans"] == leaked and s,
                             what="orphans counted")
        assert summary["sessions_created_total"] == BURSTS * BURST
        assert summary["sessions"] == 0 and summary["pending_orphans"] == 0
        assert summary["apps"]["/leak"]["orphans"] == leaked and summary["apps"]["/clean"].get("orphans", 0) == 0
        assert summary["sessions_cleaned_total"] == BURSTS * BURST - leaked
        assert summary["destroyed_tracked"] == leaked
        orphans = api(server.url, "orphans")
        assert len(orphans["orphans"]) == leaked and orphans["pending"] == []

        # memwatch's own memory: the registry keeps a small record per orphan
        # and a weak reference per Model still alive (a leaked Document of a
        # page load keeps its Models), nothing for sessions that were cleaned
        # up; the store is bounded by its capacity.
        retained = summary["models_retained"]
        after_bytes = tracker_bytes(server)
        store_bytes = api(server.url, "summary")["sampler"]["store_bytes"]
        print(f"memwatch registry bytes before {before_bytes}, after {after_bytes}, store {store_bytes} "
              f"({leaked} orphans and {retained} Models tracked, {BURSTS * BURST} sessions driven)")
        assert after_bytes - before_bytes < 8 * 1024 * leaked + 16 * 1024  # measured: ~4.6 KB per orphan of 35 Models
        assert store_bytes < 2 * 2**20
