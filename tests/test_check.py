""" ``bokeh-memwatch check``, the ``memwatch_leak_check`` fixture and the advice.

The CLI cases run the real console script as subprocesses (a few at a time,
started together by one module fixture, since each one mostly waits for
Bokeh to discard sessions); the fixture cases serve the apps in this process.
"""
from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bokeh_memwatch.analyze.advice import SECTIONS, advise, grows
from bokeh_memwatch.analyze.leak_verdict import chain_key, judge, passes

from .conftest import PYTHON, ROOT, api, open_and_close_sessions, script_app, wait_until

CLI = str(Path(PYTHON).with_name("bokeh-memwatch"))
N = 3
COMMON = ["--sessions", str(N), "--max-chains", "2"]

#: name -> (argv after "bokeh-memwatch check", expected exit code); JSON output unless "text".
CASES: dict[str, tuple[list[str], int]] = {
    "leak_global_text": (["tests/apps/leak_global.py", *COMMON], 1),
    # Orphans whose sources a leaked callback refills after Bokeh cleared them.
    "leak_stream_text": (["tests/apps/leak_stream.py", *COMMON], 1),
    "leak_logging": (["tests/apps/leak_logging.py", *COMMON, "--json"], 1),
    "leak_last_session": (["tests/apps/leak_last_session.py", *COMMON, "--json"], 1),
    "panel_leak_models": (["tests/apps/panel_leak_models.py", *COMMON, "--json"], 1),
    "clean": (["tests/apps/clean.py", *COMMON, "--check-unused-sessions", "50", "--json"], 0),
    "panel_clean": (["tests/apps/panel_clean.py", "--panel", *COMMON, "--json"], 0),
    # Issue 12, input 4: held by a stopped periodic callback's sleep for <= 10 s, then freed.
    "timer_refresh": (["tests/apps/timer_refresh.py", "--sessions", "10", "--json"], 0),
    # ... while a tornado PeriodicCallback started by hand re-arms itself forever.
    "leak_callback": (["tests/apps/leak_callback.py", *COMMON, "--json"], 1),
    "missing_app": (["tests/apps/no_such_app.py"], 2),
    "bad_session_args": (["tests/apps/clean.py", "--session-args", "novalue"], 2),
}

#: A user's test file: the plugin is loaded by its entry point, the fixture is all they write.
USER_TEST = """
import logging

def test_leaks(memwatch_leak_check):
    try:
        report = memwatch_leak_check({app!r}, sessions=2, max_chains=1)
        report.assert_no_orphans()
    finally:
        audit = logging.getLogger("tests.apps.audit")
        for handler in list(audit.handlers):
            audit.removeHandler(handler)
"""


def run(argv: list[str], cwd: Path = ROOT, timeout_s: float = 100.0) -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
            "elapsed_s": time.monotonic() - started}


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """ Every CLI case and a user's pytest run, three at a time; JSON output parsed. """
    user_dir = tmp_path_factory.mktemp("user_tests")
    (user_dir / "test_user_app.py").write_text(USER_TEST.format(app=str(ROOT / "tests" / "apps" / "leak_logging.py")))
    jobs: dict[str, tuple[list[str], Path]] = {name: ([CLI, "check", *argv], ROOT) for name, (argv, _) in CASES.items()}
    jobs["user_pytest"] = ([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user_app.py"], user_dir)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run, argv, cwd) for name, (argv, cwd) in jobs.items()}
        results = {name: f.result() for name, f in futures.items()}
    for result in results.values():
        try:
            result["report"] = json.loads(result["stdout"])
        except ValueError:
            result["report"] = None
    yield results


def report_of(cli: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    result = cli[name]
    assert result["rc"] == CASES[name][1], f"{name}: exit {result['rc']}\n{result['stdout']}\n{result['stderr']}"
    report = result["report"]
    assert report is not None, result["stdout"]
    for key in ("sessions", "documents_retained", "models_retained", "data_bytes_retained", "verdict", "chains"):
        assert key in report
    assert report["sessions"] == 2 * N
    return report  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("name", "must_say"),
    [
        ("leak_logging", ["module ", ".loggerDict", "['tests.apps.audit'] (Logger)", "MemoryHandler", ".buffer",
                          "LogRecord", ".args"]),
    ],
)
def test_growing_document_leaks_fail_with_their_holder(cli, name, must_say) -> None:
    report = report_of(cli, name)
    assert report["verdict"] == "leak" and report["exit_code"] == 1
    assert report["documents_retained"] == 2 * N
    app = next(iter(report["apps"].values()))
    assert [r["holding_sessions"] for r in app["rounds"]] == [N, 2 * N]
    assert app["growth_per_session"]["documents"] == 1
    chain = report["chains"][0]
    assert chain["target"] == "Document" and chain["complete"], chain
    assert chain["count"] == 2 and chain["retained_of_kind"] == 2 * N  # two searched, same holder
    for text in must_say:
        assert text in chain["text"], chain["text"]
    ids = {a["id"] for a in report["advice"]}
    assert {"documents-outlive-sessions", "retention-grows"} <= ids, ids
    for item in report["advice"]:
        assert set(item) >= {"id", "severity", "title", "evidence", "fix", "article_section"}
        assert item["article_section"] in SECTIONS.values()


def test_bounded_leak_is_told_from_a_growing_one(cli) -> None:
    report = report_of(cli, "leak_last_session")
    assert report["verdict"] == "bounded" and report["exit_code"] == 1  # tolerance 0
    app = report["apps"]["/leak_last_session"]
    assert [(r["holding_sessions"], r["documents"]) for r in app["rounds"]] == [(1, 1), (1, 1)]
    assert report["documents_retained"] == 1
    assert ".LAST" in report["chains"][0]["text"]
    ids = {a["id"] for a in report["advice"]}
    assert "bounded-retention" in ids and "retention-grows" not in ids


def test_check_text_counts_the_bytes_orphans_hold_in_sources(cli) -> None:
    # leak_stream: each orphan's ColumnDataSource holds 2 x 10k float64 again
    # once its never-stopped callback refilled it.
    from bokeh_memwatch.units import format_bytes
    from tests.apps.leak_stream import DATA_BYTES

    result = cli["leak_stream_text"]
    assert result["rc"] == 1, result["stdout"] + result["stderr"]
    per = [line for line in result["stdout"].splitlines() if "retained per closed session:" in line]
    assert per and "1 Documents" in per[0] and f", {format_bytes(DATA_BYTES)};" in per[0], result["stdout"]
    rounds = [line for line in result["stdout"].splitlines() if line.strip().startswith("after round")]
    assert rounds and all("0 B in ColumnDataSources" not in line for line in rounds), result["stdout"]


def test_panel_models_leak_without_the_document(cli) -> None:
    report = report_of(cli, "panel_leak_models")
    assert report["verdict"] == "leak"
    assert report["documents_retained"] == 0
    assert report["models_retained"] >= 2 * N
    app = report["apps"]["/panel_leak_models"]
    assert app["model_types"].get("ColumnDataSource") == 2 * N
    chain = report["chains"][0]
    assert chain["target"] == "ColumnDataSource"
    assert "tests.apps.holders" in chain["text"] and ".GLOBAL_SELECT" in chain["text"], chain["text"]
    assert "models-outlive-documents" in {a["id"] for a in report["advice"]}


@pytest.mark.parametrize("name", ["clean", "panel_clean"])
def test_clean_apps_pass(cli, name) -> None:
    report = report_of(cli, name)
    assert report["verdict"] == "clean" and report["exit_code"] == 0
    assert report["documents_retained"] == report["models_retained"] == report["data_bytes_retained"] == 0
    assert report["chains"] == []
    assert not [a for a in report["advice"] if a["severity"] == "error"]


def test_timer_held_documents_are_clean_once_the_timer_is_due(cli) -> None:
    """ Issue 12, input 4: ``check`` waits until the holding timers are due
    and verifies again; a self-rearming tornado PeriodicCallback stays a leak. """
    result = cli["timer_refresh"]
    assert result["rc"] == 0, f"exit {result['rc']}\n{result['stdout']}\n{result['stderr']}"
    report = result["report"]
    assert report["verdict"] == "clean" and report["sessions"] == 20
    assert report["documents_retained"] == report["models_retained"] == 0
    for r in report["apps"]["/timer_refresh"]["rounds"]:
        assert r["unjudged"] == 0 and r["verified_by"] == "reachability_scan"
    assert not [a for a in report["advice"] if a["severity"] == "error"]
    leak = report_of(cli, "leak_callback")
    assert leak["verdict"] == "leak" and leak["documents_retained"] == 2 * N
    assert "PeriodicCallback" in leak["chains"][0]["text"]


def test_text_report_usage_errors_and_speed(cli) -> None:
    result = cli["leak_global_text"]
    assert result["rc"] == 1, result
    out = result["stdout"]
    assert "/leak_global: LEAK (FAIL" in out and "6 Document(s)" in out, out
    assert "2 x Document (of 6 retained): module tests.apps.holders -> .DOCS (list) -> [" in out, out
    assert "advice:" in out and "see: Best Practices" in out and "verdict: leak -> exit 1" in out

    assert "does not exist" in cli["missing_app"]["stderr"], cli["missing_app"]
    assert "KEY=VALUE" in cli["bad_session_args"]["stderr"]
    slow = {name: round(r["elapsed_s"], 1) for name, r in cli.items() if r["elapsed_s"] > 60}
    assert not slow, slow


def test_plugin_in_a_users_test_file(cli) -> None:
    """ The plugin as users get it: auto-loaded, a fixture, the chain in the failure. """
    result = cli["user_pytest"]
    assert result["rc"] == 1, result
    assert "1 failed" in result["stdout"]
    assert "4 Document(s) outlived their sessions (orphans)" in result["stdout"], result["stdout"]
    assert "MemoryHandler" in result["stdout"] and "LogRecord" in result["stdout"]


# -- the pytest fixture ----------------------------------------------------------------


def test_fixture_passes_a_clean_app(memwatch_leak_check) -> None:
    report = memwatch_leak_check(ROOT / "tests" / "apps" / "clean.py", sessions=4)
    report.assert_no_orphans()
    report.assert_clean()
    assert report.verdict == "clean" and report.sessions == 8


def test_fixture_fails_a_leaking_app_with_the_chain(memwatch_leak_check) -> None:
    report = memwatch_leak_check(str(ROOT / "tests" / "apps" / "leak_global.py"), sessions=N, max_chains=1)
    with pytest.raises(AssertionError) as info:
        report.assert_no_orphans()
    message = str(info.value)
    assert f"{2 * N} Document(s) outlived their sessions (orphans)" in message
    assert "module tests.apps.holders -> .DOCS (list) -> [" in message
    with pytest.raises(AssertionError, match="leak"):
        report.assert_clean()


@pytest.mark.parametrize(
    ("app", "must_say"),
    [
        ("leak_thread", ["thread 'leaky-worker-", "closure 'doc'"]),
        ("leak_callback", ["PeriodicCallback", "closure 'doc'"]),
    ],
)
def test_fixture_names_threads_and_callbacks(memwatch_leak_check, app, must_say) -> None:
    report = memwatch_leak_check(ROOT / "tests" / "apps" / f"{app}.py", sessions=N, max_chains=2)
    assert report.verdict == "leak" and not report.passed
    assert report.documents_retained == 2 * N
    assert [r["holding_sessions"] for r in report.app["rounds"]] == [N, 2 * N]
    assert report.chains[0]["count"] == 2, report.chains  # two searched, one holder once deduplicated
    for text in must_say:
        assert text in report.chains[0]["text"], report.chains
    assert {"documents-outlive-sessions", "retention-grows", "no-cleanup-hooks"} <= {a["id"] for a in report.advice}


def test_fixture_tolerates_a_bounded_slot(memwatch_leak_check) -> None:
    report = memwatch_leak_check(ROOT / "tests" / "apps" / "leak_last_session.py", sessions=N, tolerance=1)
    assert report.verdict == "bounded" and report.documents_retained == 1
    report.assert_clean()


# -- GET api/advice ------------------------------------------------------------------------


def test_advice_endpoint(serve) -> None:
    server = serve({"/app": script_app("leak_global")}, gc_min_interval_s=0)
    open_and_close_sessions(server.url + "/app", N)
    wait_until(lambda: api(server.url, "summary")["sessions_destroyed_total"] >= N, what="sessions destroyed")
    api(server.url, "gc", "POST")
    advice = wait_until(lambda: api(server.url, "advice")["advice"], what="advice")
    by_id = {a["id"]: a for a in advice}
    assert by_id["documents-outlive-sessions"]["title"] == "Sessions at 0 while Documents stay alive"
    assert "/app" in by_id["documents-outlive-sessions"]["evidence"]
    assert by_id["no-cleanup-hooks"]["app"] == "/app"
    assert any(e["path"] == "api/advice" for e in api(server.url, "")["endpoints"])
    api(server.url, "advice?x=1", expect=400)


def test_cleanup_hooks_are_counted(serve) -> None:
    from bokeh_memwatch.collect.app_handler import own_cleanup_hooks

    server = serve({"/app": script_app("clean")})
    open_and_close_sessions(server.url + "/app", 2)
    assert server.call(server.memwatch.cleanup_hooks) == {"/app": {"sessions": 2, "with_hooks": 0}}

    from bokeh.document import Document

    doc = Document()
    doc.on_session_destroyed(lambda ctx: None)
    assert own_cleanup_hooks(doc) == 1


# -- pure functions --------------------------------------------------------------------------


def test_judge_and_chain_key() -> None:
    r = lambda h, d, m: {"holding_sessions": h, "documents": d, "models": m}  # noqa: E731
    assert judge([r(0, 0, 0), r(0, 0, 0)]) == "clean"
    assert judge([r(3, 3, 30), r(6, 6, 60)]) == "leak"
    assert judge([r(1, 1, 0), r(1, 1, 35)]) == "bounded"  # Models of an orphan Document vary: noise
    assert judge([r(3, 0, 9), r(6, 0, 18)]) == "leak"
    assert judge([r(1, 0, 9), r(1, 0, 18)]) == "leak"  # Models alone, growing
    assert not grows(r(2, 2, 0), r(2, 2, 0))
    assert passes("bounded", [r(1, 1, 0)], 1) and not passes("bounded", [r(1, 1, 0)], 0)
    assert not passes("leak", [r(6, 6, 0)], 100)
    assert chain_key("thread 'leaky-worker-3' -> [12]") == chain_key("thread 'leaky-worker-7' -> [0]")
    assert chain_key("module bokeh_app_0a1b -> x") == chain_key("module bokeh_app_ff99 -> x")


def _summary(**apps: dict[str, int]) -> dict[str, Any]:
    return {"server": {"unused_session_lifetime_ms": 15_000, "check_unused_sessions_ms": 17_000}, "apps": apps}


def test_advice_rules_on_fixed_data() -> None:
    assert advise(_summary(app={"sessions": 3, "orphans": 0})) == []

    lingering = advise(_summary(), sessions=[
        {"id": "s1", "app": "/a", "connections": 0, "ms_since_unsubscribe": 600_000, "data_bytes": 0},
        {"id": "s2", "app": "/a", "connections": 1, "ms_since_unsubscribe": 900_000, "data_bytes": 0},
    ])
    assert [a["id"] for a in lingering] == ["unused-sessions-linger"]
    assert "600.0 s" in lingering[0]["evidence"] and "--unused-session-lifetime 15000" in lingering[0]["evidence"]

    hog = advise(_summary(), sessions=[
        {"id": "big" * 10, "app": "/a", "connections": 1, "data_bytes": 50 * 2**20},
        {"id": "small", "app": "/a", "connections": 1, "data_bytes": 2**20},
    ])
    assert [a["id"] for a in hog] == ["one-session-holds-most-data"]
    assert "98%" in hog[0]["evidence"]

    history = [{"apps": {"/a": {"orphans": n, "models_retained": 0}}} for n in (0, 1, 1, 3, 4)]
    growing = advise(_summary(**{"/a": {"sessions": 0, "orphans": 4}}), history=history,
                     retained=[{"app": "/a", "status": "orphan", "document_alive": True, "models": 0}] * 4,
                     cleanup_hooks={"/a": {"sessions": 9, "with_hooks": 2}})
    ids = [a["id"] for a in growing]
    assert ids == ["documents-outlive-sessions", "orphans-growing"]  # errors first; hooks present: no hook advice
    assert [a["severity"] for a in growing] == ["error", "error"]

    panel = advise(_summary(**{"/p": {"sessions": 0, "orphans": 0}}),
                   retained=[{"app": "/p", "status": "models_retained", "document_alive": False, "models": 3,
                              "model_types": {"ColumnDataSource": 1, "Selection": 2}},
                             {"app": "/p", "status": "pending", "document_alive": True, "models": 0}],
                   cleanup_hooks={"/p": {"sessions": 2, "with_hooks": 0}})
    assert [a["id"] for a in panel] == ["models-outlive-documents", "no-cleanup-hooks"]
    assert panel[0]["article_section"] == SECTIONS["panel"]

    # Held by a timer, garbage awaiting collection, pending: not leaks, no advice about them.
    unproven = advise(_summary(**{"/t": {"sessions": 0, "orphans": 0}}), retained=[
        {"app": "/t", "status": status, "document_alive": True, "models": 5, "model_types": {"Div": 1}}
        for status in ("held_until", "awaiting_collection", "pending")
    ], cleanup_hooks={"/t": {"sessions": 3, "with_hooks": 3}})
    assert unproven == []
    proven = advise(_summary(**{"/t": {"sessions": 0, "orphans": 1}}), retained=[
        {"app": "/t", "status": "orphan", "document_alive": True, "models": 0, "verified_by": "reachability_scan"},
    ])
    assert "proven reachable from a root" in proven[0]["evidence"]

    rss = advise(_summary(), rounds={"/a": [
        {"sessions_closed_total": 5, "holding_sessions": 0, "documents": 0, "models": 0, "rss_bytes": 100 * 2**20},
        {"sessions_closed_total": 10, "holding_sessions": 0, "documents": 0, "models": 0, "rss_bytes": 150 * 2**20},
    ]})
    assert [a["id"] for a in rss] == ["rss-grows-untracked"]
    assert "10.0 MiB per closed session" in rss[0]["evidence"]
