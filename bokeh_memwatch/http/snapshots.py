""" Tornado handlers for heap snapshots (:mod:`bokeh_memwatch.heap.snapshots`), under
``{prefix}/memwatch/api/``.

Each heavy request awaits the heap worker (a forked child); the handler
itself does constant-time work, so the IOLoop keeps serving meanwhile.
Snapshot ids are looked up in the server's registry, never turned into
paths; anything not matching the id pattern is a 404.
"""
from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, TypeVar

from tornado.web import HTTPError

from ..heap.allocations import GROUPS, Group
from ..heap.snapshots import (
    SnapshotManager,
)
from ..heap.types import MAX_TYPE_ROWS
from ..report.bug_report import build_report
from ..saferepr import merge_json_objects, render_json
from .base import JSONHandler, int_arg, json_body, no_query_args

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

__all__ = (
    "AllocatorsHandler",
    "BaselineHandler",
    "ReportHandler",
    "SnapshotDownloadHandler",
    "SnapshotItemHandler",
    "SnapshotsHandler",
    "TracemallocHandler",
    "TypesHandler",
)

T = TypeVar("T")

_DOWNLOAD_CHUNK_BYTES = 256 * 1024


class SnapshotHandler(JSONHandler):
    """ Base: the manager; a ValueError of its arguments is the client's (400). """

    client_errors = (ValueError,)
    timeout_hint = " (see snapshot_timeout_s)"

    @property
    def manager(self) -> SnapshotManager:
        manager = self.memwatch.snapshots
        if manager.directory is None:
            raise HTTPError(503, reason="memwatch has not started in this process yet")
        return manager

    def compare_arg(self, *, allowed_ids: bool = True) -> str | None:
        compare = self.get_query_argument("compare", None) or None
        if compare is not None and compare != "baseline" and not allowed_ids:
            raise HTTPError(400, reason="compare must be 'baseline'")
        return compare


class TracemallocHandler(SnapshotHandler):
    def get(self) -> None:
        no_query_args(self)
        self.write_json(self.manager.tracing_state())

    def post(self) -> None:
        no_query_args(self)
        body = json_body(self)
        unknown = sorted(set(body) - {"action", "frames"})
        if unknown:
            raise HTTPError(400, reason=f"unknown field(s): {', '.join(unknown)[:80]}")
        action = body.get("action")
        manager = self.manager
        if action == "start":
            frames = body.get("frames", 1)
            if not isinstance(frames, int) or isinstance(frames, bool) or not 1 <= frames <= 1000:
                raise HTTPError(400, reason="frames must be an integer between 1 and 1000")
            with self.errors():
                self.write_json(manager.start_tracing(frames))
        elif action == "stop":
            if "frames" in body:
                raise HTTPError(400, reason="stop takes no frames")
            self.write_json(manager.stop_tracing())
        else:
            raise HTTPError(400, reason='action must be "start" or "stop"')


class SnapshotsHandler(SnapshotHandler):
    def get(self) -> None:
        no_query_args(self)
        manager = self.manager
        self.write_json({
            "snapshots": manager.rows(),
            "total_bytes": manager.total_bytes(),
            "max_snapshots": manager.max_snapshots,
            "max_snapshot_bytes": manager.max_snapshot_bytes,
            **manager.baseline_state(),
        })

    async def post(self) -> None:
        no_query_args(self)
        if json_body(self):
            raise HTTPError(400, reason="snapshots takes no parameters")
        self.write_json(await self.run(self.manager.take()), status=201)


class SnapshotItemHandler(SnapshotHandler):
    def get(self, snapshot_id: str) -> None:
        no_query_args(self)
        with self.errors():
            info = self.manager.info(snapshot_id)
        self.write_json(info.row())

    def delete(self, snapshot_id: str) -> None:
        no_query_args(self)
        with self.errors():
            self.manager.delete(snapshot_id)
        self.write_json({"deleted": snapshot_id})


class SnapshotDownloadHandler(SnapshotHandler):
    """ The snapshot file, for ``tracemalloc.Snapshot.load``. """

    async def get(self, snapshot_id: str) -> None:
        no_query_args(self)
        with self.errors():
            path = self.manager.path_of(snapshot_id)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; an open file survives eviction
        except FileNotFoundError:
            raise HTTPError(404, reason=f"snapshot {snapshot_id!r} is gone") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(size))
            self.set_header(
                "Content-Disposition",
                f'attachment; filename="memwatch-{os.getpid()}-{snapshot_id}.tracemalloc"',
            )
            while True:
                chunk = f.read(_DOWNLOAD_CHUNK_BYTES)
                if not chunk:
                    break
                self.write(chunk)
                await self.flush()
        self.finish()


class BaselineHandler(SnapshotHandler):
    def get(self) -> None:
        no_query_args(self)
        self.write_json(self.manager.baseline_state())

    async def post(self) -> None:
        no_query_args(self)
        if json_body(self):
            raise HTTPError(400, reason="baseline takes no parameters")
        self.write_json(await self.run(self.manager.set_baseline()))


class AllocatorsHandler(SnapshotHandler):
    async def get(self) -> None:
        no_query_args(self, ("group", "limit", "compare", "snapshot"))
        group = self.get_query_argument("group", None) or "lineno"
        if group not in GROUPS:
            raise HTTPError(400, reason=f"group must be one of {', '.join(GROUPS)}, got {group[:40]!r}")
        limit = int_arg(self, "limit", 25, lo=1, hi=1000)
        snapshot = self.get_query_argument("snapshot", None) or None
        grouped: Group = group
        answer = await self.run(self.manager.allocators(
            group=grouped, limit=limit, compare=self.compare_arg(), snapshot=snapshot,
        ))
        self.write_json(answer.data, rendered=answer.rendered)


class TypesHandler(SnapshotHandler):
    async def get(self) -> None:
        no_query_args(self, ("limit", "compare"))
        limit = int_arg(self, "limit", 50, lo=1, hi=MAX_TYPE_ROWS)
        compare = self.compare_arg(allowed_ids=False)
        answer = await self.run(self.manager.types(limit=limit, compare=compare))
        self.write_json(answer.data, rendered=answer.rendered)


class ReportHandler(SnapshotHandler):
    """ The JSON bug report, as a download. """

    async def get(self) -> None:
        no_query_args(self, ("chains",))
        max_chains = int_arg(self, "chains", 5, lo=0, hi=50)
        report = await self.run(build_report(self.manager, self.memwatch, max_chains=max_chains))
        # a "memray" section (state, and the window closed now) when memray tracks.
        memray = self.memwatch.memray
        if memray.tracking:
            report = merge_json_objects(report, render_json({"memray": await memray.report_section()}, indent=1))
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.set_header("Content-Disposition",
                        f'attachment; filename="memwatch-report-{os.getpid()}-{stamp}.json"')
        self.finish(report)
