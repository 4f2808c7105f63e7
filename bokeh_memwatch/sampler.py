""" The periodic sampler: runs the collectors and the session tracker on the
server's IOLoop and appends one sample to the store per tick.

Per-tick work is constant for the process collectors and grows with the
number of sessions for the tracker; it never walks the heap.  A collector that
raises is logged once (with its traceback), the sample is marked
(``errors``) and the other collectors go on.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from tornado.ioloop import IOLoop, PeriodicCallback

from .collectors import Collector
from .store import SampleStore
from .tracker import SessionLike, SessionTracker

log = logging.getLogger(__name__)

__all__ = ("Sampler",)

SessionSource = Callable[[], Mapping[str, Iterable[SessionLike]]]
SampleListener = Callable[[Mapping[str, float], Mapping[str, Mapping[str, float]]], None]


class Sampler:
    """ Samples the process every ``interval_ms`` milliseconds.

    Args:
        store: where samples go.
        tracker: the session registry, reconciled at every tick.
        sessions: returns the server's live sessions per application path.
        collectors: process-wide collectors.
        interval_ms: time between ticks; must be > 0.
        budget_s: time a tick may spend on per-Model figures (see
            ``SessionTracker.observe``); None for no limit.
        listeners: called with each sample (process fields, per-app
            fields) after it is stored; must be quick (the history
            database only queues it).  One that raises is logged once.
        clock: unix time in seconds (injectable for tests).
    """

    def __init__(
        self,
        *,
        store: SampleStore,
        tracker: SessionTracker,
        sessions: SessionSource,
        collectors: Sequence[Collector],
        interval_ms: int,
        budget_s: float | None = None,
        listeners: Sequence[SampleListener] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        self.store = store
        self.tracker = tracker
        self.interval_ms = interval_ms
        self._sessions = sessions
        self._collectors = list(collectors)
        self._clock = clock
        self._budget_s = budget_s
        self._listeners = list(listeners)
        self._callback: PeriodicCallback | None = None
        self._failed: set[str] = set()
        self.ticks = 0
        self.errors_total = 0
        self.last_tick_ms = 0.0
        self.max_tick_ms = 0.0
        self.last_refresh_ms = 0.0
        self.max_refresh_ms = 0.0

    @property
    def running(self) -> bool:
        return self._callback is not None and self._callback.is_running()

    def start(self, io_loop: IOLoop | None = None) -> None:
        """ Take a first sample now and then one every interval on ``io_loop``. """
        if self._callback is not None:
            return
        loop = io_loop or IOLoop.current()
        self._callback = PeriodicCallback(self.tick, self.interval_ms)
        # PeriodicCallback binds to IOLoop.current() in start(); run it there.
        loop.add_callback(self._start_on_loop)

    def _start_on_loop(self) -> None:
        if self._callback is not None and not self._callback.is_running():
            self.tick()
            self._callback.start()

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    def tick(self) -> None:
        """ Take one sample.  Never raises: failures are logged and counted. """
        started = time.perf_counter()
        process: dict[str, float] = {"t": self._clock()}
        apps: dict[str, dict[str, float]] = {}
        errors = 0
        for collector in self._collectors:
            try:
                process.update(collector.collect())
            except Exception:
                errors += 1
                self._failed_once(getattr(collector, "name", type(collector).__name__))
        try:
            counts = self.tracker.observe(self._sessions(), budget_s=self._budget_s, refresh=False)
        except Exception:
            errors += 1
            self._failed_once("sessions")
        else:
            apps = counts.apps
            process.update(counts.totals)
        counters = self.tracker.counters()
        process["sessions_created_total"] = counters["sessions_created_total"]
        process["sessions_destroyed_total"] = counters["sessions_destroyed_total"]
        process["errors"] = errors
        self.errors_total += errors
        elapsed_ms = (time.perf_counter() - started) * 1000
        process["tick_ms"] = elapsed_ms
        try:
            self.store.append(process, apps)
        except Exception:
            self._failed_once("store")
        for listener in self._listeners:
            try:
                listener(process, apps)
            except Exception:
                self._failed_once(getattr(listener, "__qualname__", "listener"))
        # The sample's own ``tick_ms`` cannot include storing it; the sampler's
        # figures (summary, metrics) count the whole tick, listeners included.
        total_ms = (time.perf_counter() - started) * 1000
        self.ticks += 1
        self.last_tick_ms = total_ms
        self.max_tick_ms = max(self.max_tick_ms, total_ms)
        # The per-Model work (up to the budget) in a callback of its own:
        # whatever came due meanwhile runs between the two.
        if self.running:
            IOLoop.current().add_callback(self.refresh)
        else:
            self.refresh()

    def refresh(self) -> None:
        """ Refresh per-Model figures within the budget (round-robin over
        sessions; see :meth:`SessionTracker.refresh`).  Never raises. """
        started = time.perf_counter()
        try:
            self.tracker.refresh(self._budget_s)
        except Exception:
            self._failed_once("refresh")
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.last_refresh_ms = elapsed_ms
        self.max_refresh_ms = max(self.max_refresh_ms, elapsed_ms)

    def _failed_once(self, name: str) -> None:
        if name in self._failed:
            log.debug("memwatch collector %r failed again", name, exc_info=True)
            return
        self._failed.add(name)
        log.warning("memwatch collector %r failed; skipping it in this sample", name, exc_info=True)

    @property
    def failed_collectors(self) -> list[str]:
        return sorted(self._failed)
