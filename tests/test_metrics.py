""" Prometheus metrics, from real servers, parsed by prometheus_client. """
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from bokeh_memwatch import MemWatch
from bokeh_memwatch.schema import METRIC_NAMES

from .conftest import ROOT, api, free_port, http, open_and_close_sessions, script_app, wait_until
from .test_command import ENV, serve_argv

TOKEN = "metrics-test-token-0123456789"


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """ {family name: family} of one scrape; also checks the transport. """
    status, hdrs, text = http("GET", f"{url}/memwatch/metrics", headers=headers)
    assert status == 200, text
    assert hdrs["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(hdrs["X-Memwatch-Pid"]) > 0
    return {family.name: family for family in text_string_to_metric_families(text)}


def values(families: dict[str, Any], name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """ Samples of one family, keyed by their labels, filtered by ``labels``. """
    out = {}
    for family in families.values():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(families: dict[str, Any], name: str, **labels: str) -> float:
    found = values(families, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return next(iter(found.values()))


def sample_names(families: dict[str, Any]) -> set[str]:
    names = {s.name for f in families.values() for s in f.samples}
    names |= {f.name + ("_total" if f.type == "counter" else "") for f in families.values()}
    return names


def scrape_having(url: str, name: str) -> dict[str, Any]:
    """ The first scrape that has a sample of ``name``. """
    def attempt() -> dict[str, Any] | None:
        families = scrape(url)
        return families if values(families, name) else None

    found = wait_until(attempt, what=f"{name} in the metrics")
    assert found is not None
    return found


def memwatch(tmp_path: Path, **options: Any) -> MemWatch:
    return MemWatch(interval_ms=100, orphan_grace_ms=0, gc_min_interval_s=0, history_dir=str(tmp_path), **options)


def test_scrape_after_a_leak_matches_the_api(serve, tmp_path: Path) -> None:
    server = serve({"/leak_global": script_app("leak_global")}, memwatch=memwatch(tmp_path))
    open_and_close_sessions(f"{server.url}/leak_global", 3)
    wait_until(lambda: api(server.url, "summary")["sessions_destroyed_total"] >= 3, what="sessions destroyed")
    api(server.url, "gc", "POST")
    pid = str(api(server.url, "summary")["pid"])

    def settled() -> tuple[dict[str, Any], dict[str, Any]] | None:
        families = scrape(server.url)
        summary = api(server.url, "summary")
        same = summary["orphans"] == 3 and all(
            one(families, f"bokeh_memwatch_{metric}", pid=pid) == summary[key]
            for metric, key in [("orphans", "orphans"), ("sessions", "sessions"), ("documents", "documents"),
                                ("models", "models"), ("retained_models", "models_retained"),
                                ("data_bytes", "data_bytes"), ("pending_orphans", "pending_orphans"),
                                ("held_by_timers", "held_by_timers"), ("awaiting_collection", "awaiting_collection")]
        )
        return (families, summary) if same else None

    agreed = wait_until(settled, what="metrics and summary agree")
    assert agreed is not None
    families, summary = agreed
    # Names: the prefix, units in the names, _total on counters, pid and app labels.
    assert families and all(name.startswith("bokeh_memwatch_") for name in families)
    for family in families.values():
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        for s in family.samples:
            assert "pid" in s.labels or s.name == "bokeh_memwatch_workers", s
    assert families["bokeh_memwatch_sessions_created"].type == "counter"
    assert one(families, "bokeh_memwatch_sessions_created_total", pid=pid) == summary["sessions_created_total"] == 3
    assert one(families, "bokeh_memwatch_sessions_destroyed_total", pid=pid) == 3
    assert one(families, "bokeh_memwatch_app_orphans", pid=pid, app="/leak_global") == 3
    assert one(families, "bokeh_memwatch_app_sessions", pid=pid, app="/leak_global") == 0
    assert one(families, "bokeh_memwatch_app_retained_models", pid=pid, app="/leak_global") == (
        summary["apps"]["/leak_global"]["models_retained"])
    rss = one(families, "bokeh_memwatch_rss_bytes", pid=pid)
    assert 0.5 * summary["rss_bytes"] < rss < 2 * summary["rss_bytes"]
    assert 0 < one(families, "bokeh_memwatch_sampler_tick_seconds", pid=pid) < 1
    assert one(families, "bokeh_memwatch_sampler_ticks_total", pid=pid) >= 1
    assert one(families, "bokeh_memwatch_workers") == 1
    assert families["bokeh_memwatch_rss_bytes"].type == "gauge"
    assert set(families) <= {n.removesuffix("_total") for n in METRIC_NAMES} | set(METRIC_NAMES)
    assert "GET metrics" in {f"{e['method']} {e['path']}" for e in api(server.url, "")["endpoints"]}


def test_the_memory_limit_is_a_metric(serve, tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    # Above this process's RSS (so no report), below the machine's memory (so a real limit).
    limit = 4 * psutil.Process().memory_info().rss
    assert limit < psutil.virtual_memory().total
    (cgroup / "memory.max").write_text(f"{limit}\n")
    server = serve({"/clean": script_app("clean")}, memwatch=memwatch(tmp_path / "h", cgroup_root=str(cgroup)))
    pid = str(api(server.url, "summary")["pid"])
    families = scrape_having(server.url, "bokeh_memwatch_rss_limit_ratio")
    assert one(families, "bokeh_memwatch_memory_limit_bytes", pid=pid) == limit
    ratio = one(families, "bokeh_memwatch_rss_limit_ratio", pid=pid)
    assert ratio == one(families, "bokeh_memwatch_rss_bytes", pid=pid) / limit
    summary = api(server.url, "summary")
    assert summary["memory_limit_bytes"] == limit and 0 < summary["rss_fraction_of_limit"] < 0.5
    assert summary["limit"]["reports_total"] == 0


def test_metrics_without_the_http_side(serve, tmp_path: Path) -> None:
    server = serve({"/clean": script_app("clean")}, memwatch=memwatch(tmp_path, http=False))
    assert http("GET", f"{server.url}/memwatch/api/summary")[0] == 404
    assert http("GET", f"{server.url}/memwatch")[0] == 404
    families = scrape_having(server.url, "bokeh_memwatch_rss_bytes")
    assert one(families, "bokeh_memwatch_sessions_created_total") == 0


def test_metrics_need_the_token_when_one_is_set(serve, tmp_path: Path) -> None:
    server = serve({"/clean": script_app("clean")}, memwatch=memwatch(tmp_path, token=TOKEN))
    status, headers, body = http("GET", f"{server.url}/memwatch/metrics")
    assert status == 401 and headers["Content-Type"].startswith("application/json") and "token" in body["error"]
    assert http("GET", f"{server.url}/memwatch/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert scrape(server.url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert http("GET", f"{server.url}/memwatch/metrics?x=1",
                headers={"Authorization": f"Bearer {TOKEN}"})[0] == 400


def test_metrics_refuse_remote_clients_without_auth(serve, tmp_path: Path) -> None:
    server = serve({"/clean": script_app("clean")}, memwatch=memwatch(tmp_path), use_xheaders=True)
    assert http("GET", f"{server.url}/memwatch/metrics", headers={"X-Forwarded-For": "203.0.113.9"})[0] == 403


def test_grafana_dashboard_queries_only_metrics_that_exist(serve, tmp_path: Path) -> None:
    dashboard = json.loads((ROOT / "grafana" / "bokeh_memwatch.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    queried = {m for e in exprs for m in re.findall(r"\bbokeh_memwatch_[a-z_]+", e)}
    assert len(dashboard["panels"]) >= 8 and len(queried) >= 15
    server = serve({"/leak_global": script_app("leak_global")}, memwatch=memwatch(tmp_path))
    open_and_close_sessions(f"{server.url}/leak_global", 1)
    names = sample_names(scrape(server.url))
    assert queried <= names, queried - names
    assert queried <= set(METRIC_NAMES)


def test_num_procs_every_worker_in_any_answer(run_command, tmp_path: Path) -> None:
    port = free_port()
    server = run_command(
        serve_argv(port, "--num-procs", "2", "--memwatch-history-dir", str(tmp_path), "tests/apps/leak_global.py"),
        port, env=ENV,
    )

    def both_listed() -> dict[str, Any] | None:
        summary = api(server.url, "summary")
        return summary if len(summary["workers"]) == 2 else None

    summary = wait_until(both_listed, timeout_s=30, what="two workers in summary.workers")
    assert summary is not None
    pids = {w["pid"] for w in summary["workers"]}
    assert server.proc.pid not in pids
    assert [w["pid"] for w in summary["workers"] if w["self"]] == [summary["pid"]]
    for worker in summary["workers"]:
        assert worker["rss_bytes"] > 0 and worker["age_s"] < 10
        assert {"sessions", "orphans", "documents", "models_retained"} <= set(worker)

    # Whichever worker answers, it lists both; its metrics carry both pids.
    answered: set[int] = set()

    def both_answered() -> bool:
        status, headers, text = http("GET", f"{server.url}/memwatch/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert {k[0][1] for k in values(families, "bokeh_memwatch_rss_bytes")} == {str(p) for p in pids}
        answered.add(int(headers["X-Memwatch-Pid"]))
        body = api(server.url, "summary")
        assert {w["pid"] for w in body["workers"]} == pids
        answered.add(body["pid"])
        return bool(answered == pids)

    wait_until(both_answered, timeout_s=30, interval_s=0.01, what="answers from both workers")

    # A leak in one worker shows in the numbers every worker reports.
    open_and_close_sessions(f"{server.url}/leak_global", 4)

    def leak_seen() -> bool:
        workers = api(server.url, "summary")["workers"]
        return bool(sum(w["sessions_destroyed_total"] for w in workers) >= 4)

    wait_until(leak_seen, timeout_s=30, what="destroyed sessions in summary.workers")
    history = api(server.url, "history?limit=1000")["samples"]
    assert {s["pid"] for s in history} == pids
