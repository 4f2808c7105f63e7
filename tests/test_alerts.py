""" The Prometheus side against its real consumers: ``promtool test rules``
for the shipped alert rules, and a real Prometheus scraping a real server
(with those rules loaded). """
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bokeh_memwatch import MemWatch
from tests.conftest import ROOT, free_port, script_app, wait_until

GRAFANA = ROOT / "grafana"
RULES = GRAFANA / "bokeh_memwatch_alerts.yml"

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"),
    reason="promtool (Debian package prometheus) is not installed",
)


def test_promtool_checks_and_tests_the_alert_rules() -> None:
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True,
                           timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 8 rules found" in check.stdout
    test = subprocess.run(["promtool", "test", "rules", "bokeh_memwatch_alerts_test.yml"], cwd=GRAFANA,
                          capture_output=True, text=True, timeout=60, check=False)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout + test.stderr


def test_promtool_rule_tests_can_fail(tmp_path: Path) -> None:
    """ The unit tests compare real values: a wrong expectation fails. """
    shutil.copy(RULES, tmp_path / RULES.name)
    text = (GRAFANA / "bokeh_memwatch_alerts_test.yml").read_text()
    assert "at 97% of its memory limit" in text
    (tmp_path / "t.yml").write_text(text.replace("at 97% of its memory limit", "at 96% of its memory limit"))
    test = subprocess.run(["promtool", "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
    assert test.returncode != 0
    assert "BokehMemwatchRSSNearLimit" in test.stdout + test.stderr


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int, metrics_path: str) -> str:
        port = free_port()
        shutil.copy(RULES, tmp_path / RULES.name)
        (tmp_path / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [RULES.name],
            "scrape_configs": [{
                "job_name": "bokeh", "metrics_path": metrics_path,
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }],
        }))
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        ))
        log.close()
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except OSError:
        return []
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_a_real_prometheus_scrapes_a_real_server(serve, prometheus, tmp_path: Path) -> None:
    mw = MemWatch(interval_ms=100, orphan_grace_ms=0, recycle_at="100GiB", history_dir=str(tmp_path / "history"))
    server = serve({"/clean": script_app("clean")}, memwatch=mw)
    port = int(server.url.rsplit(":", 1)[1])
    prom = prometheus(port, "/memwatch/metrics")

    def scraped() -> list[dict[str, Any]]:
        return _query(prom, 'up{job="bokeh"} == 1') and _query(prom, "bokeh_memwatch_rss_bytes")

    wait_until(scraped, timeout_s=90, interval_s=0.5, what=f"a Prometheus scrape ({tmp_path / 'prometheus.log'})")
    rss = _query(prom, "bokeh_memwatch_rss_bytes")
    assert rss[0]["metric"]["pid"] == str(os.getpid())
    assert float(rss[0]["value"][1]) > 10 * 2**20
    for name in ("bokeh_memwatch_sessions", "bokeh_memwatch_sampler_ticks_total", "bokeh_memwatch_build_info",
                 "bokeh_memwatch_draining", "bokeh_memwatch_drain_timeout_seconds",
                 "bokeh_memwatch_recycle_threshold_bytes"):
        assert _query(prom, name), name
    assert float(_query(prom, "bokeh_memwatch_recycle_threshold_bytes")[0]["value"][1]) == 100 * 2**30
    # The scrape is healthy and the rules loaded into the real server evaluate.
    with urllib.request.urlopen(f"{prom}/api/v1/targets", timeout=5) as response:
        targets = json.loads(response.read())["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"] and targets[0]["lastError"] == ""

    def rules_evaluated() -> bool:
        with urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=5) as response:
            groups = json.loads(response.read())["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return len(rules) == 8 and all(r["health"] == "ok" for r in rules)

    wait_until(rules_evaluated, timeout_s=30, interval_s=0.5, what="the alert rules evaluated")
