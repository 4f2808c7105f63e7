""" The light report written near the memory limit (when RSS reaches
``limit_fraction`` of the container's limit, at most once per
``limit_min_interval_s``, and before a worker recycles): JSON, and a
tracemalloc snapshot when tracing.

The automatic report is deliberately light.  Near the limit, every page a
forked child touches is copied and counted against the same cgroup, so
nothing here walks the heap: no "why alive" chain search and no pympler type
summary (those stay one request away, ``api/report``).  It holds the
summary (with every worker), live sessions, orphans and retained Models, and,
when tracemalloc is tracing, a snapshot file (``tracemalloc.Snapshot.load``)
and its top allocators; the snapshot is taken by the
:class:`~bokeh_memwatch.heap.snapshots.SnapshotManager` in its forked child, which
only copies tracemalloc's own tables.

Files: ``memwatch-limit-<pid>-<UTC time>.json`` (and ``.tracemalloc``) in the
report directory, the newest ``keep`` kept.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
import tracemalloc
from typing import TYPE_CHECKING, Any, Protocol

from ..analyze.limits import fraction_of
from ..saferepr import error_section, json_default
from .bug_report import REPORT_FORMAT, REPORT_VERSION

if TYPE_CHECKING:
    from ..heap.snapshots import SnapshotManager

log = logging.getLogger(__name__)

__all__ = (
    "REPORT_PREFIX",
    "LimitReportSource",
    "write_limit_report",
)

REPORT_PREFIX = "memwatch-limit-"


class LimitReportSource(Protocol):
    """ What :func:`write_limit_report` reads (a :class:`~bokeh_memwatch.monitor.Monitor`). """

    @property
    def snapshots(self) -> SnapshotManager: ...

    def summary(self) -> dict[str, Any]: ...

    def orphans(self) -> dict[str, list[dict[str, Any]]]: ...

    def sessions(self, app: str | None = None) -> list[dict[str, Any]]: ...



def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


async def write_limit_report(
    memwatch: LimitReportSource, directory: str, *, rss_bytes: float, limit_bytes: float, fraction: float,
    keep: int = 10, allocators_limit: int = 25, reason: str = "memory_limit", extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """ Write the light report (and a snapshot when tracing) to ``directory``;
    returns ``{"report": path, "snapshot": path | None, ...}``.  ``reason``
    and ``extra`` (more top-level fields) say why it was written. """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    now = time.time()
    stem = os.path.join(directory, f"{REPORT_PREFIX}{os.getpid()}-{_stamp(now)}")
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "reason": reason,
        "created_at": now,
        "pid": os.getpid(),
        "rss_bytes": rss_bytes,
        "memory_limit_bytes": limit_bytes,
        "rss_fraction_of_limit": fraction_of(rss_bytes, limit_bytes),
        "limit_fraction": fraction,
        "note": "light report written automatically near the memory limit: no chain search or type summary "
                "(those walk the heap in a forked child, whose pages count against the same limit)",
        **(extra or {}),
    }
    for name, read in (("summary", memwatch.summary), ("orphans", memwatch.orphans),
                       ("sessions", memwatch.sessions)):
        try:
            report[name] = read()
        except Exception as e:  # a section that fails must not lose the rest
            report[name] = error_section(e)
    snapshot_path: str | None = None
    manager = memwatch.snapshots
    if not tracemalloc.is_tracing():
        report["snapshot"] = {"error": "tracemalloc was not tracing (start it with --memwatch-tracemalloc "
                                       "or POST api/tracemalloc to get snapshots here)"}
    else:
        try:
            taken = await manager.take()
            snapshot_path = stem + ".tracemalloc"
            await asyncio.to_thread(_link_or_copy, manager.path_of(taken["id"]), snapshot_path)
            report["snapshot"] = {**taken, "path": snapshot_path}
            answer = await manager.allocators(limit=allocators_limit, snapshot=taken["id"])
            report["allocators"] = answer.to_dict()
        except Exception as e:
            log.warning("memwatch: the limit snapshot failed: %s", e)
            report.setdefault("snapshot", error_section(e))
    report["versions"] = {**(report.get("summary", {}).get("versions") or {}), "platform": sys.platform}
    report_path = stem + ".json"
    text = json.dumps(report, allow_nan=False, default=json_default, indent=1)
    await asyncio.to_thread(_write_atomic, report_path, text)
    removed = _keep_newest(directory, keep)
    return {"report": report_path, "snapshot": snapshot_path, "created_at": now, "removed": removed}


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    with contextlib.suppress(OSError):
        os.chmod(target, 0o600)


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _keep_newest(directory: str, keep: int) -> list[str]:
    """ Remove all but the newest ``keep`` reports (and their snapshots). """
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    stems = sorted(
        (name[:-5] for name in names if name.startswith(REPORT_PREFIX) and name.endswith(".json")),
        key=lambda stem: (stem.rsplit("-", 1)[-1], stem),
    )
    removed: list[str] = []
    for stem in stems[:max(0, len(stems) - keep)]:
        for suffix in (".json", ".tracemalloc"):
            path = os.path.join(directory, stem + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    return removed
