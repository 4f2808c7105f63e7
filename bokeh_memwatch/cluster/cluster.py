""" Beyond one process: the history database, every worker, the memory limit.

A :class:`Cluster` hangs off a started :class:`~bokeh_memwatch.monitor.Monitor`
(one per process, made in ``Monitor.start()``, after any ``--num-procs``
fork).  It is the sampler's listener: at every tick it queues the sample for
the shared SQLite history (:mod:`.history_db`) and checks RSS against the
container's memory limit (:mod:`.cgroup`, :mod:`.limits`).  It answers three
questions for the views:

* which workers does this server have?  Every pid of this server with a
  sample in the database in the last few intervals, plus this process (from
  its own store, ``"self": true``);
* what happened before?  :meth:`history` merges this process's in-memory
  samples with the database's;
* how close to the limit is this process?

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..analyze.limits import LimitGuard, fraction_of
from ..collect.cgroup import CgroupMemoryCollector
from ..report.limit_report import LimitReportSource, write_limit_report
from ..schema import APP_FIELDS, PROCESS_FIELDS, WORKER_FIELDS
from ..store.history_db import HistoryDB, default_history_dir, resolve_history_dir
from ..store.registry import pid_alive

if TYPE_CHECKING:
    from ..options import MemwatchOptions

log = logging.getLogger(__name__)

__all__ = (
    "Cluster",
    "server_key",
)

def server_key(port: int | None, prefix: str, app_paths: Iterable[str]) -> str:
    """ What names one server across its workers and its restarts: its
    port, prefix and application paths (readable, with a short hash). """
    apps = ",".join(sorted(app_paths))
    text = f"port={port if port is not None else '-'} prefix={prefix or '/'} apps={apps}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{text[:200]} #{digest}"



class ClusterHost(LimitReportSource, Protocol):
    """ What a :class:`Cluster` reads of the :class:`~bokeh_memwatch.monitor.Monitor` it hangs off. """

    @property
    def options(self) -> MemwatchOptions: ...


class Cluster:
    """ Per process: history database, workers, memory limit.

    Args:
        memwatch: the started Monitor (its options, reports and snapshots).
        key: the server's key (see :func:`server_key`).
    """

    def __init__(self, memwatch: ClusterHost, *, key: str) -> None:
        options = memwatch.options
        self.memwatch = memwatch
        self.key = key
        self.interval_s = options.interval_ms / 1000
        self.directory = resolve_history_dir(options.history_dir)
        self.db: HistoryDB | None = None
        self.cgroup = CgroupMemoryCollector(options.cgroup_root)
        self.guard = LimitGuard(fraction=options.limit_fraction, min_interval_s=options.limit_min_interval_s)
        self.report_dir = os.path.join(self.directory or default_history_dir(), "reports")
        self.reports: list[dict[str, Any]] = []
        self._report_task: asyncio.Future[Any] | None = None
        self._db_error: str | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """ Open the database (a failure logs one warning and turns history
        off; sampling goes on). """
        if self.directory is None:
            return
        options = self.memwatch.options
        db = HistoryDB(self.directory, server=self.key, max_age_s=options.history_s,
                       max_bytes=options.history_max_bytes)
        try:
            db.open()
        except (OSError, sqlite3.Error) as e:
            self._db_error = f"{type(e).__name__}: {e}"
            log.warning("memwatch: history database %s unusable (%s); keeping history in memory only",
                        db.path, e)
            db.close()
            return
        self.db = db
        log.info("memwatch history in %s (server %s)", db.path, self.key)

    def stop(self) -> None:
        if self.db is not None:
            self.db.close()

    # -- the sampler's listener -------------------------------------------------

    def on_sample(self, process: Mapping[str, float], apps: Mapping[str, Mapping[str, float]]) -> None:
        """ Called on the IOLoop after every tick: queue the sample for the
        database (non-blocking), then check the memory limit. """
        limit = self.cgroup.limit_bytes()
        if self.db is not None:
            row: dict[str, Any] = {name: process.get(name) for name in PROCESS_FIELDS}
            row["memory_limit_bytes"] = limit
            row["apps"] = {path: {name: values.get(name) for name in APP_FIELDS} for path, values in apps.items()}
            self.db.submit(row)
        rss = process.get("rss_bytes")
        if self.guard.check(rss, limit):
            self._limit_reached(float(rss or 0), float(limit or 0))

    def _limit_reached(self, rss: float, limit: float) -> None:
        log.warning(
            "memwatch: RSS %d bytes is %.1f%% of the memory limit %d bytes (threshold %.0f%%) in process %d; "
            "writing a report to %s",
            rss, 100 * rss / limit, limit, 100 * self.guard.fraction, os.getpid(), self.report_dir,
        )
        if self._report_task is not None and not self._report_task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.warning("memwatch: no running event loop; the limit report is not written")
            return
        self._report_task = loop.create_task(self._write_report(rss, limit))

    async def _write_report(self, rss: float, limit: float) -> None:
        try:
            written = await write_limit_report(
                self.memwatch, self.report_dir, rss_bytes=rss, limit_bytes=limit, fraction=self.guard.fraction,
                keep=max(1, self.memwatch.options.max_snapshots),
            )
        except Exception:
            log.warning("memwatch: could not write the limit report to %s", self.report_dir, exc_info=True)
            return
        self.reports = [*self.reports[-9:], written]
        log.warning("memwatch: limit report written: %s (snapshot: %s)", written["report"], written["snapshot"])

    # -- workers ----------------------------------------------------------------

    def window_s(self) -> float:
        """ A worker is listed when it wrote a sample this recently. """
        return 3 * self.interval_s + 2.0

    def worker_samples(self, latest: Mapping[str, Any] | None) -> dict[int, dict[str, Any]]:
        """ The newest sample of every live worker, this one's from memory. """
        me = os.getpid()
        out: dict[int, dict[str, Any]] = {}
        if self.db is not None:
            recent = self.db.latest_per_pid(since=time.time() - self.window_s())
            # A process that exited (a restart, a recycled worker) is no worker,
            # even while its last sample is recent.  Workers share the host.
            out.update((pid, sample) for pid, sample in recent.items() if pid_alive(pid))
        out.pop(me, None)
        if latest is not None:
            out[me] = {**latest, "pid": me, "memory_limit_bytes": self.cgroup.limit_bytes()}
        return dict(sorted(out.items()))

    def workers(self, latest: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        me = os.getpid()
        now = time.time()
        rows: list[dict[str, Any]] = []
        for pid, sample in self.worker_samples(latest).items():
            t = sample.get("t")
            row: dict[str, Any] = {"pid": pid, "self": pid == me, "t": t,
                                   "age_s": None if t is None else round(now - t, 3)}
            for name in WORKER_FIELDS:
                value = sample.get(name)
                row[name] = int(value) if isinstance(value, float) and value.is_integer() else value
            row["rss_fraction_of_limit"] = fraction_of(row["rss_bytes"], row["memory_limit_bytes"])
            rows.append(row)
        return rows

    # -- history -----------------------------------------------------------------

    def history(self, local: list[dict[str, Any]], *, since: float | None, limit: int,
                pid: int | None = None) -> list[dict[str, Any]]:
        """ ``local`` (this process's newest ``limit`` samples after ``since``,
        from memory) merged with the database's samples of this server after
        ``since``: other processes' (other workers, earlier runs) and this
        process's older than ``local``'s oldest.  Oldest first, the newest
        ``limit``; ``pid`` keeps one process's. """
        me = os.getpid()
        if pid is not None and pid != me:
            local = []
        if self.db is None or limit <= 0:
            return local[-limit:] if limit > 0 else []
        exclude = (me, local[0]["t"]) if local and local[0].get("t") is not None else None
        stored = self.db.query(since=since, limit=limit, pid=pid, exclude_pid_from=exclude)
        merged = sorted([*stored, *local], key=lambda s: (s.get("t") or 0.0, s.get("pid") or 0))
        return merged[-limit:]

    # -- state -------------------------------------------------------------------

    def limit_state(self, rss_bytes: float | None) -> dict[str, Any]:
        limit = self.cgroup.limit_bytes()
        last = self.reports[-1] if self.reports else None
        return {
            "memory_limit_bytes": limit,
            "rss_fraction_of_limit": fraction_of(rss_bytes, limit),
            "limit": {
                "cgroup_root": self.cgroup.root,
                "fraction": self.guard.fraction,
                "min_interval_s": self.guard.min_interval_s,
                "reports_total": self.guard.triggered_total,
                "report_dir": self.report_dir,
                "last_report": last,
                "retry_in_s": self.guard.retry_in_s(),
            },
        }

    def history_state(self) -> dict[str, Any]:
        if self.db is None:
            return {"enabled": False, "directory": self.directory, "error": self._db_error}
        return self.db.state()
