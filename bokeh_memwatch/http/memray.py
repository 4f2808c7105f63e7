""" Tornado handlers for the memray backend (:mod:`bokeh_memwatch.heap.memray_backend`), under
``{prefix}/memwatch/api/memray``.

Reads close the tracker's window on the loop (~10-20 ms) and await a fresh
interpreter that reads memray's file, so the IOLoop keeps serving.  Capture
ids are looked up in the backend's list, never turned into paths.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from tornado.web import HTTPError

from ..heap.memray_backend import (
    GROUPS,
    KINDS,
    Group,
    Kind,
    MemrayBackend,
)
from .base import JSONHandler, int_arg, json_body, no_query_args

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

__all__ = (
    "MemrayAllocatorsHandler",
    "MemrayBaselineHandler",
    "MemrayCaptureHandler",
    "MemrayDownloadHandler",
    "MemrayFlamegraphHandler",
    "MemrayStateHandler",
)

_CHUNK_BYTES = 256 * 1024


class MemrayHandler(JSONHandler):
    """ Base: the backend; its errors are :data:`~bokeh_memwatch.http.base.ERROR_STATUS`'s rows,
    and a ValueError of its arguments is the client's (400). """

    job = "memray helper"
    client_errors = (ValueError,)

    @property
    def backend(self) -> MemrayBackend:
        backend = self.memwatch.memray
        if backend.directory is None:
            raise HTTPError(503, reason="memwatch has not started in this process yet")
        return backend

    async def send_file(self, path: str, *, filename: str, content_type: str) -> None:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; an open file survives eviction
        except FileNotFoundError:
            raise HTTPError(404, reason="the capture is gone") from None
        with f:
            self.set_header("Content-Type", content_type)
            self.set_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
            while chunk := f.read(_CHUNK_BYTES):
                self.write(chunk)
                await self.flush()
        self.finish()


def _bool_field(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise HTTPError(400, reason=f"{name} must be true or false")
    return value


class MemrayStateHandler(MemrayHandler):
    def get(self) -> None:
        no_query_args(self)
        self.write_json(self.backend.state())

    def post(self) -> None:
        no_query_args(self)
        body = json_body(self)
        unknown = sorted(set(body) - {"action", "native_traces", "trace_python_allocators"})
        if unknown:
            raise HTTPError(400, reason=f"unknown field(s): {', '.join(unknown)[:80]}")
        action = body.get("action")
        backend = self.backend
        if action == "start":
            native, python = _bool_field(body, "native_traces"), _bool_field(body, "trace_python_allocators")
            with self.errors():
                self.write_json(backend.start_tracking(native_traces=native, trace_python_allocators=python))
        elif action == "stop":
            if set(body) != {"action"}:
                raise HTTPError(400, reason="stop takes no other fields")
            self.write_json(backend.stop_tracking())
        else:
            raise HTTPError(400, reason='action must be "start" or "stop"')


class MemrayBaselineHandler(MemrayHandler):
    def post(self) -> None:
        no_query_args(self)
        if json_body(self):
            raise HTTPError(400, reason="baseline takes no parameters")
        with self.errors():
            self.write_json(self.backend.set_baseline())


class MemrayAllocatorsHandler(MemrayHandler):
    async def get(self) -> None:
        no_query_args(self, ("group", "kind", "limit", "compare", "capture", "native"))
        group = self.get_query_argument("group", None) or "lineno"
        if group not in GROUPS:
            raise HTTPError(400, reason=f"group must be one of {', '.join(GROUPS)}, got {group[:40]!r}")
        kind = self.get_query_argument("kind", None) or "leaked"
        if kind not in KINDS:
            raise HTTPError(400, reason=f"kind must be one of {', '.join(KINDS)}, got {kind[:40]!r}")
        native = (self.get_query_argument("native", None) or "0").lower()
        if native not in ("0", "1", "true", "false"):
            raise HTTPError(400, reason="native must be 0 or 1")
        grouped: Group = group
        kinded: Kind = kind
        with self.errors():
            answer = await self.backend.allocators(
                group=grouped, kind=kinded, limit=int_arg(self, "limit", 25, lo=1, hi=1000),
                compare=self.get_query_argument("compare", None) or None,
                capture=self.get_query_argument("capture", None) or None,
                native=native in ("1", "true"),
            )
        self.write_json(answer)


class MemrayCaptureHandler(MemrayHandler):
    def get(self, capture_id: str) -> None:
        no_query_args(self)
        with self.errors():
            self.write_json(self.backend.info(capture_id).row())

    def delete(self, capture_id: str) -> None:
        no_query_args(self)
        with self.errors():
            self.backend.delete(capture_id)
        self.write_json({"deleted": capture_id})


class MemrayDownloadHandler(MemrayHandler):
    """ memray's own capture file (``memray flamegraph``/``table``/``stats`` read it). """

    async def get(self, capture_id: str) -> None:
        no_query_args(self)
        with self.errors():
            path = self.backend.info(capture_id).path
        await self.send_file(path, filename=f"memwatch-{os.getpid()}-{capture_id}.memray",
                             content_type="application/octet-stream")


class MemrayFlamegraphHandler(MemrayHandler):
    """ memray's HTML flame graph of a capture (``kind=leaked|high_watermark``). """

    async def get(self, capture_id: str) -> None:
        no_query_args(self, ("kind",))
        kind = self.get_query_argument("kind", None) or "leaked"
        if kind not in KINDS:
            raise HTTPError(400, reason=f"kind must be one of {', '.join(KINDS)}")
        kinded: Kind = kind
        with self.errors():
            path = await self.backend.flamegraph(capture_id, kind=kinded)
        await self.send_file(path, filename=f"memwatch-{os.getpid()}-{capture_id}-{kind}.html",
                             content_type="text/html; charset=utf-8")
