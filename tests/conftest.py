""" Shared fixtures: real Bokeh servers on 127.0.0.1, real clients.

``running_server`` starts a ``bokeh.server.server.Server`` with memwatch
mounted in a background thread with its own IOLoop, so a test can use the
blocking clients (``bokeh.client.pull_session``, urllib) from its own
thread.  Every wait is bounded; every server is stopped.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from bokeh.application import Application
from bokeh.application.handlers.script import ScriptHandler
from threadpoolctl import threadpool_limits

from bokeh_memwatch import MemWatch
from bokeh_memwatch.testing.server import ServerThread, client_session

# The test servers fork heap workers, and the fork policy will not fork over
# a multi-thread native pool (bokeh_memwatch.heap.worker.fork_policy).  As the
# policy advises: server subprocesses get a one-thread OpenBLAS pool, and
# this process (numpy is loaded already, through the bokeh_memwatch pytest
# plugin) uses one thread from here on.  The busy-BLAS case runs a server
# process of its own with a real pool (tests/test_host_safety.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
threadpool_limits(1)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ memwatch keeps history under $XDG_STATE_HOME: give the test run its
    own, so tests neither read nor write the user's (subprocesses inherit it). """
    previous = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    yield
    if previous is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = previous
APPS = ROOT / "tests" / "apps"
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.05, what: str = "") -> T:
    """ Poll ``predicate`` until it returns something truthy, or fail. """
    deadline = time.monotonic() + timeout_s
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what or predicate}: last value {last!r}")
        time.sleep(interval_s)
        last = predicate()
    return last


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None,
         timeout_s: float = 60.0) -> tuple[int, dict[str, str], Any]:
    """ A real HTTP request; returns (status, headers, decoded JSON or text).
    ``body``: JSON-encoded (with its Content-Type), or ``bytes`` sent as
    they are with only the given ``headers``. """
    raw_body = isinstance(body, bytes)
    data = body if raw_body else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and not raw_body:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw, hdrs = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as e:
        # Closed here: an unclosed HTTPError's file is closed again when the
        # garbage collector frees it, in whatever later test, which fails
        # there as an unraisable "I/O operation on closed file".
        with e:
            status, raw, hdrs = e.code, e.read(), dict(e.headers)
    text = raw.decode("utf-8", "replace")
    try:
        return status, hdrs, json.loads(text)
    except ValueError:
        return status, hdrs, text


def api(base_url: str, path: str, method: str = "GET", body: Any = None, expect: int = 200) -> Any:
    """ Call the JSON API; POSTs carry a JSON body (``{}`` by default). """
    if method == "POST" and body is None:
        body = {}
    status, _, payload = http(method, f"{base_url}/memwatch/api/{path}", body)
    assert status == expect, f"{method} {path}: {status} {payload!r}"
    return payload


def script_app(name: str) -> Application:
    return Application(ScriptHandler(filename=str(APPS / f"{name}.py")))


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """ ``serve({"/app": application}, interval_ms=..., **server_kwargs)``. """
    started: list[ServerThread] = []

    def start(apps: Mapping[str, Application], *, memwatch: MemWatch | None = None,
              **kwargs: Any) -> ServerThread:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPTION_NAMES}
        options.setdefault("interval_ms", 100)
        options.setdefault("orphan_grace_ms", 0)
        mw = memwatch or MemWatch(**options)
        server = ServerThread(apps, mw, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


_OPTION_NAMES = {
    "interval_ms", "history_s", "orphan_grace_ms", "allow_remote", "chain_timeout_s",
    "chain_max_depth", "chain_cache_s", "gc_min_interval_s", "max_destroyed", "tick_budget_ms",
    "token", "http", "show_values", "verify_min_interval_s", "verify_timeout_s",
}


@pytest.fixture(autouse=True)
def _reset_holders() -> Iterator[None]:
    """ Stop every leaky thread and callback the test apps started. """
    yield
    from tests.apps import holders

    holders.reset()


def open_and_close_sessions(url: str, n: int, arguments: Mapping[str, str] | None = None) -> list[str]:
    """ Open ``n`` sessions with ``pull_session`` one after another and close them. """
    ids: list[str] = []
    for _ in range(n):
        with client_session(url, arguments) as session:
            ids.append(session.id)
    return ids


@pytest.fixture
def no_gc() -> Iterator[None]:
    """ The collector off for the test: garbage it makes survives until a
    forked child scans it (the child's copy of the heap is the test's). """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def dataframe_type() -> str:
    """ How the census names ``pandas.DataFrame`` here: its module as the
    installed pandas spells it (``pandas`` from pandas 3, before that
    ``pandas.core.frame``) and its name. """
    pandas = importlib.import_module("pandas")  # (no type stubs needed)
    return f"{pandas.DataFrame.__module__}.DataFrame"


def settle_orphans(url: str, destroyed: int) -> dict[str, Any]:
    """ Wait until Bokeh destroyed ``destroyed`` sessions, collect, wait
    until every destroyed session is judged (none ``pending`` or held by a
    timer), and return ``api/orphans``. """
    wait_until(lambda: api(url, "summary")["sessions_destroyed_total"] >= destroyed, what="sessions destroyed")
    api(url, "gc", "POST")

    def judged() -> dict[str, Any]:
        orphans: dict[str, Any] = api(url, "orphans")
        return {} if orphans["pending"] or orphans["held_by_timers"] else orphans

    return wait_until(judged, 60, 0.1, "every destroyed session judged")


class ProcessServer:
    """ A server started as a command (``bokeh-memwatch serve``, ``panel serve``). """

    def __init__(self, argv: list[str], port: int, prefix: str = "", env: Mapping[str, str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}{prefix}"
        self.log_path = ROOT / "test-artifacts" / f"server-{port}.log"
        self.log_path.parent.mkdir(exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # A session (and process group) of its own: ``--num-procs`` workers are
        # forked children, and must stop with the server, not outlive the test.
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 90.0, statuses: tuple[int, ...] = (200,)) -> ProcessServer:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                status, _, _ = http("GET", f"{self.url}/memwatch/api/summary", timeout_s=2)
            except OSError:
                return False
            return status in statuses

        wait_until(ready, timeout_s, interval_s=0.2, what="server start")
        return self

    def stop(self) -> None:
        """ Stop the server and every process of its group (its workers). """
        group = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(20)
        deadline = time.monotonic() + 20
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def run_command() -> Iterator[Callable[..., ProcessServer]]:
    started: list[ProcessServer] = []

    def start(argv: list[str], port: int, prefix: str = "", env: Mapping[str, str] | None = None,
              ready_statuses: tuple[int, ...] = (200,)) -> ProcessServer:
        server = ProcessServer(argv, port, prefix, env)
        started.append(server)
        return server.wait_ready(statuses=ready_statuses)

    yield start
    for server in started:
        server.stop()


PYTHON = sys.executable
