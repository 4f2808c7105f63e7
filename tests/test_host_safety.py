""" Never break the host: heap work must not hang, change or depend on the app.

Real servers (``memwatch_server`` in a thread of this process, so the test
reads the apps' probes in ``tests/apps/host_probe.py``), real HTTP clients,
real sessions through ``bokeh.client.pull_session``.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.apps import host_probe

from .conftest import api, open_and_close_sessions, script_app, wait_until


@pytest.fixture(autouse=True)
def _stop_probes() -> Iterator[None]:
    host_probe.reset()
    yield
    assert host_probe.reset() == [], "a probe thread did not stop"


def settle(url: str, destroyed: int) -> list[dict[str, Any]]:
    """ Wait until Bokeh destroyed ``destroyed`` sessions; return the orphans. """
    wait_until(lambda: api(url, "summary")["sessions_destroyed_total"] >= destroyed, what="sessions destroyed")
    api(url, "gc", "POST")
    orphans: list[dict[str, Any]] = api(url, "orphans")["orphans"]
    return orphans


# --- item 3: never mutate what we inspect -----------------------------------


def test_chain_search_and_report_leave_another_threads_locals_dict_alone(serve) -> None:
    # Each session starts a thread that did ``params = locals()``, edited the
    # dict and checks it every 10 ms; its Document is a local of that frame,
    # so every chain search reads exactly that frame (3.11: f_locals would
    # rewrite ``params``; the old code emptied it).
    server = serve({"/app": script_app("locals_thread")}, gc_min_interval_s=0)
    ids = open_and_close_sessions(server.url + "/app", 2)
    orphans = settle(server.url, len(ids))
    assert sorted(o["session_id"] for o in orphans) == sorted(ids)
    for session_id in ids:
        chain = api(server.url, f"orphans/{session_id}/chain", "POST")
        assert chain["complete"], chain
        assert chain["root"]["kind"] == "frame", chain
        assert "_watch_params" in chain["root"]["name"] and "locals-watcher" in chain["root"]["name"], chain
        assert "local 'doc'" in chain["text"], chain["text"]
    report = api(server.url, "report?chains=5")
    assert sorted(report["chains"]) == sorted(ids), report["chains"]
    assert all("local 'doc'" in c["text"] for c in report["chains"].values()), report["chains"]
    # Every watcher checks its dict again after the last heap action.
    after = host_probe.checks("locals")
    wait_until(lambda: host_probe.checks("locals") >= after + 3 * len(ids), what="watchers checking again")
    assert host_probe.ERRORS == []
