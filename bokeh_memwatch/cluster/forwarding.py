""" Any worker answers for every worker.

With ``--num-procs N`` the kernel hands each connection to whichever worker
accepts it first, yet orphans, snapshots, the baseline, tracemalloc and
garbage collections belong to one worker.  So each worker also listens on a
private loopback port (:class:`PrivateListener`, the same Bokeh application
on ``127.0.0.1:<random port>``), registered in the shared history database
(:class:`~bokeh_memwatch.store.registry.WorkerRegistry`), and the worker that
received a request forwards it to the worker that owns the object:

* **by id**: ``api/orphans/<session_id>/chain``, ``api/snapshots/<id>`` (and
  its ``/tracemalloc`` download), ``api/allocators?snapshot=<id>&compare=<id>``:
  when this worker does not have it, it asks the others in turn and relays
  (streams, for downloads) the first answer about the object itself: not a
  404, and for a chain not 409/410 either, since Bokeh can make one session
  id on two workers (a page load on one, its websocket on the other), alive
  or collected on one and orphaned on the other.  When no other worker has
  it, this one answers;
* **by worker**: any API request with ``?worker=<pid>`` or an
  ``X-Memwatch-Worker: <pid>`` header (gc, tracemalloc, baseline, taking a
  snapshot, a worker's orphans) goes to that worker; 404 when it is no
  worker of this server.

Credentials are checked once, by the worker that received the request;
the forwarded request carries a secret shared by the workers (made before
the fork, never written anywhere) in ``X-Memwatch-Forwarded``, is only
accepted from a loopback address and is never forwarded again.  Answers
name the worker that computed them (``X-Memwatch-Pid``) and the one that
relayed them (``X-Memwatch-Forwarded-By``).
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import re
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httputil import HTTPHeaders

if TYPE_CHECKING:
    from tornado.httpserver import HTTPServer
    from tornado.web import Application, RequestHandler

    from ..collect.tracker import SessionTracker
    from ..heap.snapshots import SnapshotManager
    from ..options import MemwatchOptions
    from ..store.registry import WorkerRegistry

log = logging.getLogger(__name__)

__all__ = (
    "FORWARD_HEADER",
    "TARGET_ARG",
    "TARGET_HEADER",
    "Forwarder",
    "ForwardingHost",
    "PrivateListener",
    "forward_request",
    "is_forwarded",
    "is_loopback",
)

FORWARD_HEADER = "X-Memwatch-Forwarded"
TARGET_HEADER = "X-Memwatch-Worker"
TARGET_ARG = "worker"

#: Headers of the owner's answer passed on to the client.
_RELAYED = ("Content-Type", "Content-Disposition", "Retry-After", "X-Memwatch-Pid", "Cache-Control",
            "X-Content-Type-Options")
#: Request headers passed on to the owner.
_PASSED = ("Content-Type", "Accept", "User-Agent")

_CHAIN = re.compile(r"api/orphans/([^/]+)/chain/?\Z")
_SNAPSHOT = re.compile(r"api/snapshots/([^/]+)(?:/tracemalloc)?/?\Z")
_ALLOCATORS = re.compile(r"api/allocators/?\Z")


class PrivateListener:
    """ This worker's private loopback port: the server's own tornado
    application on ``127.0.0.1`` and a port the kernel picks. """

    def __init__(self) -> None:
        self.server: HTTPServer | None = None
        self.port: int | None = None

    def start(self, app: Application) -> int:
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets

        sockets = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(app)
        server.add_sockets(sockets)
        self.server = server
        self.port = int(sockets[0].getsockname()[1])
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class ForwardingHost(Protocol):
    """ What forwarding reads of this worker's :class:`~bokeh_memwatch.monitor.Monitor`. """

    forward_secret: str
    forwarder: Forwarder | None

    @property
    def options(self) -> MemwatchOptions: ...

    @property
    def tracker(self) -> SessionTracker: ...

    @property
    def snapshots(self) -> SnapshotManager: ...


def is_loopback(address: str | None) -> bool:
    """ Is ``address`` (an IP, maybe with a ``%zone``) a loopback address?
    ``::ffff:127.0.0.1`` from a dual-stack socket is. """
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1 from a dual-stack socket
    return ip.is_loopback


def is_forwarded(handler: RequestHandler, memwatch: ForwardingHost) -> bool:
    """ Whether the request was forwarded by a worker of this server (its
    credentials were checked there). """
    secret = handler.request.headers.get(FORWARD_HEADER)
    if not secret:
        return False
    if not is_loopback(handler.request.remote_ip):
        return False
    return hmac.compare_digest(secret.encode(), memwatch.forward_secret.encode())


class Forwarder:
    """ Finds the worker that owns a request's object and relays to it.

    Args:
        memwatch: this worker's Monitor.
        registry: the workers' registry (ports).
        cache_s: how long the list of workers is reused.
    """

    def __init__(self, memwatch: ForwardingHost, registry: WorkerRegistry, *, cache_s: float = 1.0) -> None:
        self.memwatch = memwatch
        self.registry = registry
        self.cache_s = cache_s
        self._workers: tuple[float, list[dict[str, Any]]] | None = None
        self.forwarded_total = 0
        self.errors_total = 0
        self._client: AsyncHTTPClient | None = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def others(self) -> list[dict[str, Any]]:
        """ The other live workers with a private port. """
        now = time.monotonic()
        if self._workers is None or now - self._workers[0] > self.cache_s:
            try:
                rows = await asyncio.to_thread(self.registry.workers)
            except sqlite3.Error as e:
                log.warning("memwatch: could not read the workers from the history database: %s", e)
                rows = []
            self._workers = (now, rows)
        me = os.getpid()
        return [w for w in self._workers[1] if w["pid"] != me and w.get("port")]

    def owned_here(self, handler: RequestHandler, rel: str) -> bool | None:
        """ True/False when the request names an object by id (this worker
        has it or not); None when it names none. """
        match = _CHAIN.match(rel)
        if match:
            # With --num-procs one session id can be known to two workers (the
            # page load on one, the websocket on the other): it is this one's
            # when this one holds something of it after its destroy.
            record = self.memwatch.tracker.find(match.group(1))
            return record is not None and record.destroyed and (
                record.doc_ref() is not None or any(ref() is not None for ref in list(record.model_refs.values())))
        match = _SNAPSHOT.match(rel)
        if match:
            return self._has_snapshot(match.group(1))
        if _ALLOCATORS.match(rel):
            ids = [handler.get_query_argument(n, "") for n in ("snapshot", "compare")]
            ids = [i for i in ids if i and i != "baseline"]
            if ids:
                return all(self._has_snapshot(i) for i in ids)
        return None

    def _has_snapshot(self, snapshot_id: str) -> bool:
        manager = self.memwatch.snapshots
        if snapshot_id == "baseline":
            return True  # this worker's baseline, unless a worker is named
        try:
            manager.info(snapshot_id)
        except LookupError:
            return False
        return True

    async def handle(self, handler: RequestHandler) -> bool:
        """ Forward the request if another worker owns it; True when an
        answer was written. """
        prefix = getattr(handler.application, "prefix", "")
        base = f"{prefix}/memwatch/"
        path = handler.request.path
        rel = path[len(base):] if path.startswith(base) else ""
        target = self._target(handler)
        me = os.getpid()
        if target is not None and target != me:
            for worker in await self.others():
                if worker["pid"] == target:
                    if not await self._relay(handler, worker, probe=False):
                        _error(handler, 502, f"worker {target} did not answer (it may just have exited)")
                    return True
            _error(handler, 404, f"no worker {target} in this server (see api/summary workers)")
            return True
        if target == me or not rel or self.owned_here(handler, rel) is not False:
            return False
        # Relayed: the first answer about the object itself; "unknown", and for
        # a chain "alive" or "collected" there, mean another worker may have it.
        skip = (404, 409, 410) if _CHAIN.match(rel) else (404,)
        for worker in await self.others():
            if await self._relay(handler, worker, probe=True, skip=skip):
                return True
        return False  # nobody else has it: this worker answers for itself

    @staticmethod
    def _target(handler: RequestHandler) -> int | None:
        raw = handler.request.headers.get(TARGET_HEADER) or handler.get_query_argument(TARGET_ARG, "")
        # Handled here: the handlers themselves never see it.
        handler.request.query_arguments.pop(TARGET_ARG, None)
        handler.request.arguments.pop(TARGET_ARG, None)
        if not raw:
            return None
        try:
            pid = int(raw)
        except ValueError:
            pid = -1
        if pid <= 0:
            from tornado.web import HTTPError

            raise HTTPError(400, reason=f"{TARGET_ARG} must be a worker's pid, got {raw[:40]!r}")
        return pid

    async def _relay(self, handler: RequestHandler, worker: dict[str, Any], *, probe: bool,
                     skip: tuple[int, ...] = (404,)) -> bool:
        """ Send the request to ``worker``; relay its answer.  With ``probe``
        an answer whose status is in ``skip``, or none, is not relayed
        (returns False). """
        request = handler.request
        query = [(k, v.decode("utf-8", "replace")) for k, values in request.query_arguments.items()
                 for v in values]
        url = f"http://127.0.0.1:{worker['port']}{request.path}" + (f"?{urlencode(query)}" if query else "")
        headers = {name: request.headers[name] for name in _PASSED if name in request.headers}
        headers[FORWARD_HEADER] = self.memwatch.forward_secret
        headers["X-Forwarded-For"] = request.remote_ip or ""
        status: dict[str, Any] = {"code": None, "reason": "", "skip": False, "started": False}
        received = HTTPHeaders()

        def on_header(line: str) -> None:
            if status["code"] is None:
                if line.startswith("HTTP/"):
                    parts = line.strip().split(" ", 2)
                    status["code"] = int(parts[1])
                    status["reason"] = parts[2] if len(parts) > 2 else ""
                return
            if line.strip():
                received.parse_line(line)
                return
            code = status["code"]
            if 100 <= code < 200:  # an interim answer: the real one follows
                status["code"] = None
                return
            if probe and code in skip:
                status["skip"] = True
                return
            status["started"] = True
            handler.set_status(code, status["reason"] or None)
            for name in _RELAYED:
                if name in received:
                    handler.set_header(name, received[name])
            handler.set_header("X-Memwatch-Forwarded-By", str(os.getpid()))

        def on_chunk(chunk: bytes) -> None:
            if status["started"] and not status["skip"]:
                handler.write(chunk)
                handler.flush()

        options = self.memwatch.options
        timeout_s = max(options.chain_timeout_s, options.snapshot_timeout_s) + 30
        fetch = HTTPRequest(
            url, method=request.method or "GET", headers=headers,
            body=request.body if request.method in ("POST", "PUT", "PATCH", "DELETE") else None,
            allow_nonstandard_methods=True, follow_redirects=False, decompress_response=False,
            connect_timeout=5, request_timeout=timeout_s,
            header_callback=on_header, streaming_callback=on_chunk,
        )
        if self._client is None:  # our own: the host application's shared client stays untouched
            self._client = AsyncHTTPClient(force_instance=True, max_body_size=options.max_snapshot_bytes + 2**20)
        response = await self._client.fetch(fetch, raise_error=False)
        if not status["started"]:
            if response.code == 599:
                self.errors_total += 1
                log.debug("memwatch: worker %s did not answer: %s", worker["pid"], response.error)
            return False
        self.forwarded_total += 1
        if response.code == 599:  # cut off mid-answer: the client sees a short body
            log.warning("memwatch: the answer of worker %s was cut off: %s", worker["pid"], response.error)
        handler.finish()
        return True


def _error(handler: RequestHandler, status: int, reason: str) -> None:
    handler.set_status(status, reason)
    handler.set_header("Content-Type", "application/json; charset=UTF-8")
    handler.finish(json.dumps({"pid": os.getpid(), "status": status, "error": reason}))


async def forward_request(handler: RequestHandler, memwatch: ForwardingHost) -> bool:
    """ For ``JSONHandler.prepare``: answer from the owning worker when it is
    another one (True: answered). """
    if is_forwarded(handler, memwatch):
        return False
    forwarder = memwatch.forwarder
    if forwarder is not None:
        return await forwarder.handle(handler)
    target = Forwarder._target(handler)
    if target is not None and target != os.getpid():
        _error(handler, 404, f"no worker {target} reachable: forwarding between workers needs the history "
                             "database (--memwatch-history-dir) and the HTTP side")
        return True
    return False
