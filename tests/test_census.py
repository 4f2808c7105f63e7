""" The census (census.py): what a full collection keeps, by type, in a real
forked heap worker; growth with closed sessions; the live server's API,
metrics, advice and dashboard (``panel serve --plugins bokeh_memwatch.panel``). """
from __future__ import annotations

import asyncio
import functools
import gc
import os
import time
from typing import Any

import numpy as np
import pytest

from bokeh_memwatch import MemWatch
from bokeh_memwatch.analyze.advice import census_advice
from bokeh_memwatch.heap import chains
from bokeh_memwatch.heap.census import CensusManager, CensusUnavailable, census_job, growing_types, is_generic
from bokeh_memwatch.heap.worker import HeapWorker

from .conftest import api, dataframe_type, free_port, http, open_and_close_sessions, script_app, wait_until
from .test_panel_plugin import ENV, needs_plugins, open_pages, panel_argv

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the census needs os.fork")


def point(closed: int, **counts: int) -> dict[str, Any]:
    return {"closed": closed, "counts": {k.replace("__", "."): [v, v * 100] for k, v in counts.items()}}


def test_growth_is_per_closed_session_and_a_cache_filled_once_is_not() -> None:
    points = [point(5, app__Leaky=5, app__Cache=1, app__Noise=40, dict=1000),
              point(10, app__Leaky=10, app__Cache=1, app__Noise=41, dict=1100),
              point(15, app__Leaky=15, app__Cache=1, app__Noise=43, dict=1200)]
    rows = growing_types(points)
    assert [r["type"] for r in rows] == ["app.Leaky"]
    assert rows[0]["growth_per_session"] == 1 and rows[0]["bytes_per_session"] == 100
    assert not rows[0]["generic"]
    # Generic containers are reported only when asked, never as application types.
    assert {r["type"] for r in growing_types(points, include_generic=True)} == {"app.Leaky", "dict"}
    # No closed session between the censuses: no growth to speak of.
    assert growing_types([point(5, app__Leaky=5), point(5, app__Leaky=50)]) == []
    # A count that fell in between is not retained per session.
    assert growing_types([point(0, app__X=0), point(5, app__X=1), point(10, app__X=20)]) == [] or \
        growing_types([point(0, app__X=10), point(5, app__X=2), point(10, app__X=20)]) == []
    assert growing_types([point(0, app__X=10), point(5, app__X=2), point(10, app__X=20)]) == []


@pytest.mark.parametrize(("key", "generic"), [
    ("dict", True), ("_contextvars.Context", True), ("asyncio.events.TimerHandle", True),
    ("tornado.httputil.HTTPHeaders", True), ("socket.socket", True),
    ("panel.widgets.tables.Tabulator", False), ("pandas.core.frame.DataFrame", False), ("numpy.ndarray", False),
    ("param.parameterized.Watcher", False), ("tests.apps.prefs.Prefs", False),
])
def test_generic_types(key: str, generic: bool) -> None:
    assert is_generic(key) is generic


class Kept:
    """ Held by the module-level list below. """


class Garbage:
    """ Only in reference cycles nobody refers to. """

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:  # must never run in the child
        os.write(_DEL_FD[0], b"x")


HOLDER: list[Any] = []
_DEL_FD: list[int] = []


def run_census(previous: dict[str, Any] | None, closed: int) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        job = functools.partial(census_job, previous=previous, closed=closed, roots=chains.capture_roots(),
                                parent_pid=os.getpid())
        return (await HeapWorker().run(job, timeout_s=120)).value  # type: ignore[no-any-return]

    return asyncio.run(go())


def test_census_counts_survivors_only_and_names_the_holder() -> None:
    read_fd, write_fd = os.pipe()
    _DEL_FD[:] = [write_fd]
    gc.disable()  # the garbage below must still exist at the fork
    try:
        for _ in range(30):
            Garbage()
        HOLDER.extend(Kept() for _ in range(10))
        base = np.zeros(250_000)  # 2 MB, held only through a view (arrays are untracked)
        HOLDER.append({"view": base[10:]})
        del base
        first = run_census(None, closed=10)
        HOLDER.extend(Kept() for _ in range(10))
        base = np.zeros(250_000)
        HOLDER.append({"view": base[10:]})
        del base
        second = run_census({"closed": first["closed"], "counts": first["counts"]}, closed=20)
    finally:
        gc.enable()
        HOLDER.clear()
        gc.collect()  # the parent's garbage runs its __del__ here, not in the child
        os.close(write_fd)
        wrote = os.read(read_fd, 1024)
        os.close(read_fd)
    assert len(wrote) >= 30  # the finalizers ran once, in the parent
    key = f"{__name__}.Kept"
    assert first["counts"][key][0] == 10 and second["counts"][key][0] == 20
    assert f"{__name__}.Garbage" not in second["counts"]  # unreachable cycles are not survivors
    arrays = second["counts"]["numpy.ndarray"]
    assert arrays[1] - first["counts"]["numpy.ndarray"][1] >= 2_000_000  # the base array's data counted
    assert first["explained"] == {}
    held = second["explained"][key]
    assert held["complete"] and held["root"] == {"kind": "module", "name": __name__}, held
    assert ".HOLDER" in held["text"], held["text"]
    assert held["instance_bytes"] and held["instance_bytes"] > 0
    for name in ("objects", "tracked", "garbage", "scan_s", "count_s"):
        assert isinstance(second[name], (int, float))
    assert second["garbage"] >= 30


def test_manager_rate_limit_and_no_fork() -> None:
    async def go() -> None:
        manager = CensusManager(HeapWorker(), closed=lambda: 0, interval_s=0, min_interval_s=3600)
        state = await manager.run()
        assert state["censuses"] == 1 and state["available"] and state["growing"] == []
        with pytest.raises(CensusUnavailable) as limited:
            await manager.run()
        assert limited.value.retry_after_s and limited.value.retry_after_s > 3000
        await manager.run(force=True)
        assert manager.runs_total == 2
        threads = CensusManager(HeapWorker(use_fork=False), closed=lambda: 0, interval_s=0, min_interval_s=0)
        with pytest.raises(CensusUnavailable) as no_fork:
            await threads.run()
        assert no_fork.value.retry_after_s is None and "fork" in str(no_fork.value)
        assert threads.state()["available"] is False

    asyncio.run(go())


def test_advice_only_from_application_types() -> None:
    assert census_advice("/a", {"growing": [{"type": "dict", "generic": True}]}) == []
    row = {"type": "pandas.core.frame.DataFrame", "generic": False, "growth_per_session": 1,
           "bytes_per_session": 2e6, "holder": "module m -> .PREFS (Prefs) -> … -> DataFrame",
           "holder_complete": True}
    (item,) = census_advice("/a", {"growing": [row], "closed_between": 5})
    assert item["id"] == "types-grow-with-sessions" and item["severity"] == "error"
    assert ".PREFS" in item["evidence"] and "DataFrame" in item["evidence"]


ENV_CENSUS = {**ENV, "BOKEH_MEMWATCH_CENSUS_MIN_INTERVAL_S": "0", "BOKEH_MEMWATCH_CENSUS_INTERVAL_S": "0"}


@needs_plugins  # (the census itself runs on every version in the tests above)
def test_live_server_census_api_metrics_advice_dashboard(run_command) -> None:
    port = free_port()
    server = run_command(panel_argv(port, "panel_leak_prefs"), port, env=ENV_CENSUS)
    url = f"{server.url}/panel_leak_prefs"
    state = api(server.url, "census")
    assert state["censuses"] == 0 and state["growing"] == [] and state["interval_s"] == 0
    advice = api(server.url, "advice")["advice"]
    assert not any(a["id"] == "types-grow-with-sessions" for a in advice)

    closed = 0
    for _ in range(3):  # three censuses, 3 closed sessions between each
        open_pages(url, 3)
        closed += 3
        wait_until(lambda c=closed: api(server.url, "summary")["sessions_destroyed_total"] >= c,  # type: ignore[misc]
                   what="sessions destroyed")
        state = api(server.url, "census", "POST")
    assert state["censuses"] == 3 and state["closed_between"] == 6, state
    rows = {r["type"]: r for r in state["growing"]}
    assert "panel.widgets.tables.Tabulator" in rows, sorted(rows)
    assert dataframe_type() in rows, sorted(rows)
    assert all(not r["generic"] for r in rows.values())
    assert rows["numpy.ndarray"]["bytes_per_session"] > 1_500_000
    held = [r["holder"] for r in rows.values() if r["holder"]]
    assert any("tests.apps.prefs" in h and ".PREFS" in h for h in held), held
    assert state["costs"]["technique"] == "fork" and state["costs"]["elapsed_s"] > 0

    status, _, metrics = http("GET", f"{server.url}/memwatch/metrics")
    assert status == 200
    text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
    assert "bokeh_memwatch_census_runs_total" in text
    growing_line = next(line for line in text.splitlines() if line.startswith("bokeh_memwatch_census_growing_types{"))
    assert float(growing_line.rsplit(" ", 1)[1]) >= 2
    assert f'type="{state["growing"][0]["type"]}"' in text  # the top 10 by bytes per session

    advice = api(server.url, "advice")["advice"]
    item = next(a for a in advice if a["id"] == "types-grow-with-sessions")
    assert "Tabulator" in item["evidence"] and ".PREFS" in item["evidence"]
    assert not any("nothing of the sessions left alive" in a["evidence"] for a in advice)

    listed = {e["path"] for e in api(server.url, "")["endpoints"]}
    assert "api/census" in listed
    status, _, page = http("GET", f"{server.url}/memwatch")
    assert status == 200 and b"census_table" in (page if isinstance(page, bytes) else str(page).encode())


def test_scheduled_census_runs_only_after_sessions_closed(serve) -> None:
    memwatch = MemWatch(interval_ms=100, orphan_grace_ms=0, census_interval_s=0.3, census_min_interval_s=0)
    server = serve({"/clean": script_app("clean")}, memwatch=memwatch,
                   check_unused_sessions_milliseconds=100, unused_session_lifetime_milliseconds=100)
    wait_until(lambda: memwatch.census, what="memwatch started")  # (on the server's loop)
    census = memwatch.census
    assert census is not None
    # Nothing closed yet: no census (it would count what the first session fills once as growth).
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert census.runs_total == 0, "a census ran before any session closed"
        time.sleep(0.1)
    open_and_close_sessions(server.url + "/clean", 2)
    wait_until(lambda: census.runs_total >= 1, what="a census after sessions closed")
    runs = census.runs_total
    # Nothing closed since: no census.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and memwatch.tracker.destroyed_total == 2:
        if census.runs_total != runs:
            assert memwatch.tracker.destroyed_total > int(census.points[-2]["closed"])
        time.sleep(0.1)
    open_and_close_sessions(server.url + "/clean", 3)
    wait_until(lambda: memwatch.tracker.destroyed_total >= 5, what="sessions destroyed")
    wait_until(lambda: census.points and int(census.points[-1]["closed"]) >= 5, what="a census after 5 closed")
    state = server.call(census.state)
    assert state["censuses"] >= 2 and state["closed_between"] >= 2
    assert state["growing"] == []  # a clean app
