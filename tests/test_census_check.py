""" The census as ``bokeh-memwatch check`` reports it: advice that is true
whether Documents, only Models or nothing of the closed sessions is retained;
a holder chain drawn from an instance made by the closed sessions; and a
fork refusal said once.  Real console script, real server, real clients.
"""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bokeh_memwatch.analyze.advice import census_advice

from .conftest import ROOT
from .test_check import CLI

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the census needs os.fork")

GLOBAL = ["demo_app", "--sessions", "2", "--session-args", "leak=global"]

#: name -> (argv after "bokeh-memwatch check", OPENBLAS_NUM_THREADS).
CASES: dict[str, tuple[list[str], str]] = {
    # The newcomer's command, as the README gives it.
    "documents": ([*GLOBAL, "--json"], "1"),
    # The same without a one-thread OpenBLAS pool: the fork policy refuses.
    "refused": (GLOBAL, "2"),
    # Panel detaches Models at cleanup: Models retained, no Document.
    "models": (["tests/apps/panel_leak_models.py", "--sessions", "2", "--json"], "1"),
}


def _run(argv: list[str], threads: str) -> dict[str, Any]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": threads}
    proc = subprocess.run([CLI, "check", *argv], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          check=False, env=env)
    result: dict[str, Any] = {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
    try:
        result["report"] = json.loads(result["stdout"])
    except ValueError:
        result["report"] = None
    return result


@pytest.fixture(scope="module")
def checks() -> Iterator[dict[str, dict[str, Any]]]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_run, argv, threads) for name, (argv, threads) in CASES.items()}
        yield {name: f.result() for name, f in futures.items()}


def _census_item(report: dict[str, Any]) -> dict[str, Any] | None:
    return next((a for a in report["advice"] if a["id"] == "types-grow-with-sessions"), None)


def test_growth_with_retained_documents_points_at_them(checks) -> None:
    result = checks["documents"]
    report = result["report"]
    assert result["rc"] == 1 and report is not None, result
    assert report["documents_retained"] == 4
    app = report["apps"]["/demo_app"]
    assert app["census"]["growing"], app["census"]
    item = _census_item(report)
    assert item is not None
    assert "no Document or Model" not in item["evidence"], item
    assert "4 Document(s)" in item["evidence"] and "retained Documents" in item["title"], item
    assert "param" not in item["fix"] and "Panel" not in item["fix"], item  # a plain Bokeh app
    assert item["severity"] != "error"  # the orphans are the finding; this follows from them


def test_census_chain_explains_growth_with_a_new_instance(checks) -> None:
    report = checks["documents"]["report"]
    assert report is not None, checks["documents"]
    app = report["apps"]["/demo_app"]
    # Every explained type: its instance was made after the first census,
    # so its chain leads through what the sessions left, not a class default.
    explained = [r for r in app["census"]["growing"] if r.get("holder")]
    assert explained, app["census"]["growing"]
    for row in explained:
        assert "._default" not in row["holder"], row
        assert "demo_app.leaks -> .CACHE" in row["holder"], row
        assert row.get("holder_instance_new") is True, row


def test_fork_refusal_is_said_once(checks) -> None:
    result = checks["refused"]
    out, err = result["stdout"], result["stderr"]
    assert result["rc"] == 1, result
    assert "census of live objects by type: not taken" in out, out
    # The reason (~400 characters): once in the report, once in the log.
    assert out.count("not forking:") == 1, out
    assert err.count("not forking:") == 1, err
    # The server says it at start, with the fix.
    (warning,) = [line for line in err.splitlines() if "not forking:" in line]
    assert "OPENBLAS_NUM_THREADS=1" in warning and "--memwatch-heap-fork" in warning, warning
    assert "fork policy refused" in err  # the check's own line refers to it


def test_growth_with_models_only_points_at_them(checks) -> None:
    result = checks["models"]
    report = result["report"]
    assert result["rc"] == 1 and report is not None, result
    assert report["documents_retained"] == 0 and report["models_retained"] >= 4
    item = _census_item(report)  # the retained Models' own types grow, at least
    assert item is not None, report["advice"]
    assert "no Document or Model" not in item["evidence"], item
    assert f"retain {report['models_retained']} Model(s) without their Document" in item["evidence"], item
    assert "retained Models" in item["title"], item


ROW = {"type": "bokeh.models.sources.ColumnDataSource", "generic": False, "growth_per_session": 1,
       "bytes_per_session": 200.0, "holder": "module m -> .CACHE (list) -> [0] -> ColumnDataSource",
       "holder_complete": True, "holder_instance_new": True}


def test_census_advice_wording_for_each_case() -> None:
    census = {"growing": [ROW], "closed_between": 4}
    (docs,) = census_advice("/a", census, documents=4)
    (models,) = census_advice("/a", census, models=8)
    (plain,) = census_advice("/a", census)
    panel_row = {**ROW, "type": "panel.widgets.tables.Tabulator"}
    (panel,) = census_advice("/a", {"growing": [panel_row], "closed_between": 4})
    assert "4 Document(s)" in docs["evidence"] and "no Document" not in docs["evidence"]
    assert "retain 8 Model(s) without their Document" in models["evidence"]
    assert "no Document or Model of the destroyed sessions is retained" in plain["evidence"]
    assert plain["severity"] == "error" and ".CACHE" in plain["evidence"]
    assert "param" not in plain["fix"]  # nothing of Panel seen
    assert "param watcher" in panel["fix"] and panel["article_section"].endswith("Datashader Integration")
    # A chain drawn from an instance older than the first census explains nothing.
    (old,) = census_advice("/a", {"growing": [{**ROW, "holder_instance_new": False}], "closed_between": 4})
    assert "held by" not in old["evidence"]
    # Nor does a chain that reached no root.
    (rootless,) = census_advice("/a", {"growing": [{**ROW, "holder": "ndarray (incomplete: no_root)",
                                                     "holder_complete": False}], "closed_between": 4})
    assert "held by" not in rootless["evidence"]
    assert census_advice("/a", {"growing": [], "closed_between": 4}) == []  # a clean app
