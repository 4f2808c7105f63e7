""" ``bokeh-memwatch serve``: Bokeh's serve subcommand with memwatch mounted. """
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from .conftest import PYTHON, ROOT, api, free_port, http, open_and_close_sessions, wait_until

CLI = str(Path(PYTHON).with_name("bokeh-memwatch"))
FAST = ["--check-unused-sessions", "100", "--unused-session-lifetime", "100"]
ENV = {"BOKEH_MEMWATCH_GC_MIN_INTERVAL_S": "0"}


def serve_argv(port: int, *extra: str) -> list[str]:
    return [CLI, "serve", "--port", str(port), "--address", "127.0.0.1",
            "--allow-websocket-origin", f"127.0.0.1:{port}", *FAST,
            "--memwatch-interval", "200", "--memwatch-orphan-grace", "0", *extra]


def test_serve_with_prefix_and_extra_patterns(run_command) -> None:
    port = free_port()
    server = run_command(
        serve_argv(port, "--prefix", "/pfx", "--extra-patterns", "tests.extra_routes",
                   "--extra-patterns", "tests.extra_routes:OTHER", "tests/apps/leak_global.py"),
        port, prefix="/pfx", env=ENV,
    )
    # The log names the dashboard, as Bokeh's names the app.
    assert f"memwatch dashboard at http://127.0.0.1:{port}/pfx/memwatch\n" in server.log()
    # Everything lives under the prefix; nothing at the bare path.
    assert http("GET", f"http://127.0.0.1:{port}/memwatch/api/summary")[0] == 404
    assert http("GET", f"{server.url}/hello")[2] == {"hello": "from an extra pattern"}
    assert http("GET", f"{server.url}/other")[0] == 200
    index = api(server.url, "")
    assert {"GET api/orphans/<session_id>/chain"} <= {f"{e['method']} {e['path']}" for e in index["endpoints"]}
    assert all(e["url"].startswith("/pfx/memwatch/") for e in index["endpoints"])

    ids = open_and_close_sessions(f"{server.url}/leak_global", 3)
    wait_until(lambda: api(server.url, "summary")["sessions_destroyed_total"] >= 3)
    api(server.url, "gc", "POST")
    # Proven by a verification (a reachability scan in a forked child).
    def proven() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = api(server.url, "orphans")["orphans"]
        return rows if len(rows) == 3 else []

    orphans = wait_until(proven, 60, what="3 orphans proven")
    assert sorted(o["session_id"] for o in orphans) == sorted(ids)
    chain = api(server.url, f"orphans/{ids[1]}/chain", "POST")
    assert chain["root"] == {"kind": "module", "name": "tests.apps.holders"}
    assert ".DOCS" in chain["text"] and chain["technique"] == "fork"

    summary = api(server.url, "summary")
    assert summary["server"]["check_unused_sessions_ms"] == 100
    assert summary["server"]["unused_session_lifetime_ms"] == 100
    assert summary["server"]["prefix"] == "/pfx"
    assert summary["sampler"]["interval_ms"] == 200 and summary["sampler"]["running"]
    assert summary["pid"] == server.proc.pid


def test_history_starts_with_the_server(run_command) -> None:
    port = free_port()
    server = run_command(serve_argv(port, "tests/apps/clean.py"), port, env=ENV)
    # Nobody has opened a session or the API yet except the readiness probe;
    # the sampler has been running since start.
    wait_until(lambda: api(server.url, "summary")["sampler"]["ticks"] >= 3, what="ticks")
    samples = api(server.url, "history")["samples"]
    assert len(samples) >= 3 and all(s["rss_bytes"] > 0 for s in samples)


def test_num_procs_every_worker_samples_and_says_who_answered(run_command) -> None:
    port = free_port()
    server = run_command(serve_argv(port, "--num-procs", "2", "tests/apps/clean.py"), port, env=ENV)
    pids: set[int] = set()

    def both_seen() -> bool:
        status, headers, body = http("GET", f"{server.url}/memwatch/api/summary")
        assert status == 200 and int(headers["X-Memwatch-Pid"]) == body["pid"]
        assert body["sampler"]["running"] and body["sampler"]["ticks"] >= 1
        pids.add(body["pid"])
        return len(pids) == 2

    wait_until(both_seen, timeout_s=30, interval_s=0.01, what="answers from both workers")
    assert server.proc.pid not in pids  # the parent only supervises


def test_bad_extra_patterns_are_a_clear_error() -> None:
    for spec, message in [
        ("no_such_module_xyz", "cannot import"),
        ("tests.extra_routes:MISSING", "has no attribute"),
        ("tests.extra_routes:NOT_ROUTES", "must be a list"),
    ]:
        result = subprocess.run(
            [CLI, "serve", "--port", str(free_port()), "--extra-patterns", spec, "tests/apps/clean.py"],
            check=False, cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ),
        )
        assert result.returncode != 0
        assert message in result.stderr + result.stdout, (spec, result.stderr)


def test_help_lists_bokeh_and_memwatch_options() -> None:
    result = subprocess.run([CLI, "serve", "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--num-procs", "--unused-session-lifetime", "--prefix", "--extra-patterns",
                   "--memwatch-interval", "--memwatch-tracemalloc"):
        assert option in result.stdout
