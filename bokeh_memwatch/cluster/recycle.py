""" Graceful worker recycling: act before the OOM killer does.

When a worker's RSS stays at or above ``--memwatch-recycle-at`` (a fraction
of the container's memory limit, ``0.85``, or a size, ``1.5GiB``) for
``recycle_samples`` consecutive samples, the worker:

1. writes the limit report (:func:`bokeh_memwatch.report.limit_report.write_limit_report`, reason
   ``"recycle"``), so the evidence survives the restart;
2. takes the server's drain lease in the shared history database
   (:class:`.registry.WorkerRegistry`): at most one worker drains at a time,
   the others wait their turn (state ``pending``), serving and ready;
3. **drains**: its readiness probe answers 503; with ``--num-procs N`` it
   stops listening on the shared socket (the other workers keep accepting
   there; its private forwarding port stays open); with one process it keeps
   listening (nothing else would accept, and the liveness probe must still
   answer) and relies on readiness to steer new traffic away.  Live
   sessions go on undisturbed;
4. when no websocket connection is left for ``settle_s`` (or
   ``drain_timeout_s`` passed), it records what happened, releases the lease
   and exits with status :data:`RECYCLE_EXIT_STATUS` (75, ``EX_TEMPFAIL``):
   tornado's ``fork_processes`` restarts a child that exits non-zero, as do
   systemd (``Restart=on-failure``) and Kubernetes.

This module imports neither ``tornado.web`` nor ``bokeh.server``.

Over 400 lines: the recycler is one state machine (serving, pending, draining,
exiting) with the lease that keeps workers from draining together; its parts
only make sense together.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..analyze.limits import RecycleThreshold, fraction_of
from ..report.limit_report import LimitReportSource, write_limit_report

if TYPE_CHECKING:
    from tornado.httpserver import HTTPServer
    from tornado.ioloop import PeriodicCallback

    from ..options import MemwatchOptions
    from ..store.registry import WorkerRegistry
    from .cluster import Cluster

log = logging.getLogger(__name__)

__all__ = (
    "RECYCLE_EXIT_STATUS",
    "Recycler",
    "detect_supervisor",
)

#: The exit status of a recycled worker (``EX_TEMPFAIL``: "try again").
RECYCLE_EXIT_STATUS = 75

def detect_supervisor(environ: Mapping[str, str] | None = None) -> str | None:
    """ What restarts this process when it exits non-zero, if anything we
    can tell: tornado's ``fork_processes`` (``--num-procs``), systemd,
    Kubernetes, supervisord, or ``BOKEH_MEMWATCH_SUPERVISED=1``. """
    from tornado.process import task_id

    env = os.environ if environ is None else environ
    if task_id() is not None:
        return "tornado fork_processes (--num-procs)"
    if env.get("BOKEH_MEMWATCH_SUPERVISED", "").strip().lower() in ("1", "true", "yes", "on"):
        return "declared (BOKEH_MEMWATCH_SUPERVISED)"
    if env.get("INVOCATION_ID"):
        return "systemd"
    if env.get("KUBERNETES_SERVICE_HOST"):
        return "kubernetes"
    if env.get("SUPERVISOR_ENABLED"):
        return "supervisord"
    return None


def _default_exit(status: int) -> None:
    """ Leave the process with ``status``: on the main thread by raising
    ``SystemExit`` out of the IOLoop (atexit handlers run), elsewhere (a
    server on a thread of its own) with ``os._exit`` after flushing logs. """
    if threading.current_thread() is threading.main_thread():
        def leave() -> None:
            raise SystemExit(status)

        asyncio.get_running_loop().call_soon(leave)
        return
    logging.shutdown()
    os._exit(status)


class RecycleHost(LimitReportSource, Protocol):
    """ What a :class:`Recycler` reads of (and stops in) the :class:`~bokeh_memwatch.monitor.Monitor`. """

    @property
    def options(self) -> MemwatchOptions: ...

    @property
    def cluster(self) -> Cluster | None: ...

    def live_sessions(self) -> dict[str, list[Any]]: ...

    def stop(self) -> None: ...


class Recycler:
    """ One worker's recycling: threshold, drain, exit.

    Args:
        memwatch: the started Monitor (its cluster, sessions, options).
        threshold: where recycling starts.
        samples: consecutive samples at or above it needed to act.
        drain_timeout_s: longest drain; then the worker exits anyway.
        settle_s: how long no websocket connection must be left.
        check_interval_s: how often a drain checks its connections.
        exit: called with the exit status at the end (default: leave).
    """

    def __init__(self, memwatch: RecycleHost, threshold: RecycleThreshold, *, samples: int = 3,
                 drain_timeout_s: float = 600.0, settle_s: float = 2.0, check_interval_s: float = 0.25,
                 exit: Callable[[int], None] = _default_exit) -> None:
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if drain_timeout_s <= 0:
            raise ValueError(f"drain_timeout_s must be > 0, got {drain_timeout_s}")
        self.memwatch = memwatch
        self.threshold = threshold
        self.samples = samples
        self.drain_timeout_s = drain_timeout_s
        self.settle_s = settle_s
        self.check_interval_s = check_interval_s
        self._exit = exit
        self.registry: WorkerRegistry | None = None
        self.http_server: HTTPServer | None = None
        self.supervisor: str | None = None
        self.state = "serving"
        self.state_since = time.time()
        self.over = 0
        self.under = 0
        self.crossed: dict[str, Any] | None = None
        self.waiting_for: int | None = None
        self.accepting = True
        self.outcome: str | None = None
        self.drain_started: float | None = None
        self._drain_started_mono: float | None = None
        self._idle_since: float | None = None
        self._checker: PeriodicCallback | None = None
        self._busy = False
        self._warned_no_limit = False
        self._report: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self.report: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self, registry: WorkerRegistry | None, http_server: HTTPServer | None) -> None:
        """ On the worker's IOLoop, after any fork: say how recycling will go. """
        self.registry = registry
        self.http_server = http_server
        self.supervisor = detect_supervisor()
        log.info("memwatch: recycling this worker (pid %d) when %s is reached for %d samples in a row; "
                 "drain timeout %g s; supervisor: %s", os.getpid(), self.threshold.describe(), self.samples,
                 self.drain_timeout_s, self.supervisor or "none detected")
        if self.supervisor is None:
            log.warning(
                "memwatch: --memwatch-recycle-at is set and this server runs as ONE process with no supervisor "
                "detected: recycling will STOP the server (exit status %d) when %s is reached. Run it under a "
                "supervisor that restarts it: systemd (Restart=on-failure), Kubernetes (restartPolicy: Always), "
                "or with --num-procs N (tornado restarts the worker); set BOKEH_MEMWATCH_SUPERVISED=1 to "
                "silence this when another supervisor runs it", RECYCLE_EXIT_STATUS, self.threshold.describe(),
            )
        if registry is None:
            log.warning("memwatch: no history database, so workers cannot agree who drains: each worker "
                        "drains on its own when it crosses the threshold")
        if http_server is None:
            log.warning("memwatch: the server's HTTP listener is unknown (Panel plugin, or Server made elsewhere): "
                        "a draining worker keeps listening; its readiness probe still turns 503")

    def stop(self) -> None:
        if self._checker is not None:
            self._checker.stop()
            self._checker = None

    @property
    def ready(self) -> bool:
        """ What readiness says: False from the start of the drain on.  A
        worker waiting for its turn (``pending``) still serves: with
        ``--num-procs N`` it shares the pod's readiness with a draining
        sibling, and the pod must stay in the Service meanwhile. """
        return self.state in ("serving", "pending")

    # -- the sampler's listener ----------------------------------------------------------

    def threshold_bytes(self) -> float | None:
        cluster = self.memwatch.cluster
        limit = cluster.cgroup.limit_bytes() if cluster is not None else None
        return self.threshold.bytes_for(limit)

    def on_sample(self, process: Mapping[str, float], apps: Mapping[str, Mapping[str, float]]) -> None:
        """ Called on the IOLoop after every tick. """
        if self.state not in ("serving", "pending"):
            return
        rss = process.get("rss_bytes")
        threshold = self.threshold_bytes()
        if self.state == "pending":
            # Waiting for another worker's drain; back to serving if RSS fell back for as long.
            self.under = self.under + 1 if threshold is not None and rss and rss < threshold else 0
            if self.under >= self.samples:
                log.warning("memwatch: worker %d is below the recycle threshold again (%d bytes) for %d samples; "
                            "it serves on instead of draining", os.getpid(), rss, self.under)
                self.over = self.under = 0
                self.waiting_for = None
                self._set_state("serving", None)
                return
            self._spawn(self._try_drain())
            return
        if threshold is None:
            if not self._warned_no_limit:
                self._warned_no_limit = True
                log.warning("memwatch: --memwatch-recycle-at %s is a fraction of the memory limit, and no limit "
                            "was found (cgroup); recycling is off until one is (or give a size: 1.5GiB)",
                            self.threshold.text)
            return
        if not rss or rss < threshold:
            self.over = 0
            return
        self.over += 1
        if self.over < self.samples:
            return
        self._crossed(float(rss), threshold)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _crossed(self, rss: float, threshold: float) -> None:
        cluster = self.memwatch.cluster
        limit = cluster.cgroup.limit_bytes() if cluster is not None else None
        self.crossed = {
            "t": time.time(), "rss_bytes": rss, "threshold_bytes": threshold, "threshold": self.threshold.text,
            "samples": self.over, "memory_limit_bytes": limit, "rss_fraction_of_limit": fraction_of(rss, limit),
        }
        self._set_state("pending", self.reason)
        log.warning("memwatch: worker %d crossed the recycle threshold: RSS %d bytes >= %d bytes (%s) for %d "
                    "samples; writing the limit report, then draining", os.getpid(), rss, threshold,
                    self.threshold.describe(), self.over)
        self._report = asyncio.ensure_future(self._write_report(rss, float(limit or 0)))
        self._spawn(self._try_drain())

    @property
    def reason(self) -> str:
        return "rss_bytes" if self.threshold.rss_bytes is not None else "limit_fraction"

    async def _write_report(self, rss: float, limit: float) -> None:
        cluster = self.memwatch.cluster
        if cluster is None:
            return
        try:
            written = await write_limit_report(
                self.memwatch, cluster.report_dir, rss_bytes=rss, limit_bytes=limit,
                fraction=self.threshold.fraction or 0.0, keep=max(1, self.memwatch.options.max_snapshots),
                reason="recycle", extra={"recycle": self.crossed},
            )
        except Exception:
            log.warning("memwatch: could not write the recycle report to %s", cluster.report_dir, exc_info=True)
            return
        self.report = written
        cluster.reports = [*cluster.reports[-9:], written]
        log.warning("memwatch: recycle report written: %s", written["report"])

    async def _try_drain(self) -> None:
        if self._busy or self.state != "pending":
            return
        self._busy = True
        try:
            holder = None
            if self.registry is not None:
                try:
                    holder = await asyncio.to_thread(self.registry.try_acquire_drain, os.getpid(),
                                                     min_serving=1 if self._shared_socket() else 0)
                except sqlite3.Error as e:
                    log.warning("memwatch: the drain lease could not be read (%s); draining anyway", e)
            if self.state != "pending":  # back to serving meanwhile
                if holder is None and self.registry is not None:
                    await asyncio.to_thread(self.registry.release_drain, os.getpid())
                return
            if holder is not None:
                if self.waiting_for != holder:
                    log.warning("memwatch: worker %d waits to drain: %s", os.getpid(),
                                f"worker {holder} is draining now" if holder else "no other worker is serving yet")
                self.waiting_for = holder
                return
            self.waiting_for = None
            self._start_drain()
        finally:
            self._busy = False

    # -- draining ----------------------------------------------------------------------------

    def _start_drain(self) -> None:
        from tornado.ioloop import PeriodicCallback

        self.drain_started = time.time()
        self._drain_started_mono = time.monotonic()
        self._set_state("draining", self.reason)
        if self.http_server is not None and self._shared_socket():
            self.http_server.stop()  # this worker's copy of the shared socket: the others keep theirs
            self.accepting = False
            how = "stopped accepting new connections (the other workers keep accepting on the shared socket)"
        else:
            how = ("keeps listening (one process: nothing else would accept, and the liveness probe must "
                   "answer); readiness answers 503 so that load balancers send new sessions elsewhere")
        log.warning("memwatch: worker %d is draining: %s; %d live websocket connection(s) go on; it exits "
                    "with status %d when the last one ends, or in %g s", os.getpid(), how, self.connections(),
                    RECYCLE_EXIT_STATUS, self.drain_timeout_s)
        self._checker = PeriodicCallback(self._check, self.check_interval_s * 1000)
        self._checker.start()

    @staticmethod
    def _shared_socket() -> bool:
        """ Whether sibling workers share this worker's listening socket
        (tornado's ``fork_processes``, ``--num-procs N``). """
        from tornado.process import task_id

        return task_id() is not None

    def connections(self) -> int:
        """ Open websocket connections of this worker's sessions. """
        return sum(session.connection_count for sessions in self.memwatch.live_sessions().values()
                   for session in sessions)

    def _check(self) -> None:
        if self.state != "draining" or self._drain_started_mono is None:
            return
        now = time.monotonic()
        if self.connections() == 0:
            if self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= self.settle_s:
                self._finish("sessions_ended")
                return
        else:
            self._idle_since = None
        if now - self._drain_started_mono >= self.drain_timeout_s:
            self._finish("timeout")

    def _finish(self, outcome: str) -> None:
        self.stop()
        self.outcome = outcome
        self._set_state("exiting", self.reason)
        self._spawn(self._exit_after(outcome))

    async def _exit_after(self, outcome: str) -> None:
        drained_s = time.monotonic() - (self._drain_started_mono or time.monotonic())
        open_connections = self.connections()
        if self._report is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._report), self.memwatch.options.snapshot_timeout_s)
            except (asyncio.TimeoutError, Exception):
                log.warning("memwatch: the recycle report did not finish; exiting without it")
        event = {
            "pid": os.getpid(), "t": time.time(), "reason": self.reason, "outcome": outcome,
            "drain_started_at": self.drain_started, "drain_s": round(drained_s, 3),
            "connections_at_exit": open_connections, "exit_status": RECYCLE_EXIT_STATUS,
            "supervisor": self.supervisor, "report": (self.report or {}).get("report"), **(self.crossed or {}),
        }
        event["t"] = time.time()
        if self.registry is not None:
            try:
                await asyncio.to_thread(self._record, event)
            except sqlite3.Error as e:
                log.warning("memwatch: could not record the recycle in the history database: %s", e)
        log.warning(
            "memwatch: worker %d recycled: its RSS (%d bytes) was over %s; drained in %.1f s (%s, %d connection(s) "
            "left); exiting with status %d so that %s starts a fresh one", os.getpid(),
            (self.crossed or {}).get("rss_bytes", 0), self.threshold.describe(), drained_s,
            "the last session ended" if outcome == "sessions_ended" else "the drain timeout passed",
            open_connections, RECYCLE_EXIT_STATUS, self.supervisor or "a supervisor (none detected!)",
        )
        if self.http_server is not None:
            self.http_server.stop()
            self.accepting = False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.http_server.close_all_connections(), 2.0)
        self.memwatch.stop()
        sys.stderr.flush()
        self._exit(RECYCLE_EXIT_STATUS)

    def _record(self, event: dict[str, Any]) -> None:
        assert self.registry is not None
        self.registry.record_recycle(event)
        # The lease stays with this pid until the process is gone.
        self.registry.set_state(os.getpid(), "exiting", self.reason)

    def _set_state(self, state: str, reason: str | None) -> None:
        self.state = state
        self.state_since = time.time()
        registry = self.registry
        if registry is None:
            return

        def write() -> None:
            try:
                registry.set_state(os.getpid(), state, reason)
            except sqlite3.Error as e:
                log.warning("memwatch: could not record the worker state %r: %s", state, e)

        self._spawn(asyncio.to_thread(write))

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """ This worker's recycling, for the API. """
        now = time.time()
        drain: dict[str, Any] | None = None
        if self.drain_started is not None:
            drain = {
                "started_at": self.drain_started,
                "elapsed_s": round(now - self.drain_started, 3),
                "timeout_s": self.drain_timeout_s,
                "connections": self.connections(),
                "settle_s": self.settle_s,
            }
        return {
            "enabled": True,
            "state": self.state,
            "state_since": self.state_since,
            "ready": self.ready,
            "accepting": self.accepting,
            "threshold": self.threshold.text,
            "threshold_bytes": self.threshold_bytes(),
            "samples": self.samples,
            "over_threshold_samples": self.over,
            "crossed": self.crossed,
            "waiting_for_pid": self.waiting_for,
            "drain": drain,
            "outcome": self.outcome,
            "report": self.report,
            "drain_timeout_s": self.drain_timeout_s,
            "exit_status": RECYCLE_EXIT_STATUS,
            "supervisor": self.supervisor,
        }
