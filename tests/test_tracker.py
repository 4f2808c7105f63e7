""" The tracker on real Bokeh Documents and Models (no server needed). """
from __future__ import annotations

import asyncio
import gc
import os
import time

import numpy as np
from bokeh.document import Document
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

from bokeh_memwatch.collect.tracker import LiveSession, SessionTracker, column_bytes, source_bytes, verification_job
from bokeh_memwatch.heap.worker import run_isolated


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Collections:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        return self.n


def make_doc(rows: int = 1000) -> Document:
    doc = Document()
    source = ColumnDataSource(data={"x": np.arange(rows, dtype="f8"), "y": np.zeros(rows)})
    p = figure()
    p.line("x", "y", source=source)
    doc.add_root(p)
    return doc


def test_counts_models_and_data_bytes() -> None:
    tracker = SessionTracker(grace_s=0)
    doc = make_doc(1000)
    counts = tracker.observe({"/app": [LiveSession("s1", doc, 1, 0.0)]})
    app = counts.apps["/app"]
    assert app["sessions"] == 1 and app["connected"] == 1 and app["documents"] == 1
    assert app["models"] == len(doc.models) > 5
    assert app["data_bytes"] == 2 * 1000 * 8
    assert tracker.created_total == 1  # registered on first sight


def _verify(tracker: SessionTracker) -> int:
    """ Run the tracker's verification job in a real forked child. """
    groups = tracker.verification_groups()
    if not groups:
        return 0
    pid = os.getpid()
    result = asyncio.run(run_isolated(lambda: verification_job(groups, pid), timeout_s=120, use_fork=True))
    assert result.technique == "fork"
    return tracker.apply_verification(result.value, verified_at=tracker._clock())




def test_without_fork_orphans_follow_the_collectors_schedule() -> None:
    clock, collections = Clock(), Collections()
    tracker = SessionTracker(grace_s=5, clock=clock, collections=collections, exact=False)
    doc = make_doc()
    tracker.session_created("/app", "s1", doc)
    tracker.session_destroyed("s1")
    assert tracker.observe({"/app": []}).totals["pending_orphans"] == 1
    assert tracker.verification_due() is None  # no scans without a fork
    clock.now += 10
    assert tracker.observe({"/app": []}).totals["orphans"] == 0  # no collection yet
    collections.n += 1
    counts = tracker.observe({"/app": []})
    assert counts.apps["/app"]["orphans"] == 1 and counts.totals["documents"] == 1
    [row] = tracker.destroyed_holding()
    assert row["status"] == "orphan" and row["session_id"] == "s1"
    assert row["verified_by"] == "full_collection_since_destroy"


def test_orphan_is_proven_by_a_scan_after_the_grace_period(no_gc: None) -> None:
    clock = Clock()
    clock.now = time.time()
    tracker = SessionTracker(grace_s=5, clock=clock, collections=Collections())
    held = [make_doc()]  # held from this frame: reachable from a root
    tracker.session_created("/app", "held", held[0])
    doc = make_doc()
    tracker.session_created("/app", "garbage", doc)
    del doc  # a Document is a cycle with its Models: garbage, not yet collected
    tracker.session_destroyed("held")
    tracker.session_destroyed("garbage")
    counts = tracker.observe({"/app": []})
    assert counts.totals["pending_orphans"] == 2 and counts.totals["documents"] == 2
    assert tracker.verification_due() == clock.now + 5
    assert tracker.verification_groups() == {}  # within the grace period
    clock.now += 5
    assert _verify(tracker) == 2
    counts = tracker.observe({"/app": []})
    assert counts.totals["orphans"] == 1 and counts.totals["awaiting_collection"] == 1
    assert counts.totals["pending_orphans"] == 0 and counts.totals["documents"] == 2
    assert tracker.verification_due() is None  # nothing unproven: no more scans
    states = {r["session_id"]: r["status"] for r in tracker.destroyed_holding()}
    assert states == {"held": "orphan", "garbage": "awaiting_collection"}
    # A proven orphan is re-evaluated with the next scan: released, it is garbage.
    held.clear()
    _verify(tracker)
    states = {r["session_id"]: r["status"] for r in tracker.destroyed_holding()}
    assert states == {"held": "awaiting_collection", "garbage": "awaiting_collection"}
    gc.collect()
    assert tracker.observe({"/app": []}).totals["documents"] == 0 and tracker.cleaned_total == 2


def test_freed_documents_are_forgotten_and_counted_clean() -> None:
    tracker = SessionTracker(grace_s=0, collections=Collections())
    doc = make_doc()
    tracker.session_created("/app", "s1", doc)
    tracker.session_destroyed("s1")
    del doc
    gc.collect()
    counts = tracker.observe({"/app": []})
    assert counts.totals["orphans"] == 0 and counts.totals["pending_orphans"] == 0
    assert tracker.cleaned_total == 1 and tracker.destroyed_holding() == []


def test_models_retained_without_the_document(no_gc: None) -> None:
    clock = Clock()
    tracker = SessionTracker(grace_s=0, clock=clock, collections=Collections())
    doc = make_doc(500)
    tracker.session_created("/app", "s1", doc)
    [source] = [m for m in doc.models if isinstance(m, ColumnDataSource)]
    doc.clear()  # what Panel's cleanup does: detach the Models from the Document
    tracker.session_destroyed("s1")
    del doc
    counts = tracker.observe({"/app": []})
    assert counts.totals["pending_orphans"] == 1 and counts.apps["/app"]["models_retained"] == 0
    _verify(tracker)
    counts = tracker.observe({"/app": []})
    assert counts.totals["orphans"] == 0
    # Only the Models held from here (the source and the Models it refers
    # to) count, not the garbage ones around them (the plot, its renderers).
    kept = len(source.references())
    assert 1 < kept < len(tracker.find("s1").model_refs)  # type: ignore[union-attr]
    assert counts.apps["/app"]["models_retained"] == kept
    assert counts.apps["/app"]["data_bytes"] == 2 * 500 * 8
    [row] = tracker.destroyed_holding()
    assert row["status"] == "models_retained" and not row["document_alive"]
    assert row["models_proven"] == kept and row["models"] > kept
    assert row["model_types"]["ColumnDataSource"] == 1
    del source


def test_session_missing_at_a_tick_is_marked_destroyed() -> None:
    tracker = SessionTracker(grace_s=0)
    doc = make_doc()
    tracker.observe({"/app": [LiveSession("s1", doc, 0, 10.0)]})
    tracker.observe({"/app": []})
    record = tracker.find("s1")
    assert record is not None and record.destroyed and record.destroy_seen_by == "tick"


def test_tracker_holds_no_strong_references() -> None:
    import weakref

    tracker = SessionTracker(grace_s=0)
    doc = make_doc()
    ref = weakref.ref(doc)
    tracker.observe({"/app": [LiveSession("s1", doc, 1, 0.0)]})
    tracker.session_destroyed("s1")
    tracker.destroyed_holding()
    del doc
    gc.collect()
    assert ref() is None


def test_destroyed_records_are_bounded() -> None:
    tracker = SessionTracker(grace_s=0, max_destroyed=3)
    docs = [make_doc(10) for _ in range(5)]
    for i, doc in enumerate(docs):
        tracker.session_created("/app", f"s{i}", doc)
        tracker.session_destroyed(f"s{i}")
    assert tracker.counters()["destroyed_tracked"] == 3
    assert tracker.forgotten_total == 2


def test_column_bytes_estimates() -> None:
    assert column_bytes(np.zeros(10)) == 80
    assert column_bytes([1.0] * 100) > 100 * 8
    assert source_bytes(ColumnDataSource(data={"a": np.zeros(4)})) == 32
    assert source_bytes(figure()) == 0


def test_per_model_work_is_budgeted_and_round_robin() -> None:
    tracker = SessionTracker(grace_s=0)
    docs = [make_doc(100) for _ in range(30)]
    live = {"/app": [LiveSession(f"s{i}", d, 1, 0.0) for i, d in enumerate(docs)]}
    counts = tracker.observe(live, budget_s=0)
    assert counts.totals["sessions"] == 30 and counts.totals["models"] == sum(len(d.models) for d in docs)
    assert counts.totals["data_bytes"] == 30 * 2 * 100 * 8  # measured when each session was first seen
    for doc in docs:  # every source grows tenfold
        [source] = [m for m in doc.models if isinstance(m, ColumnDataSource)]
        source.data = {"x": np.zeros(1000), "y": np.zeros(1000)}
    # The counts are exact at once; the bytes are those last measured (a call refreshes after counting)...
    assert tracker.observe(live, budget_s=0).totals["data_bytes"] == 30 * 2 * 100 * 8
    # ...and a tiny budget refreshes a few sessions per call, round-robin, until all are fresh.
    seen = []
    for _ in range(200):
        seen.append(tracker.observe(live, budget_s=0.0002).totals["data_bytes"])
        if seen[-1] == 30 * 2 * 1000 * 8:
            break
    assert seen[-1] == 30 * 2 * 1000 * 8
    assert len(seen) > 1 and seen == sorted(seen)  # it took several calls, each refreshing more
