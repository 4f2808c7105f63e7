""" The periodic sampler: runs the collectors and the session tracker on the
server's IOLoop and appends one sample to the store per tick.

Per-tick work is constant for the process collectors and grows with the
number of sessions for the tracker; it never walks the heap.  The one heavy
job it starts, verifying destroyed sessions (a reachability scan of a forked
copy of the heap, see :mod:`bokeh_memwatch.heap.reachability`), runs only when a
destroyed session is unproven past its grace period or its holding timers
are due, at most once per ``verify_min_interval_s``; the loop pays the
fork.  A collector that
raises is logged once (with its traceback), the sample is marked
(``errors``) and the other collectors go on.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from tornado.ioloop import IOLoop, PeriodicCallback

from .collect.process import Collector
from .collect.tracker import SessionLike, SessionTracker
from .store.ring import SampleStore

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
        verify: a coroutine function that verifies the destroyed sessions
            due for it (``MemWatch.verify_destroyed``); None: never.
        verify_min_interval_s: least time between the starts of two
            verifications.
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
        verify: Callable[[], Awaitable[Any]] | None = None,
        verify_min_interval_s: float = 5.0,
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
        self._verify = verify
        self.verify_min_interval_s = verify_min_interval_s
        self._verify_timer: object | None = None
        self._verify_at = 0.0  # unix time the armed timer fires
        self._verifying = False
        self._last_verify_started = float("-inf")  # monotonic
        self.verifications = 0
        self._tasks: set[asyncio.Future[None]] = set()

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
        self._cancel_verify_timer()

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
            self.schedule_verification()
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

    # -- verification of destroyed sessions ------------------------------------------

    def schedule_verification(self) -> None:
        """ Arm a timer for the next verification the tracker needs (see
        :meth:`SessionTracker.verification_due`), no sooner than
        ``verify_min_interval_s`` after the last one started; nothing when
        nothing is unproven.  Never raises. """
        if self._verify is None or self._verifying:
            return
        try:
            due = self.tracker.verification_due()
        except Exception:
            self._failed_once("verification_due")
            return
        if due is None:
            self._cancel_verify_timer()
            return
        now = self._clock()
        earliest = now + (self._last_verify_started + self.verify_min_interval_s - time.monotonic())
        at = max(due, earliest, now)
        if self._verify_timer is not None and self._verify_at <= at:
            return
        self._cancel_verify_timer()
        self._verify_at = at
        self._verify_timer = IOLoop.current().call_later(at - now, self._start_verification)

    def verification_due_in_s(self) -> float | None:
        """ Seconds until the armed verification runs (None: none is armed). """
        if self._verify_timer is None:
            return None
        return round(max(0.0, self._verify_at - time.time()), 3)

    def _cancel_verify_timer(self) -> None:
        if self._verify_timer is not None:
            IOLoop.current().remove_timeout(self._verify_timer)
            self._verify_timer = None

    def _start_verification(self) -> None:
        self._verify_timer = None
        if self._verify is None or self._verifying:
            return
        self._verifying = True
        self._last_verify_started = time.monotonic()
        self.verifications += 1
        verify = self._verify

        async def run() -> None:
            try:
                await verify()
            except Exception:
                self._failed_once("verification")
            finally:
                self._verifying = False
                if self._callback is not None:
                    self.schedule_verification()

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _failed_once(self, name: str) -> None:
        if name in self._failed:
            log.debug("memwatch collector %r failed again", name, exc_info=True)
            return
        self._failed.add(name)
        log.warning("memwatch collector %r failed; skipping it in this sample", name, exc_info=True)

    @property
    def failed_collectors(self) -> list[str]:
        return sorted(self._failed)
