""" The memray allocation backend (heap/memray_backend.py, http/memray.py) on a real
``bokeh-memwatch serve`` process with ``--memwatch-allocations memray``.

memray is an optional dependency: without it these tests skip with the reason,
except under ``CI``, where they fail (CI installs the ``test`` extra, which
includes memray on Linux).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bokeh_memwatch.heap.memray_backend import HelperFailed, MemrayBackend, MemrayBusy, have_memray
from bokeh_memwatch.report.text import format_report

from .conftest import APPS, PYTHON, ROOT, ProcessServer, api, free_port, http, open_and_close_sessions
from .test_dashboard import CHROMIUM, CHROMIUM_ARGS

CLI = str(Path(PYTHON).with_name("bokeh-memwatch"))
LEAK_APP = APPS / "leak_numpy.py"
LEAK_LINE = next(i for i, line in enumerate(LEAK_APP.read_text().splitlines(), 1) if "# LEAK_LINE" in line)
SESSIONS = 6
ARRAY_BYTES = 2 * 1024 * 1024


def _require_memray() -> None:
    if have_memray():
        return
    if os.environ.get("CI"):
        pytest.fail("memray is not installed: CI installs the test extra, which includes it on Linux")
    pytest.skip("memray is not installed (pip install bokeh-memwatch[memray])")


@pytest.fixture(scope="module")
def server() -> Iterator[ProcessServer]:
    _require_memray()
    port = free_port()
    srv = ProcessServer([CLI, "serve", str(LEAK_APP), "--port", str(port), "--memwatch-allocations", "memray"],
                        # one-thread OpenBLAS (numpy is loaded), so the fork policy forks heap jobs
                        port, env={"BOKEH_MEMWATCH_HEAP_FORK": "auto", "OPENBLAS_NUM_THREADS": "1"})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_tracking_starts_with_the_option(server: ProcessServer) -> None:
    state = api(server.url, "memray")
    assert state["available"] and state["tracking"], state
    # memray allows one Tracker per process: a second start with other settings is a 409 JSON.
    status, _, payload = http("POST", f"{server.url}/memwatch/api/memray", {"action": "start", "native_traces": True})
    assert status == 409 and "already tracking" in payload["error"], payload
    status, _, payload = http("POST", f"{server.url}/memwatch/api/memray", {"action": "start", "bogus": 1})
    assert status == 400, payload
    status, _, payload = http("GET", f"{server.url}/memwatch/api/memray/allocators?group=nope")
    assert status == 400, payload
    status, _, payload = http("GET", f"{server.url}/memwatch/api/memray/captures/..%2Fetc/memray")
    assert status == 404, payload
    # memwatch's access rules hold: a cross-site page gets nothing, an action needs a JSON body.
    status, _, _ = http("GET", f"{server.url}/memwatch/api/memray", headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, _, _ = http("POST", f"{server.url}/memwatch/api/memray/baseline", b"{}")
    assert status == 415


def test_growth_since_baseline_names_the_apps_line_with_its_native_allocation(server: ProcessServer) -> None:
    api(server.url, "memray/baseline", "POST")
    open_and_close_sessions(f"{server.url}/leak_numpy", SESSIONS)
    growth = api(server.url, "memray/allocators?compare=baseline&limit=5")
    top = growth["allocators"][0]
    assert top["where"].startswith(f"{LEAK_APP}:{LEAK_LINE} "), growth["allocators"]
    assert top["count"] >= SESSIONS and top["size_bytes"] >= SESSIONS * ARRAY_BYTES, top
    # numpy's buffer: malloc'd (a native allocation), not Python's object allocator.
    assert top["native"] and set(top["allocators"]) <= {"MALLOC", "CALLOC", "POSIX_MEMALIGN", "ALIGNED_ALLOC",
                                                        "MMAP"}, top
    assert growth["capture"]["since_baseline"] is True
    # Each read closes its window: the baseline is spent (409), not silently stale.
    status, _, payload = http("GET", f"{server.url}/memwatch/api/memray/allocators?compare=baseline")
    assert status == 409 and "baseline" in payload["error"], payload
    # By file, and by stack (most recent frame first).
    capture = growth["capture"]["id"]
    by_file = api(server.url, f"memray/allocators?capture={capture}&group=filename&limit=3")
    assert by_file["allocators"][0]["where"] == str(LEAK_APP), by_file
    by_stack = api(server.url, f"memray/allocators?capture={capture}&group=stack&limit=3")
    assert by_stack["allocators"][0]["stack"][0].startswith(f"{LEAK_APP}:{LEAK_LINE} "), by_stack


def test_native_frames_with_native_traces(server: ProcessServer) -> None:
    api(server.url, "memray", "POST", {"action": "stop"})
    try:
        api(server.url, "memray", "POST", {"action": "start", "native_traces": True})
        api(server.url, "memray/baseline", "POST")
        open_and_close_sessions(f"{server.url}/leak_numpy", 3)
        growth = api(server.url, "memray/allocators?compare=baseline&group=stack&limit=3")
        top = growth["allocators"][0]
        assert any(f.startswith(f"{LEAK_APP}:{LEAK_LINE} ") for f in top["stack"]), top
        # Native frames above the Python line: numpy's C code and the allocator.
        app_at = next(i for i, f in enumerate(top["stack"]) if f.startswith(str(LEAK_APP)))
        assert app_at > 0 and not top["stack"][0].startswith(str(LEAK_APP)), top["stack"][:8]
        assert growth["native_traces"] is True
    finally:
        api(server.url, "memray", "POST", {"action": "stop"})
        api(server.url, "memray", "POST", {"action": "start"})


def test_capture_file_is_memrays_own(server: ProcessServer, tmp_path: Path) -> None:
    api(server.url, "memray/baseline", "POST")
    open_and_close_sessions(f"{server.url}/leak_numpy", 2)
    capture = api(server.url, "memray/allocators?compare=baseline")["capture"]["id"]
    status, headers, body = _get_bytes(f"{server.url}/memwatch/api/memray/captures/{capture}/memray")
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    path = tmp_path / "capture.memray"
    path.write_bytes(body)
    out = subprocess.run([sys.executable, "-m", "memray", "table", "--leaks", "-o", str(tmp_path / "t.html"),
                          str(path)], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert str(LEAK_APP) in (tmp_path / "t.html").read_text()


def test_flamegraph_opens_in_chromium_without_errors(server: ProcessServer, tmp_path: Path) -> None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}")
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    api(server.url, "memray/baseline", "POST")
    open_and_close_sessions(f"{server.url}/leak_numpy", 2)
    capture = api(server.url, "memray/allocators?compare=baseline")["capture"]["id"]
    status, headers, body = _get_bytes(f"{server.url}/memwatch/api/memray/captures/{capture}/flamegraph")
    assert status == 200 and headers["Content-Type"].startswith("text/html"), (status, headers)
    page_path = tmp_path / "flamegraph.html"
    page_path.write_bytes(body)
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.goto(page_path.as_uri(), wait_until="load")
            # memray's page draws the flame graph with d3 into #chart.
            page.wait_for_function("document.querySelectorAll('#chart svg rect, #chart svg g').length > 0",
                                   timeout=30_000)
            text = page.content()
        finally:
            browser.close()
    assert not errors, errors
    assert "leak_numpy.py" in text


def test_unavailable_memray_is_one_clear_error(tmp_path: Path) -> None:
    """ Where memray cannot be imported the backend says so (501 over HTTP);
    a fresh interpreter with memray hidden shows the warning and the fallback. """
    code = (
        "import sys, logging; sys.modules['memray'] = None\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from bokeh_memwatch.heap.memray_backend import MemrayBackend, MemrayUnavailable\n"
        "b = MemrayBackend(); b.start()\n"
        "try:\n    b.start_tracking()\nexcept MemrayUnavailable as e:\n    print('UNAVAILABLE', e)\n"
        "print(b.state()['available']); b.stop()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "UNAVAILABLE memray is not installed" in out.stdout and "False" in out.stdout, out.stdout
    assert out.stderr.count("memray is not installed") == 1, out.stderr


def test_backend_refuses_a_second_tracker_in_process(tmp_path: Path) -> None:
    _require_memray()
    import memray

    backend = MemrayBackend()
    backend.start()
    try:
        with memray.Tracker(str(tmp_path / "other.bin")), pytest.raises(MemrayBusy, match="already active"):
            backend.start_tracking()
        assert not backend.tracking
    finally:
        backend.stop()


def _get_bytes(url: str) -> tuple[int, dict[str, str], bytes]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=120) as response:
        return response.status, dict(response.headers), response.read()




def test_heap_worker_forks_beside_the_tracker_and_the_report_has_a_memray_section(server: ProcessServer) -> None:
    """ A forked heap job (the type summary) while memray tracks: memray leaves
    tracking off in the child (no follow_fork) and the parent keeps tracking. """
    types = api(server.url, "types?limit=3")
    assert types["technique"] == "fork" and types["types"], types
    assert api(server.url, "memray")["tracking"] is True
    open_and_close_sessions(f"{server.url}/leak_numpy", 2)
    status, _, body = _get_bytes(f"{server.url}/memwatch/api/report?chains=0")
    assert status == 200
    report = json.loads(body)
    section = report["memray"]
    assert section["state"]["tracking"] is True
    assert section["allocators"]["allocators"], section
    text = format_report(report)
    assert "memray" in text and str(LEAK_APP) in text


def test_server_without_memray_warns_once_and_keeps_tracemalloc(run_command: Any, tmp_path: Path) -> None:
    """ ``--memwatch-allocations memray`` where memray cannot be imported (a
    package on PYTHONPATH that raises ImportError stands in for a platform
    without wheels): the server starts, logs one warning, answers 501 on
    memray's API and keeps tracemalloc's. """
    hidden = tmp_path / "hide" / "memray"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('memray hidden by the test')\n")
    port = free_port()
    env = {"PYTHONPATH": os.pathsep.join([str(hidden.parent), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    srv = run_command([CLI, "serve", str(LEAK_APP), "--port", str(port), "--memwatch-allocations", "memray"],
                      port, env=env)
    state = api(srv.url, "memray")
    assert state["available"] is False and state["tracking"] is False, state
    status, _, payload = http("POST", f"{srv.url}/memwatch/api/memray", {"action": "start"})
    assert status == 501 and "pip install bokeh-memwatch[memray]" in payload["error"], payload
    assert http("GET", f"{srv.url}/memwatch/api/memray/allocators")[0] == 501
    assert api(srv.url, "memray/allocators", expect=501)["status"] == 501
    assert api(srv.url, "tracemalloc")["tracing"] is False
    api(srv.url, "tracemalloc", "POST", {"action": "start", "frames": 1})
    assert api(srv.url, "tracemalloc")["tracing"] is True
    assert srv.log().count("memray is not installed") == 1, srv.log()


def test_a_corrupt_capture_is_a_helper_error_not_a_crash() -> None:
    """ The backend on its own (in this process): a window closed, its file
    truncated behind memwatch's back; the read fails in the helper and says so. """
    _require_memray()
    import asyncio

    backend = MemrayBackend(timeout_s=60)
    backend.start()
    try:
        backend.start_tracking()
        kept = [bytearray(300_000) for _ in range(3)]
        closed = backend.rotate()
        assert closed is not None and backend.tracking
        good = asyncio.run(backend.allocators(capture=closed.id, limit=5))
        assert good["allocators"] and good["capture"]["id"] == closed.id
        with open(closed.path, "r+b") as f:
            f.truncate(10)
        with pytest.raises(HelperFailed, match="reading the memray capture failed"):
            asyncio.run(backend.allocators(capture=closed.id))
        assert backend.stop_tracking()["changed"] is True
        del kept
    finally:
        backend.stop()
    assert backend.directory is None


def test_the_option_from_the_environment_and_its_bounds() -> None:
    from bokeh_memwatch.options import MemwatchOptions, options_from_env

    assert options_from_env({"BOKEH_MEMWATCH_ALLOCATIONS": "memray"}) == {"allocations": "memray"}
    assert MemwatchOptions(**options_from_env({"BOKEH_MEMWATCH_ALLOCATIONS": "memray"})).allocations == "memray"
    assert MemwatchOptions().allocations == "tracemalloc"
    with pytest.raises(ValueError, match="allocations must be"):
        MemwatchOptions(allocations="perf")
    out = subprocess.run([CLI, "serve", "--memwatch-allocations", "perf"], check=False, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "invalid choice: 'perf'" in out.stderr, out.stderr
