""" A leak test for any Bokeh or Panel app: open and close sessions, judge.

:class:`LeakCheck` drives a running Bokeh server that has memwatch mounted
(``bokeh-memwatch check`` runs one in-process; the pytest fixture uses
:class:`bokeh_memwatch.testing.server.ServerThread`).  For each application it runs
rounds of N sessions, the way browser tabs come and go:

* some opened one after another, some all at once (then all closed);
* half as websocket sessions (``bokeh.client.pull_session``), half as plain
  HTTP GETs of the page (a session Bokeh creates and, never connected,
  discards after ``--unused-session-lifetime``);

then waits until Bokeh destroyed every session and memwatch has judged every
destroyed session (no ``pending`` or ``held_until`` state left: a session
held by a timer is verified again once the timer is due), and counts what
the proven leaks hold (orphan Documents, Models retained without their
Document, bytes in ColumnDataSources) and the process RSS.  Garbage awaiting
Python's next collection is not a leak and is not counted.  Comparing the rounds tells a
growing leak (retention grows with the number of sessions) from a bounded
one (a "last session" slot), see :func:`judge`.  Finally it asks memwatch
why the retained objects are alive (the reference chain to their holder),
deduplicated by text, and what the memory checklist says (:mod:`.advice`).
The verdicts are :mod:`bokeh_memwatch.analyze.leak_verdict`'s.

The driver runs in its own thread with blocking clients; everything that
touches memwatch runs on the server's IOLoop.  Results are plain data;
:func:`bokeh_memwatch.report.text.render_text` renders them for people.

Over 400 lines: the driver is one sequence (open, close, settle, verify,
measure, search chains, census) whose steps share the server thread's loop and
timeouts; the verdicts (:mod:`bokeh_memwatch.analyze.leak_verdict`) and the
text (:mod:`bokeh_memwatch.report.text`) live elsewhere.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
import time
import traceback
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..analyze.advice import census_advice
from ..analyze.leak_verdict import VERDICTS, census_chains, combine, dedupe_chains, judge, judge_census, passes
from ..collect.process import ProcessCollector
from ..collect.tracker import TIMER_MARGIN_S
from ..heap.census import CensusManager
from ..heap.worker import ForkRefused
from ..schema import PROVEN_STATES, UNJUDGED_STATES

if TYPE_CHECKING:
    from bokeh.application import Application
    from tornado.ioloop import IOLoop

    from ..memwatch import MemWatch

log = logging.getLogger(__name__)

__all__ = (
    "CHECK_MEMWATCH_OPTIONS",
    "CheckOptions",
    "LeakCheck",
    "looks_like_panel",
    "parse_session_args",
)

T = TypeVar("T")


#: Longest wait for destroyed sessions to be judged (timers holding them due).
MAX_JUDGE_WAIT_S = 600.0


#: How the i-th session of a round is opened (cycled).
SESSION_KINDS = ("websocket", "http", "websocket-concurrent", "http-concurrent")

#: Timeout of one session before any build was measured (the first session
#: also imports the app's libraries), in seconds.
FIRST_SESSION_TIMEOUT_S = 120.0
#: A session's timeout in slowest measured builds, plus a margin in seconds.
TIMEOUT_PER_BUILD = 4.0
TIMEOUT_MARGIN_S = 10.0


@dataclass(frozen=True)
class CheckOptions:
    """ How a check runs.

    Attributes:
        sessions: sessions opened and closed per round.
        rounds: rounds (at least 2: growth needs two points).
        session_args: URL arguments of every session (``?leak=global``).
        tolerance: destroyed sessions that may still hold something at the
            end without failing, provided retention does not grow.
        max_chains: reference chains searched at most, per app.
        settle_timeout_s: longest wait for Bokeh to destroy a round's
            sessions (None: from the server's unused-session settings).
        http_timeout_s: least timeout of one client request, in seconds.
        timeout_s: timeout of one session (None: scaled from the measured
            time to build one, see :meth:`LeakCheck.session_timeout_s`).
    """

    sessions: int = 5
    rounds: int = 2
    session_args: Mapping[str, str] = field(default_factory=dict)
    tolerance: int = 0
    max_chains: int = 6
    settle_timeout_s: float | None = None
    http_timeout_s: float = 30.0
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout_s}")
        if self.sessions < 1:
            raise ValueError(f"sessions must be >= 1, got {self.sessions}")
        if self.rounds < 2:
            raise ValueError(f"rounds must be >= 2 (growth needs two rounds), got {self.rounds}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.max_chains < 0:
            raise ValueError(f"max_chains must be >= 0, got {self.max_chains}")


#: What a leak check changes in memwatch's defaults (``bokeh-memwatch check``
#: and the pytest plugin; an option given on the command line wins): samples
#: every 500 ms, verdicts without a grace period, collections on demand, no
#: history kept across runs, and no periodic census (the check takes its own
#: after every round).
CHECK_MEMWATCH_OPTIONS: Mapping[str, Any] = {
    "interval_ms": 500,
    "orphan_grace_ms": 0,
    "gc_min_interval_s": 0.0,
    "history_dir": "none",
    "census_interval_s": 0.0,
}


# -- inputs ------------------------------------------------------------------------

_PANEL_IMPORT = re.compile(r"^\s*(import\s+panel\b|from\s+panel\b)", re.MULTILINE)


def parse_session_args(items: list[str] | None) -> dict[str, str]:
    """ ``["leak=global", "n=3"] -> {"leak": "global", "n": "3"}``. """
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--session-args takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def looks_like_panel(paths: list[str]) -> bool:
    """ Whether an app script (or a directory app's main.py) imports Panel. """
    for raw in paths:
        path = Path(raw)
        candidates = [path / "main.py"] if path.is_dir() else [path]
        for candidate in candidates:
            try:
                if _PANEL_IMPORT.search(candidate.read_text(errors="replace")):
                    return True
            except OSError:
                continue
    return False



# -- driving a server ---------------------------------------------------------------


class LeakCheck:
    """ Run the check against a server with memwatch mounted.

    Args:
        memwatch: the server's MemWatch (its tracker is read on the loop).
        io_loop: the server's IOLoop, running in another thread.
        base_url: ``http://127.0.0.1:PORT{prefix}``.
        options: how to run.
        applications: the served applications by path, to report their
            handlers' errors (a script that raised).
        rss: RSS of the server process in bytes (injectable).
    """

    def __init__(self, memwatch: MemWatch, io_loop: IOLoop, base_url: str, options: CheckOptions | None = None,
                 *, applications: Mapping[str, Application] | None = None,
                 rss: Callable[[], int] | None = None) -> None:
        self.memwatch = memwatch
        self.applications = dict(applications or {})
        self.io_loop = io_loop
        self.base_url = base_url.rstrip("/")
        self.options = options or CheckOptions()
        self._rss = rss or ProcessCollector().rss_bytes
        #: Slowest session opened one at a time so far, in seconds.
        self.build_s: float | None = None
        #: Per app: ``{"count", "first" (traceback text), "kinds": Counter}``
        #: of sessions the clients could not open.
        self.session_errors: dict[str, dict[str, Any]] = {}

    # -- running on the server's loop --------------------------------------------------

    def call(self, fn: Callable[[], T], timeout_s: float = 60.0) -> T:
        """ Run ``fn`` on the server's loop; return its result. """
        from .server import call_on_loop

        return call_on_loop(self.io_loop, fn, timeout_s)

    def wait_coroutine(self, make: Callable[[], Coroutine[Any, Any, T]], timeout_s: float) -> T:
        """ Run the coroutine ``make()`` on the server's loop; wait for it. """
        loop: asyncio.AbstractEventLoop = self.io_loop.asyncio_loop  # type: ignore[attr-defined]
        future = asyncio.run_coroutine_threadsafe(make(), loop)
        return future.result(timeout_s)

    # -- the check ---------------------------------------------------------------

    def run(self, app_paths: Sequence[str]) -> dict[str, Any]:
        """ Check every application; the combined report (plain data). """
        self.call(lambda: None)  # the loop is up
        return combine({path: self.run_app(path) for path in app_paths}, self.options)

    def run_app(self, app_path: str) -> dict[str, Any]:
        opts = self.options
        started = time.monotonic()
        rounds: list[dict[str, Any]] = []
        census = self._census_manager()
        census_errors: list[str] = []
        for number in range(1, opts.rounds + 1):
            opened = self.open_and_close(app_path, opts.sessions)
            settle = self.settle(app_path)
            rounds.append(self.measure(app_path, number, opened, settle))
            rounds[-1]["census"] = self.take_census(census, census_errors)
        census_report = self.census_report(census, census_errors)
        verdict = max(judge(rounds), judge_census(census_report), key=VERDICTS.index)
        last, first = rounds[-1], rounds[0]
        closed = int(last["sessions_closed_total"])
        between = max(1, closed - int(first["sessions_closed_total"]))
        rows = self._settled_rows(app_path)
        chains = self.chains(app_path, rows)
        advice = [a for a in self.call(lambda: self.memwatch.advice(rounds={app_path: rounds}))
                  if a.get("app") in (app_path, None)]
        grown = census_advice(app_path, census_report, documents=int(last["documents"]),
                              models=int(last.get("models_without_document") or 0))
        if grown:  # the census names what RSS grows with
            advice = [a for a in advice if a.get("id") != "rss-grows-untracked"]
        advice = [*grown, *advice]
        if judge(rounds) == "clean":  # the census is the only evidence: its holders are the chains
            chains = [*chains, *census_chains(census_report)]
        errors = self.errors(app_path, opts.sessions * opts.rounds)
        return {
            "app": app_path,
            "verdict": verdict,
            "passed": passes(verdict, rounds, opts.tolerance),
            "sessions": closed,
            "documents_retained": int(last["documents"]),
            "models_retained": int(last.get("models_without_document", last["models"])),
            "data_bytes_retained": int(last["data_bytes"]),
            "holding_sessions": int(last["holding_sessions"]),
            "model_types": last["model_types"],
            "per_closed_session": {
                "documents": round(last["documents"] / closed, 4),
                "models": round(last["models"] / closed, 4),
                "data_bytes": round(last["data_bytes"] / closed, 1),
            },
            "growth_per_session": {
                "holding_sessions": round((last["holding_sessions"] - first["holding_sessions"]) / between, 4),
                "documents": round((last["documents"] - first["documents"]) / between, 4),
                "models": round((last["models"] - first["models"]) / between, 4),
                "data_bytes": round((last["data_bytes"] - first["data_bytes"]) / between, 1),
                "rss_bytes": round((last["rss_bytes"] - first["rss_bytes"]) / between, 1),
            },
            "rss_growth_bytes_per_session": round((last["rss_bytes"] - first["rss_bytes"]) / between, 1),
            "rounds": rounds,
            "chains": chains,
            "advice": advice,
            "census": census_report,
            "app_errors": errors["messages"],
            "session_errors": errors,
            "elapsed_s": round(time.monotonic() - started, 3),
        }

    # -- sessions --------------------------------------------------------------------

    def session_timeout_s(self) -> float:
        """ How long one session may take to open: ``--timeout``, else from
        the slowest build measured so far (:data:`TIMEOUT_PER_BUILD` times
        it plus :data:`TIMEOUT_MARGIN_S`, at least ``http_timeout_s``); before
        any measurement, :data:`FIRST_SESSION_TIMEOUT_S`. """
        if self.options.timeout_s is not None:
            return self.options.timeout_s
        if self.build_s is None:
            return max(self.options.http_timeout_s, FIRST_SESSION_TIMEOUT_S)
        return max(self.options.http_timeout_s, TIMEOUT_PER_BUILD * self.build_s + TIMEOUT_MARGIN_S)

    def open_and_close(self, app_path: str, n: int) -> dict[str, int]:
        """ Open and close ``n`` sessions; how many of each kind.

        One after another first (each one timed: the slowest sets the
        timeouts, see :meth:`session_timeout_s`), then the ``-concurrent``
        ones: the page loads all at once, then the websocket sessions
        opened one by one and kept open together, then all closed.  The
        server builds sessions one at a time on its loop, so a batch of
        ``c`` takes ``c`` build times: the batch's timeouts scale with ``c``,
        and websocket handshakes (20 s in Bokeh's client, not settable)
        never queue behind other builds.  A session that fails is recorded
        (:attr:`session_errors`) and the round goes on. """
        url = self.base_url + app_path
        kinds = [SESSION_KINDS[i % len(SESSION_KINDS)] for i in range(n)]
        for kind in kinds:
            if kind == "websocket":
                self._guarded(app_path, kind, lambda: self._timed(lambda: self._websocket_session(url)))
            elif kind == "http":
                self._guarded(app_path, kind, lambda: self._timed(lambda: self._http_page(url)))
        concurrent = [k for k in kinds if k.endswith("-concurrent")]
        if concurrent:
            self._concurrent(app_path, url, concurrent)
        return dict(Counter(kinds))

    def _timed(self, fn: Callable[[], None]) -> None:
        started = time.monotonic()
        fn()
        elapsed = time.monotonic() - started
        self.build_s = elapsed if self.build_s is None else max(self.build_s, elapsed)

    def _guarded(self, app_path: str, kind: str, fn: Callable[[], None]) -> bool:
        """ Run one client action; record its error instead of raising. """
        try:
            fn()
        except Exception as e:
            self._record_error(app_path, kind, e)
            return False
        return True

    def _record_error(self, app_path: str, kind: str, error: BaseException) -> None:
        errors = self.session_errors.setdefault(app_path, {"count": 0, "first": None, "kinds": Counter()})
        errors["count"] += 1
        errors["kinds"][kind] += 1
        if errors["first"] is None:
            errors["first"] = "".join(traceback.format_exception(type(error), error, error.__traceback__))[-4000:]
        log.warning("memwatch check: a %s session of %s failed: %s: %s", kind, app_path, type(error).__name__, error)

    def _websocket_session(self, url: str) -> None:
        self._open_websocket(url)()

    def _open_websocket(self, url: str) -> Callable[[], None]:
        """ Open a websocket session (``pull_session``) in a thread of its
        own, which also closes it (Bokeh's client session belongs to the
        thread that made it); returns ``close()``.  Bokeh's client waits for
        the document without a timeout, so the wait here has one; a session
        that opens after it is closed at once.

        Raises:
            TimeoutError: not opened within :meth:`session_timeout_s`.
            Exception: what ``pull_session`` raised.
        """
        from .server import client_session

        timeout_s = self.session_timeout_s()
        opened: Future[None] = Future()
        close_now = threading.Event()
        arguments = dict(self.options.session_args)

        def hold() -> None:
            # The client's loop is its own, made and closed the way tornado
            # wants (testing.client_session): no "no current event loop"
            # warning on 3.12 in the user's process.
            try:
                with client_session(url, arguments):
                    opened.set_result(None)
                    close_now.wait()
            except BaseException as e:
                if not opened.done():
                    opened.set_exception(e)

        thread = threading.Thread(target=hold, name="memwatch-check-client", daemon=True)
        thread.start()

        def close() -> None:
            close_now.set()
            thread.join(timeout_s)

        try:
            opened.result(timeout_s)
        except FutureTimeout:
            close_now.set()
            raise TimeoutError(f"websocket session of {url} not opened in {timeout_s:g} s") from None
        return close

    def _http_page(self, url: str, timeout_s: float | None = None) -> None:
        timeout_s = self.session_timeout_s() if timeout_s is None else timeout_s
        query = urllib.parse.urlencode(dict(self.options.session_args))
        with urllib.request.urlopen(url + ("?" + query if query else ""), timeout=timeout_s) as response:
            response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {url}: HTTP {response.status}")

    def _concurrent(self, app_path: str, url: str, kinds: Sequence[str]) -> None:
        """ Page loads all at once, then websocket sessions kept open together,
        then all closed; failures recorded, never raised. """
        pages = [k for k in kinds if k.startswith("http")]
        sockets = [k for k in kinds if not k.startswith("http")]
        if pages:
            # Bokeh builds them one after another: the last waits for all.
            timeout_s = self.session_timeout_s() * len(pages)
            with ThreadPoolExecutor(max_workers=len(pages), thread_name_prefix="memwatch-check-client") as pool:
                futures = [pool.submit(self._http_page, url, timeout_s) for _ in pages]
                for kind, future in zip(pages, futures, strict=True):
                    self._guarded(app_path, kind, future.result)
        closers: list[Callable[[], None]] = []
        try:
            for kind in sockets:
                self._guarded(app_path, kind, lambda: closers.append(self._open_websocket(url)))
        finally:
            for close in closers:
                close()

    # -- waiting and measuring ----------------------------------------------------------

    def _timeout_s(self) -> float:
        if self.options.settle_timeout_s is not None:
            return self.options.settle_timeout_s
        settings = self.call(self.memwatch.server_settings)
        lifetime_ms = int(settings.get("unused_session_lifetime_ms") or 15_000)
        check_ms = int(settings.get("check_unused_sessions_ms") or 17_000)
        return 3 * (lifetime_ms + check_ms) / 1000 + 10

    def settle(self, app_path: str) -> dict[str, Any]:
        """ Wait until Bokeh destroyed the app's sessions, then until every
        destroyed session is judged: verifications (reachability scans in a
        forked child, see :meth:`MemWatch.verify_destroyed`) until none is
        ``pending`` or ``held_until``, waiting for holding timers to be due;
        bounded by the settle timeout. """
        deadline = time.monotonic() + self._timeout_s()
        max_unused_ms = 0.0
        timed_out = False
        while True:
            live = self.call(lambda: self.memwatch.sessions(app_path))
            unused = [float(s.get("ms_since_unsubscribe") or 0) for s in live if not s.get("connections")]
            max_unused_ms = max([max_unused_ms, *unused])
            if not live:
                break
            if time.monotonic() > deadline:
                timed_out = True
                log.warning("memwatch check: %d session(s) of %s not destroyed in time", len(live), app_path)
                break
            time.sleep(0.05)
        # One collection frees what is garbage already (smaller scans, a
        # steadier RSS); the verdicts do not depend on it.
        self.call(gc.collect)
        options = self.memwatch.options
        started = time.monotonic()
        base_deadline = started + options.orphan_grace_ms / 1000 + self._timeout_s()
        verify_timeout_s = options.verify_timeout_s + 10
        unjudged: list[dict[str, Any]] = []
        while True:
            self.wait_coroutine(self.memwatch.verify_destroyed, verify_timeout_s)
            rows = self._rows(app_path)
            unjudged = [r for r in rows if r["status"] in UNJUDGED_STATES]
            # A session held by a timer is judged once the timer is due (and
            # one more verification ran), however long that is, up to a bound.
            held_until = max((float(r["held_until"]) for r in unjudged if r.get("held_until") is not None),
                             default=0.0)
            deadline = min(max(base_deadline, time.monotonic() + held_until - time.time() + 2 * TIMER_MARGIN_S + 10),
                           started + MAX_JUDGE_WAIT_S)
            if not unjudged or time.monotonic() > deadline:
                break
            # Until the next verification can decide: a grace period or a
            # holding timer due (verify_destroyed re-checks only what is due).
            dues = [float(r["held_until"]) + TIMER_MARGIN_S - time.time()
                    for r in unjudged if r["status"] == "held_until" and r.get("held_until") is not None]
            time.sleep(min(1.0, max(0.05, min(dues, default=0.1))))
        if unjudged:
            log.warning("memwatch check: %d destroyed session(s) of %s not judged in time", len(unjudged), app_path)
        return {"max_unused_ms": round(max_unused_ms, 1), "settle_timed_out": timed_out,
                "live_sessions_left": len(live), "unjudged": len(unjudged),
                "verified_by": self.memwatch.verification_state()["technique"]}

    def _rows(self, app_path: str) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            self.memwatch.summary()  # a full reconcile refreshes every destroyed session's figures
            groups = self.memwatch.orphans()
            return [r for rows in groups.values() if isinstance(rows, list) for r in rows if r.get("app") == app_path]

        return self.call(read)

    def _settled_rows(self, app_path: str) -> list[dict[str, Any]]:
        """ The app's proven leaks: orphans and Models retained without
        their Document (the one definition; see ``tracker.STATES``). """
        return [r for r in self._rows(app_path) if r["status"] in PROVEN_STATES]

    def measure(self, app_path: str, number: int, opened: Mapping[str, int],
                settle: Mapping[str, Any]) -> dict[str, Any]:
        rows = self._settled_rows(app_path)
        types: Counter[str] = Counter()
        for row in rows:
            types.update(row.get("model_types") or {})
        return {
            "round": number,
            "sessions_opened": dict(opened),
            "sessions_closed_total": self.options.sessions * number,
            "holding_sessions": len(rows),
            "documents": sum(1 for r in rows if r["status"] == "orphan"),
            "models": sum(int(r.get("models") or 0) for r in rows),
            "models_without_document": sum(int(r.get("models_proven") or r.get("models") or 0)
                                           for r in rows if r["status"] == "models_retained"),
            "data_bytes": sum(int(r.get("data_bytes") or 0) for r in rows),
            "model_types": dict(types.most_common(10)),
            "rss_bytes": self._rss(),
            **settle,
        }

    # -- why alive ---------------------------------------------------------------------

    def chains(self, app_path: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """ Search the chains of up to ``max_chains`` retained sessions,
        spread over the kinds of retained object; deduplicated. """
        ids = [str(row["session_id"]) for row in rows]
        # What each search would target: the search's own choice, read on the loop.
        targets = self.call(lambda: [self.memwatch.why_alive.target_type(sid) for sid in ids])
        kinds: dict[str, list[str]] = {}
        for session_id, target in zip(ids, targets, strict=True):
            kinds.setdefault(target or "?", []).append(session_id)
        picked: list[str] = []
        queues = [list(ids) for ids in kinds.values()]
        while queues and len(picked) < self.options.max_chains:
            for queue in queues:
                if queue and len(picked) < self.options.max_chains:
                    picked.append(queue.pop())
            queues = [q for q in queues if q]
        timeout_s = self.memwatch.options.chain_timeout_s + 10
        found: list[dict[str, Any]] = []
        for session_id in picked:
            try:
                result = self.wait_coroutine(lambda sid=session_id: self.memwatch.chain(sid), timeout_s)  # type: ignore[misc]
            except LookupError:
                continue  # collected meanwhile
            except Exception as e:
                log.warning("memwatch check: chain search for %s failed: %s", session_id, e)
                found.append({"session_id": session_id, "target": "?", "text": "",
                              "complete": False, "reason": f"search failed: {type(e).__name__}: {e}"})
                continue
            found.append({**result, "session_id": session_id})
        return dedupe_chains(found, {k: len(v) for k, v in kinds.items()})

    # -- the census ---------------------------------------------------------------------

    def _census_manager(self) -> CensusManager:
        """ A census series of its own per app (one check serves several apps). """
        mw = self.memwatch
        return CensusManager(
            mw.heap_worker, closed=lambda: mw.tracker.destroyed_total, interval_s=0, min_interval_s=0,
            timeout_s=mw.options.snapshot_timeout_s, chain_depth=mw.options.chain_max_depth,
            chain_timeout_s=mw.options.chain_timeout_s,
        )

    def take_census(self, census: CensusManager, errors: list[str]) -> dict[str, Any] | None:
        """ One census after a round (a fork of the server); its figures, or
        None when it could not run (the reason goes to ``errors``). """
        timeout_s = census.timeout_s + 30
        try:
            self.wait_coroutine(lambda: census.run(force=True), timeout_s)
        except Exception as e:
            # Each reason once: the same refusal after every round is one fact.
            message = f"{type(e).__name__}: {e}"
            if message in errors:
                return None
            errors.append(message)
            if isinstance(e, ForkRefused):
                # The server logged the fork policy's reason at start (see
                # analyze/verification.py); the report gives it once.
                log.warning("memwatch check: census of live objects not taken: the fork policy refused "
                            "to fork (reason in the report and the server's warning)")
            else:
                log.warning("memwatch check: census failed: %s", e)
            return None
        point = census.points[-1]
        return {"objects": point.get("objects"), "tracked": point.get("tracked"),
                "garbage": point.get("garbage"), **census.last_costs}

    def census_report(self, census: CensusManager, errors: Sequence[str]) -> dict[str, Any]:
        """ ``{"ran": censuses taken, "rounds_compared", "growing": rows,
        "errors"}``: types growing with closed sessions between the first
        and the last round (see :func:`bokeh_memwatch.heap.census.growing_types`). """
        return {
            "ran": len(census.points),
            "complete": len(census.points) == self.options.rounds,
            "closed_between": (int(census.points[-1]["closed"]) - int(census.points[0]["closed"]))
            if census.points else 0,
            "growing": self.call(census.growing) if len(census.points) >= 2 else [],
            "errors": list(errors),
        }

    def errors(self, app_path: str, total: int) -> dict[str, Any]:
        """ What went wrong in the app's sessions: builds that failed in the
        app's own handlers (Bokeh logs the error and serves the partial
        page), sessions the clients could not open, and whether the app
        served at all (``served``: some session opened and built). """
        built = self.call(self.memwatch.session_build_errors).get(app_path) or {"count": 0, "first": None}
        client = self.session_errors.get(app_path) or {"count": 0, "first": None, "kinds": Counter()}
        build_failed, client_failed = int(built["count"]), int(client["count"])
        messages: list[str] = []
        if build_failed:
            messages.append(f"{build_failed} of {total} session(s) failed to build; first error:\n{built['first']}")
        if client_failed:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(client["kinds"].items()))
            messages.append(f"{client_failed} of {total} session(s) could not be opened ({kinds}); "
                            f"first error:\n{client['first']}")
        opened = total - client_failed
        return {
            "build_failed": build_failed,
            "client_failed": client_failed,
            "client_failed_kinds": dict(client["kinds"]),
            "first_build_error": built["first"],
            "first_client_error": client["first"],
            "served": opened > 0 and build_failed < opened,
            "messages": messages,
        }
