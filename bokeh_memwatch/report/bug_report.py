""" The JSON bug report (``GET api/report``): summary, sessions, orphans and
their chains, allocators, types, settings and versions, built in one heap job.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any, Protocol

from ..heap import chains as chain_search
from ..heap.allocations import _allocators, _stop_tracing_in_child, _take_filtered
from ..heap.snapshots import _YIELD_S, SnapshotManager
from ..heap.types import _have_pympler, _pympler_version, _type_summary, _types_answer
from ..heap.worker import Rendered
from ..saferepr import (
    error_section,
    merge_json_objects,
    render_json,
)
from ..schema import proven_leaks

log = logging.getLogger(__name__)

__all__ = (
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "ReportSource",
    "build_report",
)

#: ``"format"`` of the JSON report.
REPORT_FORMAT = "bokeh-memwatch-report"
REPORT_VERSION = 1


class ReportSource(Protocol):
    """ What :meth:`SnapshotManager.report` reads (a :class:`~bokeh_memwatch.monitor.Monitor`). """

    def summary(self) -> dict[str, Any]: ...

    def sessions(self, app: str | None = None) -> list[dict[str, Any]]: ...

    def orphans(self) -> dict[str, list[dict[str, Any]]]: ...

    def prepare_chain(
        self, session_id: str, roots: chain_search.Roots,
    ) -> tuple[Callable[[], dict[str, Any]], dict[str, Any]]: ...

    def report_settings(self) -> dict[str, Any]: ...



async def build_report(
    manager: SnapshotManager, source: ReportSource, *, max_chains: int = 5, allocators_limit: int = 25,
    types_limit: int = 50,
) -> bytes:
    """ Everything for a bug report, encoded (indented JSON).  A section
    that fails holds ``{"error": ...}``; the report itself always comes
    back.

    The whole report is one heap job: the worker reads the sessions,
    searches the chains, takes the snapshot and the type summary, and
    encodes the report, which the event loop sends on undecoded.  The
    loop only picks the orphans to explain and prepares their searches.
    """
    manager.require_dir()
    orphans = source.orphans()
    held = proven_leaks(orphans)
    roots = chain_search.capture_roots()
    chain_jobs: list[tuple[str, Any]] = []
    for row in held[:max_chains]:
        session_id = str(row["session_id"])
        try:
            chain_jobs.append((session_id, source.prepare_chain(session_id, roots)))
        except Exception as e:
            chain_jobs.append((session_id, error_section(e)))
    tracing = tracemalloc.is_tracing()
    baseline_types = manager.baseline_paths()[1]
    head: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "created_at": manager.clock(),
        "pid": os.getpid(),
        "orphans": orphans,
        "chains_omitted": max(0, len(held) - max_chains),
        "tracemalloc": manager.tracing_state(),
        "baseline": manager.baseline_state()["baseline"],
        "snapshots": manager.rows(),
    }
    settings = {
        **source.report_settings(),
        "snapshots": {
            "max_snapshots": manager.max_snapshots,
            "max_snapshot_bytes": manager.max_snapshot_bytes,
            "types_min_interval_s": manager.types_min_interval_s,
            "timeout_s": manager.timeout_s,
        },
    }

    def read_sessions() -> dict[str, Any]:
        try:
            return {"sessions": source.sessions()}
        except Exception as e:
            return {"sessions": error_section(e)}

    # A forked worker reads the sessions (the bulk of the report) from its
    # copy of the heap; a thread must not read them while the loop changes them.
    plan = manager.heap_worker.plan()
    sections = read_sessions if plan.technique == "fork" else functools.partial(dict, read_sessions())
    job = functools.partial(
        _report_job, head, sections, chain_jobs, settings,
        tracing=tracing,
        baseline_path=manager.baseline_paths()[0],
        with_types=_have_pympler(),
        baseline_types_path=baseline_types,
        allocators_limit=allocators_limit,
        types_limit=types_limit,
        parent_pid=os.getpid(),
    )
    running = asyncio.ensure_future(manager.heap_worker.run(job, timeout_s=manager.timeout_s, plan=plan))
    try:
        # The fork runs first; a timer sleep lets every callback that came
        # due meanwhile run before the summary, so the two stalls never add up.
        await asyncio.sleep(_YIELD_S)
        # In the server: the summary reads other threads' state (the
        # history writer's queue), whose locks a forked child cannot take.
        try:
            summary = render_json({"summary": source.summary()}, indent=1)
        except Exception as e:
            summary = render_json({"summary": error_section(e)}, indent=1)
        outcome = await running
    finally:
        if not running.done():
            running.cancel()  # kills and reaps a forked child
        del job, chain_jobs, roots  # the roots keep threads alive
    return merge_json_objects(summary, outcome.body or b"{}")



def _report_job(
    head: dict[str, Any],
    read_sections: Callable[[], dict[str, Any]],
    chain_jobs: list[tuple[str, Any]],
    settings: dict[str, Any],
    *,
    tracing: bool,
    baseline_path: str | None,
    with_types: bool,
    baseline_types_path: str | None,
    allocators_limit: int,
    types_limit: int,
    parent_pid: int,
) -> Rendered:
    """ Heap worker: the whole report (see :func:`build_report`). """
    report: dict[str, Any] = {**head, **read_sections()}
    # The snapshot first, while tracing and before the searches allocate.
    if tracing:
        try:
            snapshot = _take_filtered(parent_pid)
            report["allocators"] = _allocators(snapshot, "lineno", allocators_limit, None)
            if baseline_path is not None:
                report["growth"] = _allocators(
                    snapshot, "lineno", allocators_limit, tracemalloc.Snapshot.load(baseline_path),
                )
            del snapshot
        except Exception as e:
            report["allocators"] = error_section(e)
    else:
        report["allocators"] = {"error": "tracemalloc was not tracing"}
    _stop_tracing_in_child(parent_pid)
    explained: dict[str, Any] = {}
    for session_id, prepared in chain_jobs:
        if isinstance(prepared, dict):  # the error of preparing it
            explained[session_id] = prepared
            continue
        search, fields = prepared
        try:
            found = search()
            explained[session_id] = {**fields, **found, "text": chain_search.format_chain(found)}
        except Exception as e:
            explained[session_id] = error_section(e)
    report["chains"] = explained
    if with_types:
        try:
            answer = _types_answer(_type_summary(), baseline_types_path)
            report["types"] = {
                "types": answer["types"][:types_limit],
                "types_total": answer["types_total"],
                "size_bytes_total": answer["size_bytes_total"],
                "compare": None if answer["growth"] is None else {"types": answer["growth"][:types_limit]},
            }
        except Exception as e:
            report["types"] = error_section(e)
    else:
        report["types"] = {"error": "pympler is not installed: pip install pympler"}
    report["settings"] = {name: settings[name] for name in ("options", "server", "snapshots")}
    report["versions"] = {**settings["versions"], "pympler": _pympler_version(), "platform": sys.platform}
    return Rendered({}, render_json(report, indent=1))
