""" Graceful recycling, probes and forwarding between workers, with real
servers (``bokeh-memwatch serve``, ``--num-procs 2``), real clients (page
loads over HTTP, websocket sessions with ``bokeh.client``) and a real
supervising parent. """
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bokeh_memwatch import MemWatch, MemwatchOptions
from bokeh_memwatch.analyze.limits import parse_recycle_at, parse_size
from bokeh_memwatch.cluster.recycle import RECYCLE_EXIT_STATUS, Recycler, detect_supervisor
from bokeh_memwatch.store.registry import WorkerRegistry
from tests.conftest import ROOT, free_port, http, open_and_close_sessions, script_app, wait_until

CLI = str(Path(sys.executable).parent / "bokeh-memwatch")
FAST = ["--check-unused-sessions", "100", "--unused-session-lifetime", "100"]
ENV = {"BOKEH_MEMWATCH_GC_MIN_INTERVAL_S": "0"}
ARTIFACTS = ROOT / "test-artifacts"
MiB = 2**20


def serve_argv(port: int, *extra: str) -> list[str]:
    return [CLI, "serve", "--port", str(port), "--address", "127.0.0.1",
            "--allow-websocket-origin", f"127.0.0.1:{port}", *FAST,
            "--memwatch-interval", "200", "--memwatch-orphan-grace", "0", *extra]


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "fraction", "rss_bytes"), [
    ("0.85", 0.85, None), ("1", 1.0, None), (".9", 0.9, None), ("85%", 0.85, None),
    ("1.5GiB", None, int(1.5 * 2**30)), ("800Mi", None, 800 * MiB), ("2G", None, 2 * 10**9),
    ("500MB", None, 500 * 10**6), ("1.5 GiB", None, int(1.5 * 2**30)), ("4096kib", None, 4096 * 1024),
])
def test_recycle_at_is_a_fraction_or_a_size(text: str, fraction: float | None, rss_bytes: int | None) -> None:
    threshold = parse_recycle_at(text)
    assert threshold is not None
    assert threshold.fraction == fraction and threshold.rss_bytes == rss_bytes
    if fraction is not None:
        assert threshold.bytes_for(None) is None and threshold.bytes_for(1000) == pytest.approx(1000 * fraction)
    else:
        assert threshold.bytes_for(None) == rss_bytes


@pytest.mark.parametrize("text", ["", "off", "0", "none", None])
def test_recycle_at_off(text: str | None) -> None:
    assert parse_recycle_at(text) is None


@pytest.mark.parametrize("text", ["1.5", "85", "150%", "-0.5", "abc", "1.5XB", "GiB", "0.0001B", "1e9", "0x10"])
def test_bad_recycle_at_is_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="--memwatch-recycle-at"):
        parse_recycle_at(text)
    with pytest.raises(ValueError, match="--memwatch-recycle-at"):
        MemwatchOptions(recycle_at=text)


def test_parse_size_units() -> None:
    assert parse_size("1") == 1 and parse_size("1k") == 1000 and parse_size("1Ki") == 1024
    assert parse_size("1T") == 10**12 and parse_size("1TiB") == 2**40


def test_bad_recycle_options_stop_the_command() -> None:
    for extra, message in [(["--memwatch-recycle-at", "1.5XB"], "not a size"),
                           (["--memwatch-recycle-at", "2"], "neither a fraction"),
                           (["--memwatch-recycle-samples", "0"], "recycle_samples"),
                           (["--memwatch-drain-timeout", "0"], "drain_timeout_s")]:
        result = subprocess.run([CLI, "serve", "--port", str(free_port()), *extra, "tests/apps/clean.py"],
                                check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert message in result.stderr + result.stdout, (extra, result.stderr)


def test_detect_supervisor() -> None:
    assert detect_supervisor({}) is None
    assert detect_supervisor({"INVOCATION_ID": "x"}) == "systemd"
    assert detect_supervisor({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "kubernetes"
    assert detect_supervisor({"BOKEH_MEMWATCH_SUPERVISED": "1"}) is not None
    assert detect_supervisor({"BOKEH_MEMWATCH_SUPERVISED": "0"}) is None


# -- the recycler's decisions ---------------------------------------------------------------------


class _HeldOpen(Recycler):
    """ A recycler whose worker keeps one websocket connection open. """

    def connections(self) -> int:
        return 1


def _run_recycler(rss_values: list[float], *, threshold: str = "100B", cls: type[Recycler] = Recycler,
                  drain_timeout_s: float = 30.0, wait_s: float = 5.0) -> tuple[Recycler, list[int]]:
    exits: list[int] = []

    async def main() -> Recycler:
        parsed = parse_recycle_at(threshold)
        assert parsed is not None
        recycler = cls(MemWatch(), parsed, samples=3, drain_timeout_s=drain_timeout_s, settle_s=0.1,
                       check_interval_s=0.02, exit=exits.append)
        recycler.start(None, None)
        for rss in rss_values:
            recycler.on_sample({"rss_bytes": rss}, {})
            await asyncio.sleep(0)
        deadline = time.monotonic() + wait_s
        while not exits and recycler.state != "serving" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return recycler

    return asyncio.run(main()), exits


def test_one_spike_does_not_recycle() -> None:
    recycler, exits = _run_recycler([150, 150, 50, 150, 150, 50, 150])
    assert recycler.state == "serving" and recycler.ready and exits == []


def test_sustained_crossing_drains_and_exits_75_when_no_connection_is_left() -> None:
    recycler, exits = _run_recycler([150, 150, 150])
    assert exits == [RECYCLE_EXIT_STATUS]
    assert recycler.outcome == "sessions_ended" and not recycler.ready
    state = recycler.state_dict()
    assert state["crossed"]["rss_bytes"] == 150 and state["crossed"]["samples"] == 3
    assert state["drain"]["connections"] == 0


def test_a_drain_that_never_empties_ends_at_its_timeout() -> None:
    recycler, exits = _run_recycler([150, 150, 150], cls=_HeldOpen, drain_timeout_s=0.3)
    assert exits == [RECYCLE_EXIT_STATUS] and recycler.outcome == "timeout"


def test_a_fraction_without_a_memory_limit_never_recycles(caplog: pytest.LogCaptureFixture) -> None:
    recycler, exits = _run_recycler([10**12] * 5, threshold="0.5")
    assert recycler.state == "serving" and exits == []
    assert sum("no limit was found" in r.getMessage() for r in caplog.records) == 1


# -- the registry -------------------------------------------------------------------------------


def test_one_drain_at_a_time_and_never_without_a_serving_worker(tmp_path: Path) -> None:
    alive = {1, 2, 3}
    path = str(tmp_path / "history.sqlite3")
    a, b = (WorkerRegistry(path, server="s", alive=alive.__contains__) for _ in range(2))
    other = WorkerRegistry(path, server="other server", alive=alive.__contains__)
    for r in (a, b, other):
        r.open()
    a.register(1, port=1001)
    b.register(2, port=1002)
    assert [w["pid"] for w in a.workers()] == [1, 2] and other.workers() == []
    assert a.try_acquire_drain(1, min_serving=1) is None      # 2 is serving
    assert a.try_acquire_drain(1) is None                     # held already: idempotent
    a.set_state(1, "draining")
    assert b.try_acquire_drain(2, min_serving=1) == 1         # 1 holds it
    assert other.try_acquire_drain(3) is None                 # another server's lease is its own
    a.record_recycle({"pid": 1, "reason": "rss_bytes", "outcome": "sessions_ended", "drain_s": 1.5})
    alive.discard(1)                                          # 1 exited: its lease lapses...
    assert b.try_acquire_drain(2, min_serving=1) == 0         # ...but no other worker serves yet
    alive.add(4)
    a2 = WorkerRegistry(path, server="s", alive=alive.__contains__)
    a2.open()
    a2.register(4, port=1004)                                 # the replacement registers (and 1's row goes)
    assert [w["pid"] for w in b.workers()] == [2, 4]
    assert b.try_acquire_drain(2, min_serving=1) is None
    assert b.drain_holder() == 2
    assert b.recycle_counts() == {("rss_bytes", "sessions_ended"): 1}
    assert b.recycles()[0]["drain_s"] == 1.5
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM workers WHERE pid = 1").fetchone()[0] == 0
    for r in (a, b, other, a2):
        r.close()


# -- probes ---------------------------------------------------------------------------------------

TOKEN = "probe-test-token-0123456789"


def test_probes_answer_without_credentials_and_reveal_nothing(serve) -> None:
    server = serve({"/clean": script_app("clean")}, memwatch=MemWatch(interval_ms=100, token=TOKEN))
    for name in ("healthz", "readyz"):
        for method in ("GET", "HEAD"):
            status, headers, body = http(method, f"{server.url}/memwatch/{name}")
            assert status == 200, (name, method)
            assert body == ("ok\n" if method == "GET" else "")
            assert "X-Memwatch-Pid" not in headers and "Server" not in headers
            assert headers["Content-Type"].startswith("text/plain")
    assert http("GET", f"{server.url}/memwatch/api/summary")[0] == 401        # the API still needs the token
    assert http("GET", f"{server.url}/memwatch/healthz?token=wrong")[0] == 200
    assert http("POST", f"{server.url}/memwatch/healthz", {})[0] == 405
    summary = http("GET", f"{server.url}/memwatch/api/summary", headers={"X-Memwatch-Token": TOKEN})[2]
    assert summary["recycle"] == {"enabled": False}


def test_probes_can_be_turned_off(serve) -> None:
    server = serve({"/clean": script_app("clean")}, memwatch=MemWatch(interval_ms=100, probes=False))
    for name in ("healthz", "readyz"):
        assert http("GET", f"{server.url}/memwatch/{name}")[0] == 404
    assert http("GET", f"{server.url}/memwatch/api/summary")[0] == 200


# -- a client that loads pages and holds sessions --------------------------------------------------


class Client:
    """ Loads the app's page (its own HTTP connection each time) and opens a
    websocket session (``pull_session``) per step, holds them, and makes a
    round trip on every held session per step.  Every request and every
    failure is counted, with its time. """

    def __init__(self, url: str) -> None:
        self.url = url
        self.held: deque[tuple[Any, float]] = deque()  # (ClientSession, time its opening started)
        self.opened: list[tuple[str, float]] = []      # (session id, time its opening started)
        self.log: list[tuple[float, str, bool, str]] = []

    def _do(self, kind: str, fn: Callable[[], Any]) -> Any:
        t = time.time()
        try:
            result = fn()
        except Exception as e:
            self.log.append((t, kind, False, f"{type(e).__name__}: {e}"))
            return None
        self.log.append((t, kind, True, ""))
        return result

    def _page(self) -> None:
        with urllib.request.urlopen(self.url, timeout=30) as response:
            body = response.read()
        if response.status != 200 or b"Bokeh" not in body:
            raise AssertionError(f"page answered {response.status}")

    def _roundtrip(self, session: Any) -> None:
        if not session.connected:
            raise ConnectionError("the session's websocket is closed")
        session.force_roundtrip()

    def step(self, open_new: bool = True) -> None:
        from bokeh.client import pull_session

        if open_new:
            self._do("page", self._page)
            started = time.time()
            session = self._do("session", lambda: pull_session(url=self.url))
            if session is not None:
                self.held.append((session, started))
                self.opened.append((session.id, started))
        for session, _ in list(self.held):
            self._do("roundtrip", functools.partial(self._roundtrip, session))

    def close(self, keep: Callable[[Any], bool] = lambda s: False) -> None:
        for entry in list(self.held):
            if not keep(entry[0]):
                entry[0].close()
                self.held.remove(entry)

    @property
    def failures(self) -> list[tuple[float, str, bool, str]]:
        return [entry for entry in self.log if not entry[2]]

    def served_between(self, t0: float, t1: float) -> int:
        return sum(1 for t, _, ok, _ in self.log if ok and t0 <= t <= t1)


def _get(url: str, headers: dict[str, str] | None = None) -> Any:
    status, _, body = http("GET", url, headers=headers, timeout_s=30)
    assert status == 200, (url, status, body)
    return body


def _two_workers(base: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]] | None:
    """ Both workers, once each has registered its private port. """
    workers = _get(f"{base}/memwatch/api/recycle", headers)["workers"]
    return workers if len(workers) == 2 and all(w["port"] for w in workers) else None


def _first_sample(base: str, pid: int) -> dict[str, Any]:
    """ The first sample of ``pid`` (waiting for it to reach the history
    database when another worker answers). """
    def first() -> dict[str, Any] | None:
        samples = _get(f"{base}/memwatch/api/history?pid={pid}&limit=1000")["samples"]
        return next((s for s in samples if s.get("rss_bytes")), None)

    return wait_until(first, timeout_s=30, interval_s=0.1, what=f"a sample of worker {pid}") or {}


def _first_rss(base: str, pid: int) -> float:
    return float(_first_sample(base, pid)["rss_bytes"])


def _write_figures(name: str, figures: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=1))
    print(f"\n{name}: {json.dumps(figures)}")


# -- recycling under --num-procs 2 -------------------------------------------------------------------

THRESHOLD = "360MiB"
LEAK_ENV = {**ENV, "LEAK_RSS_BYTES": str(16 * MiB)}


def test_a_leaking_worker_drains_exits_and_is_replaced_without_a_failed_request(run_command) -> None:
    port = free_port()
    server = run_command(serve_argv(port, "--num-procs", "2", "--memwatch-recycle-at", THRESHOLD,
                                    "--memwatch-drain-timeout", "120", "tests/apps/leak_rss.py"),
                         port, env=LEAK_ENV)
    base = server.url
    initial = wait_until(lambda: _two_workers(base), timeout_s=30, what="both workers registered") or []
    initial_pids = {w["pid"] for w in initial}
    start_rss = {pid: _first_rss(base, pid) for pid in initial_pids}
    client = Client(f"{base}/leak_rss")
    draining: dict[str, Any] | None = None
    drain_sessions: set[str] = set()
    readyz_private: list[tuple[int, str]] = []
    steps_in_drain = 0
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            client.step()
            state = _get(f"{base}/memwatch/api/recycle")
            workers = {w["pid"]: w for w in state["workers"]}
            if draining is None:
                found = [w for w in state["workers"] if w["state"] == "draining"]
                if found:
                    draining = found[0]
                    # Its readiness, on its private port (the shared socket reaches the others only).
                    status, _, body = http("GET", f"http://127.0.0.1:{draining['port']}/memwatch/readyz")
                    readyz_private.append((status, body))
                    assert http("GET", f"{base}/memwatch/readyz")[:3:2] == (200, "ok\n")
                continue
            if steps_in_drain < 3:
                # Its sessions go on; which are they (asked through any worker)?
                if draining["pid"] in workers:
                    sessions = _get(f"{base}/memwatch/api/sessions",
                                    headers={"X-Memwatch-Worker": str(draining["pid"])})["sessions"]
                    drain_sessions.update(s["id"] for s in sessions)
                steps_in_drain += 1
                if steps_in_drain == 3:
                    client.close(keep=lambda s: s.id not in drain_sessions)  # the drain can end now
                continue
            recycled = [e for e in state["recycles"] if e["pid"] == draining["pid"]]
            fresh = [w for w in state["workers"] if w["pid"] not in initial_pids and w["state"] == "serving"]
            if recycled and fresh:
                for _ in range(3):
                    client.step()
                break
            client.close(keep=lambda s: True)
        else:
            pytest.fail(f"no recycle within the deadline: {state}\n{server.log()[-3000:]}")
    finally:
        client.close()

    assert client.failures == [], client.failures
    assert readyz_private == [(503, "draining\n")]
    event = recycled[0]
    assert event["outcome"] == "sessions_ended" and event["exit_status"] == RECYCLE_EXIT_STATUS
    assert event["rss_bytes"] >= parse_size(THRESHOLD)
    assert f"child 0 (pid {draining['pid']}) exited with status 75" in server.log() or \
        f"child 1 (pid {draining['pid']}) exited with status 75" in server.log()
    # Its sessions kept working during the drain; sessions opened after it began went elsewhere.
    # (The client holds every session until the drain is seen, so the crossing
    # worker holds some unless the kernel gave every websocket to the other.)
    held_through = [sid for sid, _ in client.opened if sid in drain_sessions]
    assert held_through, "the draining worker held none of the client's websocket sessions"
    drain_began = event["drain_started_at"]
    late = [sid for sid, started in client.opened if started > drain_began and sid in drain_sessions]
    assert not late, late
    assert any(started > drain_began for _, started in client.opened)
    new_pid = fresh[0]["pid"]
    first = _first_sample(base, new_pid)
    new_rss = float(first["rss_bytes"])
    old_rss = start_rss[draining["pid"]]
    # Back near the start: what the old worker started at, plus the leak of
    # the sessions (page loads and websockets) the new one served before it.
    served = int(first.get("sessions_created_total") or 0)
    assert new_rss < old_rss * 1.1 + served * 16 * MiB + 16 * MiB, (new_rss, old_rss, served)
    assert new_rss < event["rss_bytes"] - 100 * MiB
    # Metrics: the recycle, counted per server (whichever worker answers the scrape).
    metrics = http("GET", f"{base}/memwatch/metrics")[2]
    counted = [line for line in metrics.splitlines()
               if line.startswith('bokeh_memwatch_recycles_total{outcome="sessions_ended",reason="rss_bytes"}')]
    assert counted and float(counted[0].split()[-1]) >= 1, metrics
    assert f'bokeh_memwatch_draining{{pid="{new_pid}"}} 0.0' in metrics
    exited_at = event["t"]
    _write_figures("recycle-num-procs-2", {
        "threshold": THRESHOLD, "drain_s": event["drain_s"], "rss_at_crossing_bytes": event["rss_bytes"],
        "rss_start_old_worker_bytes": old_rss, "rss_start_new_worker_bytes": new_rss,
        "requests_during_recycle": client.served_between(drain_began, exited_at),
        "requests_total": len(client.log), "failed_requests": len(client.failures),
        "old_pid": draining["pid"], "new_pid": new_pid, "client_sessions_held_through_drain": len(held_through),
    })


# -- one process under a supervising parent ---------------------------------------------------------


class Supervisor:
    """ A supervising parent, as systemd's ``Restart=on-failure`` is: it
    restarts the server when it exits non-zero (here: only with the recycle
    status, at most ``max_restarts`` times) and records every exit. """

    def __init__(self, argv: list[str], port: int, env: dict[str, str], max_restarts: int = 3) -> None:
        self.argv, self.port, self.env, self.max_restarts = argv, port, env, max_restarts
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = ARTIFACTS / f"supervised-{port}.log"
        ARTIFACTS.mkdir(exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.exits: list[tuple[int, int, float]] = []  # (pid, status, time)
        self.starts: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self.proc = self._spawn()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                env={**os.environ, **self.env}, start_new_session=True)
        self.starts.append((proc.pid, time.time()))
        return proc

    def _watch(self) -> None:
        while not self._stop.is_set():
            status = self.proc.poll()
            if status is None:
                time.sleep(0.05)
                continue
            self.exits.append((self.proc.pid, status, time.time()))
            if status != RECYCLE_EXIT_STATUS or len(self.exits) > self.max_restarts:
                return
            self.proc = self._spawn()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def supervise() -> Iterator[Callable[..., Supervisor]]:
    started: list[Supervisor] = []

    def start(argv: list[str], port: int, env: dict[str, str]) -> Supervisor:
        supervisor = Supervisor(argv, port, env)
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        supervisor.stop()


def _ready(base: str) -> bool:
    """ What a load balancer asks before it sends a request (connection
    refused while nothing listens counts as not ready). """
    try:
        status, _, _ = http("GET", f"{base}/memwatch/readyz", timeout_s=5)
    except OSError:
        return False
    return status == 200


def test_one_process_under_a_supervisor_is_recycled_without_a_failed_request(supervise) -> None:
    port = free_port()
    supervisor = supervise(serve_argv(port, "--memwatch-recycle-at", "300MiB", "--memwatch-drain-timeout", "120",
                                      "tests/apps/leak_rss.py"), port, LEAK_ENV)
    base = supervisor.url
    wait_until(lambda: _ready(base), timeout_s=90, interval_s=0.2, what="the server")
    first_pid = _get(f"{base}/memwatch/api/summary")["pid"]
    first_rss = _first_rss(base, first_pid)
    client = Client(f"{base}/leak_rss")
    drain_seen: float | None = None
    steps_in_drain = 0
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            ready = _ready(base)
            if drain_seen is None and not ready and supervisor.proc.poll() is None:
                drain_seen = time.time()
            client.step(open_new=ready)  # like a load balancer: new sessions only to a ready server
            if drain_seen is not None and steps_in_drain < 3:
                steps_in_drain += 1  # round trips on the sessions held through the drain
                if steps_in_drain == 3:
                    client.close()
            if supervisor.exits and ready:
                for _ in range(3):
                    client.step()
                break
            if not ready:
                time.sleep(0.1)
        else:
            pytest.fail(f"no recycle within the deadline:\n{supervisor.log()[-3000:]}")
    finally:
        client.close()

    assert client.failures == [], client.failures
    assert drain_seen is not None
    assert [(pid, status) for pid, status, _ in supervisor.exits] == [(first_pid, RECYCLE_EXIT_STATUS)]
    log = supervisor.log()
    # No supervisor the server could detect (this test is one): it said so at start.
    assert "recycling will STOP the server" in log and "systemd (Restart=on-failure)" in log
    assert f"worker {first_pid} is draining: keeps listening (one process" in log
    assert f"worker {first_pid} recycled" in log and "exiting with status 75" in log
    summary = _get(f"{base}/memwatch/api/summary")
    new_pid = summary["pid"]
    assert new_pid != first_pid and new_pid == supervisor.proc.pid
    event = next(e for e in _get(f"{base}/memwatch/api/recycle")["recycles"] if e["pid"] == first_pid)
    assert event["outcome"] == "sessions_ended" and event["rss_bytes"] >= 300 * MiB
    first = _first_sample(base, new_pid)
    new_rss = float(first["rss_bytes"])
    served = int(first.get("sessions_created_total") or 0)
    assert new_rss < first_rss * 1.1 + served * 16 * MiB + 16 * MiB, (new_rss, first_rss, served)
    exited_at = supervisor.exits[0][2]
    restarted_at = supervisor.starts[1][1]
    _write_figures("recycle-one-process", {
        "threshold": "300MiB", "drain_s": event["drain_s"], "rss_at_crossing_bytes": event["rss_bytes"],
        "rss_start_old_bytes": first_rss, "rss_start_new_bytes": new_rss,
        "requests_during_recycle": client.served_between(event["drain_started_at"], exited_at),
        "restart_gap_s": round(restarted_at - exited_at, 3),
        "requests_total": len(client.log), "failed_requests": len(client.failures),
        "old_pid": first_pid, "new_pid": new_pid,
    })


# -- any worker answers for every worker -------------------------------------------------------------

FWD_TOKEN = "forwarding-test-token-0123456789"


def test_any_worker_answers_for_every_worker(run_command, tmp_path: Path) -> None:
    port = free_port()
    server = run_command(serve_argv(port, "--num-procs", "2", "--memwatch-tracemalloc", "1",
                                    "tests/apps/leak_global.py"),
                         port, env={**ENV, "BOKEH_MEMWATCH_TOKEN": FWD_TOKEN}, ready_statuses=(401,))
    base = server.url
    auth = {"X-Memwatch-Token": FWD_TOKEN}

    def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
             expect: int = 200) -> tuple[dict[str, str], Any]:
        status, hdrs, payload = http(method, url, body, {**auth, **(headers or {})})
        assert status == expect, (method, url, status, payload)
        return hdrs, payload

    workers = wait_until(lambda: _two_workers(base, auth), timeout_s=30, what="both workers registered") or []
    ports = {w["pid"]: w["port"] for w in workers}
    pids = sorted(ports)

    # Orphans on both workers: every session leaks its Document.
    orphans: dict[int, list[str]] = {pid: [] for pid in pids}
    for _ in range(20):
        open_and_close_sessions(f"{base}/leak_global", 4)
        for pid in pids:
            call("POST", f"{base}/memwatch/api/gc", {}, {"X-Memwatch-Worker": str(pid)})
            hdrs, body = call("GET", f"{base}/memwatch/api/orphans", headers={"X-Memwatch-Worker": str(pid)})
            assert int(hdrs["X-Memwatch-Pid"]) == pid
            orphans[pid] = [o["session_id"] for o in body["orphans"]]
        if all(len(ids) >= 5 for ids in orphans.values()):
            break
    assert all(len(ids) >= 5 for ids in orphans.values()), orphans

    # 20 "why alive" searches, 10 per worker's orphans: half through the shared
    # port (whichever worker accepts), half sent to the *other* worker's
    # private port, so at least those are forwarded whatever the kernel does.
    answered: list[tuple[int, int, str | None]] = []
    for owner in pids:
        other = next(p for p in pids if p != owner)
        for i, session_id in enumerate(orphans[owner][:5] * 2):
            url = (f"{base}/memwatch/api/orphans/{session_id}/chain" if i % 2 == 0 else
                   f"http://127.0.0.1:{ports[other]}/memwatch/api/orphans/{session_id}/chain")
            hdrs, body = call("POST", url, {})
            assert body["session_id"] == session_id and body["target"] == "Document"
            assert "holders" in body["text"] or "DOCS" in body["text"], body["text"]
            answered.append((owner, int(hdrs["X-Memwatch-Pid"]), hdrs.get("X-Memwatch-Forwarded-By")))
    assert len(answered) == 20
    assert all(owner == pid for owner, pid, _ in answered)
    assert sum(1 for _, _, by in answered if by) >= 10

    # A snapshot taken on one worker, downloaded 10 times through either.
    hdrs, taken = call("POST", f"{base}/memwatch/api/snapshots", {}, expect=201)
    owner = int(hdrs["X-Memwatch-Pid"])
    other = next(p for p in pids if p != owner)
    files: list[bytes] = []
    for i in range(10):
        url = (f"{base}/memwatch/api/snapshots/{taken['id']}/tracemalloc" if i % 2 == 0 else
               f"http://127.0.0.1:{ports[other]}/memwatch/api/snapshots/{taken['id']}/tracemalloc")
        request = urllib.request.Request(url, headers=auth)
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200 and int(response.headers["X-Memwatch-Pid"]) == owner
            files.append(response.read())
    assert len(files) == 10 and len(set(files)) == 1 and len(files[0]) == taken["size_bytes"]
    path = tmp_path / "s.tracemalloc"
    path.write_bytes(files[0])
    assert len(tracemalloc.Snapshot.load(str(path)).traces) > 0

    # Per-worker actions go where they are sent; unknown workers and ids are 404s.
    for pid in pids:
        hdrs, body = call("GET", f"{base}/memwatch/api/tracemalloc?worker={pid}")
        assert int(hdrs["X-Memwatch-Pid"]) == pid and body["tracing"]
    call("GET", f"{base}/memwatch/api/summary?worker=1", expect=404)
    call("GET", f"{base}/memwatch/api/summary?worker=abc", expect=400)
    call("POST", f"{base}/memwatch/api/orphans/no-such-session/chain", {}, expect=404)
    call("GET", f"{base}/memwatch/api/snapshots/20200101T000000-deadbeef/tracemalloc", expect=404)

    # Credentials are checked once, by the worker that received the request;
    # nobody else can pass for a forwarding worker.
    for pid in pids:
        session_id = orphans[pid][0]
        status, _, _ = http("POST", f"{base}/memwatch/api/orphans/{session_id}/chain", {})
        assert status == 401
        for port_ in ports.values():
            status, _, _ = http("POST", f"http://127.0.0.1:{port_}/memwatch/api/orphans/{session_id}/chain", {},
                                {"X-Memwatch-Forwarded": "guessed-secret"})
            assert status == 401
    _write_figures("forwarding-num-procs-2", {
        "chains_ok": len(answered), "chains_forwarded": sum(1 for _, _, by in answered if by),
        "downloads_ok": len(files), "snapshot_bytes": len(files[0]),
    })


def test_worker_parameter_without_forwarding(serve) -> None:
    server = serve({"/clean": script_app("clean")}, memwatch=MemWatch(interval_ms=100, history_dir="none"))
    me = os.getpid()
    assert http("GET", f"{server.url}/memwatch/api/summary?worker={me}")[2]["pid"] == me
    assert http("GET", f"{server.url}/memwatch/api/summary", headers={"X-Memwatch-Worker": str(me)})[0] == 200
    status, _, body = http("GET", f"{server.url}/memwatch/api/summary?worker=1")
    assert status == 404 and "history database" in body["error"]
    assert http("GET", f"{server.url}/memwatch/api/summary?worker=-3")[0] == 400


def test_a_worker_waits_while_another_drains_and_serves_on_if_rss_falls(tmp_path: Path) -> None:
    """ The lease, seen from the recycler: pending while another live
    process holds it, draining once it is free; pending reverts to serving
    when RSS falls back below the threshold. """
    path = str(tmp_path / "history.sqlite3")
    other = WorkerRegistry(path, server="s")
    other.open()
    other.register(os.getppid(), port=None)
    assert other.try_acquire_drain(os.getppid()) is None  # a live process drains
    exits: list[int] = []

    async def main() -> tuple[list[str], Recycler]:
        registry = WorkerRegistry(path, server="s")
        registry.open()
        registry.register(os.getpid(), port=None)
        parsed = parse_recycle_at("100B")
        assert parsed is not None
        recycler = Recycler(MemWatch(), parsed, samples=2, settle_s=0.1, check_interval_s=0.02, exit=exits.append)
        recycler.start(registry, None)
        seen: list[str] = []

        async def feed(rss: float, n: int) -> None:
            for _ in range(n):
                recycler.on_sample({"rss_bytes": rss}, {})
                for _ in range(50):  # let the lease check (in a thread) finish
                    await asyncio.sleep(0.01)
                    if not recycler._busy and not recycler._tasks:
                        break
                seen.append(recycler.state)

        await feed(150, 4)             # crossed, but 'other' holds the lease
        assert recycler.waiting_for == os.getppid() and recycler.ready  # it serves while it waits
        await feed(50, 2)              # RSS fell back: serving again
        other.release_drain(os.getppid())
        await feed(150, 3)             # crossed again, the lease is free: drain
        deadline = time.monotonic() + 5
        while not exits and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        registry.close()
        return seen, recycler

    seen, recycler = asyncio.run(main())
    assert seen[:4] == ["serving", "pending", "pending", "pending"]
    assert seen[4:6] == ["pending", "serving"]
    assert seen[6:8] == ["serving", "draining"] or seen[6:8] == ["serving", "exiting"]
    assert exits == [RECYCLE_EXIT_STATUS] and recycler.outcome == "sessions_ended"
    assert other.recycles()[0]["pid"] == os.getpid()
    other.close()


def test_command_line_options_reach_memwatch_options() -> None:
    import argparse

    from bokeh_memwatch.cli.serve import MemwatchServe

    parser = argparse.ArgumentParser()
    serve = MemwatchServe(parser=parser)
    args = parser.parse_args(["app.py", "--memwatch-recycle-at", "1.5GiB", "--memwatch-recycle-samples", "5",
                              "--memwatch-drain-timeout", "42", "--memwatch-no-probes"])
    options = serve.options(args)
    assert (options.recycle_at, options.recycle_samples, options.drain_timeout_s, options.probes) == (
        "1.5GiB", 5, 42.0, False)
    defaults = serve.options(parser.parse_args(["app.py"]))
    assert (defaults.recycle_at, defaults.recycle_samples, defaults.drain_timeout_s, defaults.probes) == (
        "", 3, 600.0, True)


def _readme_block(after: str) -> str:
    """ The literal block that follows the paragraph ending in ``after::``. """
    import textwrap

    text = (ROOT / "README.rst").read_text()
    start = text.index(after + "::") + len(after) + 2
    lines: list[str] = []
    for line in text[start:].splitlines()[1:]:
        if line and not line.startswith(" "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip("\n")


def test_readme_kubernetes_and_systemd_examples_are_valid() -> None:
    import argparse
    import shlex

    import yaml  # type: ignore[import-untyped]

    from bokeh_memwatch.cli.serve import MemwatchServe

    parser = argparse.ArgumentParser()
    serve = MemwatchServe(parser=parser)
    pod = yaml.safe_load(_readme_block("(one process per pod, several replicas behind a Service)"))
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/memwatch/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/memwatch/readyz"
    assert container["args"][:2] == ["bokeh-memwatch", "serve"]
    options = serve.options(parser.parse_args(container["args"][2:]))
    assert options.recycle_at == "0.85" and pod["terminationGracePeriodSeconds"] > options.drain_timeout_s

    unit = _readme_block("**Under systemd**")
    exec_start = unit.split("ExecStart=", 1)[1].split("\n    Environment", 1)[0]
    argv = shlex.split(exec_start.replace("\\\n", " ").split("\n")[0])
    assert argv[0].endswith("bokeh-memwatch") and argv[1] == "serve"
    assert serve.options(parser.parse_args(argv[2:])).recycle_at == "1.5GiB"
    assert "Restart=on-failure" in unit and "MemoryMax=" in unit


def test_the_dashboard_talks_to_one_worker_and_moves_on_when_it_is_gone(run_command) -> None:
    """ Under --num-procs 2 the page pins the first worker that answered
    (X-Memwatch-Worker), so its figures and actions stay on one process; when
    that worker dies (here SIGKILL, as the OOM killer would) it pins the next. """
    from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}")
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    port = free_port()
    server = run_command(serve_argv(port, "--num-procs", "2", "tests/apps/clean.py"), port, env=ENV)
    wait_until(lambda: _two_workers(server.url), timeout_s=30, what="both workers registered")
    seen: list[tuple[str | None, str | None, int]] = []  # (X-Memwatch-Worker sent, X-Memwatch-Pid, status)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("response", lambda r: seen.append((r.request.headers.get("x-memwatch-worker"),
                                                       r.headers.get("x-memwatch-pid"), r.status))
                    if "/memwatch/api/" in r.url else None)
            page.goto(f"{server.url}/memwatch", wait_until="load")
            page.wait_for_function("() => window.memwatchDashboard && window.memwatchDashboard.state.polls >= 3",
                                   timeout=60_000)
            pinned = {sent for sent, _, _ in seen if sent}
            assert len(pinned) == 1, seen
            first = int(next(iter(pinned)))
            assert all(pid == str(first) for sent, pid, _ in seen if sent), seen
            os.kill(first, signal.SIGKILL)
            count = len(seen)

            def moved() -> bool:
                later = [(sent, pid, status) for sent, pid, status in seen[count:] if sent and sent != str(first)]
                return len(later) >= 3

            deadline = time.monotonic() + 60
            while not moved() and time.monotonic() < deadline:
                page.wait_for_timeout(200)  # playwright delivers events while it runs
            assert moved(), seen[count:]
            later = [(sent, pid) for sent, pid, status in seen[count:] if sent and sent != str(first)]
            assert all(sent == pid for sent, pid in later), later
        finally:
            browser.close()


def test_a_session_id_known_to_two_workers_is_answered_by_the_one_holding_it(run_command) -> None:
    """ One id, two workers (Bokeh lets a page load on one worker and its
    websocket on another make the same session id): alive on the first,
    destroyed with its Document leaked on the second.  "Why alive?" asked of
    the first is answered by the second. """
    from bokeh.client import pull_session
    from bokeh.core.types import ID

    port = free_port()
    server = run_command(serve_argv(port, "--num-procs", "2", "tests/apps/leak_if_asked.py"), port, env=ENV)
    workers = wait_until(lambda: _two_workers(server.url), timeout_s=30, what="both workers registered") or []
    (a, a_port), (b, b_port) = sorted((w["pid"], w["port"]) for w in workers)
    session_id = "shared-session-id-0123456789abcdef0123"
    held = pull_session(session_id=ID(session_id), url=f"http://127.0.0.1:{a_port}/leak_if_asked")
    session = pull_session(session_id=ID(session_id), url=f"http://127.0.0.1:{b_port}/leak_if_asked",
                           arguments={"leak": "1"})
    session.close()

    def state(pid: int) -> str | None:
        http("POST", f"{server.url}/memwatch/api/gc", {}, {"X-Memwatch-Worker": str(pid)})
        body = _get(f"{server.url}/memwatch/api/orphans", {"X-Memwatch-Worker": str(pid)})
        rows = {row["session_id"]: kind for kind in ("orphans", "pending") for row in body[kind]}
        return rows.get(session_id)

    wait_until(lambda: state(b) == "orphans", timeout_s=30, interval_s=0.2, what="the orphan on the websocket's worker")
    sessions_a = _get(f"{server.url}/memwatch/api/sessions", {"X-Memwatch-Worker": str(a)})["sessions"]
    assert session_id in {row["id"] for row in sessions_a}  # alive there
    status, _, body = http("POST", f"{server.url}/memwatch/api/orphans/{session_id}/chain", {},
                           {"X-Memwatch-Worker": str(a)})
    assert status == 409, (status, body)  # asked of that worker itself: its page session is alive
    try:
        for url in (f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}", server.url):
            status, headers, body = http("POST", f"{url}/memwatch/api/orphans/{session_id}/chain", {})
            assert status == 200, (url, status, body)
            assert int(headers["X-Memwatch-Pid"]) == b and body["target"] == "Document"
    finally:
        held.close()
