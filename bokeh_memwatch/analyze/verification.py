""" Verification of destroyed sessions: are their Documents and Models
reachable from a root?  A reachability scan of a forked copy of the heap
(:mod:`bokeh_memwatch.heap.reachability`) decides, and the tracker applies
the answer; without a fork, verdicts fall back to the collector's schedule
and the state says why.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..collect.tracker import VERIFIED_BY_COLLECTIONS, VERIFIED_BY_SCAN, SessionTracker, verification_job
from ..heap.worker import ForkPlan, HeapWorkBusy, HeapWorker

log = logging.getLogger(__name__)

__all__ = ("Verifier",)


class Verifier:
    """ Runs verifications in a heap worker of its own, so that they never
    make a user's chain search or snapshot wait (429); the same fork policy
    applies: no fork next to an unsafe thread pool.

    Args:
        tracker: the records to verify, and where verdicts go.
        worker: the heap worker the scans run in.
        timeout_s: longest one verification may run.
    """

    def __init__(self, tracker: SessionTracker, worker: HeapWorker, *, timeout_s: float) -> None:
        self.tracker = tracker
        self.worker = worker
        self.timeout_s = timeout_s
        plan = worker.plan()
        self.tracker.exact = plan.technique == "fork"
        #: The last verification's figures; ``fallback_reason``: why verdicts
        #: cannot come from a forked scan.
        self.state: dict[str, Any] = {"runs": 0, "last_error": None, "fallback_reason": plan.refused}
        self._warned = False
        self._warn_fallback(plan)

    def _warn_fallback(self, plan: ForkPlan) -> None:
        """ Log, once per server, why verdicts fall back to the collector's
        schedule when the fork policy refuses (an unsafe native thread pool:
        the reason names the pools and the fix).  Not when fork is asked
        off (``heap_fork`` "never") or missing: nothing to fix then. """
        if self._warned or plan.technique == "fork" or not plan.refused:
            return
        if plan.mode == "never" or not hasattr(os, "fork"):
            return
        self._warned = True
        log.warning("memwatch: destroyed sessions are verified by the collector's schedule, not by a scan "
                    "of a forked copy of the heap, and no census of live objects can be taken: %s",
                    plan.refused)

    @property
    def technique(self) -> str:
        """ How verdicts are reached now: a scan, or the collector's schedule. """
        return VERIFIED_BY_SCAN if self.tracker.exact else VERIFIED_BY_COLLECTIONS

    async def run(self, *, include_proven: bool = True) -> None:
        """ Verify the destroyed sessions due for it (and re-evaluate proven
        ones); the loop pays the fork.  Failures land in :attr:`state`
        (``last_error``), never raise; a busy heap worker leaves the records
        pending for the next attempt. """
        loop_started = time.perf_counter()
        plan = self.worker.plan()
        if plan.technique != "fork":
            # The fork policy (no fork next to an unsafe native thread pool,
            # heap_fork "never", no os.fork): verdicts fall back, and say why.
            self.tracker.exact = False
            self.state["fallback_reason"] = plan.refused
            self._warn_fallback(plan)
            return
        self.tracker.exact = True
        self.state["fallback_reason"] = None
        groups = self.tracker.verification_groups(include_proven=include_proven)
        if not groups:
            return
        pid = os.getpid()
        started = time.time()
        prepare_s = time.perf_counter() - loop_started
        try:
            result = await self.worker.run(
                lambda: verification_job(groups, pid), timeout_s=self.timeout_s, plan=plan,
            )
        except HeapWorkBusy as e:
            self.state["last_error"] = f"heap worker busy: {e}"
            return
        except Exception as e:
            self.state["last_error"] = f"{type(e).__name__}: {e}"
            if "NotFrozen" in str(e):
                # The heap worker ran the job in this process (no fork allowed):
                # no exact answer is possible; say how verdicts are reached instead.
                self.tracker.exact = False
            log.warning("memwatch: verification of destroyed sessions failed: %s", e)
            return
        value = result.value
        apply_started = time.perf_counter()
        changed = self.tracker.apply_verification(value, verified_at=started)
        # What the loop paid: choosing the records, the fork, applying the answer.
        loop_s = prepare_s + (result.fork_s or 0.0) + time.perf_counter() - apply_started
        self.state.update({
            "runs": int(self.state.get("runs", 0)) + 1,
            "last_at": started,
            "last_error": None,
            "last_records": len(value.get("records") or {}),
            "last_changed": changed,
            "last_objects": value.get("objects"),
            "last_scan_s": value.get("scan_s"),
            "last_loop_ms": round(loop_s * 1000, 3),
            **{f"last_{k}": v for k, v in result.costs().items()},
        })
