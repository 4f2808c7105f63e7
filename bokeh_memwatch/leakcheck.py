""" A leak test for any Bokeh or Panel app: open and close sessions, judge.

:class:`LeakCheck` drives a running Bokeh server that has memwatch mounted
(``bokeh-memwatch check`` runs one in-process; the pytest fixture uses
:class:`bokeh_memwatch.testing.ServerThread`).  For each application it runs
rounds of N sessions, the way browser tabs come and go:

* some opened one after another, some all at once (then all closed);
* half as websocket sessions (``bokeh.client.pull_session``), half as plain
  HTTP GETs of the page (a session Bokeh creates and, never connected,
  discards after ``--unused-session-lifetime``);

then waits until Bokeh destroyed every session, collects garbage and counts
what the destroyed sessions still hold (Documents, Models, bytes in
ColumnDataSources) and the process RSS.  Comparing the rounds tells a
growing leak (retention grows with the number of sessions) from a bounded
one (a "last session" slot), see :func:`judge`.  Finally it asks memwatch
why the retained objects are alive (the reference chain to their holder),
deduplicated by text, and what the memory checklist says (:mod:`.advice`).

The driver runs in its own thread with blocking clients; everything that
touches memwatch runs on the server's IOLoop.  Results are plain data;
:func:`render_text` renders them for people.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .advice import format_bytes, grows
from .collectors import ProcessCollector

if TYPE_CHECKING:
    from bokeh.application import Application
    from tornado.ioloop import IOLoop

    from .core import MemWatch

log = logging.getLogger(__name__)

__all__ = (
    "VERDICTS",
    "CheckOptions",
    "LeakCheck",
    "chain_key",
    "judge",
    "looks_like_panel",
    "parse_session_args",
    "passes",
    "render_text",
)

T = TypeVar("T")

#: Verdicts, best first.
VERDICTS = ("clean", "bounded", "leak")

#: How the i-th session of a round is opened (cycled).
SESSION_KINDS = ("websocket", "http", "websocket-concurrent", "http-concurrent")


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
        http_timeout_s: timeout of one client request.
    """

    sessions: int = 5
    rounds: int = 2
    session_args: Mapping[str, str] = field(default_factory=dict)
    tolerance: int = 0
    max_chains: int = 6
    settle_timeout_s: float | None = None
    http_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.sessions < 1:
            raise ValueError(f"sessions must be >= 1, got {self.sessions}")
        if self.rounds < 2:
            raise ValueError(f"rounds must be >= 2 (growth needs two rounds), got {self.rounds}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.max_chains < 0:
            raise ValueError(f"max_chains must be >= 0, got {self.max_chains}")


# -- judging (pure) --------------------------------------------------------------

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



_GROWTH_KEYS = ("holding_sessions", "documents", "models")


def judge(rounds: Sequence[Mapping[str, Any]]) -> str:
    """ ``clean``: nothing held after the last round; ``leak``: retention
    grew from the first round to the last; ``bounded``: held, not growing. """
    last = rounds[-1]
    if not any(int(last.get(k) or 0) for k in _GROWTH_KEYS):
        return "clean"
    if len(rounds) > 1 and grows(rounds[0], last):
        return "leak"
    return "bounded"


def passes(verdict: str, rounds: Sequence[Mapping[str, Any]], tolerance: int) -> bool:
    """ Clean, or bounded within the tolerance (in destroyed sessions). """
    if verdict == "clean":
        return True
    return verdict == "bounded" and int(rounds[-1].get("holding_sessions") or 0) <= tolerance


_KEY_PATTERNS = (
    (re.compile(r"bokeh_app_[0-9a-f]+"), "bokeh_app_*"),
    (re.compile(r"'[A-Za-z0-9_-]{20,}'"), "'…'"),  # session ids as dict keys
    (re.compile(r"\d+"), "#"),  # list indexes, thread numbers
)


def chain_key(text: str) -> str:
    """ What makes two chains "the same holder": the text without indexes,
    numbers, session ids and per-session module names. """
    for pattern, replacement in _KEY_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def dedupe_chains(found: Sequence[Mapping[str, Any]], kinds: Mapping[str, int]) -> list[dict[str, Any]]:
    """ Group searched chains by :func:`chain_key`; most frequent first. """
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for chain in found:
        target = str(chain.get("target") or "?")
        key = (target, chain_key(str(chain.get("text") or chain.get("reason") or "")))
        group = groups.get(key)
        if group is None:
            groups[key] = {
                "target": target,
                "count": 1,
                "retained_of_kind": kinds.get(target, 0),
                "text": chain.get("text") or "",
                "root": chain.get("root"),
                "complete": bool(chain.get("complete")),
                "reason": chain.get("reason"),
                "sessions": [chain.get("session_id")],
            }
        else:
            group["count"] += 1
            group["sessions"].append(chain.get("session_id"))
    return sorted(groups.values(), key=lambda g: (-g["count"], g["target"]))


def combine(apps: Mapping[str, Mapping[str, Any]], options: CheckOptions) -> dict[str, Any]:
    """ The whole report: totals over the apps, the worst verdict, per app. """
    verdict = max((a["verdict"] for a in apps.values()), key=VERDICTS.index, default="clean")
    ok = all(a["passed"] for a in apps.values())
    report: dict[str, Any] = {
        "verdict": verdict,
        "passed": ok,
        "exit_code": 0 if ok else 1,
        "tolerance": options.tolerance,
        "sessions_per_round": options.sessions,
        "rounds": options.rounds,
    }
    for key in ("sessions", "documents_retained", "models_retained", "data_bytes_retained"):
        report[key] = sum(int(a[key]) for a in apps.values())
    report["chains"] = [{**c, "app": path} for path, a in apps.items() for c in a["chains"]]
    report["advice"] = [item for a in apps.values() for item in a["advice"]]
    report["apps"] = dict(apps)
    return report


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

    # -- running on the server's loop --------------------------------------------------

    def call(self, fn: Callable[[], T], timeout_s: float = 60.0) -> T:
        """ Run ``fn`` on the server's loop; return its result. """
        from .testing import call_on_loop

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
        for number in range(1, opts.rounds + 1):
            opened = self.open_and_close(app_path, opts.sessions)
            settle = self.settle(app_path)
            rounds.append(self.measure(app_path, number, opened, settle))
        verdict = judge(rounds)
        last, first = rounds[-1], rounds[0]
        closed = int(last["sessions_closed_total"])
        between = max(1, closed - int(first["sessions_closed_total"]))
        rows = self._settled_rows(app_path)
        chains = self.chains(app_path, rows)
        advice = [a for a in self.call(lambda: self.memwatch.advice(rounds={app_path: rounds}))
                  if a.get("app") in (app_path, None)]
        failed = self._failed_handlers(app_path)
        return {
            "app": app_path,
            "verdict": verdict,
            "passed": passes(verdict, rounds, opts.tolerance),
            "sessions": closed,
            "documents_retained": int(last["documents"]),
            "models_retained": int(last["models"]),
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
            "app_errors": failed,
            "elapsed_s": round(time.monotonic() - started, 3),
        }

    # -- sessions --------------------------------------------------------------------

    def open_and_close(self, app_path: str, n: int) -> dict[str, int]:
        """ Open and close ``n`` sessions; how many of each kind. """
        url = self.base_url + app_path
        # The same mix every round, concurrent ones first, so the last
        # session of each round is of the same kind (a "last session" slot
        # then keeps the same thing after every round).
        kinds = [SESSION_KINDS[i % len(SESSION_KINDS)] for i in range(n)]
        concurrent = [k for k in kinds if k.endswith("-concurrent")]
        if concurrent:
            self._concurrent(url, concurrent)
        for kind in kinds:
            if kind == "websocket":
                self._websocket_session(url)
            elif kind == "http":
                self._http_page(url)
        return dict(Counter(kinds))

    def _websocket_session(self, url: str) -> None:
        from .testing import client_session

        with client_session(url, self.options.session_args):
            pass

    def _http_page(self, url: str) -> None:
        query = urllib.parse.urlencode(dict(self.options.session_args))
        with urllib.request.urlopen(url + ("?" + query if query else ""),
                                    timeout=self.options.http_timeout_s) as response:
            response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {url}: HTTP {response.status}")

    def _concurrent(self, url: str, kinds: Sequence[str]) -> None:
        """ Open all at once, keep them all open, then close them all. """
        from .testing import client_session

        barrier = threading.Barrier(len(kinds))

        def one(kind: str) -> None:
            if kind.startswith("http"):
                self._http_page(url)
                barrier.wait(self.options.http_timeout_s)
                return
            with client_session(url, self.options.session_args):
                barrier.wait(self.options.http_timeout_s)

        with ThreadPoolExecutor(max_workers=len(kinds), thread_name_prefix="memwatch-check-client") as pool:
            for future in [pool.submit(one, k) for k in kinds]:
                future.result()

    # -- waiting and measuring ----------------------------------------------------------

    def _timeout_s(self) -> float:
        if self.options.settle_timeout_s is not None:
            return self.options.settle_timeout_s
        settings = self.call(self.memwatch.server_settings)
        lifetime_ms = int(settings.get("unused_session_lifetime_ms") or 15_000)
        check_ms = int(settings.get("check_unused_sessions_ms") or 17_000)
        return 3 * (lifetime_ms + check_ms) / 1000 + 10

    def settle(self, app_path: str) -> dict[str, Any]:
        """ Wait until Bokeh destroyed the app's sessions, then collect
        garbage until no destroyed session is ``pending``. """
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
        grace_deadline = time.monotonic() + self.memwatch.options.orphan_grace_ms / 1000 + 5
        while True:
            self.call(gc.collect)
            time.sleep(0.05)  # let cleanups the loop schedules after a destroy run
            self.call(gc.collect)
            rows = self._rows(app_path)
            if not any(r["status"] == "pending" for r in rows) or time.monotonic() > grace_deadline:
                break
            time.sleep(0.1)
        return {"max_unused_ms": round(max_unused_ms, 1), "settle_timed_out": timed_out,
                "live_sessions_left": len(live)}

    def _rows(self, app_path: str) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            self.memwatch.summary()  # a full reconcile refreshes every destroyed session's figures
            groups = self.memwatch.orphans()
            return [r for rows in groups.values() if isinstance(rows, list) for r in rows if r.get("app") == app_path]

        return self.call(read)

    def _settled_rows(self, app_path: str) -> list[dict[str, Any]]:
        return [r for r in self._rows(app_path) if r["status"] != "pending"]

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
            "documents": sum(1 for r in rows if r.get("document_alive")),
            "models": sum(int(r.get("models") or 0) for r in rows),
            "data_bytes": sum(int(r.get("data_bytes") or 0) for r in rows),
            "model_types": dict(types.most_common(10)),
            "rss_bytes": self._rss(),
            **settle,
        }

    # -- why alive ---------------------------------------------------------------------

    def chains(self, app_path: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """ Search the chains of up to ``max_chains`` retained sessions,
        spread over the kinds of retained object; deduplicated. """
        kinds: dict[str, list[str]] = {}
        for row in rows:
            kinds.setdefault(_target_kind(row), []).append(str(row["session_id"]))
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

    def _failed_handlers(self, app_path: str) -> list[str]:
        """ Errors of the app's own handlers (a script that raised). """
        app = self.applications.get(app_path)
        if app is None:
            return []
        return self.call(lambda: [
            str(getattr(h, "error", "") or "failed") for h in app.handlers if getattr(h, "failed", False)
        ])


def _target_kind(row: Mapping[str, Any]) -> str:
    """ What a chain search targets for this row (see ``core._chain_target``). """
    if row.get("document_alive"):
        return "Document"
    types = row.get("model_types") or {}
    return "ColumnDataSource" if "ColumnDataSource" in types else (next(iter(types), "Model"))


# -- rendering ---------------------------------------------------------------------------


def render_text(report: Mapping[str, Any]) -> str:
    """ The report for people. """
    lines: list[str] = []
    for path, app in report["apps"].items():
        per = app["per_closed_session"]
        lines.append(f"{path}: {app['verdict'].upper()} ({'pass' if app['passed'] else 'FAIL'}, "
                     f"tolerance {report['tolerance']} retained session(s))")
        lines.append(f"  sessions opened and closed: {app['sessions']} "
                     f"({report['rounds']} rounds of {report['sessions_per_round']})")
        for r in app["rounds"]:
            lines.append(
                f"  after round {r['round']} ({r['sessions_closed_total']} closed): "
                f"{r['holding_sessions']} session(s) still holding memory, {r['documents']} Document(s), "
                f"{r['models']} Model(s), {format_bytes(r['data_bytes'])} in ColumnDataSources, "
                f"RSS {format_bytes(r['rss_bytes'])}"
            )
        lines.append(
            f"  retained per closed session: {per['documents']:g} Documents, {per['models']:g} Models, "
            f"{format_bytes(per['data_bytes'])}; RSS growth per session "
            f"{format_bytes(app['rss_growth_bytes_per_session'])}"
        )
        if app["model_types"]:
            lines.append("  retained Model types: " + ", ".join(f"{n} {t}" for t, n in app["model_types"].items()))
        for error in app["app_errors"]:
            lines.append(f"  app error: {error}")
        if app["chains"]:
            lines.append("  why alive (reference chains, deduplicated):")
            for c in app["chains"]:
                text = c["text"] or f"(no chain: {c.get('reason') or 'unknown'})"
                lines.append(f"    {c['count']} x {c['target']} (of {c['retained_of_kind']} retained): {text}")
        if app["advice"]:
            lines.append("  advice:")
            for a in app["advice"]:
                lines.append(f"    [{a['severity']}] {a['title']}")
                lines.append(f"      evidence: {a['evidence']}")
                lines.append(f"      fix: {a['fix']}")
                lines.append(f"      see: {a['article_section']}")
        lines.append("")
    verdict = report["verdict"]
    lines.append(f"verdict: {verdict} -> exit {report['exit_code']}")
    return "\n".join(lines)
